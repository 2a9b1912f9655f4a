//! Writes a picture of Shapes10: one row per class, ten samples each, scaled 4x.
//!
//! Run: `cargo run --release -p swav-data --example shapes10_grid -- shapes10.png`

use image::{RgbImage, imageops};
use swav_data::{ImageDataset, Shapes10};

fn main() {
    let out = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "shapes10.png".into());
    let ds = Shapes10::train(31, 1000);
    let cell = 32 * 4 + 4;
    let mut grid = RgbImage::new(10 * cell, 10 * cell);
    for class in 0..10u32 {
        for j in 0..10u32 {
            let s = ds.get((j * 10 + class) as usize).expect("sample");
            let big = imageops::resize(&s.image, 128, 128, imageops::FilterType::Nearest);
            imageops::replace(&mut grid, &big, (j * cell) as i64, (class * cell) as i64);
        }
    }
    grid.save(&out).expect("write the picture");
    println!("wrote {out}");
}
