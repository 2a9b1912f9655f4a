//! SwAV multi-crop augmentation with torchvision's semantics, standalone (no burn).
#![doc = include_str!("../README.md")]

mod blur;
mod color;
mod error;
mod geometry;
mod multicrop;
mod normalize;
mod rng;
mod transform;

pub use blur::{BlurKind, GaussianBlur, gaussian_kernel, kernel_gaussian_blur, pil_gaussian_blur};
pub use color::{
    ColorJitter, ColorOp, JitterParams, RandomGrayscale, RandomSolarize, adjust_brightness,
    adjust_contrast, adjust_hue, adjust_saturation, hsv_to_rgb, luma, rgb_to_hsv, shift_hue_pixel,
    solarize, to_grayscale,
};
pub use error::AugmentError;
pub use geometry::{
    CropBox, RandomHorizontalFlip, RandomResizedCrop, central_fallback_crop, hflip,
    random_resized_crop_box, resized_crop,
};
pub use image::RgbImage;
pub use multicrop::{CropGroup, JitterConfig, MultiCrop, MultiCropConfig, to_rgb8};
pub use normalize::Normalize;
pub use rng::sample_rng;
pub use transform::{Compose, RandomApply, Transform};
