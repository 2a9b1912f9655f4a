//! Tests of the embedding queue, prototype normalisation and the configuration.

mod common;

use burn::module::Module;
use burn::nn::LinearConfig;
use burn::tensor::Tensor;
use common::{device, max_abs_diff, tensor2, values};
use swav_core::{
    CoreError, EmbeddingQueue, PRESETS, SwavConfig, effective_queue_length, l2_normalize,
    normalize_prototypes,
};

#[test]
fn queue_length_rounds_down_to_the_global_batch() {
    assert_eq!(effective_queue_length(3840, 64, 4), 3840);
    assert_eq!(effective_queue_length(1000, 64, 4), 768);
    assert_eq!(effective_queue_length(255, 64, 4), 0);
    assert_eq!(effective_queue_length(512, 64, 1), 512);
}

#[test]
fn queue_shorter_than_a_batch_is_refused_with_the_field_name() {
    let err = EmbeddingQueue::for_run(100, 64, 4, 2, 128, &device()).expect_err("too short");
    match err {
        CoreError::InvalidConfig { field, .. } => assert_eq!(field, "queue_length"),
        other => panic!("unexpected error {other}"),
    }
    let q = EmbeddingQueue::for_run(1000, 64, 4, 2, 16, &device()).expect("valid");
    assert_eq!(q.len(), 768 / 4, "each worker holds its share");
}

#[test]
fn queue_is_used_only_once_full_and_keeps_newest_first() {
    let d = device();
    let mut q = EmbeddingQueue::new(1, 6, 2, &d);
    for step in 0..3 {
        assert!(!q.is_full(), "not full before push {step}");
        let v = step as f64;
        q.push(0, tensor2(&[v, v, v + 0.5, v + 0.5], 2, 2, &d));
    }
    assert!(q.is_full());
    let stored = values(q.embeddings(0));
    assert_eq!(
        stored,
        vec![2.0, 2.0, 2.5, 2.5, 1.0, 1.0, 1.5, 1.5, 0.0, 0.0, 0.5, 0.5]
    );
    // Scores use whatever prototypes are passed now: [len, dim] x [dim, K].
    let protos = tensor2(&[1.0, 0.0, 0.0, 1.0], 2, 2, &d);
    assert_eq!(values(q.scores(0, protos.clone())), stored);
    let doubled = protos.mul_scalar(2.0);
    let s2 = values(q.scores(0, doubled));
    assert_eq!(s2, stored.iter().map(|x| 2.0 * x).collect::<Vec<_>>());
}

#[test]
fn queue_state_round_trips_through_serde() {
    let d = device();
    let mut q = EmbeddingQueue::new(2, 4, 3, &d);
    q.push(0, tensor2(&[1., 2., 3., 4., 5., 6.], 2, 3, &d));
    q.push(1, tensor2(&[7., 8., 9., 1., 2., 3.], 2, 3, &d));
    let state = q.state();
    let json = serde_json::to_string(&state).expect("serialise");
    let back: swav_core::QueueState = serde_json::from_str(&json).expect("parse");
    let r = EmbeddingQueue::from_state(&back, &d).expect("restore");
    assert_eq!(r.state(), state);
    assert!(!r.is_full());
    r.check_compatible(2, 4, 3).expect("same shape");
    assert!(r.check_compatible(2, 8, 3).is_err());

    let mut broken = state.clone();
    broken.values.pop();
    assert!(matches!(
        EmbeddingQueue::from_state(&broken, &d),
        Err(CoreError::QueueState(_))
    ));
}

#[test]
fn prototypes_are_normalised_without_gradient_and_keep_training() {
    let d = device().autodiff();
    let linear = LinearConfig::new(8, 5).with_bias(false).init(&d);
    let id = linear.weight.id;
    let linear = normalize_prototypes(linear);
    assert_eq!(
        linear.weight.id, id,
        "the parameter keeps its id (and optimiser state)"
    );
    let w = linear.weight.val();
    assert!(
        w.is_require_grad(),
        "prototypes still train after normalisation"
    );
    // Each prototype is a column of burn's [D, K] weight.
    let norms = values(w.clone().square().sum_dim(0).sqrt());
    assert!(norms.iter().all(|n| (n - 1.0).abs() < 1e-6), "{norms:?}");

    let z = l2_normalize(Tensor::<2>::ones([3, 8], &d), 1);
    let loss = linear.forward(z).sum();
    let grads = loss.backward();
    assert!(
        linear.weight.val().grad(&grads).is_some(),
        "gradient reaches the prototypes"
    );
    assert_eq!(linear.num_params(), 40);
}

#[test]
fn l2_normalize_matches_torch_semantics() {
    let d = device();
    let x = tensor2(&[3.0, 4.0, 0.0, 0.0], 2, 2, &d);
    let y = values(l2_normalize(x, 1));
    assert!(
        max_abs_diff(&y, &[0.6, 0.8, 0.0, 0.0]) < 1e-7,
        "zero rows stay zero"
    );
}

#[test]
fn defaults_are_the_original_arguments() {
    let c = SwavConfig::default();
    assert_eq!(c.epsilon, 0.05);
    assert_eq!(c.sinkhorn_iterations, 3);
    assert_eq!(c.temperature, 0.1);
    assert_eq!(c.crops_for_assign, vec![0, 1]);
    assert_eq!(c.nmb_prototypes, vec![3000]);
    assert_eq!((c.feat_dim, c.hidden_mlp), (128, 2048));
    assert_eq!((c.queue_length, c.epoch_queue_starts), (0, 15));
    assert_eq!((c.base_lr, c.final_lr, c.wd), (4.8, 0.0, 1e-6));
    assert_eq!(c.freeze_prototypes_niters, 313);
    assert_eq!(c.seed, 31);
    c.validate().expect("defaults are valid");
}

