//! Colour transforms with the arithmetic of PIL, which torchvision calls on PIL images:
//! `ImageEnhance` blends (computed in f32, truncated), ITU-R 601-2 luma in 16-bit fixed point,
//! and PIL's integer HSV conversion for the hue shift.

use image::RgbImage;
use rand::{Rng, RngCore};
use serde::{Deserialize, Serialize};

use crate::AugmentError;
use crate::transform::Transform;

/// PIL's `convert("L")` of one pixel: ITU-R 601-2 luma in 16-bit fixed point, rounded (the
/// weights 19595, 38470, 7471 sum to 65536, so a gray pixel keeps its level).
#[inline]
pub fn luma(r: u8, g: u8, b: u8) -> u8 {
    ((r as u32 * 19595 + g as u32 * 38470 + b as u32 * 7471 + 0x8000) >> 16) as u8
}

/// Clips and truncates a blend result as PIL does: plain truncation when `alpha` is in [0, 1]
/// (the result is then within [0, 255]), clipping to [0, 255] otherwise.
#[inline]
fn finish_blend(t: f32, interpolating: bool) -> u8 {
    if interpolating {
        t as u8
    } else if t <= 0.0 {
        0
    } else if t >= 255.0 {
        255
    } else {
        t as u8
    }
}

/// PIL's `Image.blend(degenerate, image, alpha)` for one 8-bit value: computed in f32 as
/// `degenerate + alpha * (value - degenerate)`, then [`finish_blend`].
#[inline]
fn blend(degenerate: u8, value: u8, alpha: f32) -> u8 {
    let d = degenerate as i32;
    let t = d as f32 + alpha * ((value as i32 - d) as f32);
    finish_blend(t, (0.0..=1.0).contains(&alpha))
}

/// The blend with a constant `degenerate` as a 256-entry table (the same f32 arithmetic).
fn blend_table(degenerate: u8, alpha: f32) -> [u8; 256] {
    let mut t = [0u8; 256];
    for (v, out) in t.iter_mut().enumerate() {
        *out = blend(degenerate, v as u8, alpha);
    }
    t
}

/// torchvision `adjust_brightness` (PIL `ImageEnhance.Brightness`): blend with black.
pub fn adjust_brightness(image: &mut RgbImage, factor: f64) {
    let table = blend_table(0, factor as f32);
    for v in image.iter_mut() {
        *v = table[*v as usize];
    }
}

/// torchvision `adjust_contrast` (PIL `ImageEnhance.Contrast`): blend with a uniform image at
/// the mean luma, rounded half up.
pub fn adjust_contrast(image: &mut RgbImage, factor: f64) {
    let n = (image.width() as u64 * image.height() as u64).max(1);
    let sum: u64 = image
        .as_raw()
        .chunks_exact(3)
        .map(|p| luma(p[0], p[1], p[2]) as u64)
        .sum();
    let mean = (sum as f64 / n as f64 + 0.5) as u8;
    let table = blend_table(mean, factor as f32);
    for v in image.iter_mut() {
        *v = table[*v as usize];
    }
}

/// torchvision `adjust_saturation` (PIL `ImageEnhance.Color`): blend each pixel with its luma.
///
/// PIL computes `l + alpha * (v - l)` in f32 with the difference taken in integers; the
/// difference of two bytes is exact in f32, so the flat loop below (vectorisable: the luma of
/// each pixel is first spread over its three values) gives the same bits.
pub fn adjust_saturation(image: &mut RgbImage, factor: f64) {
    const PIXELS: usize = 64;
    let a = factor as f32;
    let data: &mut [u8] = image;
    // Blocks of 64 pixels: their lumas spread over a stack buffer, then one flat loop.
    let mut lum = [0f32; 3 * PIXELS];
    for block in data.chunks_mut(3 * PIXELS) {
        for (l3, p) in lum.chunks_exact_mut(3).zip(block.chunks_exact(3)) {
            l3.fill(luma(p[0], p[1], p[2]) as f32);
        }
        // PIL truncates inside [0, 1] and clips to [0, 255] then truncates outside it; Rust's
        // saturating `as u8` does both.
        for (v, &l) in block.iter_mut().zip(&lum) {
            *v = (l + a * (*v as f32 - l)) as u8;
        }
    }
}

