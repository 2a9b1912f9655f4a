//! Features of a frozen backbone over a dataset: the evaluation transform (resize the shorter
//! side, center crop, normalise), parallel decoding, and the forward in eval mode (BatchNorm
//! with its running statistics).

use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};
use swav_augment::{CropBox, Normalize, RgbImage, resized_crop};
use swav_data::ImageDataset;
use swav_models::Backbone;

use crate::EvalError;

/// The test-time transform of the evaluation protocols: resize the shorter side to `resize`,
/// take the central `crop x crop` square, normalise. (Done as one bilinear resample of the
/// central region, which equals torchvision's resize-then-crop up to resampling rounding.)
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EvalTransform {
    /// Shorter side after resizing (256 for ImageNet).
    pub resize: u32,
    /// Side of the central crop (224 for ImageNet).
    pub crop: u32,
    /// Normalisation.
    pub normalize: Normalize,
}

impl EvalTransform {
    /// ImageNet's protocol: resize 256, center crop 224, the original's normalisation.
    pub fn imagenet() -> Self {
        Self {
            resize: 256,
            crop: 224,
            normalize: Normalize::SWAV,
        }
    }

    /// Small images used whole (CIFAR, Shapes10): resize to `side`, no cropping, CIFAR-10
    /// normalisation.
    pub fn small(side: u32) -> Self {
        Self {
            resize: side,
            crop: side,
            normalize: Normalize::CIFAR10,
        }
    }

    /// Checks the sizes.
    pub fn validate(&self) -> Result<(), EvalError> {
        if self.crop == 0 || self.resize < self.crop {
            return Err(EvalError::invalid(
                "crop",
                format!(
                    "crop {} must be positive and not larger than resize {}",
                    self.crop, self.resize
                ),
            ));
        }
        Ok(())
    }

    /// Number of floats one image gives (3 x crop x crop).
    pub fn len(&self) -> usize {
        3 * (self.crop as usize).pow(2)
    }

    /// Whether the output is empty (never, for a valid transform).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The central square of `image` that the resize-then-crop keeps, in source pixels.
    pub fn source_box(&self, width: u32, height: u32) -> CropBox {
        let short = width.min(height) as f64;
        let side = (short * self.crop as f64 / self.resize as f64)
            .round()
            .clamp(1.0, short) as u32;
        CropBox {
            top: (height - side) / 2,
            left: (width - side) / 2,
            height: side,
            width: side,
        }
    }

    /// Writes the transformed image as planar CHW floats into `out` (length [`Self::len`]).
    pub fn apply_into(&self, image: &RgbImage, out: &mut [f32]) -> Result<(), EvalError> {
        let b = self.source_box(image.width(), image.height());
        let full = b.width == image.width() && b.height == image.height();
        if full && image.width() == self.crop && image.height() == self.crop {
            self.normalize.write_chw(image, out)?;
        } else {
            let img = resized_crop(image, b, self.crop, self.crop)?;
            self.normalize.write_chw(&img, out)?;
        }
        Ok(())
    }
}

/// Features of a dataset, row-major `[len, dim]`, with labels.
#[derive(Debug, Clone, PartialEq)]
pub struct Features {
    /// The values, `len x dim`.
    pub values: Vec<f32>,
    /// Feature size.
    pub dim: usize,
    /// Label of each row (`None` for unlabeled samples).
    pub labels: Vec<Option<usize>>,
    /// Dataset index of each row.
    pub indices: Vec<usize>,
    /// Samples that could not be read: (index, file, reason). They have no row.
    pub skipped: Vec<(usize, String, String)>,
}

impl Features {
    /// Number of rows.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Row `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.values[i * self.dim..(i + 1) * self.dim]
    }

    /// The labels, refusing unlabeled rows.
    pub fn labels_required(&self, what: &'static str) -> Result<Vec<usize>, EvalError> {
        self.labels
            .iter()
            .enumerate()
            .map(|(i, l)| {
                l.ok_or_else(|| {
                    EvalError::invalid(what, format!("sample {} has no label", self.indices[i]))
                })
            })
            .collect()
    }
}

/// How features are extracted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ExtractConfig {
    /// Images per forward pass.
    pub batch_size: usize,
    /// Threads that decode and transform.
    pub workers: usize,
    /// The transform.
    pub transform: EvalTransform,
}

/// Decodes and transforms `indices` of `dataset` on `workers` threads (`write(index, image,
/// out)` fills the `per` floats of one sample); returns the floats of the readable ones, their
/// indices and labels, and the unreadable ones.
#[allow(clippy::type_complexity)]
pub(crate) fn prepare<D, W>(
    dataset: &D,
    indices: &[usize],
    per: usize,
    workers: usize,
    write: &W,
) -> (
    Vec<f32>,
    Vec<usize>,
    Vec<Option<usize>>,
    Vec<(usize, String, String)>,
)
where
    D: ImageDataset + Sync + ?Sized,
    W: Fn(usize, &RgbImage, &mut [f32]) -> Result<(), String> + Sync,
{
    let mut data = vec![0f32; per * indices.len()];
    let mut ok = vec![None::<Option<usize>>; indices.len()];
    let mut errors: Vec<Option<String>> = vec![None; indices.len()];
    let chunk = indices.len().div_ceil(workers.max(1)).max(1);
    std::thread::scope(|s| {
        for ((idx, out), (okc, errc)) in indices
            .chunks(chunk)
            .zip(data.chunks_mut(chunk * per))
            .zip(ok.chunks_mut(chunk).zip(errors.chunks_mut(chunk)))
        {
            s.spawn(move || {
                for (j, &i) in idx.iter().enumerate() {
                    let res = dataset
                        .get(i)
                        .map_err(|e| e.to_string())
                        .and_then(|sample| {
                            write(i, &sample.image, &mut out[j * per..(j + 1) * per])
                                .map(|_| sample.label)
                        });
                    match res {
                        Ok(l) => okc[j] = Some(l),
                        Err(e) => errc[j] = Some(e),
                    }
                }
            });
        }
    });
    let mut values = Vec::with_capacity(data.len());
    let mut kept = Vec::new();
    let mut labels = Vec::new();
    let mut skipped = Vec::new();
    for (j, &i) in indices.iter().enumerate() {
        match (ok[j], errors[j].take()) {
            (Some(l), _) => {
                values.extend_from_slice(&data[j * per..(j + 1) * per]);
                kept.push(i);
                labels.push(l);
            }
            (None, e) => skipped.push((i, dataset.describe(i), e.unwrap_or_default())),
        }
    }
    (values, kept, labels, skipped)
}

