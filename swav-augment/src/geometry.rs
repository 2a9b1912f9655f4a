//! Geometric transforms: RandomResizedCrop (torchvision's sampling, PIL's bilinear resize)
//! and horizontal flip.

use fast_image_resize::images::{CroppedImage, Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::RgbImage;
use rand::{Rng, RngCore};
use serde::{Deserialize, Serialize};

use crate::AugmentError;
use crate::transform::Transform;

/// A crop rectangle in pixels, as torchvision's `get_params` returns it: `(top, left, height,
/// width)` = `(i, j, h, w)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CropBox {
    /// First row.
    pub top: u32,
    /// First column.
    pub left: u32,
    /// Number of rows.
    pub height: u32,
    /// Number of columns.
    pub width: u32,
}

/// Python's `round()`: halves go to the even neighbour.
fn py_round(x: f64) -> i64 {
    x.round_ties_even() as i64
}

/// torchvision's fallback when 10 attempts found no crop in range: the largest central crop
/// whose aspect ratio is clamped into `ratio` (the whole image when its ratio is inside).
pub fn central_fallback_crop(width: u32, height: u32, ratio: (f64, f64)) -> CropBox {
    let (w_in, h_in) = (width as f64, height as f64);
    let in_ratio = w_in / h_in;
    let (lo, hi) = (ratio.0.min(ratio.1), ratio.0.max(ratio.1));
    let (w, h) = if in_ratio < lo {
        (width, py_round(w_in / lo).max(0) as u32)
    } else if in_ratio > hi {
        (py_round(h_in * hi).max(0) as u32, height)
    } else {
        (width, height)
    };
    CropBox {
        top: (height - h.min(height)) / 2,
        left: (width - w.min(width)) / 2,
        height: h.min(height),
        width: w.min(width),
    }
}

/// torchvision's `RandomResizedCrop.get_params`: up to 10 attempts with the area fraction
/// uniform in `scale` and the aspect ratio log-uniform in `ratio`, sides rounded half to even;
/// the first that fits is placed uniformly; otherwise [`central_fallback_crop`].
///
/// Draws, per attempt, two `f64` uniforms and, on success, two integer positions.
pub fn random_resized_crop_box(
    width: u32,
    height: u32,
    scale: (f64, f64),
    ratio: (f64, f64),
    rng: &mut dyn RngCore,
) -> CropBox {
    let area = width as f64 * height as f64;
    let (log_lo, log_hi) = (ratio.0.ln(), ratio.1.ln());
    for _ in 0..10 {
        let target_area = area * uniform(rng, scale.0, scale.1);
        let aspect = uniform(rng, log_lo, log_hi).exp();
        let w = py_round((target_area * aspect).sqrt());
        let h = py_round((target_area / aspect).sqrt());
        if 0 < w && w <= width as i64 && 0 < h && h <= height as i64 {
            let (w, h) = (w as u32, h as u32);
            let top = rng.random_range(0..=height - h);
            let left = rng.random_range(0..=width - w);
            return CropBox {
                top,
                left,
                height: h,
                width: w,
            };
        }
    }
    central_fallback_crop(width, height, ratio)
}

/// A uniform draw in `[lo, hi)`, or `lo` when the range is empty (torch's `uniform_(a, a)`).
fn uniform(rng: &mut dyn RngCore, lo: f64, hi: f64) -> f64 {
    lo + (hi - lo) * rng.random::<f64>()
}