/// PIL's hue in sextant units, before wrapping: from the channel ratios `(maxc - c) / cr`,
/// the formula of whichever channel is the maximum (red first, then green). All three
/// candidates are computed and one is selected, which compiles to conditional moves.
#[inline]
fn select_hue(r: u8, g: u8, maxc: u8, rc: f32, gc: f32, bc: f32) -> f32 {
    let h_r = bc - gc;
    let h_g = (2.0 + rc as f64 - bc as f64) as f32;
    let h_b = (4.0 + gc as f64 - rc as f64) as f32;
    if r == maxc {
        h_r
    } else if g == maxc {
        h_g
    } else {
        h_b
    }
}

/// PIL's RGB to HSV of one pixel (each channel 0-255), as `Image.convert("HSV")`.
///
/// The arithmetic (which steps are f32 and which f64) follows PIL's C code exactly. All three
/// hue candidates are computed and one is selected, which the compiler turns into conditional
/// moves instead of unpredictable branches.
#[inline]
pub fn rgb_to_hsv(r: u8, g: u8, b: u8) -> [u8; 3] {
    let maxc = r.max(g).max(b);
    let minc = r.min(g).min(b);
    if maxc == minc {
        return [0, 0, maxc];
    }
    let cr = (maxc - minc) as f32;
    let s = cr / maxc as f32;
    let rc = (maxc - r) as f32 / cr;
    let gc = (maxc - g) as f32 / cr;
    let bc = (maxc - b) as f32 / cr;
    let h = select_hue(r, g, maxc, rc, gc, bc);
    // fmod(h / 6 + 1, 1): the argument lies in [5/6, 11/6), where subtracting 1 is exact.
    let x = h as f64 / 6.0 + 1.0;
    let h = (x - (x >= 1.0) as u8 as f64) as f32;
    let uh = ((h as f64 * 255.0) as i32).clamp(0, 255) as u8;
    let us = ((s as f64 * 255.0) as i32).clamp(0, 255) as u8;
    [uh, us, maxc]
}

/// C's `round` (halves away from zero) for `x >= 0`, without a libm call or a branch: the
/// fractional part `x - trunc(x)` is exact in binary floating point, so the comparison with
/// one half is too.
#[inline]
fn c_round(x: f64) -> i32 {
    let i = x as i32;
    i + (x - i as f64 >= 0.5) as i32
}

/// For each sextant of the hue circle, which of `[v, p, q, t]` goes to R, G and B.
const SEXTANT: [[usize; 3]; 6] = [
    [0, 3, 1],
    [2, 0, 1],
    [1, 0, 3],
    [1, 2, 0],
    [3, 1, 0],
    [0, 1, 2],
];

/// PIL's HSV to RGB of one pixel, as `Image.convert("RGB")` from HSV.
#[inline]
pub fn hsv_to_rgb(h: u8, s: u8, v: u8) -> [u8; 3] {
    if s == 0 {
        return [v, v, v];
    }
    let hf = h as f32 as f64 * 6.0 / 255.0;
    let i = hf as i32; // floor, as hf >= 0
    let f = (hf - i as f32 as f64) as f32;
    let fs = (s as f32 as f64 / 255.0) as f32;
    let vf = v as f32 as f64;
    let p = c_round(vf * (1.0 - fs as f64)).clamp(0, 255) as u8;
    let q = c_round(vf * (1.0 - (fs * f) as f64)).clamp(0, 255) as u8;
    let t = c_round(vf * (1.0 - fs as f64 * (1.0 - f as f64))).clamp(0, 255) as u8;
    let vals = [v, p, q, t];
    let idx = SEXTANT[(i % 6) as usize];
    [vals[idx[0]], vals[idx[1]], vals[idx[2]]]
}

