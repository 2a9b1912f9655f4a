//! Loader throughput (images per second, every crop made and batched) at 1 and 2 threads:
//! - a CIFAR-10 JPEG tree (class folders) with the CIFAR preset: set `SWAV_CIFAR10_JPEG` to
//!   its `train` folder;
//! - 500 x 375 JPEGs (written to a temporary folder by this bench) with the original
//!   2 x 224 + 6 x 96 preset;
//! - the built-in Shapes10 dataset with the CIFAR preset (no files).
//!
//! Run: `cargo bench -p swav-data --bench loader`

use std::time::Instant;

use image::{ImageFormat, Rgb, RgbImage};
use swav_augment::{MultiCrop, MultiCropConfig};
use swav_data::{ImageDataset, ImageFolder, Loader, LoaderConfig, Shapes10};

fn measure<D: ImageDataset + 'static>(
    name: &str,
    make: impl Fn() -> D,
    preset: MultiCropConfig,
    batch: usize,
    batches: usize,
) {
    for workers in [1, 2] {
        let cfg = LoaderConfig {
            batch_size: batch,
            workers,
            prefetch: 4,
            warn: true,
            ..LoaderConfig::default()
        };
        let multicrop = MultiCrop::new(preset.clone()).expect("preset");
        let loader = Loader::new(make(), multicrop, cfg).expect("loader");
        // A first pass over the same batches brings the files into the page cache, so both
        // thread counts read from memory.
        let _ = loader.epoch(0, 0).take(batches).count();
        let start = Instant::now();
        let mut images = 0;
        for b in loader.epoch(0, 0).take(batches) {
            images += b.indices.len();
        }
        let dt = start.elapsed().as_secs_f64();
        println!(
            "{name}: {workers} thread(s): {:.0} images/s ({images} images in {dt:.2} s)",
            images as f64 / dt
        );
    }
}

fn main() {
    if let Ok(root) = std::env::var("SWAV_CIFAR10_JPEG") {
        measure(
            "cifar10-jpeg, cifar preset, batch 256",
            || ImageFolder::open(&root).expect("CIFAR-10 tree"),
            MultiCropConfig::cifar(),
            256,
            20,
        );
    } else {
        println!(
            "cifar10-jpeg: skipped (set SWAV_CIFAR10_JPEG to the train folder of the JPEG tree)"
        );
    }

    let dir = std::env::temp_dir().join(format!("swav-loader-bench-{}", std::process::id()));
    for i in 0..128u32 {
        let img = RgbImage::from_fn(500, 375, |x, y| {
            let n = (x.wrapping_mul(2_654_435_761) ^ y.wrapping_mul(40_503) ^ i) >> 27;
            Rgb([
                ((x + i) % 256) as u8,
                ((y * 2) % 256) as u8,
                ((x ^ y) as u8).wrapping_add(n as u8),
            ])
        });
        let path = dir.join(format!("c{}/{i:04}.jpg", i % 4));
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        img.save_with_format(&path, ImageFormat::Jpeg)
            .expect("save");
    }
    measure(
        "500x375 jpeg, original 2x224+6x96, batch 32",
        || ImageFolder::open(&dir).expect("tree"),
        MultiCropConfig::swav_2x224_6x96(),
        32,
        4,
    );
    std::fs::remove_dir_all(&dir).ok();

    measure(
        "Shapes10 (generated), cifar preset, batch 256",
        || Shapes10::train(31, 10_000),
        MultiCropConfig::cifar(),
        256,
        20,
    );
}
