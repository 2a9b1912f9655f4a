//! [`MultiCrop`]: one decoded image to the SwAV views (paper section 3.2): groups of crops at
//! several resolutions, each through the same colour pipeline, normalised to CHW floats.

use image::{DynamicImage, RgbImage};
use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::AugmentError;
use crate::blur::{BlurKind, GaussianBlur};
use crate::color::{ColorJitter, RandomGrayscale, RandomSolarize};
use crate::geometry::{RandomHorizontalFlip, RandomResizedCrop};
use crate::normalize::{Normalize, write_chw_with};
use crate::transform::{RandomApply, Transform};

/// `count` crops of `size x size` pixels with area fraction in `[min_scale, max_scale]`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CropGroup {
    /// Number of crops.
    pub count: usize,
    /// Side in pixels.
    pub size: u32,
    /// Smallest area fraction.
    pub min_scale: f64,
    /// Largest area fraction.
    pub max_scale: f64,
}

/// Colour jitter strengths and the probability of applying the jitter.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JitterConfig {
    /// Brightness strength (factor range `[1 - b, 1 + b]`).
    pub brightness: f64,
    /// Contrast strength.
    pub contrast: f64,
    /// Saturation strength.
    pub saturation: f64,
    /// Hue strength (shift range `[-h, h]`).
    pub hue: f64,
    /// Probability of applying the jitter.
    pub p: f64,
}

impl JitterConfig {
    /// SwAV's `get_color_distortion(s)`: strengths 0.8 s, 0.8 s, 0.8 s, 0.2 s, applied with p 0.8.
    pub fn swav(s: f64) -> Self {
        Self {
            brightness: 0.8 * s,
            contrast: 0.8 * s,
            saturation: 0.8 * s,
            hue: 0.2 * s,
            p: 0.8,
        }
    }
}

/// Everything a multi-crop needs; serde-loadable, validated by [`MultiCrop::new`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MultiCropConfig {
    /// The crop groups, in output order (the large crops first, as SwAV assigns codes to
    /// crops 0 and 1).
    pub groups: Vec<CropGroup>,
    /// Aspect-ratio range of RandomResizedCrop.
    #[serde(default = "default_ratio")]
    pub ratio: (f64, f64),
    /// Probability of a horizontal flip.
    pub flip_p: f64,
    /// Colour jitter; `None` turns it off.
    pub jitter: Option<JitterConfig>,
    /// Probability of converting to grayscale.
    pub grayscale_p: f64,
    /// Gaussian blur; `None` turns it off.
    pub blur: Option<GaussianBlur>,
    /// Solarization; `None` turns it off.
    #[serde(default)]
    pub solarize: Option<RandomSolarize>,
    /// Final normalisation.
    pub normalize: Normalize,
}

fn default_ratio() -> (f64, f64) {
    (3.0 / 4.0, 4.0 / 3.0)
}

impl MultiCropConfig {
    fn swav_with(groups: Vec<CropGroup>) -> Self {
        Self {
            groups,
            ratio: default_ratio(),
            flip_p: 0.5,
            jitter: Some(JitterConfig::swav(1.0)),
            grayscale_p: 0.2,
            blur: Some(GaussianBlur::swav()),
            solarize: None,
            normalize: Normalize::SWAV,
        }
    }

    /// The paper's headline views: 2 x 224 (scale 0.14-1) + 6 x 96 (scale 0.05-0.14).
    pub fn swav_2x224_6x96() -> Self {
        Self::swav_with(vec![
            CropGroup {
                count: 2,
                size: 224,
                min_scale: 0.14,
                max_scale: 1.0,
            },
            CropGroup {
                count: 6,
                size: 96,
                min_scale: 0.05,
                max_scale: 0.14,
            },
        ])
    }

    /// Two 224-pixel views only (the original's default arguments).
    pub fn swav_2x224() -> Self {
        Self::swav_with(vec![CropGroup {
            count: 2,
            size: 224,
            min_scale: 0.14,
            max_scale: 1.0,
        }])
    }

    /// 2 x 160 + 4 x 96, the cheaper multi-crop of the paper's ablations.
    pub fn swav_2x160_4x96() -> Self {
        Self::swav_with(vec![
            CropGroup {
                count: 2,
                size: 160,
                min_scale: 0.14,
                max_scale: 1.0,
            },
            CropGroup {
                count: 4,
                size: 96,
                min_scale: 0.05,
                max_scale: 0.14,
            },
        ])
    }

    /// CIFAR (32-pixel images), after the peers: 2 x 32 crops (scale 0.14-1), jitter of
    /// strength 0.5 (0.4, 0.4, 0.4, 0.1) with p 0.8, grayscale p 0.2, no blur, CIFAR-10 statistics.
    pub fn cifar() -> Self {
        Self {
            groups: vec![CropGroup {
                count: 2,
                size: 32,
                min_scale: 0.14,
                max_scale: 1.0,
            }],
            jitter: Some(JitterConfig::swav(0.5)),
            blur: None,
            normalize: Normalize::CIFAR10,
            ..Self::swav_2x224()
        }
    }

