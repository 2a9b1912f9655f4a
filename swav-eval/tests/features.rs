//! Feature extraction: eval-mode forward of every readable sample, unreadable ones skipped and
//! listed, and the evaluation transform's geometry.

use burn::tensor::Device;
use swav_augment::{Normalize, RgbImage};
mod common;

use common::WithBroken;
use swav_data::{ImageDataset, Shapes10};
use swav_eval::{EvalTransform, ExtractConfig, extract_features};
use swav_models::ResNetConfig;

#[test]
fn features_of_every_readable_sample_in_order_and_batch_independent() {
    let device = Device::flex();
    device.seed(3);
    let mut cfg = ResNetConfig::from_name("resnet18")
        .expect("arch")
        .with_base_width(4);
    cfg.cifar_stem = true;
    let net = cfg.init(&device).expect("net");
    let data = WithBroken {
        inner: Shapes10::test(1, 10),
        broken: 3,
        prefix: "broken-",
    };
    let extract = |batch| {
        extract_features(
            &net,
            &data,
            &ExtractConfig {
                batch_size: batch,
                workers: 2,
                transform: EvalTransform::small(32),
            },
            &device,
        )
        .expect("features")
    };
    let a = extract(4);
    assert_eq!(a.dim, 32);
    assert_eq!(a.len(), 9);
    assert_eq!(a.indices, vec![0, 1, 2, 4, 5, 6, 7, 8, 9]);
    assert_eq!(a.skipped.len(), 1);
    assert!(a.skipped[0].1.contains("broken-3.png"));
    assert_eq!(a.labels[3], data.label(4));
    // Eval mode: a sample's features do not depend on the rest of its batch.
    let b = extract(3);
    for (x, y) in a.values.iter().zip(&b.values) {
        assert!((x - y).abs() < 1e-4, "{x} vs {y}");
    }
}

#[test]
fn the_eval_transform_keeps_the_central_square() {
    let t = EvalTransform::imagenet();
    // 512 x 300: shorter side 300 -> 256, crop 224 of 256 -> 262.5 source pixels (263).
    let b = t.source_box(512, 300);
    assert_eq!((b.width, b.height), (263, 263));
    assert_eq!((b.left, b.top), ((512 - 263) / 2, (300 - 263) / 2));
    let img = RgbImage::from_pixel(512, 300, image::Rgb([255, 0, 0]));
    let mut out = vec![0f32; t.len()];
    t.apply_into(&img, &mut out).expect("transform");
    let want = (1.0 - Normalize::SWAV.mean[0]) / Normalize::SWAV.std[0];
    assert!((out[0] - want).abs() < 1e-5);
    assert!(
        EvalTransform {
            resize: 10,
            crop: 20,
            normalize: Normalize::SWAV
        }
        .validate()
        .is_err()
    );
}

/// Corrupt feature-file headers the fuzzer found: counts whose product overflows, and a row
/// width of 2^32 - 1 floats in a file of no rows (whose reading allocated 16 GiB), are refused
/// when the file is opened, naming it.
#[test]
fn corrupt_feature_file_headers_are_refused_at_open() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("x.features");
    let mut w = swav_eval::FeatureWriter::create(&path, 2).expect("writer");
    w.append(&[1.0, 2.0], &[Some(0)]).expect("row");
    w.finish().expect("finished");
    let good = std::fs::read(&path).expect("read");
    for (dim, rows) in [(u32::MAX, u64::MAX), (u32::MAX, 0)] {
        let mut bad = good.clone();
        bad[12..16].copy_from_slice(&dim.to_le_bytes());
        bad[16..24].copy_from_slice(&rows.to_le_bytes());
        if rows == 0 {
            bad.truncate(32);
        }
        std::fs::write(&path, &bad).expect("write");
        match swav_eval::FeatureFile::open(&path) {
            Err(e) => assert!(e.to_string().contains("x.features"), "{e}"),
            Ok(f) => panic!("{dim} x {rows} opened, {} rows", f.len()),
        }
    }
}