/// Crops `image` to `crop` and resizes the result to `out_width x out_height` with PIL's
/// bilinear filter (a triangle filter whose support widens when downscaling, i.e. with
/// antialiasing), as torchvision's `resized_crop` does on a PIL image. Pixels outside the crop
/// are never read.
///
/// # Errors
/// If the crop is empty or outside the image, or an output side is zero.
pub fn resized_crop(
    image: &RgbImage,
    crop: CropBox,
    out_width: u32,
    out_height: u32,
) -> Result<RgbImage, AugmentError> {
    if out_width == 0 || out_height == 0 {
        return Err(AugmentError::param("size", "output size must be positive"));
    }
    let src = ImageRef::new(
        image.width(),
        image.height(),
        image.as_raw(),
        PixelType::U8x3,
    )
    .map_err(|e| AugmentError::Resize(e.to_string()))?;
    let view = CroppedImage::new(&src, crop.left, crop.top, crop.width, crop.height)
        .map_err(|e| AugmentError::Resize(format!("crop {crop:?}: {e}")))?;
    let mut dst = Image::new(out_width, out_height, PixelType::U8x3);
    let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear));
    // One resizer per thread keeps its scratch buffers between calls (a cache, not state that
    // changes results).
    thread_local! {
        static RESIZER: std::cell::RefCell<Resizer> = std::cell::RefCell::new(Resizer::new());
    }
    RESIZER
        .with(|r| r.borrow_mut().resize(&view, &mut dst, &options))
        .map_err(|e| AugmentError::Resize(e.to_string()))?;
    RgbImage::from_raw(out_width, out_height, dst.into_vec())
        .ok_or_else(|| AugmentError::Resize("resizer returned a buffer of the wrong size".into()))
}

/// Mirrors the image left to right, in place.
pub fn hflip(image: &mut RgbImage) {
    let w = image.width() as usize;
    for row in image.chunks_exact_mut(w * 3) {
        let (mut a, mut b) = (0, w.saturating_sub(1));
        while a < b {
            for c in 0..3 {
                row.swap(a * 3 + c, b * 3 + c);
            }
            a += 1;
            b -= 1;
        }
    }
}

/// torchvision's `RandomResizedCrop(size, scale, ratio)` with bilinear interpolation.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RandomResizedCrop {
    /// Output side in pixels (square output).
    pub size: u32,
    /// Range of the crop's area as a fraction of the image's.
    pub scale: (f64, f64),
    /// Range of the crop's aspect ratio (width / height), sampled in log space.
    pub ratio: (f64, f64),
}

impl RandomResizedCrop {
    /// A crop to `size` pixels with area fraction in `scale` and torchvision's ratio (3/4, 4/3).
    pub fn new(size: u32, scale: (f64, f64)) -> Result<Self, AugmentError> {
        let t = Self {
            size,
            scale,
            ratio: (3.0 / 4.0, 4.0 / 3.0),
        };
        t.validate()?;
        Ok(t)
    }

    /// Checks the parameters.
    pub fn validate(&self) -> Result<(), AugmentError> {
        if self.size == 0 {
            return Err(AugmentError::param("size", "crop size must be positive"));
        }
        let (lo, hi) = self.scale;
        if !(lo > 0.0 && lo <= hi && hi.is_finite()) {
            return Err(AugmentError::param(
                "scale",
                format!("({lo}, {hi}) must satisfy 0 < min <= max"),
            ));
        }
        let (a, b) = self.ratio;
        if !(a > 0.0 && a <= b && b.is_finite()) {
            return Err(AugmentError::param(
                "ratio",
                format!("({a}, {b}) must satisfy 0 < min <= max"),
            ));
        }
        Ok(())
    }

    /// Samples a crop box and produces the resized crop.
    ///
    /// # Errors
    /// If the image is empty.
    pub fn try_apply(
        &self,
        image: &RgbImage,
        rng: &mut dyn RngCore,
    ) -> Result<RgbImage, AugmentError> {
        if image.width() == 0 || image.height() == 0 {
            return Err(AugmentError::EmptyImage {
                width: image.width(),
                height: image.height(),
            });
        }
        let crop =
            random_resized_crop_box(image.width(), image.height(), self.scale, self.ratio, rng);
        resized_crop(image, crop, self.size, self.size)
    }
}

impl Transform for RandomResizedCrop {
    /// # Panics
    /// On an empty image; use [`RandomResizedCrop::try_apply`] for an error instead.
    fn apply(&self, image: RgbImage, rng: &mut dyn RngCore) -> RgbImage {
        match self.try_apply(&image, rng) {
            Ok(out) => out,
            Err(e) => panic!("RandomResizedCrop: {e}"),
        }
    }
}

/// Flips horizontally with probability `p` (torchvision's `RandomHorizontalFlip`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RandomHorizontalFlip {
    /// Probability of flipping.
    pub p: f64,
}

impl Transform for RandomHorizontalFlip {
    fn apply(&self, mut image: RgbImage, rng: &mut dyn RngCore) -> RgbImage {
        if rng.random::<f64>() < self.p {
            hflip(&mut image);
        }
        image
    }
}
