//! The training run end to end on tiny settings: exact resume after a kill at any point or a
//! stop request,
//! prototypes frozen without any update, a stop with a diagnostic on a non-finite loss while the
//! last good checkpoint is kept, bad configs refused before work, and the run folder's files.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::{Device, Tensor};
use swav_models::{Backbone, ResNet, SwavModel, read_checkpoint};
use swav_train::{
    CHECKPOINT_FILE, CONFIG_FILE, METRICS_FILE, RunOptions, SUMMARY_FILE, StopRequest, TrainConfig,
    TrainError, TrainObserver, Trainer, open_data, train,
};

mod common;
use common::{bits, resnet, run, tiny};

#[test]
fn two_runs_of_one_config_end_bit_identical() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = tiny(&dir.path().join("a"));
    cfg.swav.epochs = 1;
    let (a, _) = run(&cfg, None);
    cfg.run.out_dir = dir.path().join("b");
    let (b, _) = run(&cfg, None);
    for ((n1, b1), (_, b2)) in bits(&a).iter().zip(&bits(&b)) {
        assert!(
            b1 == b2,
            "tensor {n1} differs between two runs of the same config"
        );
    }
}

#[test]
fn a_run_killed_anywhere_and_resumed_ends_bit_identical() {
    let dir = tempfile::tempdir().expect("tempdir");
    let full_cfg = tiny(&dir.path().join("full"));
    let (full, summary) = run(&full_cfg, None);
    assert!(summary.completed);
    assert_eq!(summary.iterations, 12);
    let reference = bits(&full);

    // Killed after 5 iterations (checkpoint at 3), after 4 (epoch end), after 10 (checkpoint
    // at 9 and epoch end at 8), and killed twice.
    for kills in [vec![5], vec![4], vec![10], vec![2, 5]] {
        let cfg = tiny(&dir.path().join(format!("killed{kills:?}")));
        for &k in &kills {
            let (_, s) = run(&cfg, Some(k));
            assert!(!s.completed);
        }
        let (resumed, s) = run(&cfg, None);
        assert!(s.completed, "{kills:?}");
        assert!(s.resumed_from_iteration.is_some(), "{kills:?}: resumed");
        assert_eq!(s.iterations, 12);
        let got = bits(&resumed);
        assert_eq!(got.len(), reference.len());
        for ((n1, b1), (n2, b2)) in got.iter().zip(&reference) {
            assert_eq!(n1, n2);
            assert!(
                b1 == b2,
                "kills {kills:?}: tensor {n1} differs from the uninterrupted run"
            );
        }
    }
}

/// Asks for a stop when the run reports iteration `at` (as a signal arriving during that step).
struct StopAt {
    at: usize,
    stop: StopRequest,
}

impl TrainObserver for StopAt {
    fn step(&mut self, progress: &swav_train::StepProgress) {
        if progress.iteration == self.at {
            self.stop.request();
        }
    }
}

#[test]
fn a_stop_request_checkpoints_the_step_it_ends_and_resumes_bit_identical() {
    let dir = tempfile::tempdir().expect("tempdir");
    let full_cfg = tiny(&dir.path().join("full"));
    let (full, _) = run(&full_cfg, None);
    let reference = bits(&full);

    // Mid-epoch (iteration 5: between the checkpoints at 4 and 6), at an epoch's last step
    // (iteration 8: the epoch's end is written and its records kept), and at the first step
    // after a resume.
    for stops in [vec![5], vec![8], vec![1, 2]] {
        let cfg = tiny(&dir.path().join(format!("stopped{stops:?}")));
        let data = open_data(&cfg.data, cfg.swav.seed, (0, 0)).expect("data");
        let mut done = 0;
        for &at in &stops {
            let stop = StopRequest::new();
            let mut observer = StopAt {
                at: done + at,
                stop: stop.clone(),
            };
            let options = RunOptions {
                stop: Some(stop),
                ..RunOptions::default()
            };
            let out = Trainer::new(&cfg, &data)
                .options(options)
                .observer(&mut observer)
                .run(resnet(&cfg))
                .expect("stopped run");
            let s = out.summary;
            done += at;
            assert!(!s.completed, "{stops:?}");
            let p = s
                .preempted
                .as_ref()
                .expect("the summary says where it stopped");
            assert_eq!(
                p.iteration, done,
                "{stops:?}: stopped after the step in progress"
            );
            assert_eq!(p.epoch, done / 4, "{stops:?}: the epoch it continues in");
            assert_eq!(p.checkpoint, cfg.run.out_dir.join(CHECKPOINT_FILE));
            // The checkpoint holds that step, and the summary file says so.
            let ckpt = read_checkpoint(&p.checkpoint).expect("checkpoint reads");
            let state = ckpt
                .metadata
                .get("swav.train_state")
                .expect("training state");
            let state: serde_json::Value = serde_json::from_str(state).expect("json");
            assert_eq!(state["iteration"], done, "{stops:?}");
            let on_disk: swav_train::RunSummary = serde_json::from_str(
                &std::fs::read_to_string(cfg.run.out_dir.join(SUMMARY_FILE)).expect("summary"),
            )
            .expect("summary parses");
            assert_eq!(on_disk.preempted, s.preempted);
        }
        let (resumed, s) = run(&cfg, None);
        assert!(s.completed && s.preempted.is_none(), "{stops:?}");
        assert_eq!(s.resumed_from_iteration, Some(done), "{stops:?}");
        // Every step is logged once: the stop lost none and repeated none.
        let steps: Vec<u64> = std::fs::read_to_string(cfg.run.out_dir.join(METRICS_FILE))
            .expect("metrics")
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("a JSON line"))
            .filter(|r| r["type"] == "step")
            .filter_map(|r| r["iteration"].as_u64())
            .collect();
        assert_eq!(
            steps,
            (1..=12).collect::<Vec<_>>(),
            "{stops:?}: one step record per iteration"
        );
        for ((n1, b1), (n2, b2)) in bits(&resumed).iter().zip(&reference) {
            assert_eq!(n1, n2);
            assert!(
                b1 == b2,
                "stops {stops:?}: tensor {n1} differs from the uninterrupted run"
            );
        }
    }
}

