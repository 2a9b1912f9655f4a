//! Times the original multi-crop preset with parts of the pipeline switched off, to see where
//! the time goes. Run: `cargo run --release -p swav-augment --example profile_multicrop`

use std::time::Instant;

use swav_augment::{MultiCrop, MultiCropConfig, RgbImage, sample_rng};

fn synthetic(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([
            ((x * 7 + y * 13) % 256) as u8,
            ((x * x + y) % 256) as u8,
            ((x ^ y) % 256) as u8,
        ])
    })
}

fn time(name: &str, cfg: MultiCropConfig) {
    let mc = MultiCrop::new(cfg).expect("config");
    let img = synthetic(500, 375);
    let n = 300;
    for i in 0..20 {
        mc.apply(&img, &mut sample_rng(1, 0, i)).expect("crops");
    }
    let start = Instant::now();
    for i in 0..n {
        mc.apply(&img, &mut sample_rng(1, 0, i)).expect("crops");
    }
    println!(
        "{name}: {:.2} ms/image",
        start.elapsed().as_secs_f64() * 1000.0 / n as f64
    );
}

fn main() {
    let full = MultiCropConfig::swav_2x224_6x96();
    time("full pipeline", full.clone());
    time(
        "no blur",
        MultiCropConfig {
            blur: None,
            ..full.clone()
        },
    );
    time(
        "no jitter",
        MultiCropConfig {
            jitter: None,
            ..full.clone()
        },
    );
    time(
        "crop + flip + normalise only",
        MultiCropConfig {
            blur: None,
            jitter: None,
            grayscale_p: 0.0,
            ..full
        },
    );
}
