//! kNN classification against cases computed by hand, and its argument checks.

use burn::tensor::Device;
use swav_eval::{Features, KnnConfig, knn_classify};

fn feats(rows: &[[f32; 2]], labels: &[usize]) -> Features {
    Features {
        values: rows.iter().flatten().copied().collect(),
        dim: 2,
        labels: labels.iter().map(|&l| Some(l)).collect(),
        indices: (0..rows.len()).collect(),
        skipped: vec![],
    }
}

/// A unit vector at `deg` degrees, scaled by `len` (the kNN normalises it).
fn d(deg: f32, len: f32) -> [f32; 2] {
    let r = deg.to_radians();
    [len * r.cos(), len * r.sin()]
}

#[test]
fn knn_matches_hand_computed_votes() {
    let device = Device::flex();
    // Memory bank: 0 and 10 degrees (class 0), 80 and 90 (class 1), 180 (class 2); lengths vary
    // to check the normalisation.
    let train = feats(
        &[
            d(0.0, 1.0),
            d(10.0, 3.0),
            d(80.0, 0.5),
            d(90.0, 5.0),
            d(180.0, 2.0),
        ],
        &[0, 0, 1, 1, 2],
    );
    // k = 3, T = 0.5.
    // 42 deg: 10 (cos 32 = .8480, c0), 80 (cos 38 = .7880, c1), 0 (cos 42 = .7431, c0):
    //   c0 = e^1.6961 + e^1.4863 = 9.874 > c1 = e^1.5760 = 4.836 -> 0 (true 0).
    // 60 deg: 80 (.9397, c1), 90 (.8660, c1), 10 (.6428, c0) -> 1 (true 0: a miss; class 0
    //   comes second, so top-5 counts it).
    // 175 deg: 180 (.9962, c2), 90 (.0872, c1), 80 (-.0872, c1):
    //   c2 = e^1.9924 = 7.33 > c1 = e^.1743 + e^-.1743 = 2.03 -> 2 (true 2).
    let test = feats(&[d(42.0, 1.0), d(60.0, 2.0), d(175.0, 1.0)], &[0, 0, 2]);
    let cfg = KnnConfig {
        k: 3,
        temperature: 0.5,
        block: 2,
    };
    let r = knn_classify(&train, &test, 3, &cfg, &device).expect("knn");
    assert_eq!(r.predictions, vec![0, 1, 2]);
    assert!((r.top1 - 200.0 / 3.0).abs() < 1e-9, "{}", r.top1);
    assert!((r.top5 - 100.0).abs() < 1e-9);
    assert_eq!((r.test_samples, r.train_samples), (3, 5));
}

#[test]
fn the_temperature_decides_between_one_close_and_two_far_neighbours() {
    let device = Device::flex();
    // Query at 5 degrees; bank: 0 (c0, cos 5 = .9962), 50 (c1, cos 45 = .7071), -50 (c1,
    // cos 55 = .5736). Majority says 1.
    // T = 0.1: c0 = e^9.962 = 21200 > c1 = e^7.071 + e^5.736 = 1487 -> 0.
    // T = 10:  c0 = e^.0996 = 1.105 < c1 = e^.0707 + e^.0574 = 2.132 -> 1.
    let train = feats(&[d(0.0, 1.0), d(50.0, 1.0), d(-50.0, 1.0)], &[0, 1, 1]);
    let test = feats(&[d(5.0, 1.0)], &[0]);
    let sharp = KnnConfig {
        k: 3,
        temperature: 0.1,
        block: 256,
    };
    let flat = KnnConfig {
        temperature: 10.0,
        ..sharp
    };
    assert_eq!(
        knn_classify(&train, &test, 2, &sharp, &device)
            .expect("knn")
            .predictions,
        vec![0]
    );
    assert_eq!(
        knn_classify(&train, &test, 2, &flat, &device)
            .expect("knn")
            .predictions,
        vec![1]
    );
    // k larger than the bank uses the whole bank.
    let big = KnnConfig { k: 50, ..sharp };
    assert_eq!(
        knn_classify(&train, &test, 2, &big, &device)
            .expect("knn")
            .predictions,
        vec![0]
    );
}

#[test]
fn bad_arguments_are_refused() {
    let device = Device::flex();
    let train = feats(&[d(0.0, 1.0)], &[0]);
    let test = feats(&[d(5.0, 1.0)], &[0]);
    let ok = KnnConfig::k20();
    assert!(knn_classify(&train, &test, 2, &KnnConfig { k: 0, ..ok }, &device).is_err());
    assert!(
        knn_classify(
            &train,
            &test,
            2,
            &KnnConfig {
                temperature: 0.0,
                ..ok
            },
            &device
        )
        .is_err()
    );
    let out_of_range = feats(&[d(0.0, 1.0)], &[4]);
    let e = knn_classify(&out_of_range, &test, 2, &ok, &device).expect_err("label 4 of 2 classes");
    assert!(e.to_string().contains("label 4"), "{e}");
    let mut unlabeled = test.clone();
    unlabeled.labels[0] = None;
    assert!(knn_classify(&train, &unlabeled, 2, &ok, &device).is_err());
}

#[test]
fn the_peers_settings_are_the_presets() {
    assert_eq!(
        (KnnConfig::k20().k, KnnConfig::k20().temperature),
        (20, 0.07)
    );
    assert_eq!(
        (KnnConfig::k200().k, KnnConfig::k200().temperature),
        (200, 0.1)
    );
    assert_eq!(KnnConfig::default(), KnnConfig::k20());
}
