//! Gaussian blur in the two forms SwAV users meet: PIL's `GaussianBlur(radius)` (the original
//! SwAV code's `PILRandomGaussianBlur`; PIL approximates the Gaussian by three passes of an
//! "extended" box blur per axis) and torchvision's `GaussianBlur(kernel_size, sigma)` (a
//! sampled Gaussian kernel with reflect padding, rounded back to 8 bits).

use image::RgbImage;
use rand::{Rng, RngCore};
use serde::{Deserialize, Serialize};

use crate::AugmentError;
use crate::transform::Transform;

/// Box radius (integer part plus a fractional part for the two end taps) whose `passes`-fold
/// repetition has the variance of a Gaussian of standard deviation `sigma` (Gwosdek et al.,
/// "Theoretical foundations of Gaussian convolution by extended box filtering", 2011, eq. 7,
/// 11, 14), computed in f32 as PIL does.
fn extended_box_radius(sigma: f32, passes: u32) -> f32 {
    let sigma2 = sigma * sigma / passes as f32;
    let l_len = (12.0 * sigma2 as f64 + 1.0).sqrt() as f32;
    let l = ((l_len as f64 - 1.0) / 2.0).floor() as f32;
    let mut a = (2.0 * l + 1.0) * (l * (l + 1.0) - 3.0 * sigma2);
    a /= 6.0 * (sigma2 - (l + 1.0) * (l + 1.0));
    l + a
}

/// The 24-bit fixed-point weights of one extended box pass: `ww` for the 2r+1 inner taps and
/// `fw` for the two fractional end taps, computed as PIL does.
fn box_weights(radius: f32) -> (usize, u32, u32) {
    let r = radius as usize;
    let ww = ((1u32 << 24) as f32 / (radius * 2.0 + 1.0)) as u32;
    let fw = ((1u32 << 24) - (r as u32 * 2 + 1) * ww) / 2;
    (r, ww, fw)
}

/// One pass of PIL's extended box blur down the columns of an interleaved RGB image. Each
/// output is `(ww * sum of the 2r+1 nearest inputs + fw * (the two next ones) + 2^23) >> 24`,
/// with the edge row repeated beyond the ends; rows are processed one at a time (all columns
/// together) so memory is read in order.
fn box_pass_cols(
    data: &mut [u8],
    w: usize,
    h: usize,
    radius: f32,
    src: &mut Vec<u8>,
    acc: &mut Vec<u32>,
) {
    let (r, ww, fw) = box_weights(radius);
    let stride = w * 3;
    src.clear();
    src.extend_from_slice(data);
    let src: &[u8] = src;
    let row = |y: isize| -> &[u8] {
        let y = y.clamp(0, h as isize - 1) as usize;
        &src[y * stride..(y + 1) * stride]
    };
    acc.clear();
    acc.resize(stride, 0);
    let r = r as isize;
    for t in -r..=r {
        for (a, &v) in acc.iter_mut().zip(row(t)) {
            *a += v as u32;
        }
    }
    for y in 0..h as isize {
        let (before, after) = (row(y - r - 1), row(y + r + 1));
        let out = &mut data[y as usize * stride..(y as usize + 1) * stride];
        if y == 0 {
            for (((o, &a), &b), &e) in out.iter_mut().zip(acc.iter()).zip(before).zip(after) {
                *o = ((a * ww + (b as u32 + e as u32) * fw + (1 << 23)) >> 24) as u8;
            }
            continue;
        }
        // The window moves down one row: add row y + r, remove row y - r - 1 (= `before`).
        let add = row(y + r);
        let acc = &mut acc[..stride];
        for i in 0..stride {
            let a = acc[i] + add[i] as u32 - before[i] as u32;
            acc[i] = a;
            out[i] = ((a * ww + (before[i] as u32 + after[i] as u32) * fw + (1 << 23)) >> 24) as u8;
        }
    }
}

