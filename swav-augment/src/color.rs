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

/// PIL's `Image.blend(degenerate, image, alpha)` for one 8-bit value: computed in f32 and
/// truncated; clipped to [0, 255] when `alpha` is outside [0, 1].
#[inline]
fn blend(degenerate: u8, value: u8, alpha: f32) -> u8 {
    let d = degenerate as i32;
    let t = d as f32 + alpha * ((value as i32 - d) as f32);
    if (0.0..=1.0).contains(&alpha) {
        t as u8
    } else if t <= 0.0 {
        0
    } else if t >= 255.0 {
        255
    } else {
        t as u8
    }
}

/// torchvision `adjust_brightness` (PIL `ImageEnhance.Brightness`): blend with black.
pub fn adjust_brightness(image: &mut RgbImage, factor: f64) {
    let a = factor as f32;
    for v in image.iter_mut() {
        *v = blend(0, *v, a);
    }
}

/// torchvision `adjust_contrast` (PIL `ImageEnhance.Contrast`): blend with a uniform image at
/// the mean luma, rounded half up.
pub fn adjust_contrast(image: &mut RgbImage, factor: f64) {
    let n = (image.width() as u64 * image.height() as u64).max(1);
    let sum: u64 = image
        .pixels()
        .map(|p| luma(p.0[0], p.0[1], p.0[2]) as u64)
        .sum();
    let mean = (sum as f64 / n as f64 + 0.5) as u8;
    let a = factor as f32;
    for v in image.iter_mut() {
        *v = blend(mean, *v, a);
    }
}

/// torchvision `adjust_saturation` (PIL `ImageEnhance.Color`): blend each pixel with its luma.
pub fn adjust_saturation(image: &mut RgbImage, factor: f64) {
    let a = factor as f32;
    for p in image.pixels_mut() {
        let [r, g, b] = p.0;
        let l = luma(r, g, b);
        p.0 = [blend(l, r, a), blend(l, g, a), blend(l, b, a)];
    }
}

/// PIL's RGB to HSV of one pixel (each channel 0-255), as `Image.convert("HSV")`.
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
    let h: f32 = if r == maxc {
        bc - gc
    } else if g == maxc {
        (2.0 + rc as f64 - bc as f64) as f32
    } else {
        (4.0 + gc as f64 - rc as f64) as f32
    };
    let h = ((h as f64 / 6.0 + 1.0) % 1.0) as f32;
    let uh = ((h as f64 * 255.0) as i32).clamp(0, 255) as u8;
    let us = ((s as f64 * 255.0) as i32).clamp(0, 255) as u8;
    [uh, us, maxc]
}

/// C's `round`: halves away from zero.
#[inline]
fn c_round(x: f64) -> i32 {
    x.round() as i32
}

/// PIL's HSV to RGB of one pixel, as `Image.convert("RGB")` from HSV.
#[inline]
pub fn hsv_to_rgb(h: u8, s: u8, v: u8) -> [u8; 3] {
    if s == 0 {
        return [v, v, v];
    }
    let hf = h as f32 as f64 * 6.0 / 255.0;
    let i = hf.floor() as i32;
    let f = (hf - i as f32 as f64) as f32;
    let fs = (s as f32 as f64 / 255.0) as f32;
    let vf = v as f32 as f64;
    let p = c_round(vf * (1.0 - fs as f64)).clamp(0, 255) as u8;
    let q = c_round(vf * (1.0 - (fs * f) as f64)).clamp(0, 255) as u8;
    let t = c_round(vf * (1.0 - (fs * (1.0 - f)) as f64)).clamp(0, 255) as u8;
    match i % 6 {
        0 => [v, t, p],
        1 => [q, v, p],
        2 => [p, v, t],
        3 => [p, q, v],
        4 => [t, p, v],
        _ => [v, p, q],
    }
}

/// torchvision `adjust_hue` on a PIL image: convert to HSV, add `int(hue * 255)` (truncated
/// toward zero) to the hue channel modulo 256, convert back.
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
    for p in image.pixels_mut() {
        let [h, s, v] = rgb_to_hsv(p.0[0], p.0[1], p.0[2]);
        p.0 = hsv_to_rgb(h.wrapping_add(shift), s, v);
    }
}

/// torchvision `rgb_to_grayscale(img, 3)`: PIL luma copied to the three channels.
pub fn to_grayscale(image: &mut RgbImage) {
    for p in image.pixels_mut() {
        let l = luma(p.0[0], p.0[1], p.0[2]);
        p.0 = [l, l, l];
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
