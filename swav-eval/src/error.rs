//! The error type of `swav-eval`.

use thiserror::Error;

/// What an evaluation can get wrong.
#[derive(Debug, Error)]
pub enum EvalError {
    /// A dataset could not be opened or read.
    #[error(transparent)]
    Data(#[from] swav_data::DataError),
    /// A model or weights file is invalid.
    #[error(transparent)]
    Model(#[from] swav_models::ModelError),
    /// An image transform failed.
    #[error(transparent)]
    Augment(#[from] swav_augment::AugmentError),
    /// A parameter is invalid; `field` names it.
    #[error("invalid evaluation setting: `{field}` {reason}")]
    Invalid {
        /// The setting.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A file could not be written.
    #[error("{path}: {reason}")]
    Io {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
}

impl EvalError {
    pub(crate) fn io(path: &std::path::Path, e: impl std::fmt::Display) -> Self {
        Self::Io {
            path: path.display().to_string(),
            reason: e.to_string(),
        }
    }

    pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Self::Invalid {
            field,
            reason: reason.into(),
        }
    }
}