#[test]
fn the_run_folder_holds_config_checkpoint_metrics_plots_and_summary() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = tiny(dir.path());
    cfg.swav.epochs = 2;
    cfg.run.knn_every = 1;
    cfg.run.knn_train_samples = 64;
    let (_, summary) = run(&cfg, None);
    for f in [
        CHECKPOINT_FILE,
        CONFIG_FILE,
        METRICS_FILE,
        SUMMARY_FILE,
        "loss.png",
        "lr.png",
        "knn.png",
    ] {
        assert!(dir.path().join(f).is_file(), "{f} is written");
    }
    // The saved config is the resolved one and reads back equal.
    let saved = TrainConfig::load(dir.path().join(CONFIG_FILE), &[]).expect("config");
    assert_eq!(saved, cfg);
    // Metrics: a step line per iteration (log_every 1) and an epoch line per epoch with kNN.
    let text = std::fs::read_to_string(dir.path().join(METRICS_FILE)).expect("metrics");
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    let steps = lines.iter().filter(|v| v["type"] == "step").count();
    let epochs: Vec<&serde_json::Value> = lines.iter().filter(|v| v["type"] == "epoch").collect();
    assert_eq!(steps, 8);
    assert_eq!(epochs.len(), 2);
    for e in &epochs {
        let top1 = e["knn_top1"].as_f64().expect("kNN each epoch");
        assert!((0.0..=100.0).contains(&top1));
    }
    let first = &lines[0];
    for key in [
        "loss",
        "lr",
        "images_per_s",
        "code_entropy",
        "prototypes_used",
        "data_time_s",
        "compute_time_s",
    ] {
        assert!(first.get(key).is_some(), "step metrics have {key}");
    }
    assert!(summary.knn.is_some());
    assert_eq!(summary.skipped_files.len(), 0);
    // The checkpoint rebuilds the model from its spec.
    let (model, ckpt) =
        swav_models::load_swav_model(dir.path().join(CHECKPOINT_FILE), &Device::flex())
            .expect("load");
    assert_eq!(model.prototypes.heads[0].weight.dims(), [8, 10]);
    assert!(ckpt.arrays.contains_key("queue"), "the queue is saved");
}

#[test]
fn prototypes_get_no_update_while_frozen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = tiny(&dir.path().join("a"));
    cfg.run.checkpoint_every = 0;
    cfg.swav.freeze_prototypes_niters = 3;
    let (one, _) = run(&cfg, Some(1));
    cfg.run.out_dir = dir.path().join("b");
    let (three, _) = run(&cfg, Some(3));
    cfg.run.out_dir = dir.path().join("c");
    let (four, _) = run(&cfg, Some(4));
    let p = |m: &SwavModel<ResNet>| {
        m.prototypes.heads[0]
            .weight
            .val()
            .into_data()
            .try_to_vec_as::<f32>()
            .expect("values")
    };
    let w = |m: &SwavModel<ResNet>| {
        m.backbone
            .conv1
            .weight
            .val()
            .into_data()
            .try_to_vec_as::<f32>()
            .expect("values")
    };
    // Frozen: no gradient step, no momentum, no weight decay; only the per-step re-normalisation
    // (as in the original), which moves a unit vector by rounding at most.
    let max_diff = |a: &[f32], b: &[f32]| {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max)
    };
    assert!(
        max_diff(&p(&one), &p(&three)) < 1e-6,
        "no update while frozen"
    );
    assert_ne!(w(&one), w(&three), "the backbone trains meanwhile");
    assert!(
        max_diff(&p(&three), &p(&four)) > 1e-4,
        "the prototypes move once unfrozen"
    );
}

