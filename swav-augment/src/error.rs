//! The error type of `swav-augment`.

use thiserror::Error;

/// What can go wrong when augmenting an image or building a pipeline.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum AugmentError {
    /// The input image has no pixels.
    #[error("image is empty ({width} x {height})")]
    EmptyImage {
        /// Width of the offending image.
        width: u32,
        /// Height of the offending image.
        height: u32,
    },
    /// A parameter is out of its valid range; `field` names it as in a config file.
    #[error("invalid augmentation parameter `{field}`: {reason}")]
    InvalidParameter {
        /// The parameter's name.
        field: &'static str,
        /// What is wrong with its value.
        reason: String,
    },
    /// An output buffer has the wrong length.
    #[error("output buffer for crop {crop} holds {got} floats, the crop needs {want}")]
    OutputSize {
        /// Index of the crop.
        crop: usize,
        /// Length given.
        got: usize,
        /// Length needed (3 x size x size).
        want: usize,
    },
    /// The resizer refused its input (should not happen for valid sizes).
    #[error("resize failed: {0}")]
    Resize(String),
}

impl AugmentError {
    pub(crate) fn param(field: &'static str, reason: impl Into<String>) -> Self {
        Self::InvalidParameter {
            field,
            reason: reason.into(),
        }
    }
}
