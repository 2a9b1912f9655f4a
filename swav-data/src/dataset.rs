//! The [`ImageDataset`] trait every reader implements, decoding with limits, and the wrappers
//! (subset, unlabeled view).

use std::io::Cursor;
use std::path::Path;
use std::sync::Arc;

use image::{ImageReader, Limits};
use swav_augment::RgbImage;

use crate::DataError;

/// One sample: an 8-bit RGB image and its class, when the dataset has labels.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The decoded image.
    pub image: RgbImage,
    /// Class index (folder order or the format's label), `None` when unlabeled.
    pub label: Option<usize>,
}

/// A random-access dataset of images, in the style of burn's `Dataset` (`len` and `get`), but
/// with errors: a sample that cannot be read says why and names its file, so a loader can skip
/// and count it.
pub trait ImageDataset: Send + Sync {
    /// Number of samples.
    fn len(&self) -> usize;

    /// Whether the dataset is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reads sample `index`.
    fn get(&self, index: usize) -> Result<Sample, DataError>;

    /// Number of classes, when labelled.
    fn num_classes(&self) -> Option<usize>;

    /// The label of sample `index` without decoding its image, when labelled.
    fn label(&self, index: usize) -> Option<usize>;

    /// A name for sample `index` in messages (its file path, or format and position).
    fn describe(&self, index: usize) -> String;
}

impl<D: ImageDataset + ?Sized> ImageDataset for Arc<D> {
    fn len(&self) -> usize {
        (**self).len()
    }
    fn get(&self, index: usize) -> Result<Sample, DataError> {
        (**self).get(index)
    }
    fn num_classes(&self) -> Option<usize> {
        (**self).num_classes()
    }
    fn label(&self, index: usize) -> Option<usize> {
        (**self).label(index)
    }
    fn describe(&self, index: usize) -> String {
        (**self).describe(index)
    }
}

/// Limits applied when decoding untrusted image files, so a hostile or broken file cannot take
/// the machine's memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Largest accepted width or height, in pixels.
    pub max_side: u32,
    /// Largest decoder allocation, in bytes; the 8-bit RGB result must fit in it too, so a
    /// decode holds at most twice this.
    pub max_alloc: u64,
}

impl Default for DecodeLimits {
    /// 16,384 pixels a side and 512 MiB: far above ImageNet's largest images, far below a
    /// decompression bomb.
    fn default() -> Self {
        Self {
            max_side: 16_384,
            max_alloc: 512 << 20,
        }
    }
}

/// Decodes an image file's bytes (format detected from the content) within `limits` and
/// converts it to 8-bit RGB.
pub fn decode_image(
    bytes: &[u8],
    path: &Path,
    limits: DecodeLimits,
) -> Result<RgbImage, DataError> {
    let decode_err = |reason: String| DataError::Decode {
        path: path.to_path_buf(),
        reason,
    };
    if bytes.is_empty() {
        return Err(decode_err("the file is empty".into()));
    }
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| decode_err(e.to_string()))?;
    if reader.format().is_none() {
        return Err(decode_err("not a recognised image format".into()));
    }
    let mut l = Limits::default();
    l.max_image_width = Some(limits.max_side);
    l.max_image_height = Some(limits.max_side);
    l.max_alloc = Some(limits.max_alloc);
    reader.limits(l);
    // Say what the header declares when it is over the limit (not only that it is). Reading
    // the header allocates nothing of the image, so it runs without limits.
    let header = ImageReader::new(Cursor::new(bytes)).with_guessed_format();
    if let Ok((w, h)) = header.map_err(|e| e.to_string()).and_then(|mut r| {
        r.no_limits();
        r.into_dimensions().map_err(|e| e.to_string())
    }) {
        if w > limits.max_side || h > limits.max_side {
            return Err(decode_err(format!(
                "the header declares {w} x {h} pixels, over the limit of {} a side",
                limits.max_side
            )));
        }
        // The 8-bit RGB result is allocated beside the decoder's buffer: within the budget too.
        let rgb = u64::from(w) * u64::from(h) * 3;
        if rgb > limits.max_alloc {
            return Err(decode_err(format!(
                "the header declares {w} x {h} pixels: {} MiB as 8-bit RGB, over the limit of \
                 {} MiB",
                rgb >> 20,
                limits.max_alloc >> 20
            )));
        }
    }
    let image = reader.decode().map_err(|e| decode_err(e.to_string()))?;
    swav_augment::to_rgb8(&image).map_err(|e| decode_err(e.to_string()))
}

/// A subset of a dataset, by indices (for label fractions and splits).
#[derive(Debug, Clone)]
pub struct Subset<D> {
    inner: D,
    indices: Vec<usize>,
}

impl<D: ImageDataset> Subset<D> {
    /// The samples of `inner` at `indices`, in that order.
    pub fn new(inner: D, indices: Vec<usize>) -> Result<Self, DataError> {
        if let Some(&bad) = indices.iter().find(|&&i| i >= inner.len()) {
            return Err(DataError::OutOfRange {
                index: bad,
                len: inner.len(),
            });
        }
        Ok(Self { inner, indices })
    }

    /// The indices into the inner dataset.
    pub fn indices(&self) -> &[usize] {
        &self.indices
    }
}

impl<D: ImageDataset> ImageDataset for Subset<D> {
    fn len(&self) -> usize {
        self.indices.len()
    }
    fn get(&self, index: usize) -> Result<Sample, DataError> {
        let i = *self.indices.get(index).ok_or(DataError::OutOfRange {
            index,
            len: self.indices.len(),
        })?;
        self.inner.get(i)
    }
    fn num_classes(&self) -> Option<usize> {
        self.inner.num_classes()
    }
    fn label(&self, index: usize) -> Option<usize> {
        self.indices.get(index).and_then(|&i| self.inner.label(i))
    }
    fn describe(&self, index: usize) -> String {
        match self.indices.get(index) {
            Some(&i) => self.inner.describe(i),
            None => format!("subset sample {index} (out of range)"),
        }
    }
}

/// Any dataset with its labels hidden, for pretraining.
#[derive(Debug, Clone)]
pub struct Unlabeled<D>(pub D);

impl<D: ImageDataset> ImageDataset for Unlabeled<D> {
    fn len(&self) -> usize {
        self.0.len()
    }
    fn get(&self, index: usize) -> Result<Sample, DataError> {
        let mut s = self.0.get(index)?;
        s.label = None;
        Ok(s)
    }
    fn num_classes(&self) -> Option<usize> {
        None
    }
    fn label(&self, _index: usize) -> Option<usize> {
        None
    }
    fn describe(&self, index: usize) -> String {
        self.0.describe(index)
    }
}