/// The readable samples of one batch, stacked for the model.
pub(crate) struct Prepared {
    /// `[kept, 3, side, side]`; `None` when no sample of the batch could be read.
    pub images: Option<Tensor<4>>,
    /// Dataset index of each row.
    pub kept: Vec<usize>,
    /// Label of each row.
    pub labels: Vec<Option<usize>>,
    /// Unreadable samples: (index, file, reason).
    pub skipped: Vec<(usize, String, String)>,
}

/// [`prepare`] for square images of `side` pixels, stacked into one tensor on `device`.
pub(crate) fn prepare_batch<D, W>(
    dataset: &D,
    indices: &[usize],
    side: usize,
    workers: usize,
    write: &W,
    device: &Device,
) -> Prepared
where
    D: ImageDataset + Sync + ?Sized,
    W: Fn(usize, &RgbImage, &mut [f32]) -> Result<(), String> + Sync,
{
    let (values, kept, labels, skipped) =
        prepare(dataset, indices, 3 * side * side, workers, write);
    let images = (!kept.is_empty()).then(|| {
        Tensor::<4>::from_data(TensorData::new(values, [kept.len(), 3, side, side]), device)
    });
    Prepared {
        images,
        kept,
        labels,
        skipped,
    }
}

/// The per-sample writer of an evaluation transform, for [`prepare_batch`].
pub(crate) fn eval_writer(
    transform: EvalTransform,
) -> impl Fn(usize, &RgbImage, &mut [f32]) -> Result<(), String> + Sync {
    move |_, image, out| transform.apply_into(image, out).map_err(|e| e.to_string())
}

/// The values of a tensor as f32, or an error naming `what`.
pub(crate) fn floats<const D: usize>(
    t: Tensor<D>,
    what: &'static str,
) -> Result<Vec<f32>, EvalError> {
    t.into_data()
        .try_to_vec_as::<f32>()
        .map_err(|e| EvalError::invalid(what, format!("{e:?}")))
}

/// Global-average-pooled features of every sample of `dataset` under a frozen `backbone` in
/// eval mode (BatchNorm uses its running statistics; no gradient is tracked). Unreadable
/// samples are skipped and listed in [`Features::skipped`].
pub fn extract_features<B, D>(
    backbone: &B,
    dataset: &D,
    config: &ExtractConfig,
    device: &Device,
) -> Result<Features, EvalError>
where
    B: Backbone + Module,
    D: ImageDataset + Sync + ?Sized,
{
    config.transform.validate()?;
    if config.batch_size == 0 {
        return Err(EvalError::invalid("batch_size", "must be at least 1"));
    }
    let net = backbone.valid();
    let dim = net.feature_dim();
    let side = config.transform.crop as usize;
    let all: Vec<usize> = (0..dataset.len()).collect();
    let mut out = Features {
        values: Vec::with_capacity(all.len() * dim),
        dim,
        labels: Vec::with_capacity(all.len()),
        indices: Vec::with_capacity(all.len()),
        skipped: Vec::new(),
    };
    let write = eval_writer(config.transform);
    for chunk in all.chunks(config.batch_size) {
        let b = prepare_batch(dataset, chunk, side, config.workers, &write, device);
        out.skipped.extend(b.skipped);
        let Some(x) = b.images else { continue };
        out.values
            .extend(floats(net.forward_features(x), "features")?);
        out.labels.extend(b.labels);
        out.indices.extend(b.kept);
    }
    Ok(out)
}

/// [`extract_features`] straight into a feature file at `path` (batch by batch, so the
/// features never need to fit in memory); returns the file and the unreadable samples.
#[allow(clippy::type_complexity)]
pub fn extract_features_to_file<B, D>(
    backbone: &B,
    dataset: &D,
    config: &ExtractConfig,
    device: &Device,
    path: &std::path::Path,
) -> Result<(crate::FeatureFile, Vec<(usize, String, String)>), EvalError>
where
    B: Backbone + Module,
    D: ImageDataset + Sync + ?Sized,
{
    config.transform.validate()?;
    if config.batch_size == 0 {
        return Err(EvalError::invalid("batch_size", "must be at least 1"));
    }
    let net = backbone.valid();
    let side = config.transform.crop as usize;
    let mut writer = crate::FeatureWriter::create(path, net.feature_dim())?;
    let mut skipped = Vec::new();
    let all: Vec<usize> = (0..dataset.len()).collect();
    let write = eval_writer(config.transform);
    for chunk in all.chunks(config.batch_size) {
        let b = prepare_batch(dataset, chunk, side, config.workers, &write, device);
        skipped.extend(b.skipped);
        let Some(x) = b.images else { continue };
        writer.append(&floats(net.forward_features(x), "features")?, &b.labels)?;
    }
    Ok((writer.finish()?, skipped))
}
