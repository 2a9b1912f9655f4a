//! The tiny backbone through the real training run of `swav-train` (the code path
//! `cargo xtask pretrain` uses for ResNets): it trains, checkpoints, and resumes.

use swav_tinynet::TinyNet;
use swav_train::{CHECKPOINT_FILE, RunOptions, TrainConfig, open_data, train};

#[test]
fn tinynet_trains_through_the_swav_training_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = TrainConfig::demo();
    c.swav.arch = "tinynet".into();
    c.swav.nmb_crops = vec![2, 2];
    c.swav.size_crops = vec![16, 8];
    c.swav.min_scale_crops = vec![0.3, 0.1];
    c.swav.max_scale_crops = vec![1.0, 0.3];
    c.swav.hidden_mlp = 16;
    c.swav.feat_dim = 8;
    c.swav.nmb_prototypes = vec![10, 6];
    c.swav.batch_size = 16;
    c.swav.epochs = 2;
    c.swav.warmup_epochs = 0;
    c.swav.queue_length = 32;
    c.swav.epoch_queue_starts = 1;
    c.swav.freeze_prototypes_niters = 1;
    c.data.shapes10_train = 48;
    c.data.shapes10_test = 32;
    c.data.workers = 2;
    c.run.out_dir = dir.path().to_path_buf();
    c.run.knn_every = 1;
    c.run.knn_train_samples = 48;
    c.run.quiet = true;
    let data = open_data(&c.data, c.swav.seed, (48, 32)).expect("data");
    let build = |d: &burn::tensor::Device| Ok(TinyNet::new(4, d));

    let out = train(
        &c,
        &data,
        build,
        &RunOptions {
            stop_after: Some(4),
            ..RunOptions::default()
        },
    )
    .expect("first part");
    assert!(!out.summary.completed);
    let out = train(&c, &data, build, &RunOptions::default()).expect("resumed");
    assert!(out.summary.completed);
    assert_eq!(
        out.summary.resumed_from_iteration,
        Some(3),
        "epoch-end checkpoint of epoch 1"
    );
    assert_eq!(out.summary.iterations, 6);
    assert!(out.summary.last_loss.is_some_and(f64::is_finite));
    assert!(
        out.summary.knn.is_some(),
        "the kNN monitor ran on the tiny backbone"
    );
    assert_eq!(out.model.prototypes.heads.len(), 2, "two prototype heads");
    assert!(dir.path().join(CHECKPOINT_FILE).is_file());
}
