//! The error type of `swav-core`.

use thiserror::Error;

/// Everything in `swav-core` that a user's input can get wrong.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum CoreError {
    /// A configuration value is out of its valid range; `field` names it as in the config file.
    #[error("invalid config: `{field}` {reason}")]
    InvalidConfig {
        /// The field's name, as written in a config file.
        field: &'static str,
        /// What is wrong with its value.
        reason: String,
    },
    /// A saved queue does not fit the queue it is loaded into.
    #[error("queue state does not match: {0}")]
    QueueState(String),
    /// A config file could not be parsed.
    #[error("cannot parse config: {0}")]
    Parse(String),
}

impl CoreError {
    /// Shorthand for [`CoreError::InvalidConfig`].
    pub(crate) fn config(field: &'static str, reason: impl Into<String>) -> Self {
        Self::InvalidConfig {
            field,
            reason: reason.into(),
        }
    }
}
