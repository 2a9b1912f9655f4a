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
        ("swav_2x224_6x96_500x375", MultiCropConfig::swav_2x224_6x96(), (500, 375)),
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
                let mut slices: Vec<&mut [f32]> = bufs.iter_mut().map(|v| v.as_mut_slice()).collect();
                mc.apply_into(&img, &mut rng, &mut slices).expect("crops");
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default();
    targets = bench
}
criterion_main!(benches);