/// Tables that take the divisions out of the per-pixel hue shift. Every entry is computed by
/// the same arithmetic as [`rgb_to_hsv`] and [`hsv_to_rgb`], so the results are identical
/// (checked exhaustively in the tests); only the work moves out of the loop.
struct HueTables {
    /// `(int)(cr / maxc * 255)`, indexed `[cr][maxc]`.
    saturation: Vec<u8>,
    /// `(cr, d) -> d / cr` in f32, indexed `[cr][d]`.
    ratio: Vec<f32>,
    /// Fractional hue position `f` of each 8-bit hue.
    frac: [f32; 256],
    /// Sextant `i % 6` of each 8-bit hue.
    sextant: [u8; 256],
    /// `fs = s / 255` of each 8-bit saturation.
    fs: [f32; 256],
    /// `p = round(v * (1 - fs))`, indexed `[s][v]`.
    p: Vec<u8>,
}

impl HueTables {
    fn build() -> Self {
        let mut saturation = vec![0u8; 256 * 256];
        let mut ratio = vec![0f32; 256 * 256];
        for cr in 1..256usize {
            for m in cr..256usize {
                let s = cr as f32 / m as f32;
                saturation[cr * 256 + m] = ((s as f64 * 255.0) as i32).clamp(0, 255) as u8;
            }
            for d in 0..=cr {
                ratio[cr * 256 + d] = d as f32 / cr as f32;
            }
        }
        let mut frac = [0f32; 256];
        let mut sextant = [0u8; 256];
        let mut fs = [0f32; 256];
        for v in 0..256usize {
            let hf = v as f32 as f64 * 6.0 / 255.0;
            let i = hf as i32;
            frac[v] = (hf - i as f32 as f64) as f32;
            sextant[v] = (i % 6) as u8;
            fs[v] = (v as f32 as f64 / 255.0) as f32;
        }
        let mut p = vec![0u8; 256 * 256];
        for s in 0..256usize {
            for v in 0..256usize {
                p[s * 256 + v] =
                    c_round(v as f32 as f64 * (1.0 - fs[s] as f64)).clamp(0, 255) as u8;
            }
        }
        Self {
            saturation,
            ratio,
            frac,
            sextant,
            fs,
            p,
        }
    }

    fn get() -> &'static Self {
        static TABLES: std::sync::OnceLock<HueTables> = std::sync::OnceLock::new();
        TABLES.get_or_init(Self::build)
    }

    /// [`hsv_to_rgb`] with the per-hue and per-saturation terms from the tables.
    #[inline]
    fn to_rgb(&self, h: u8, s: u8, v: u8) -> [u8; 3] {
        let (f, fs, vf) = (self.frac[h as usize], self.fs[s as usize], v as f32 as f64);
        let p = self.p[s as usize * 256 + v as usize];
        let q = c_round(vf * (1.0 - (fs * f) as f64)).clamp(0, 255) as u8;
        let t = c_round(vf * (1.0 - fs as f64 * (1.0 - f as f64))).clamp(0, 255) as u8;
        let vals = [v, p, q, t];
        let idx = SEXTANT[self.sextant[h as usize] as usize];
        let rgb = [vals[idx[0]], vals[idx[1]], vals[idx[2]]];
        if s == 0 { [v, v, v] } else { rgb }
    }
}

/// The hue shift of one pixel by the table path used in [`adjust_hue`] (exposed for tests that
/// compare it with [`rgb_to_hsv`] and [`hsv_to_rgb`]).
#[doc(hidden)]
pub fn shift_hue_pixel(r: u8, g: u8, b: u8, shift: u8) -> [u8; 3] {
    let t = HueTables::get();
    let [h, s, v] = hsv_branch_free(t, r, g, b);
    t.to_rgb(h.wrapping_add(shift), s, v)
}