    /// The built-in demo on Shapes10 (32-pixel images): the CIFAR preset with the original's
    /// full-strength colour jitter (strength 1.0, p 0.8) and grayscale with p 0.5. Shapes10
    /// draws every image's colours at random, so colour is a cue both crops share; weaker colour
    /// augmentation lets SwAV learn colour instead of structure (measured: `docs/results.md`).
    pub fn demo() -> Self {
        Self {
            jitter: Some(JitterConfig::swav(1.0)),
            grayscale_p: 0.5,
            ..Self::cifar()
        }
    }

    /// STL-10 (96-pixel images): 2 x 96 (scale 0.14-1) + 6 x 48 (scale 0.05-0.14), the
    /// original's colour pipeline and blur.
    pub fn stl10() -> Self {
        Self::swav_with(vec![
            CropGroup {
                count: 2,
                size: 96,
                min_scale: 0.14,
                max_scale: 1.0,
            },
            CropGroup {
                count: 6,
                size: 48,
                min_scale: 0.05,
                max_scale: 0.14,
            },
        ])
    }

    /// A preset by name: `swav`, `swav-2x224`, `swav-2x160-4x96`, `cifar`, `stl10`.
    pub fn preset(name: &str) -> Result<Self, AugmentError> {
        match name {
            "swav" | "swav-2x224-6x96" => Ok(Self::swav_2x224_6x96()),
            "swav-2x224" => Ok(Self::swav_2x224()),
            "swav-2x160-4x96" => Ok(Self::swav_2x160_4x96()),
            "cifar" => Ok(Self::cifar()),
            "demo" => Ok(Self::demo()),
            "stl10" => Ok(Self::stl10()),
            other => Err(AugmentError::param(
                "preset",
                format!(
                    "`{other}` is unknown; choose swav, swav-2x224, swav-2x160-4x96, cifar, demo or stl10"
                ),
            )),
        }
    }

    /// Total number of crops.
    pub fn total_crops(&self) -> usize {
        self.groups.iter().map(|g| g.count).sum()
    }

    /// Side of each crop, in output order.
    pub fn crop_sizes(&self) -> Vec<u32> {
        self.groups
            .iter()
            .flat_map(|g| std::iter::repeat_n(g.size, g.count))
            .collect()
    }
}

fn probability(field: &'static str, p: f64) -> Result<(), AugmentError> {
    if (0.0..=1.0).contains(&p) {
        Ok(())
    } else {
        Err(AugmentError::param(
            field,
            format!("{p} is not a probability"),
        ))
    }
}

/// A validated multi-crop pipeline.
pub struct MultiCrop {
    config: MultiCropConfig,
    crops: Vec<RandomResizedCrop>,
    flip: RandomHorizontalFlip,
    jitter: Option<RandomApply<ColorJitter>>,
    gray: RandomGrayscale,
    table: [[f32; 256]; 3],
}

impl std::fmt::Debug for MultiCrop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MultiCrop")
            .field("config", &self.config)
            .finish()
    }
}