/// PIL's `ImageFilter.GaussianBlur(radius)`: `radius` is the Gaussian's standard deviation;
/// three extended-box passes along rows, then three along columns.
pub fn pil_gaussian_blur(image: &mut RgbImage, radius: f64) {
    if radius <= 0.0 {
        return;
    }
    let box_r = extended_box_radius(radius as f32, 3);
    if box_r == 0.0 {
        return;
    }
    let (w, h) = (image.width() as usize, image.height() as usize);
    if w == 0 || h == 0 {
        return;
    }
    let data: &mut [u8] = image;
    // Scratch buffers live per thread between calls (a cache; results do not depend on it).
    thread_local! {
        static SCRATCH: std::cell::RefCell<(Vec<u8>, Vec<u8>, Vec<u32>)> =
            const { std::cell::RefCell::new((Vec::new(), Vec::new(), Vec::new())) };
    }
    SCRATCH.with(|cell| {
        let (t, src, acc) = &mut *cell.borrow_mut();
        // PIL blurs rows by transposing and running its line filter; we do the converse: the
        // column pass (row-at-a-time, vectorisable) on the transposed image blurs the rows.
        t.clear();
        t.resize(data.len(), 0);
        transpose_rgb(data, w, h, t);
        for _ in 0..3 {
            box_pass_cols(t, h, w, box_r, src, acc);
        }
        transpose_rgb(t, h, w, data);
        for _ in 0..3 {
            box_pass_cols(data, w, h, box_r, src, acc);
        }
    });
}

/// Transposes an interleaved RGB image of `w x h` pixels into `out` (`h x w`).
fn transpose_rgb(src: &[u8], w: usize, h: usize, out: &mut [u8]) {
    const TILE: usize = 16;
    for y0 in (0..h).step_by(TILE) {
        for x0 in (0..w).step_by(TILE) {
            for y in y0..(y0 + TILE).min(h) {
                for x in x0..(x0 + TILE).min(w) {
                    let s = (y * w + x) * 3;
                    let d = (x * h + y) * 3;
                    out[d..d + 3].copy_from_slice(&src[s..s + 3]);
                }
            }
        }
    }
}

/// torchvision's Gaussian kernel: `exp(-x^2 / (2 sigma^2))` at `x = -(k-1)/2 ..= (k-1)/2`,
/// normalised to sum 1, in f32.
pub fn gaussian_kernel(kernel_size: usize, sigma: f64) -> Vec<f32> {
    let half = (kernel_size as f32 - 1.0) * 0.5;
    let s = sigma as f32;
    let pdf: Vec<f32> = (0..kernel_size)
        .map(|i| {
            let x = if kernel_size == 1 {
                0.0
            } else {
                -half + i as f32 * (2.0 * half / (kernel_size as f32 - 1.0))
            };
            (-0.5 * (x / s) * (x / s)).exp()
        })
        .collect();
    let sum: f32 = pdf.iter().sum();
    pdf.into_iter().map(|p| p / sum).collect()
}

/// Reflect (without repeating the edge) an index into `0..n`, as `torch.nn.functional.pad`'s
/// "reflect" mode; sizes smaller than the padding keep reflecting.
fn reflect(mut i: i64, n: i64) -> usize {
    if n == 1 {
        return 0;
    }
    let period = 2 * (n - 1);
    i = i.rem_euclid(period);
    if i >= n {
        i = period - i;
    }
    i as usize
}

