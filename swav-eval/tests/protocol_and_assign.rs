//! The linear probe's original protocol (augmented images through the frozen backbone every
//! epoch) and cluster assignment, on a narrow ResNet-18 over Shapes10 with an unreadable file.

use burn::tensor::Device;
use swav_augment::Normalize;
mod common;

use common::WithBroken;
use swav_data::Shapes10;
use swav_eval::{
    EvalTransform, ExtractConfig, LinearProbeConfig, ProbeAugment, ProbeMode, assign_clusters,
    extract_features, linear_probe_protocol,
};
use swav_models::SwavModelSpec;

fn spec() -> SwavModelSpec {
    SwavModelSpec {
        arch: "resnet18".into(),
        base_width: 4,
        cifar_stem: true,
        hidden_mlp: 16,
        feat_dim: 8,
        prototypes: vec![12],
        backbone: serde_json::Value::Null,
    }
}

fn extract(workers: usize) -> ExtractConfig {
    ExtractConfig {
        batch_size: 32,
        workers,
        transform: EvalTransform::small(32),
    }
}

#[test]
fn protocol_probe_is_deterministic_whatever_the_threads_and_skips_bad_files() {
    let device = Device::flex();
    device.seed(11);
    let model = spec().init(&device).expect("model");
    let train = WithBroken {
        inner: Shapes10::train(2, 120),
        broken: 5,
        prefix: "img,",
    };
    let test = extract_features(
        &model.backbone,
        &Shapes10::test(2, 60),
        &extract(2),
        &device,
    )
    .expect("test features");
    let cfg = LinearProbeConfig {
        epochs: 3,
        batch_size: 32,
        ..LinearProbeConfig::default()
    };
    let aug = ProbeAugment::original(32, Normalize::CIFAR10);
    let run = |workers| {
        linear_probe_protocol(
            &model.backbone,
            &train,
            &test,
            10,
            &cfg,
            &aug,
            &extract(workers),
            &device,
        )
        .expect("probe")
    };
    let (a, skipped_a) = run(1);
    let (b, skipped_b) = run(2);
    assert_eq!(a.mode, ProbeMode::Protocol);
    assert_eq!(a, b, "same figures with 1 and 2 threads");
    assert_eq!(a.epochs.len(), 3);
    assert_eq!(a.test_samples, 60);
    // The unreadable file is listed once, whatever the number of epochs.
    assert_eq!(skipped_a.len(), 1);
    assert_eq!(skipped_a, skipped_b);
    assert_eq!(skipped_a[0].0, 5);
    assert!(skipped_a[0].2.contains("truncated"));
    // Each epoch's figures are real accuracies over the 60 test images.
    for e in &a.epochs {
        assert!((0.0..=100.0).contains(&e.top1) && e.top5 >= e.top1);
        assert!((e.top1 * 60.0 / 100.0 - (e.top1 * 60.0 / 100.0).round()).abs() < 1e-9);
    }
}

#[test]
fn assignment_rows_confidences_purity_and_csv() {
    let device = Device::flex();
    device.seed(12);
    let model = spec().init(&device).expect("model");
    let data = WithBroken {
        inner: Shapes10::test(4, 40),
        broken: 5,
        prefix: "img,",
    };
    let a = assign_clusters(&model, &data, &extract(2), 0, 0.1, &device).expect("assign");
    assert_eq!(a.rows.len(), 39, "every readable image once");
    assert_eq!(a.skipped.len(), 1);
    assert_eq!(a.prototypes, 12);
    assert!(a.rows.iter().all(|r| r.cluster < 12));
    // The confidence is the arg-max probability: at least 1/K, at most 1.
    assert!(
        a.rows
            .iter()
            .all(|r| r.confidence >= 1.0 / 12.0 - 1e-6 && r.confidence <= 1.0)
    );
    let used: std::collections::BTreeSet<_> = a.rows.iter().map(|r| r.cluster).collect();
    assert_eq!(a.clusters_used, used.len());
    let purity = a.purity.expect("labelled");
    assert!((10.0..=100.0).contains(&purity), "purity {purity}");
    let dir = tempfile::tempdir().expect("tempdir");
    let csv = dir.path().join("assign.csv");
    a.write_csv(&csv).expect("csv");
    let text = std::fs::read_to_string(&csv).expect("read");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "index,file,label,cluster,confidence");
    assert_eq!(lines.len(), 40);
    // A file name with a comma is quoted.
    assert!(lines[1].starts_with("0,\"img,0.png\",0,"), "{}", lines[1]);
    // A head that does not exist is refused.
    let e = assign_clusters(&model, &data, &extract(2), 3, 0.1, &device).expect_err("head 3");
    assert!(e.to_string().contains("head"), "{e}");
}
