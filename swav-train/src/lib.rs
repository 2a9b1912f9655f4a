//! The SwAV training run (Caron et al., 2020): the step in the original's order, LARS / SGD /
//! AdamW with PyTorch's semantics, the warmup + cosine schedule, prototype freezing, the queue,
//! atomic checkpoints with exact resume, metrics, plots, the kNN monitor and a summary.
//!
//! - [`TrainConfig`]: `[swav]` ([`swav_core::SwavConfig`]), `[data]` and `[run]` sections from
//!   TOML with `key=value` overrides.
//! - [`open_data`]: the datasets a config names.
//! - [`train`]: the run, over any [`swav_models::Backbone`], on one worker or several
//!   ([`WorkerGroup`]: data-parallel, with the distributed Sinkhorn).

mod amp;
mod config;
mod data;
mod error;
mod optim;
mod parallel;
mod progress;
mod schedule;
mod semisup;
mod trainer;

pub use amp::{LossScaler, autocast_for};
pub use config::{DataConfig, DataKind, RunConfig, TrainConfig};
pub use data::{DynDataset, RunData, open_data};
pub use error::TrainError;
pub use optim::{GradSource, OptimConfig, Optimizer};
pub use parallel::{ParallelStep, WorkerGroup};
pub use schedule::LrSchedule;
pub use semisup::{Classifier, SemiSupConfig, SemiSupEpoch, SemiSupResult, finetune};
pub use swav_eval::plot::line_chart;
pub use trainer::{
    CHECKPOINT_FILE, CONFIG_FILE, METRICS_FILE, RunOptions, RunSummary, SUMMARY_FILE, TrainOutcome,
    TrainState, checkpoint_config, device_for, device_named, devices_for, eval_transform_for,
    forward_loss, knn_monitor, multicrop_for, normalize_heads, seeded_init, spec_for, train,
};
