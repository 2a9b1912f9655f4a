//! Shared test data: Shapes10 with one unreadable sample.

use swav_data::{DataError, ImageDataset, Sample, Shapes10};

/// Shapes10 whose sample `broken` cannot be read; samples are described as
/// `{prefix}{index}.png`.
pub struct WithBroken {
    /// The data.
    pub inner: Shapes10,
    /// The unreadable sample.
    pub broken: usize,
    /// File-name prefix of the descriptions.
    pub prefix: &'static str,
}

impl ImageDataset for WithBroken {
    fn len(&self) -> usize {
        self.inner.len()
    }
    fn get(&self, index: usize) -> Result<Sample, DataError> {
        if index == self.broken {
            return Err(DataError::InvalidParameter {
                field: "image",
                reason: "truncated file (test)".into(),
            });
        }
        self.inner.get(index)
    }
    fn num_classes(&self) -> Option<usize> {
        self.inner.num_classes()
    }
    fn label(&self, index: usize) -> Option<usize> {
        self.inner.label(index)
    }
    fn describe(&self, index: usize) -> String {
        format!("{}{index}.png", self.prefix)
    }
}
