//! The error type of `swav-train`.

use std::path::PathBuf;

use thiserror::Error;

/// What can stop a training run. Every variant says what to fix.
#[derive(Debug, Error)]
pub enum TrainError {
    /// The configuration is invalid (refused before any work).
    #[error(transparent)]
    Config(#[from] swav_core::CoreError),
    /// A configuration file could not be read.
    #[error("{}: cannot read the config: {source}", path.display())]
    ConfigRead {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// A configuration is not TOML, or does not fit the schema (an unknown field, a value of
    /// the wrong type).
    #[error("invalid config: {source}")]
    ConfigSyntax {
        /// The parser's error, with the line and field.
        #[source]
        source: toml::de::Error,
    },
    /// A configuration setting (a field or a section) is refused.
    #[error("invalid config: `{key}` {reason}")]
    ConfigValue {
        /// The setting, as `section.field` (or `[section]`).
        key: String,
        /// Why, and what it may be.
        reason: String,
    },
    /// A `key=value` override is refused.
    #[error("override `{text}`: {reason}")]
    Override {
        /// The override as given.
        text: String,
        /// Why.
        reason: String,
    },
    /// An error in a configuration file, with the file.
    #[error("{}: {source}", path.display())]
    InConfigFile {
        /// The file.
        path: PathBuf,
        /// What is wrong in it.
        #[source]
        source: Box<TrainError>,
    },
    /// The configuration could not be written as TOML.
    #[error("the config cannot be written as TOML: {0}")]
    ConfigWrite(#[from] toml::ser::Error),
    /// A device named in the config cannot be used by this binary or on this machine.
    #[error("{field} = `{name}`: {reason}")]
    Device {
        /// The setting that names it (`run.device`, `run.devices`).
        field: String,
        /// The name.
        name: String,
        /// Why, and what to do.
        reason: String,
    },
    /// The data gives no complete batch per worker.
    #[error(
        "the data gives no complete batch of {batch_size} per worker ({workers} workers): use a \
         smaller swav.batch_size or more images"
    )]
    NoCompleteBatch {
        /// Images per worker and batch.
        batch_size: usize,
        /// Workers.
        workers: usize,
    },
    /// A group of processes does not match the configuration's workers.
    #[error(
        "{processes} processes, but swav.world_size is {world_size}: a group of processes runs \
         one worker each"
    )]
    ProcessCount {
        /// Processes in the group.
        processes: usize,
        /// Workers the config asks for.
        world_size: usize,
    },
    /// A labelled sample's label does not fit the task.
    #[error("{sample}: {reason}")]
    Label {
        /// The sample (its file or index).
        sample: String,
        /// What is wrong with its label.
        reason: String,
    },
    /// Semi-supervised fine-tuning refused its settings or inputs.
    #[error("semi-supervised fine-tuning: {0}")]
    FineTune(String),
    /// A tensor's values could not be read back to the host.
    #[error("reading {what} back from the device: {reason}")]
    TensorRead {
        /// Which tensor.
        what: String,
        /// The backend's error.
        reason: String,
    },
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
    /// A refused configuration setting.
    pub(crate) fn config(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::ConfigValue {
            key: key.into(),
            reason: reason.into(),
        }
    }

    /// A refused override.
    pub(crate) fn overriding(text: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Override {
            text: text.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn io(path: &std::path::Path, e: impl std::fmt::Display) -> Self {
        Self::Io {
            path: path.display().to_string(),
            reason: e.to_string(),
        }
    }
}
