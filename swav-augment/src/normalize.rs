//! The last step of every crop: 8-bit HWC pixels to a planar CHW f32 buffer, scaled to [0, 1]
//! and normalised per channel (torchvision's `ToTensor` then `Normalize`).

use image::RgbImage;
use serde::{Deserialize, Serialize};

use crate::AugmentError;

/// Per-channel mean and standard deviation of `(x / 255 - mean) / std`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Normalize {
    /// Channel means (R, G, B).
    pub mean: [f32; 3],
    /// Channel standard deviations (R, G, B).
    pub std: [f32; 3],
}

impl Normalize {
    /// The original SwAV code's values: ImageNet means, std (0.228, 0.224, 0.225).
    pub const SWAV: Self = Self {
        mean: [0.485, 0.456, 0.406],
        std: [0.228, 0.224, 0.225],
    };
    /// torchvision's ImageNet values: std (0.229, 0.224, 0.225).
    pub const IMAGENET: Self = Self {
        mean: [0.485, 0.456, 0.406],
        std: [0.229, 0.224, 0.225],
    };
    /// CIFAR-10 channel statistics, as the peers' CIFAR recipes use.
    pub const CIFAR10: Self = Self {
        mean: [0.4914, 0.4822, 0.4465],
        std: [0.247, 0.243, 0.261],
    };

    /// Checks that every standard deviation is positive.
    pub fn validate(&self) -> Result<(), AugmentError> {
        if self.std.iter().all(|s| s.is_finite() && *s > 0.0)
            && self.mean.iter().all(|m| m.is_finite())
        {
            Ok(())
        } else {
            Err(AugmentError::param(
                "normalize",
                format!("{self:?}: std must be > 0, values finite"),
            ))
        }
    }

    /// The 256 output values of each channel, computed with torchvision's exact sequence of
    /// f32 operations (`x / 255`, `- mean`, `/ std`), so a table lookup gives the same bits.
    pub fn table(&self) -> [[f32; 256]; 3] {
        let mut t = [[0f32; 256]; 3];
        for (c, row) in t.iter_mut().enumerate() {
            for (v, out) in row.iter_mut().enumerate() {
                *out = (v as f32 / 255.0 - self.mean[c]) / self.std[c];
            }
        }
        t
    }

    /// Writes `image` as planar CHW floats into `out` (length 3 x height x width).
    ///
    /// # Errors
    /// If `out` has the wrong length.
    pub fn write_chw(&self, image: &RgbImage, out: &mut [f32]) -> Result<(), AugmentError> {
        write_chw_with(&self.table(), image, out, 0)
    }
}

/// [`Normalize::write_chw`] with a precomputed table; `crop` only labels the error.
pub(crate) fn write_chw_with(
    table: &[[f32; 256]; 3],
    image: &RgbImage,
    out: &mut [f32],
    crop: usize,
) -> Result<(), AugmentError> {
    let plane = image.width() as usize * image.height() as usize;
    if out.len() != 3 * plane {
        return Err(AugmentError::OutputSize {
            crop,
            got: out.len(),
            want: 3 * plane,
        });
    }
    let (r, rest) = out.split_at_mut(plane);
    let (g, b) = rest.split_at_mut(plane);
    for (i, px) in image.as_raw().chunks_exact(3).enumerate() {
        r[i] = table[0][px[0] as usize];
        g[i] = table[1][px[1] as usize];
        b[i] = table[2][px[2] as usize];
    }
    Ok(())
}