#[test]
fn bad_configs_are_refused_before_any_work() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = tiny(dir.path());
    cfg.swav.crops_for_assign = vec![0, 7];
    let data = open_data(&cfg.data, 1, (0, 0)).expect("data");
    let err = train(&cfg, &data, resnet(&cfg), &RunOptions::default())
        .err()
        .expect("refused");
    assert!(err.to_string().contains("crops_for_assign"), "{err}");
    assert!(
        !dir.path().join(CHECKPOINT_FILE).exists(),
        "nothing written"
    );

    let cfg = tiny(dir.path());
    let mut other = tiny(dir.path());
    run(&cfg, Some(1 + 3));
    other.swav.base_lr = 0.123;
    let data = open_data(&other.data, 1, (0, 0)).expect("data");
    let err = train(&other, &data, resnet(&other), &RunOptions::default())
        .err()
        .expect("a checkpoint of another config is refused");
    assert!(err.to_string().contains("base_lr"), "{err}");
}

/// A backbone that turns its output into NaN from its `poison_at`-th forward call on.
#[derive(Module, Debug)]
struct Poisoned {
    fc: Linear,
    #[module(skip)]
    calls: Arc<AtomicUsize>,
    #[module(skip)]
    poison_at: usize,
}

impl Backbone for Poisoned {
    fn feature_dim(&self) -> usize {
        8
    }

    fn forward_features(&self, images: Tensor<4>) -> Tensor<2> {
        let [b, c, h, w] = images.dims();
        let pooled = images.reshape([b, c, h * w]).mean_dim(2).reshape([b, c]);
        let f = self.fc.forward(pooled);
        if self.calls.fetch_add(1, Ordering::SeqCst) + 1 >= self.poison_at {
            f.mul_scalar(f32::NAN)
        } else {
            f
        }
    }
}

#[test]
fn a_non_finite_loss_stops_the_run_with_a_diagnostic_and_keeps_the_last_checkpoint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = tiny(dir.path());
    cfg.run.checkpoint_every = 2;
    let data = open_data(&cfg.data, 1, (0, 0)).expect("data");
    // Two crop groups: two forward calls per iteration; call 5 is iteration 2 (0-based).
    let build = |d: &Device| {
        Ok(Poisoned {
            fc: LinearConfig::new(3, 8).init(d),
            calls: Arc::new(AtomicUsize::new(0)),
            poison_at: 5,
        })
    };
    let err = train(&cfg, &data, build, &RunOptions::default())
        .err()
        .expect("stops");
    let msg = err.to_string();
    assert!(matches!(err, TrainError::NonFinite(_)), "{msg}");
    assert!(msg.contains("iteration 2"), "{msg}");
    assert!(msg.contains("lr"), "{msg}");
    // The scores of a poisoned batch are all NaN: said so, not a range.
    assert!(msg.contains("no finite scores"), "{msg}");
    assert!(msg.contains("(iteration 2, before this step)"), "{msg}");
    let ckpt = read_checkpoint(dir.path().join(CHECKPOINT_FILE)).expect("the last good checkpoint");
    let state: serde_json::Value =
        serde_json::from_str(&ckpt.metadata["swav.train_state"]).expect("state");
    assert_eq!(state["iteration"], 2);
}

#[test]
fn a_request_for_mixed_precision_is_reported_not_silently_ignored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = tiny(dir.path());
    cfg.swav.epochs = 1;
    cfg.swav.use_fp16 = true;
    let (_, summary) = run(&cfg, None);
    assert!(
        summary.warnings.iter().any(|w| w.contains("use_fp16")),
        "{:?}",
        summary.warnings
    );
    cfg.swav.use_fp16 = false;
    cfg.run.out_dir = dir.path().join("f32");
    let (_, summary) = run(&cfg, None);
    assert!(!summary.warnings.iter().any(|w| w.contains("use_fp16")));
}
