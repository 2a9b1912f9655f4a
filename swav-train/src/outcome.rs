//! What a run is started with beyond its configuration ([`RunOptions`]) and what it gives
//! back ([`TrainOutcome`]: the model and the [`RunSummary`] that `summary.json` holds).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use swav_eval::KnnResult;
use swav_models::SwavModel;

use crate::stop::{Preempted, StopRequest};

/// How a run is started, beyond its configuration.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Resume from this checkpoint (a file, or a run folder holding one).
    pub resume_from: Option<PathBuf>,
    /// Stop after this many iterations of this process without writing anything more, as a
    /// kill would (for tests of resume).
    pub stop_after: Option<usize>,
    /// Stop cleanly when this is requested (a preemption signal): the step in progress is
    /// finished, a checkpoint is written, the summary (`preempted`) says where, and the run
    /// returns normally with `completed` false.
    pub stop: Option<StopRequest>,
    /// This process's place in a group of processes, one data-parallel worker each (`mpirun`;
    /// [`crate::mpi::MpiProcesses`]). `swav.world_size` must equal the group's size; this
    /// process trains worker `rank` on `run.devices[rank]` (or `run.device`; for a GPU, the one
    /// of the process's rank on its machine), and only rank 0
    /// writes the run folder (config, metrics, plots, checkpoints with every rank's queue) and
    /// runs the kNN monitor.
    pub processes: Option<crate::process::SharedProcessGroup>,
}

/// What a run did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    /// Whether all epochs were trained (false when stopped early by [`RunOptions::stop_after`]
    /// or [`RunOptions::stop`]).
    pub completed: bool,
    /// Where the run stopped on a [`RunOptions::stop`] request, and its checkpoint.
    #[serde(default)]
    pub preempted: Option<Preempted>,
    /// Epochs configured.
    pub epochs: usize,
    /// Iterations done in all.
    pub iterations: usize,
    /// Iterations done by this process.
    pub iterations_this_session: usize,
    /// The iteration this process resumed from, if it did.
    pub resumed_from_iteration: Option<usize>,
    /// Wall time of this process's training, seconds.
    pub time_s: f64,
    /// Images per second in this process (each image gives all its crops).
    pub images_per_s: f64,
    /// Share of step time spent waiting for data.
    pub data_time_fraction: f64,
    /// Loss of the last iteration.
    pub last_loss: Option<f64>,
    /// Mean loss of the last epoch trained.
    pub last_epoch_loss: Option<f64>,
    /// ln K of the first head: the loss of a collapsed model.
    pub collapse_loss: f64,
    /// Files skipped as unreadable, each once, with the epochs it was met in and the reason.
    pub skipped_files: Vec<String>,
    /// Last kNN monitor result.
    pub knn: Option<KnnResult>,
    /// The kNN monitor on the same network at random initialisation, measured when the run
    /// started (when the monitor runs and the data has labelled splits).
    #[serde(default)]
    pub knn_baseline: Option<KnnResult>,
    /// BatchNorm statistics mode.
    pub batchnorm: String,
    /// The backend that ran the first worker, as burn names it (compiler, fusion).
    #[serde(default)]
    pub backend: String,
    /// Where the GPU runtime kept compiled kernels and autotune results (GPU runs).
    #[serde(default)]
    pub kernel_cache: Option<PathBuf>,
    /// Compute precision: `f32`, or the half type of mixed precision and its loss scaling.
    #[serde(default)]
    pub precision: String,
    /// Warnings raised (collapse, ...).
    pub warnings: Vec<String>,
    /// The data.
    pub data: String,
    /// The run folder.
    pub out_dir: PathBuf,
    /// The checkpoint.
    pub checkpoint: PathBuf,
    /// The files the metric sinks wrote besides `metrics.jsonl` (PNG plots, CSV tables,
    /// TensorBoard event files).
    pub plots: Vec<PathBuf>,
    /// The metrics file.
    pub metrics: PathBuf,
}

/// The trained model and the summary.
pub struct TrainOutcome<E> {
    /// The model after the last iteration.
    pub model: SwavModel<E>,
    /// The summary.
    pub summary: RunSummary,
}