/// torchvision `adjust_hue` on a PIL image: convert to HSV, add `int(hue * 255)` (truncated
/// toward zero) to the hue channel modulo 256, convert back.
///
/// Works on blocks of pixels in stages (a branch-free RGB to HSV over the block, then the
/// shift and HSV to RGB), which the compiler vectorises; every stage is the arithmetic of
/// [`rgb_to_hsv`] and [`hsv_to_rgb`] (checked against them in the tests).
///
/// # Panics
/// If `hue` is outside [-0.5, 0.5] (torchvision raises there too).
pub fn adjust_hue(image: &mut RgbImage, hue: f64) {
    assert!(
        (-0.5..=0.5).contains(&hue),
        "hue factor {hue} is not in [-0.5, 0.5]"
    );
    // Even a zero shift goes through HSV and back, which is not the identity in PIL's integer
    // arithmetic; torchvision does the round trip too, so the results match.
    let shift = ((hue * 255.0) as i32) as u8;
    let tables = HueTables::get();
    const N: usize = 64;
    let data: &mut [u8] = image;
    let (mut hh, mut ss, mut vv) = ([0u8; N], [0u8; N], [0u8; N]);
    for block in data.chunks_mut(3 * N) {
        let n = block.len() / 3;
        for (i, p) in block.chunks_exact(3).enumerate() {
            let [h, s, v] = hsv_branch_free(tables, p[0], p[1], p[2]);
            hh[i] = h;
            ss[i] = s;
            vv[i] = v;
        }
        for (i, p) in block.chunks_exact_mut(3).enumerate().take(n) {
            p.copy_from_slice(&tables.to_rgb(hh[i].wrapping_add(shift), ss[i], vv[i]));
        }
    }
}

/// [`rgb_to_hsv`] without branches: every candidate is computed and one is selected.
#[inline]
fn hsv_branch_free(t: &HueTables, r: u8, g: u8, b: u8) -> [u8; 3] {
    let maxc = r.max(g).max(b);
    let minc = r.min(g).min(b);
    let cr = (maxc - minc) as usize;
    // With cr = 0 (gray) the table row 0 holds zeros, and the result is forced below.
    let row = &t.ratio[cr * 256..cr * 256 + 256];
    let rc = row[(maxc - r) as usize];
    let gc = row[(maxc - g) as usize];
    let bc = row[(maxc - b) as usize];
    let h = select_hue(r, g, maxc, rc, gc, bc);
    let x = h as f64 * (1.0 / 6.0) + 1.0;
    let h = (x - (x >= 1.0) as u8 as f64) as f32;
    let uh = ((h as f64 * 255.0) as i32).clamp(0, 255) as u8;
    let gray = cr == 0;
    let us = t.saturation[cr * 256 + maxc as usize];
    [if gray { 0 } else { uh }, if gray { 0 } else { us }, maxc]
}

/// torchvision `rgb_to_grayscale(img, 3)`: PIL luma copied to the three channels.
pub fn to_grayscale(image: &mut RgbImage) {
    for p in image.chunks_exact_mut(3) {
        let l = luma(p[0], p[1], p[2]);
        p.fill(l);
    }
}

/// PIL `ImageOps.solarize`: values at or above `threshold` are inverted.
pub fn solarize(image: &mut RgbImage, threshold: u8) {
    for v in image.iter_mut() {
        if *v >= threshold {
            *v = 255 - *v;
        }
    }
}

/// The four colour adjustments of [`ColorJitter`], in the index order torchvision uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ColorOp {
    /// [`adjust_brightness`].
    Brightness,
    /// [`adjust_contrast`].
    Contrast,
    /// [`adjust_saturation`].
    Saturation,
    /// [`adjust_hue`].
    Hue,
}

/// One draw of [`ColorJitter`]'s parameters: the order and the factor of each adjustment
/// (`None` when that adjustment is off).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct JitterParams {
    /// Application order (a permutation of the four operations).
    pub order: [ColorOp; 4],
    /// Brightness factor.
    pub brightness: Option<f64>,
    /// Contrast factor.
    pub contrast: Option<f64>,
    /// Saturation factor.
    pub saturation: Option<f64>,
    /// Hue shift in [-0.5, 0.5].
    pub hue: Option<f64>,
}

