//! The error type of `swav-data`.

use std::path::PathBuf;

use thiserror::Error;

/// What can go wrong when opening or reading a dataset. Every variant that concerns a file
/// names it.
#[derive(Debug, Error)]
pub enum DataError {
    /// A file or folder could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The dataset root does not exist or is not a folder.
    #[error("dataset root {path} does not exist or is not a folder")]
    MissingRoot {
        /// The root given.
        path: PathBuf,
    },
    /// An ImageFolder root holds no class folder.
    #[error("{path}: no class folders (expected root/<class>/<image files>)")]
    NoClasses {
        /// The root.
        path: PathBuf,
    },
    /// A class folder holds no image file.
    #[error("{path}: class folder has no image files (jpg, jpeg, png, bmp, webp)")]
    EmptyClass {
        /// The class folder.
        path: PathBuf,
    },
    /// A binary dataset file does not have the size its format implies.
    #[error("{path}: {size} bytes is not a whole number of {record}-byte records ({what})")]
    BadFileSize {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// Bytes per record.
        record: u64,
        /// What the file was expected to hold.
        what: String,
    },
    /// A file's content is not what its format says.
    #[error("{path}: {reason}")]
    BadFormat {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// An image could not be decoded (truncated, not an image, too large for the limits).
    #[error("{path}: cannot decode image: {reason}")]
    Decode {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A sample index is out of range.
    #[error("sample {index} is out of range (dataset has {len})")]
    OutOfRange {
        /// The index asked for.
        index: usize,
        /// The dataset's length.
        len: usize,
    },
    /// A parameter is invalid; `field` names it.
    #[error("invalid `{field}`: {reason}")]
    InvalidParameter {
        /// The parameter.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// Augmentation failed.
    #[error(transparent)]
    Augment(#[from] swav_augment::AugmentError),
}

impl DataError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn param(field: &'static str, reason: impl Into<String>) -> Self {
        Self::InvalidParameter {
            field,
            reason: reason.into(),
        }
    }
}
