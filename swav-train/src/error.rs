//! The error type of `swav-train`.

use thiserror::Error;

/// What can stop a training run. Every variant says what to fix.
#[derive(Debug, Error)]
pub enum TrainError {
    /// The configuration is invalid (refused before any work).
    #[error(transparent)]
    Config(#[from] swav_core::CoreError),
    /// A configuration file or override could not be read.
    #[error("{0}")]
    ConfigFile(String),
    /// A dataset could not be opened.
    #[error(transparent)]
    Data(#[from] swav_data::DataError),
    /// The augmentation settings are invalid.
    #[error(transparent)]
    Augment(#[from] swav_augment::AugmentError),
    /// A model or weights file problem.
    #[error(transparent)]
    Model(#[from] swav_models::ModelError),
    /// An evaluation (the kNN monitor) failed.
    #[error(transparent)]
    Eval(#[from] swav_eval::EvalError),
    /// A checkpoint could not be read back into this run.
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// A file of the run folder could not be written.
    #[error("{path}: {reason}")]
    Io {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// A data-parallel worker stopped or answered out of turn.
    #[error("data-parallel workers: {0}")]
    Parallel(String),
    /// The loss became NaN or infinite; the diagnostic says where and with what values.
    #[error("non-finite loss, training stopped: {0}")]
    NonFinite(String),
}

impl TrainError {
    pub(crate) fn io(path: &std::path::Path, e: impl std::fmt::Display) -> Self {
        Self::Io {
            path: path.display().to_string(),
            reason: e.to_string(),
        }
    }
}
