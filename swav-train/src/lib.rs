//! The SwAV training run (Caron et al., 2020): the step in the original's order, LARS / SGD /
//! AdamW with PyTorch's semantics, the warmup + cosine schedule, prototype freezing, the queue,
//! atomic checkpoints with exact resume, metrics, the kNN monitor and a summary.
//!
//! The run is made of parts, each in its own module:
//!
//! - [`TrainConfig`]: `[swav]` ([`swav_core::SwavConfig`]), `[data]` and `[run]` sections from
//!   TOML with `key=value` overrides; [`open_data`]: the datasets a config names.
//! - [`BatchSource`]: where batches come from ([`MultiCropSource`], the multi-crop loader, by
//!   default; a user's own views through the same trait).
//! - [`forward_loss`]: the SwAV objective of one batch, run by [`WorkerGroup`] on one worker or
//!   several (data-parallel, with the distributed Sinkhorn and synchronised BatchNorm).
//! - [`Optimizer`], [`LrSchedule`], [`LossScaler`]: the update.
//! - [`MetricsSink`]: where metrics go (`metrics.jsonl` always; PNG plots, CSV and TensorBoard
//!   event files as `[run] metrics` chooses).
//! - [`TrainObserver`]: progress for the caller to show (the library prints nothing).
//! - [`StopRequest`]: a clean stop from outside (preemption): the step in progress finishes, a
//!   checkpoint is written and the summary says where the run stopped.
//! - [`Trainer`] puts them together; [`train`] runs it with the default parts.
//! - [`compare`]: one step's loss, codes and gradients on two backends side by side (checking a
//!   GPU backend or a precision against the CPU).

mod adapters;
mod amp;
pub mod compare;
mod config;
mod data;
mod device;
mod diagnostics;
mod error;
mod fault;
mod metrics;
#[cfg(feature = "mpi")]
pub mod mpi;
mod objective;
mod observer;
mod optim;
mod outcome;
mod parallel;
pub mod process;
mod run_dir;
mod schedule;
mod semisup;
mod source;
mod stop;
pub mod tensorboard;
mod train_loop;
mod trainer;

pub use adapters::{eval_transform_for, knn_monitor, multicrop_for, spec_for};
pub use amp::{LossScaler, autocast_for};
pub use config::{CIFAR10_CPU_RECIPE, DataConfig, DataKind, RunConfig, TrainConfig};
pub use data::{DynDataset, RunData, open_data};
pub use device::{
    GpuBuild, configure_kernel_cache, device_for, device_named, devices_for, gpu_build,
    kernel_cache_dir, seeded_init, uses_gpu,
};
pub use error::TrainError;
pub use fault::{FaultHook, FaultTarget, InjectedFault};
pub use metrics::{
    Csv, JsonLines, METRICS_FILE, MetricsSink, Plots, Record, SINK_NAMES, TensorBoard, sinks_named,
};
pub use objective::{forward_loss, normalize_heads};
pub use observer::{Silent, StepProgress, TrainObserver};
pub use optim::{GradSource, OptimConfig, Optimizer};
pub use outcome::{RunOptions, RunSummary, TrainOutcome};
pub use parallel::{ParallelStep, WorkerGroup};
pub use run_dir::{
    CHECKPOINT_FILE, CONFIG_FILE, PREVIOUS_CHECKPOINT_FILE, SUMMARY_FILE, TrainState,
    checkpoint_config,
};
pub use schedule::LrSchedule;
pub use semisup::{Classifier, SemiSupConfig, SemiSupEpoch, SemiSupResult, finetune};
pub use source::{BatchSource, MultiCropSource, group_tensor};
pub use stop::{Preempted, StopRequest};
pub use swav_eval::plot::line_chart;
pub use trainer::{Trainer, train};
