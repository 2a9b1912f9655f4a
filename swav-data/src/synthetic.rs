//! The built-in default dataset, **Shapes10**: procedurally generated 32 x 32 colour images of
//! ten classes of patterns and shapes, deterministic from a seed, so `cargo xtask pretrain` runs
//! on a fresh machine with no download.
//!
//! Why it is built this way (each choice was measured, with our trainer and with a PyTorch
//! SwAV on the same images; see `docs/results.md`):
//! - Only the *structure* carries the class: every image draws its two colours, a colour
//!   gradient, the pattern's period, phase and position, and pixel noise at random. A random
//!   network's pooled features are dominated by colour (kNN 34 %); raw pixels keep the layout
//!   and do better (61 %) without solving it (`docs/benchmarks.md`).
//! - Most classes are patterns that fill the image (stripes, checkers, dots, rings, grid,
//!   waves, blobs), so the random crops SwAV compares still share the class's structure; three
//!   are single shapes (disc, square frame) or blobs. One rotated shape per image is too hard
//!   for the demo's budget: even a supervised network barely learns it (28 % after 8 epochs),
//!   and SwAV does not.
//! - Each image's colours are an easy cue that both crops share, so SwAV learns colour unless
//!   the augmentation hides it: the demo uses strong colour jitter and grayscale (the `demo`
//!   augmentation preset).

use rand::{Rng, RngCore};
use swav_augment::{RgbImage, sample_rng};

use crate::DataError;
use crate::dataset::{ImageDataset, Sample};

/// The ten classes, in label order.
pub const SHAPES10_CLASSES: [&str; 10] = [
    "h-stripes",
    "v-stripes",
    "checkers",
    "dots",
    "rings",
    "grid",
    "waves",
    "disc",
    "frame",
    "blobs",
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

/// Side of the random grid that the `blobs` class smooths into a field.
const BLOB_GRID: usize = 6;

/// The per-image random parameters of a pattern.
struct Pattern {
    label: usize,
    /// Period of the pattern, pixels.
    period: f32,
    /// Phase shift, pixels.
    phase: f32,
    /// Centre (rings, disc, frame).
    centre: (f32, f32),
    /// Radius (disc, frame).
    radius: f32,
    /// Random values on a coarse grid (blobs).
    grid: [f32; BLOB_GRID * BLOB_GRID],
}

impl Pattern {
    fn draw(label: usize, rng: &mut dyn RngCore) -> Self {
        let period = rng.random_range(5.0..9.0f32);
        let phase = rng.random_range(0.0..period);
        let centre = (
            rng.random_range(8.0..24.0f32),
            rng.random_range(8.0..24.0f32),
        );
        let radius = match label {
            7 => rng.random_range(9.0..14.0f32),
            _ => rng.random_range(9.0..13.0f32),
        };
        let mut grid = [0f32; BLOB_GRID * BLOB_GRID];
        if label == 9 {
            grid.iter_mut()
                .for_each(|g| *g = rng.random_range(-1.0..1.0f32));
        }
        Self {
            label,
            period,
            phase,
            centre,
            radius,
            grid,
        }
    }

    /// Bilinear interpolation of the blob grid at image point (x, y), grid cells centred.
    fn field(&self, x: f32, y: f32) -> f32 {
        let scale = BLOB_GRID as f32 / SHAPES10_SIDE as f32;
        let last = (BLOB_GRID - 1) as f32;
        let gx = (x * scale - 0.5).clamp(0.0, last);
        let gy = (y * scale - 0.5).clamp(0.0, last);
        let (x0, y0) = (gx.floor() as usize, gy.floor() as usize);
        let (x1, y1) = ((x0 + 1).min(BLOB_GRID - 1), (y0 + 1).min(BLOB_GRID - 1));
        let (fx, fy) = (gx - x0 as f32, gy - y0 as f32);
        let at = |i: usize, j: usize| self.grid[j * BLOB_GRID + i];
        let top = at(x0, y0) * (1.0 - fx) + at(x1, y0) * fx;
        let bottom = at(x0, y1) * (1.0 - fx) + at(x1, y1) * fx;
        top * (1.0 - fy) + bottom * fy
    }

    /// Whether image point (x, y) is in the foreground.
    fn inside(&self, x: f32, y: f32) -> bool {
        let (per, ph) = (self.period, self.phase);
        let (dx, dy) = (x - self.centre.0, y - self.centre.1);
        match self.label {
            0 => (y + ph).rem_euclid(per) < per / 2.0,
            1 => (x + ph).rem_euclid(per) < per / 2.0,
            2 => {
                let cell = per / 1.3;
                (((x + ph) / cell).floor() + ((y + ph) / cell).floor()).rem_euclid(2.0) < 1.0
            }
            3 => {
                let g = per * 1.2;
                let fx = (x + ph).rem_euclid(g) - g / 2.0;
                let fy = (y + ph).rem_euclid(g) - g / 2.0;
                fx * fx + fy * fy < (0.3 * g) * (0.3 * g)
            }
            4 => (dx * dx + dy * dy).sqrt().rem_euclid(per) < per / 2.0,
            5 => {
                let g = per * 1.3;
                (x + ph).rem_euclid(g) < 1.6 || (y + ph).rem_euclid(g) < 1.6
            }
            6 => {
                let wave = 2.0 * (x / per * std::f32::consts::TAU * 0.7).sin();
                (y + wave + ph).rem_euclid(per) < per / 2.0
            }
            7 => (dx * dx + dy * dy).sqrt() < self.radius,
            8 => {
                let d = dx.abs().max(dy.abs());
                d < self.radius && d > self.radius - 3.5
            }
            _ => self.field(x, y) > 0.0,
        }
    }
}

fn render(label: usize, rng: &mut dyn RngCore) -> RgbImage {
    let side = SHAPES10_SIDE as f32;
    let fg = color(rng);
    let mut bg = color(rng);
    // Keep the pattern visible: redraw the background until it differs enough.
    for _ in 0..16 {
        if distance(fg, bg) >= 0.5 {
            break;
        }
        bg = color(rng);
    }
    let pattern = Pattern::draw(label, rng);
    // A linear gradient towards a third colour, up to 30 %, in a random direction.
    let tint = color(rng);
    let gradient_dir = rng.random_range(0.0..std::f32::consts::TAU);
    let (gs, gc) = gradient_dir.sin_cos();
    let noise = rng.random_range(0.02..0.06f32);
    let mut img = RgbImage::new(SHAPES10_SIDE, SHAPES10_SIDE);
    for (x, y, px) in img.enumerate_pixels_mut() {
        // 2 x 2 supersampling softens the edges.
        let mut cover = 0.0;
        for (ox, oy) in [(0.25, 0.25), (0.75, 0.25), (0.25, 0.75), (0.75, 0.75)] {
            if pattern.inside(x as f32 + ox, y as f32 + oy) {
                cover += 0.25;
            }
        }
        let t = ((x as f32 * gc + y as f32 * gs) / side).abs().min(1.0) * 0.3;
        let mut out = [0u8; 3];
        for c in 0..3 {
            let base = fg[c] * cover + bg[c] * (1.0 - cover);
            let n = (rng.random::<f32>() - 0.5) * 2.0 * noise;
            let v = base * (1.0 - t) + tint[c] * t + n;
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