/// torchvision's `F.gaussian_blur(img, [k, k], [sigma, sigma])` on an 8-bit image: separable
/// convolution with [`gaussian_kernel`] and reflect padding in f32, rounded half to even.
///
/// # Panics
/// If `kernel_size` is even or zero.
pub fn kernel_gaussian_blur(image: &mut RgbImage, kernel_size: usize, sigma: f64) {
    assert!(
        kernel_size % 2 == 1,
        "kernel size must be odd, got {kernel_size}"
    );
    let k = gaussian_kernel(kernel_size, sigma);
    let half = (kernel_size / 2) as i64;
    let (w, h) = (image.width() as usize, image.height() as usize);
    let src: Vec<f32> = image.iter().map(|&v| v as f32).collect();
    let mut mid = vec![0f32; src.len()];
    for y in 0..h {
        for x in 0..w {
            for c in 0..3 {
                let mut acc = 0f32;
                for (t, kv) in k.iter().enumerate() {
                    let xx = reflect(x as i64 + t as i64 - half, w as i64);
                    acc += kv * src[(y * w + xx) * 3 + c];
                }
                mid[(y * w + x) * 3 + c] = acc;
            }
        }
    }
    let out: &mut [u8] = image;
    for y in 0..h {
        for x in 0..w {
            for c in 0..3 {
                let mut acc = 0f32;
                for (t, kv) in k.iter().enumerate() {
                    let yy = reflect(y as i64 + t as i64 - half, h as i64);
                    acc += kv * mid[(yy * w + x) * 3 + c];
                }
                out[(y * w + x) * 3 + c] = acc.round_ties_even().clamp(0.0, 255.0) as u8;
            }
        }
    }
}

/// How the blur's extent is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BlurKind {
    /// PIL's `GaussianBlur(radius = sigma)`, as the original SwAV code (`PILRandomGaussianBlur`).
    PilRadius,
    /// torchvision's `GaussianBlur` with a kernel of this fraction of the image side, made odd
    /// (0.1 gives 23 at 224 px, the paper's setting).
    KernelFraction(f64),
    /// torchvision's `GaussianBlur` with a fixed odd kernel size.
    KernelSize(usize),
}

/// Blurs with probability `p`, sigma uniform in `sigma`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GaussianBlur {
    /// Probability of blurring.
    pub p: f64,
    /// Range of the standard deviation, in pixels.
    pub sigma: (f64, f64),
    /// Which blur.
    pub kind: BlurKind,
}

impl GaussianBlur {
    /// The original SwAV blur: p = 0.5, sigma in (0.1, 2.0), PIL's radius form.
    pub fn swav() -> Self {
        Self {
            p: 0.5,
            sigma: (0.1, 2.0),
            kind: BlurKind::PilRadius,
        }
    }

    /// Checks the parameters.
    pub fn validate(&self) -> Result<(), AugmentError> {
        if !(0.0..=1.0).contains(&self.p) {
            return Err(AugmentError::param(
                "blur.p",
                format!("{} is not a probability", self.p),
            ));
        }
        let (lo, hi) = self.sigma;
        if !(lo > 0.0 && lo <= hi && hi.is_finite()) {
            return Err(AugmentError::param(
                "blur.sigma",
                format!("({lo}, {hi}) must satisfy 0 < min <= max"),
            ));
        }
        match self.kind {
            BlurKind::KernelSize(k) if k % 2 == 0 => Err(AugmentError::param(
                "blur.kind",
                format!("kernel size {k} must be odd"),
            )),
            BlurKind::KernelFraction(f) if !(f > 0.0 && f <= 1.0) => Err(AugmentError::param(
                "blur.kind",
                format!("kernel fraction {f} must be in (0, 1]"),
            )),
            _ => Ok(()),
        }
    }

    /// Blurs `image` with standard deviation `sigma`.
    pub fn blur(&self, image: &mut RgbImage, sigma: f64) {
        match self.kind {
            BlurKind::PilRadius => pil_gaussian_blur(image, sigma),
            BlurKind::KernelSize(k) => kernel_gaussian_blur(image, k, sigma),
            BlurKind::KernelFraction(f) => {
                let side = image.width().min(image.height()) as f64;
                let k = ((side * f) as usize) | 1;
                kernel_gaussian_blur(image, k, sigma);
            }
        }
    }
}

impl Transform for GaussianBlur {
    fn apply(&self, mut image: RgbImage, rng: &mut dyn RngCore) -> RgbImage {
        if rng.random::<f64>() < self.p {
            let sigma = self.sigma.0 + (self.sigma.1 - self.sigma.0) * rng.random::<f64>();
            self.blur(&mut image, sigma);
        }
        image
    }
}