impl JitterParams {
    /// Applies the adjustments in `order`.
    pub fn apply(&self, image: &mut RgbImage) {
        for op in self.order {
            match op {
                ColorOp::Brightness => {
                    if let Some(f) = self.brightness {
                        adjust_brightness(image, f);
                    }
                }
                ColorOp::Contrast => {
                    if let Some(f) = self.contrast {
                        adjust_contrast(image, f);
                    }
                }
                ColorOp::Saturation => {
                    if let Some(f) = self.saturation {
                        adjust_saturation(image, f);
                    }
                }
                ColorOp::Hue => {
                    if let Some(h) = self.hue {
                        adjust_hue(image, h);
                    }
                }
            }
        }
    }
}

/// torchvision's `ColorJitter`: brightness, contrast, saturation and hue, each with a factor
/// drawn uniformly from its range, applied in a random order.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ColorJitter {
    /// Brightness factor range, e.g. (0.2, 1.8) for strength 0.8.
    pub brightness: Option<(f64, f64)>,
    /// Contrast factor range.
    pub contrast: Option<(f64, f64)>,
    /// Saturation factor range.
    pub saturation: Option<(f64, f64)>,
    /// Hue shift range, within [-0.5, 0.5].
    pub hue: Option<(f64, f64)>,
}

impl ColorJitter {
    /// torchvision's constructor from strengths: brightness `b` gives the range
    /// `[max(0, 1 - b), 1 + b]` (likewise contrast and saturation), hue `h` gives `[-h, h]`;
    /// a strength of 0 turns the adjustment off.
    pub fn new(
        brightness: f64,
        contrast: f64,
        saturation: f64,
        hue: f64,
    ) -> Result<Self, AugmentError> {
        fn factor(field: &'static str, v: f64) -> Result<Option<(f64, f64)>, AugmentError> {
            if !(v.is_finite() && v >= 0.0) {
                return Err(AugmentError::param(field, format!("{v} must be >= 0")));
            }
            Ok((v > 0.0).then(|| ((1.0 - v).max(0.0), 1.0 + v)))
        }
        if !(0.0..=0.5).contains(&hue) {
            return Err(AugmentError::param(
                "hue",
                format!("{hue} must be in [0, 0.5]"),
            ));
        }
        Ok(Self {
            brightness: factor("brightness", brightness)?,
            contrast: factor("contrast", contrast)?,
            saturation: factor("saturation", saturation)?,
            hue: (hue > 0.0).then_some((-hue, hue)),
        })
    }

    /// Draws the order and the factors, in torchvision's sequence: a permutation, then one
    /// uniform per enabled adjustment (brightness, contrast, saturation, hue).
    pub fn sample(&self, rng: &mut dyn RngCore) -> JitterParams {
        let mut order = [
            ColorOp::Brightness,
            ColorOp::Contrast,
            ColorOp::Saturation,
            ColorOp::Hue,
        ];
        for i in (1..4).rev() {
            let j = rng.random_range(0..=i);
            order.swap(i, j);
        }
        let mut draw =
            |r: Option<(f64, f64)>| r.map(|(lo, hi)| lo + (hi - lo) * rng.random::<f64>());
        JitterParams {
            order,
            brightness: draw(self.brightness),
            contrast: draw(self.contrast),
            saturation: draw(self.saturation),
            hue: draw(self.hue),
        }
    }
}

impl Transform for ColorJitter {
    fn apply(&self, mut image: RgbImage, rng: &mut dyn RngCore) -> RgbImage {
        self.sample(rng).apply(&mut image);
        image
    }
}

/// Converts to grayscale (three equal channels) with probability `p`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RandomGrayscale {
    /// Probability of converting.
    pub p: f64,
}

impl Transform for RandomGrayscale {
    fn apply(&self, mut image: RgbImage, rng: &mut dyn RngCore) -> RgbImage {
        if rng.random::<f64>() < self.p {
            to_grayscale(&mut image);
        }
        image
    }
}

/// Solarizes with probability `p` (torchvision's `RandomSolarize`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RandomSolarize {
    /// Values at or above it are inverted.
    pub threshold: u8,
    /// Probability of solarizing.
    pub p: f64,
}

impl Transform for RandomSolarize {
    fn apply(&self, mut image: RgbImage, rng: &mut dyn RngCore) -> RgbImage {
        if rng.random::<f64>() < self.p {
            solarize(&mut image, self.threshold);
        }
        image
    }
}
