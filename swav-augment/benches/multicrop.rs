//! Multi-crop throughput on one core, from a decoded image to normalised CHW float crops:
//! the original preset (2 x 224 + 6 x 96) on a 500 x 375 image, and the CIFAR preset on a
//! 32 x 32 image. `torchvision_multicrop.py` beside this file measures torchvision + PIL doing
//! the same work on the same synthetic images.
//!
//! Run: `cargo bench -p swav-augment --bench multicrop`

#![allow(missing_docs)] // criterion_group! generates an undocumented function.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use swav_augment::{MultiCrop, MultiCropConfig, RgbImage, sample_rng};

/// The synthetic test image, defined identically in the Python script.
fn synthetic(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([
            ((x * 7 + y * 13) % 256) as u8,
            ((x * x + y) % 256) as u8,
            ((x ^ y) % 256) as u8,
        ])
    })
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("multicrop_1core");
    group.sample_size(30);
    for (name, preset, (w, h)) in [
        (
            "swav_2x224_6x96_500x375",
            MultiCropConfig::swav_2x224_6x96(),
            (500, 375),
        ),
        ("cifar_2x32_32x32", MultiCropConfig::cifar(), (32, 32)),
    ] {
        let mc = MultiCrop::new(preset).expect("preset");
        let img = synthetic(w, h);
        let mut bufs: Vec<Vec<f32>> = mc.crop_lens().into_iter().map(|n| vec![0.0; n]).collect();
        let mut index = 0u64;
        group.throughput(Throughput::Elements(1));
        group.bench_function(name, |b| {
            b.iter(|| {
                index += 1;
                let mut rng = sample_rng(31, 0, index);
                let mut slices: Vec<&mut [f32]> =
                    bufs.iter_mut().map(|v| v.as_mut_slice()).collect();
                mc.apply_into(&img, &mut rng, &mut slices).expect("crops");
            })
        });
    }
    group.finish();

    // Each transform alone on a 224 x 224 crop, to see where the time goes.
    let img = synthetic(224, 224);
    let mut ops = c.benchmark_group("transform_224");
    ops.sample_size(30);
    type Op = Box<dyn Fn(&mut RgbImage)>;
    let list: Vec<(&str, Op)> = vec![
        (
            "brightness",
            Box::new(|i| swav_augment::adjust_brightness(i, 1.3)),
        ),
        (
            "contrast",
            Box::new(|i| swav_augment::adjust_contrast(i, 1.3)),
        ),
        (
            "saturation",
            Box::new(|i| swav_augment::adjust_saturation(i, 1.3)),
        ),
        ("hue", Box::new(|i| swav_augment::adjust_hue(i, 0.1))),
        ("grayscale", Box::new(swav_augment::to_grayscale)),
        (
            "pil_blur_sigma1",
            Box::new(|i| swav_augment::pil_gaussian_blur(i, 1.0)),
        ),
        ("hflip", Box::new(swav_augment::hflip)),
    ];
    for (name, op) in list {
        ops.bench_function(name, |b| {
            b.iter_batched_ref(|| img.clone(), |i| op(i), criterion::BatchSize::SmallInput)
        });
    }
    let src = synthetic(500, 375);
    let crop = swav_augment::CropBox {
        top: 20,
        left: 30,
        height: 300,
        width: 400,
    };
    ops.bench_function("resized_crop_400x300_to_224", |b| {
        b.iter(|| swav_augment::resized_crop(&src, crop, 224, 224).expect("resize"))
    });
    let norm = swav_augment::Normalize::SWAV;
    let mut out = vec![0f32; 3 * 224 * 224];
    ops.bench_function("normalize_chw", |b| {
        b.iter(|| norm.write_chw(&img, &mut out).expect("size"))
    });
    ops.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default();
    targets = bench
}
criterion_main!(benches);