impl MultiCrop {
    /// Builds the pipeline, refusing invalid parameters (naming the field).
    pub fn new(config: MultiCropConfig) -> Result<Self, AugmentError> {
        if config.groups.is_empty() || config.total_crops() == 0 {
            return Err(AugmentError::param("groups", "needs at least one crop"));
        }
        let mut crops = Vec::new();
        for g in &config.groups {
            let t = RandomResizedCrop {
                size: g.size,
                scale: (g.min_scale, g.max_scale),
                ratio: config.ratio,
            };
            t.validate()?;
            if g.max_scale > 1.0 {
                return Err(AugmentError::param(
                    "max_scale",
                    format!("{} is above 1", g.max_scale),
                ));
            }
            crops.extend(std::iter::repeat_n(t, g.count));
        }
        probability("flip_p", config.flip_p)?;
        probability("grayscale_p", config.grayscale_p)?;
        let jitter = match config.jitter {
            Some(j) => {
                probability("jitter.p", j.p)?;
                Some(RandomApply {
                    inner: ColorJitter::new(j.brightness, j.contrast, j.saturation, j.hue)?,
                    p: j.p,
                })
            }
            None => None,
        };
        if let Some(b) = &config.blur {
            b.validate()?;
            if let BlurKind::KernelSize(k) = b.kind {
                let smallest = config.groups.iter().map(|g| g.size).min().unwrap_or(0) as usize;
                if k / 2 >= smallest {
                    return Err(AugmentError::param(
                        "blur.kind",
                        format!("kernel {k} is too large for {smallest}-pixel crops"),
                    ));
                }
            }
        }
        if let Some(s) = &config.solarize {
            probability("solarize.p", s.p)?;
        }
        config.normalize.validate()?;
        Ok(Self {
            table: config.normalize.table(),
            flip: RandomHorizontalFlip { p: config.flip_p },
            gray: RandomGrayscale {
                p: config.grayscale_p,
            },
            crops,
            jitter,
            config,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &MultiCropConfig {
        &self.config
    }

    /// Number of crops per image.
    pub fn total_crops(&self) -> usize {
        self.crops.len()
    }

    /// Floats per crop, in output order (3 x size x size).
    pub fn crop_lens(&self) -> Vec<usize> {
        self.crops
            .iter()
            .map(|c| 3 * c.size as usize * c.size as usize)
            .collect()
    }

    /// One crop through the whole pipeline, as 8-bit pixels (before normalisation).
    fn crop_pixels(
        &self,
        crop: &RandomResizedCrop,
        image: &RgbImage,
        rng: &mut dyn RngCore,
    ) -> Result<RgbImage, AugmentError> {
        let mut out = crop.try_apply(image, rng)?;
        out = self.flip.apply(out, rng);
        if let Some(jitter) = &self.jitter {
            out = jitter.apply(out, rng);
        }
        out = self.gray.apply(out, rng);
        if let Some(blur) = &self.config.blur {
            out = blur.apply(out, rng);
        }
        if let Some(sol) = &self.config.solarize {
            out = sol.apply(out, rng);
        }
        Ok(out)
    }

    /// Writes every crop of `image` into `outputs` (one CHW slice per crop, lengths from
    /// [`MultiCrop::crop_lens`]), drawing all randomness from `rng`. Use
    /// [`crate::sample_rng`] for a generator that depends only on (seed, epoch, index).
    ///
    /// # Errors
    /// If the image is empty or a slice has the wrong length; nothing is written then for the
    /// crops that follow.
    pub fn apply_into(
        &self,
        image: &RgbImage,
        rng: &mut dyn RngCore,
        outputs: &mut [&mut [f32]],
    ) -> Result<(), AugmentError> {
        check_not_empty(image)?;
        if outputs.len() != self.crops.len() {
            return Err(AugmentError::param(
                "outputs",
                format!(
                    "{} output slices for {} crops",
                    outputs.len(),
                    self.crops.len()
                ),
            ));
        }
        for (i, (crop, out)) in self.crops.iter().zip(outputs.iter_mut()).enumerate() {
            let pixels = self.crop_pixels(crop, image, rng)?;
            write_chw_with(&self.table, &pixels, out, i)?;
        }
        Ok(())
    }

    /// Every crop of `image` as its own CHW buffer.
    ///
    /// # Errors
    /// If the image is empty.
    pub fn apply(
        &self,
        image: &RgbImage,
        rng: &mut dyn RngCore,
    ) -> Result<Vec<Vec<f32>>, AugmentError> {
        let mut bufs: Vec<Vec<f32>> = self.crop_lens().into_iter().map(|n| vec![0.0; n]).collect();
        let mut slices: Vec<&mut [f32]> = bufs.iter_mut().map(|b| b.as_mut_slice()).collect();
        self.apply_into(image, rng, &mut slices)?;
        Ok(bufs)
    }

    /// Every crop of `image` as 8-bit pixels, before normalisation (to look at, or to feed a
    /// pipeline of one's own).
    ///
    /// # Errors
    /// If the image is empty.
    pub fn apply_pixels(
        &self,
        image: &RgbImage,
        rng: &mut dyn RngCore,
    ) -> Result<Vec<RgbImage>, AugmentError> {
        check_not_empty(image)?;
        self.crops
            .iter()
            .map(|c| self.crop_pixels(c, image, rng))
            .collect()
    }
}

fn check_not_empty(image: &RgbImage) -> Result<(), AugmentError> {
    if image.width() == 0 || image.height() == 0 {
        return Err(AugmentError::EmptyImage {
            width: image.width(),
            height: image.height(),
        });
    }
    Ok(())
}

/// Converts anything `image` decodes (grayscale, RGBA, 16-bit, float) to 8-bit RGB: gray is
/// copied to the three channels, alpha is dropped (as PIL's `convert("RGB")`), 16-bit values are
/// scaled to 8 bits. An image without pixels is an error.
pub fn to_rgb8(image: &DynamicImage) -> Result<RgbImage, AugmentError> {
    if image.width() == 0 || image.height() == 0 {
        return Err(AugmentError::EmptyImage {
            width: image.width(),
            height: image.height(),
        });
    }
    Ok(match image {
        DynamicImage::ImageRgb8(rgb) => rgb.clone(),
        other => other.to_rgb8(),
    })
}
