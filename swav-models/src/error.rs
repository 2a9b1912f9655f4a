//! The error type of `swav-models`.

use thiserror::Error;

/// What a model configuration or a weights file can get wrong.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum ModelError {
    /// A configuration value is invalid; `field` names it.
    #[error("invalid model config: `{field}` {reason}")]
    InvalidConfig {
        /// The field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A weights file could not be loaded, or does not fit the model.
    #[error("{path}: {reason}")]
    Weights {
        /// The file.
        path: String,
        /// What is wrong (missing, mismatched or extra keys, with their names).
        reason: String,
    },
}