#[test]
fn presets_are_valid_and_match_the_recipes() {
    for name in PRESETS {
        SwavConfig::preset(name)
            .expect("known preset")
            .validate()
            .unwrap_or_else(|e| panic!("preset {name}: {e}"));
    }
    let p = SwavConfig::imagenet_800ep();
    assert_eq!(p.global_batch(), 4096);
    assert_eq!(p.total_crops(), 8);
    assert_eq!((p.base_lr, p.final_lr, p.start_warmup), (4.8, 0.0048, 0.3));
    let q = SwavConfig::imagenet_bs256();
    assert_eq!(q.global_batch(), 256);
    assert_eq!(q.effective_queue_length(), 3840);
    assert_eq!(q.freeze_prototypes_niters, 5005);
    assert!(SwavConfig::preset("imagenet-9000ep").is_err());
}

#[test]
fn the_queue_starts_at_its_epoch() {
    let c = SwavConfig::imagenet_bs256();
    assert!(!c.queue_active(14));
    assert!(c.queue_active(15));
    assert!(
        !SwavConfig::imagenet_800ep().queue_active(500),
        "no queue in the headline run"
    );
}

#[test]
fn lr_scaling_rule_is_optional() {
    let mut c = SwavConfig::imagenet_bs256();
    assert_eq!(c.learning_rates().0, 0.6);
    c.scale_lr_by_batch = true;
    c.base_lr = 0.3;
    assert!(
        (c.learning_rates().0 - 0.3).abs() < 1e-12,
        "batch 256 scales by 1"
    );
    c.world_size = 64;
    assert!(
        (c.learning_rates().0 - 4.8).abs() < 1e-12,
        "0.3 x 4096 / 256 = 4.8"
    );
}

fn field_of(c: &SwavConfig) -> &'static str {
    match c.validate() {
        Err(CoreError::InvalidConfig { field, .. }) => field,
        other => panic!("expected a config error, got {other:?}"),
    }
}

#[test]
fn bad_values_are_refused_naming_the_field() {
    let base = SwavConfig::default();
    let cases: Vec<(&str, SwavConfig)> = vec![
        (
            "epsilon",
            SwavConfig {
                epsilon: 0.0,
                ..base.clone()
            },
        ),
        (
            "epsilon",
            SwavConfig {
                epsilon: -0.05,
                ..base.clone()
            },
        ),
        (
            "epsilon",
            SwavConfig {
                epsilon: f64::NAN,
                ..base.clone()
            },
        ),
        (
            "temperature",
            SwavConfig {
                temperature: 0.0,
                ..base.clone()
            },
        ),
        (
            "sinkhorn_iterations",
            SwavConfig {
                sinkhorn_iterations: 0,
                ..base.clone()
            },
        ),
        (
            "crops_for_assign",
            SwavConfig {
                crops_for_assign: vec![],
                ..base.clone()
            },
        ),
        (
            "crops_for_assign",
            SwavConfig {
                crops_for_assign: vec![0, 2],
                ..base.clone()
            },
        ),
        (
            "crops_for_assign",
            SwavConfig {
                crops_for_assign: vec![1, 1],
                ..base.clone()
            },
        ),
        (
            "queue_length",
            SwavConfig {
                queue_length: 32,
                ..base.clone()
            },
        ),
        (
            "size_crops",
            SwavConfig {
                nmb_crops: vec![2, 6],
                ..base.clone()
            },
        ),
        (
            "nmb_crops",
            SwavConfig {
                nmb_crops: vec![1],
                ..base.clone()
            },
        ),
        (
            "min_scale_crops",
            SwavConfig {
                min_scale_crops: vec![0.0],
                ..base.clone()
            },
        ),
        (
            "max_scale_crops",
            SwavConfig {
                max_scale_crops: vec![0.1],
                ..base.clone()
            },
        ),
        (
            "nmb_prototypes",
            SwavConfig {
                nmb_prototypes: vec![3000, 0],
                ..base.clone()
            },
        ),
        (
            "batch_size",
            SwavConfig {
                batch_size: 0,
                ..base.clone()
            },
        ),
        (
            "momentum",
            SwavConfig {
                momentum: 1.0,
                ..base.clone()
            },
        ),
        (
            "warmup_epochs",
            SwavConfig {
                warmup_epochs: 200,
                ..base.clone()
            },
        ),
        (
            "wd",
            SwavConfig {
                wd: -1.0,
                ..base.clone()
            },
        ),
    ];
    for (field, cfg) in cases {
        assert_eq!(field_of(&cfg), field);
        let msg = cfg.validate().expect_err("invalid").to_string();
        assert!(msg.contains(field), "message `{msg}` names `{field}`");
    }
}

#[test]
fn partial_files_take_defaults_and_unknown_fields_are_refused() {
    let c: SwavConfig = serde_json::from_str(r#"{"epsilon": 0.03, "queue_length": 3840}"#)
        .expect("partial config parses");
    assert_eq!(c.epsilon, 0.03);
    assert_eq!(c.temperature, 0.1);
    let err = serde_json::from_str::<SwavConfig>(r#"{"epsilonn": 0.03}"#).expect_err("typo");
    assert!(err.to_string().contains("epsilonn"));
    // burn's Config trait works on it: save and load a run's resolved config.
    let dir = std::env::temp_dir().join(format!("swav-core-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let path = dir.join("config.json");
    use burn::config::Config;
    SwavConfig::demo().save(&path).expect("save");
    assert_eq!(SwavConfig::load(&path).expect("load"), SwavConfig::demo());
    std::fs::remove_dir_all(&dir).ok();
}
