//! The built-in default dataset, **Shapes10**: procedurally generated 32 x 32 colour images of
//! ten classes of shapes and textures, deterministic from a seed, so `cargo xtask pretrain` runs
//! on a fresh machine with no download.
//!
//! Why it is built this way: each image draws its background colour and gradient, foreground
//! colour, position, size, orientation and noise at random, and only the *shape* (or texture)
//! carries the class. Raw pixels therefore do not solve it (a shape's pixels are different
//! colours in different places every time), while the augmentations SwAV learns invariance to
//! (crops, colour jitter, grayscale, blur) leave the shape recognisable, so features learned by
//! SwAV have something to find that a random network does not.

use rand::{Rng, RngCore};
use swav_augment::{RgbImage, sample_rng};

use crate::DataError;
use crate::dataset::{ImageDataset, Sample};

/// The ten classes, in label order.
pub const SHAPES10_CLASSES: [&str; 10] = [
    "disc", "square", "triangle", "ring", "plus", "cross", "stripes", "checkers", "dots", "bar",
];

/// Side of every image, in pixels.
pub const SHAPES10_SIDE: u32 = 32;

/// One split of Shapes10: `len` images, sample `i` of class `i % 10`, generated on demand from
/// `(seed, split, i)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shapes10 {
    seed: u64,
    split: u64,
    len: usize,
}

impl Shapes10 {
    /// The training split (default 10,000 images).
    pub fn train(seed: u64, len: usize) -> Self {
        Self {
            seed,
            split: 0,
            len,
        }
    }

    /// The test split (default 2,000 images), disjoint from the training split's draws.
    pub fn test(seed: u64, len: usize) -> Self {
        Self {
            seed,
            split: 1,
            len,
        }
    }

    /// Renders sample `index`.
    pub fn render(&self, index: usize) -> (RgbImage, usize) {
        let label = index % SHAPES10_CLASSES.len();
        let mut rng = sample_rng(self.seed ^ 0x0053_4841_5045_3130, self.split, index as u64);
        (render(label, &mut rng), label)
    }
}

fn color(rng: &mut dyn RngCore) -> [f32; 3] {
    [
        rng.random::<f32>(),
        rng.random::<f32>(),
        rng.random::<f32>(),
    ]
}

fn distance(a: [f32; 3], b: [f32; 3]) -> f32 {
    a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y) * (x - y))
        .sum::<f32>()
        .sqrt()
}

/// Whether point (u, v), in the shape's own frame (centred, rotated, scaled so the shape's
/// radius is 1), belongs to the foreground of `label`. `p` holds per-image texture parameters.
fn inside(label: usize, u: f32, v: f32, p: &[f32; 3]) -> bool {
    let r = (u * u + v * v).sqrt();
    match label {
        0 => r <= 1.0,
        1 => u.abs() <= 0.8 && v.abs() <= 0.8,
        2 => v <= 0.7 && v >= -0.9 + 1.6 * u.abs() * 1.1,
        3 => (0.6..=1.0).contains(&r),
        4 => (u.abs() <= 0.25 && v.abs() <= 1.0) || (v.abs() <= 0.25 && u.abs() <= 1.0),
        // (A diagonal cross would be the plus rotated: every shape is drawn at a random angle.)
        5 => r <= 1.0 && v >= 0.0,
        6 => u.abs() <= 1.0 && v.abs() <= 1.0 && ((v * p[0] + p[1]).rem_euclid(2.0) < 1.0),
        7 => {
            u.abs() <= 1.0
                && v.abs() <= 1.0
                && (((u * p[0]).floor() + (v * p[0]).floor()) as i32).rem_euclid(2) == 0
        }
        8 => {
            let s = p[0] * 0.5;
            let (fu, fv) = (
                (u * s + 0.5).rem_euclid(1.0) - 0.5,
                (v * s + 0.5).rem_euclid(1.0) - 0.5,
            );
            u.abs() <= 1.0 && v.abs() <= 1.0 && (fu * fu + fv * fv).sqrt() <= 0.3
        }
        _ => u.abs() <= 1.0 && v.abs() <= 0.22,
    }
}

fn render(label: usize, rng: &mut dyn RngCore) -> RgbImage {
    let side = SHAPES10_SIDE as f32;
    let bg = color(rng);
    let bg2 = color(rng);
    let mut fg = color(rng);
    // Keep the shape visible: redraw the foreground until it differs enough from the background.
    for _ in 0..16 {
        if distance(fg, bg) > 0.45 {
            break;
        }
        fg = color(rng);
    }
    let radius = rng.random_range(7.0..13.0f32);
    let cx = rng.random_range(radius * 0.7..side - radius * 0.7);
    let cy = rng.random_range(radius * 0.7..side - radius * 0.7);
    let angle = rng.random_range(0.0..std::f32::consts::TAU);
    let (sin, cos) = angle.sin_cos();
    let texture = [
        rng.random_range(2.5..5.0f32),
        rng.random_range(0.0..2.0f32),
        0.0,
    ];
    let gradient_dir = rng.random_range(0.0..std::f32::consts::TAU);
    let (gs, gc) = gradient_dir.sin_cos();
    let noise = rng.random_range(0.0..0.08f32);
    let mut img = RgbImage::new(SHAPES10_SIDE, SHAPES10_SIDE);
    for (x, y, px) in img.enumerate_pixels_mut() {
        // 2 x 2 supersampling softens the edges.
        let mut cover = 0.0;
        for (ox, oy) in [(0.25, 0.25), (0.75, 0.25), (0.25, 0.75), (0.75, 0.75)] {
            let (dx, dy) = (x as f32 + ox - cx, y as f32 + oy - cy);
            let (u, v) = (
                (dx * cos + dy * sin) / radius,
                (-dx * sin + dy * cos) / radius,
            );
            if inside(label, u, v, &texture) {
                cover += 0.25;
            }
        }
        let t = ((x as f32 * gc + y as f32 * gs) / side + 1.0) * 0.5;
        let mut out = [0u8; 3];
        for c in 0..3 {
            let background = bg[c] * (1.0 - 0.5 * t) + bg2[c] * 0.5 * t;
            let n = (rng.random::<f32>() - 0.5) * 2.0 * noise;
            let v = background * (1.0 - cover) + fg[c] * cover + n;
            out[c] = (v.clamp(0.0, 1.0) * 255.0).round() as u8;
        }
        px.0 = out;
    }
    img
}

impl ImageDataset for Shapes10 {
    fn len(&self) -> usize {
        self.len
    }
    fn get(&self, index: usize) -> Result<Sample, DataError> {
        if index >= self.len {
            return Err(DataError::OutOfRange {
                index,
                len: self.len,
            });
        }
        let (image, label) = self.render(index);
        Ok(Sample {
            image,
            label: Some(label),
        })
    }
    fn num_classes(&self) -> Option<usize> {
        Some(SHAPES10_CLASSES.len())
    }
    fn label(&self, index: usize) -> Option<usize> {
        (index < self.len).then_some(index % SHAPES10_CLASSES.len())
    }
    fn describe(&self, index: usize) -> String {
        format!(
            "Shapes10 (seed {}, split {}) sample {index}",
            self.seed, self.split
        )
    }
}
