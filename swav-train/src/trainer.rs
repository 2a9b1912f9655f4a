//! The training run: the SwAV step in the original's order, checkpoints and resume, metrics,
//! plots, the kNN monitor and the final summary.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::Module;
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};
use swav_augment::{CropGroup, MultiCrop, MultiCropConfig};
use swav_core::{
    AllReduce, EmbeddingQueue, QueueState, SwavConfig, SwavLossOutput, normalize_prototypes,
    swav_loss_multi_head,
};
use swav_data::{Loader, LoaderConfig};
use swav_eval::{
    EvalTransform, ExtractConfig, KnnConfig, KnnResult, extract_features, knn_classify,
};
use swav_models::{
    Backbone, SPEC_KEY, StateArray, SwavModel, SwavModelSpec, read_checkpoint, write_checkpoint,
};

use crate::TrainError;
use crate::config::TrainConfig;
use crate::data::RunData;
use crate::optim::{OptimConfig, Optimizer};
use crate::parallel::WorkerGroup;
use crate::progress::Progress;
use crate::schedule::LrSchedule;
use swav_eval::plot::line_chart;

/// File names inside a run folder.
pub const CHECKPOINT_FILE: &str = "checkpoint.bpk";
/// The resolved configuration of the run.
pub const CONFIG_FILE: &str = "config.toml";
/// Metrics, one JSON object per line.
pub const METRICS_FILE: &str = "metrics.jsonl";
/// The final summary.
pub const SUMMARY_FILE: &str = "summary.json";
const STATE_KEY: &str = "swav.train_state";

/// The training configuration stored in a checkpoint written by [`train`] (`None` for a
/// checkpoint from elsewhere, e.g. an exported or imported model).
pub fn checkpoint_config(
    ckpt: &swav_models::Checkpoint,
) -> Result<Option<TrainConfig>, TrainError> {
    let Some(text) = ckpt.metadata.get(STATE_KEY) else {
        return Ok(None);
    };
    let state: TrainState = serde_json::from_str(text).map_err(|e| {
        TrainError::Checkpoint(format!(
            "{}: bad training state: {e}",
            ckpt.path().display()
        ))
    })?;
    Ok(Some(state.config))
}

/// How a run is started, beyond its configuration.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Resume from this checkpoint (a file, or a run folder holding one).
    pub resume_from: Option<PathBuf>,
    /// Stop after this many iterations of this process without writing anything more, as a
    /// kill would (for tests of resume).
    pub stop_after: Option<usize>,
}

/// Where the run was when a checkpoint was written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Epoch to continue in.
    pub epoch: usize,
    /// First batch of that epoch still to train on.
    pub next_batch: usize,
    /// Iterations done.
    pub iteration: usize,
    /// Seconds of training so far (all sessions).
    pub elapsed_s: f64,
    /// The run's configuration (its `[swav]` and `[data]` must match on resume).
    pub config: TrainConfig,
    /// Optimiser step counts by parameter path.
    pub optim_steps: BTreeMap<String, u64>,
    /// Queue rows written per slot, when the queue exists (rank 0's queue).
    pub queue_filled: Option<Vec<usize>>,
    /// The same for the queues of ranks 1, 2, ... of a data-parallel run.
    #[serde(default)]
    pub queue_filled_ranks: Vec<Vec<usize>>,
    /// Iterations per epoch when written.
    pub iters_per_epoch: usize,
    /// f16 loss scaling state, when the run uses it.
    #[serde(default)]
    pub loss_scaler: Option<crate::LossScaler>,
}

/// What a run did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    /// Whether all epochs were trained (false when stopped early by [`RunOptions::stop_after`]).
    pub completed: bool,
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
    /// BatchNorm statistics mode.
    pub batchnorm: String,
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
    /// The plots.
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

/// Serialises "seed the device, then draw initial weights": burn's generator belongs to the
/// device, so two runs initialising at once in one process (tests, a sweep) would otherwise
/// interleave their draws and lose reproducibility.
static INIT_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Seeds `device`'s generator with `seed`, builds a module with `init` and draws all its
/// (lazily initialised) parameters while no other seeded initialisation of this crate runs, so
/// the weights depend on the seed alone.
pub fn seeded_init<M: Module, E>(
    device: &Device,
    seed: u64,
    init: impl FnOnce(&Device) -> Result<M, E>,
) -> Result<M, E> {
    struct Touch;
    impl burn::module::ModuleVisitor for Touch {
        fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<D>>) {
            drop(param.val());
        }
    }
    let _guard = INIT_LOCK
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    device.seed(seed);
    let module = init(device)?;
    module.visit(&mut Touch);
    Ok(module)
}

/// The device of a config's `run.device` (the first worker's, and the one that evaluates).
pub fn device_for(config: &TrainConfig) -> Result<Device, TrainError> {
    device_named(&config.run.device, "run.device")
}

/// The device a name in the config designates: `cpu`, `wgpu` / `gpu`, `wgpu:N`, or
/// `ws://host:port` (a remote server, connected here).
pub fn device_named(name: &str, field: &str) -> Result<Device, TrainError> {
    match name {
        "cpu" => Ok(Device::flex()),
        #[cfg(feature = "wgpu")]
        "wgpu" | "gpu" => Ok(Device::wgpu(burn::tensor::DeviceKind::DefaultDevice)),
        #[cfg(feature = "wgpu")]
        other if other.starts_with("wgpu:") => {
            let index = other["wgpu:".len()..].parse::<usize>().map_err(|_| {
                TrainError::ConfigFile(format!(
                    "{field} = `{other}`: the GPU index after `wgpu:` must be a number"
                ))
            })?;
            Ok(Device::wgpu(burn::tensor::DeviceKind::DiscreteGpu(index)))
        }
        #[cfg(feature = "remote")]
        other if other.starts_with("ws://") => {
            let host = burn::tensor::remote::RemoteHost::websocket(other);
            Device::remote_options(&host).init().map_err(|e| {
                TrainError::ConfigFile(format!(
                    "{field} = `{other}`: cannot connect to the remote server ({e}); is \
                     `swav-remote-server` running there and the port open?"
                ))
            })
        }
        other => Err(TrainError::ConfigFile(format!(
            "{field} = `{other}` is not built into this binary ({})",
            match (cfg!(feature = "wgpu"), cfg!(feature = "remote")) {
                (true, true) => "choose cpu, wgpu, wgpu:N or ws://host:port",
                (true, false) =>
                    "choose cpu, wgpu or wgpu:N; rebuild with `--features remote` for ws://",
                (false, true) =>
                    "choose cpu or ws://host:port; rebuild with `--features wgpu` for GPUs",
                (false, false) =>
                    "choose cpu, or rebuild with `--features wgpu` for GPUs through wgpu \
                                   (`--features remote` for ws:// servers)",
            }
        ))),
    }
}

/// The devices of a run's workers, by rank: `swav.world_size` of them. `run.devices` names
/// them when given. Otherwise, on the CPU every worker uses the one `flex` device (burn's CPU
/// device has no index; the workers are threads); with `wgpu`, worker r uses GPU r (`wgpu:N`:
/// GPUs N, N + 1, ...).
pub fn devices_for(config: &TrainConfig) -> Result<Vec<Device>, TrainError> {
    if !config.run.devices.is_empty() {
        return config
            .run
            .devices
            .iter()
            .enumerate()
            .map(|(rank, d)| device_named(d, &format!("run.devices[{rank}]")))
            .collect();
    }
    let first = device_for(config)?;
    let n = config.swav.world_size.max(1);
    if n == 1 || config.run.device == "cpu" {
        return Ok(vec![first; n]);
    }
    #[cfg(feature = "wgpu")]
    {
        let start = config
            .run
            .device
            .strip_prefix("wgpu:")
            .and_then(|i| i.parse::<usize>().ok())
            .unwrap_or(0);
        Ok((start..start + n)
            .map(|i| Device::wgpu(burn::tensor::DeviceKind::DiscreteGpu(i)))
            .collect())
    }
    #[cfg(not(feature = "wgpu"))]
    Ok(vec![first; n])
}

/// Name of worker `rank`'s queue in a checkpoint.
fn queue_array_name(rank: usize) -> String {
    if rank == 0 {
        "queue".into()
    } else {
        format!("queue.rank{rank}")
    }
}

/// The multi-crop of a config: the `[data] augment` pipeline with the `[swav]` crops.
pub fn multicrop_for(config: &TrainConfig) -> Result<MultiCropConfig, TrainError> {
    let mut mc = MultiCropConfig::preset(&config.data.augment)?;
    let s = &config.swav;
    mc.groups = (0..s.nmb_crops.len())
        .map(|i| CropGroup {
            count: s.nmb_crops[i],
            size: s.size_crops[i] as u32,
            min_scale: s.min_scale_crops[i],
            max_scale: s.max_scale_crops[i],
        })
        .collect();
    Ok(mc)
}

/// The evaluation transform matching a config's crops: small images whole, large ones
/// resized to 256 and center-cropped to 224.
pub fn eval_transform_for(config: &TrainConfig) -> Result<EvalTransform, TrainError> {
    let mc = MultiCropConfig::preset(&config.data.augment)?;
    let side = config.swav.size_crops.first().copied().unwrap_or(224) as u32;
    Ok(if side <= 96 {
        EvalTransform {
            resize: side,
            crop: side,
            normalize: mc.normalize,
        }
    } else {
        EvalTransform {
            normalize: mc.normalize,
            ..EvalTransform::imagenet()
        }
    })
}

/// The model spec a config describes (stored in checkpoints).
pub fn spec_for(config: &TrainConfig) -> SwavModelSpec {
    SwavModelSpec {
        arch: config.swav.arch.clone(),
        base_width: config.swav.base_width,
        cifar_stem: config.swav.cifar_stem,
        hidden_mlp: config.swav.hidden_mlp,
        feat_dim: config.swav.feat_dim,
        prototypes: config.swav.nmb_prototypes.clone(),
    }
}

/// kNN accuracy of `backbone` on the monitor splits of `data` (None when it has none).
pub fn knn_monitor<E: Backbone + Module>(
    backbone: &E,
    config: &TrainConfig,
    data: &RunData,
    device: &Device,
) -> Result<Option<KnnResult>, TrainError> {
    let (Some(train), Some(test), Some(classes)) = (&data.knn_train, &data.knn_test, data.classes)
    else {
        return Ok(None);
    };
    let extract = ExtractConfig {
        batch_size: 256,
        workers: workers(config),
        transform: eval_transform_for(config)?,
    };
    let bank = extract_features(backbone, train.as_ref(), &extract, device)?;
    let queries = extract_features(backbone, test.as_ref(), &extract, device)?;
    let knn = KnnConfig {
        k: config.run.knn_k,
        temperature: config.run.knn_temperature,
        block: 256,
    };
    Ok(Some(knn_classify(&bank, &queries, classes, &knn, device)?))
}

fn workers(config: &TrainConfig) -> usize {
    if config.data.workers > 0 {
        config.data.workers
    } else {
        std::thread::available_parallelism().map_or(2, |n| n.get())
    }
}

/// The SwAV objective of one batch, in the original's order: the multi-crop forward of
/// `groups` (one tensor per resolution group, crop-major, `batch` images), then for each prototype head the
/// codes of `crops_for_assign` without gradient (with the queue when it is full) and the
/// swapped-prediction loss. The prototypes must have been normalised ([`normalize_heads`]).
/// `reduce` combines the Sinkhorn's sums over the data-parallel workers
/// ([`swav_core::SingleWorker`] for one).
/// Returns each head's scores and the loss with its codes.
pub fn forward_loss<E: Backbone + Module, R: AllReduce>(
    model: &SwavModel<E>,
    groups: &[Tensor<4>],
    batch: usize,
    s: &SwavConfig,
    queue: Option<&mut EmbeddingQueue>,
    reduce: &R,
) -> (Vec<Tensor<2>>, SwavLossOutput) {
    let out = model.forward(groups);
    let heads: Vec<(Tensor<2>, Tensor<2>)> = out
        .scores
        .iter()
        .zip(&model.prototypes.heads)
        .map(|(sc, h)| (sc.clone(), h.weight.val().detach()))
        .collect();
    let lo = swav_loss_multi_head(
        &heads,
        out.embeddings,
        batch,
        &s.crops_for_assign,
        s.temperature,
        &s.sinkhorn(),
        queue,
        reduce,
    );
    (out.scores, lo)
}

/// Normalises every prototype head (without gradient), as the original does before each step.
pub fn normalize_heads<E: Module>(mut model: SwavModel<E>) -> SwavModel<E> {
    model.prototypes.heads = model
        .prototypes
        .heads
        .into_iter()
        .map(normalize_prototypes)
        .collect();
    model
}

/// Paths of the module's float tensors that hold NaN or infinity.
fn non_finite<M: Module>(module: &M) -> Vec<String> {
    struct V {
        path: Vec<String>,
        bad: Vec<String>,
    }
    impl burn::module::ModuleVisitor for V {
        fn enter_module(&mut self, name: &str, _container_type: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<D>>) {
            let t = param.val();
            let has_bad = t.is_finite().bool_not().any().into_scalar::<bool>();
            if has_bad {
                self.bad.push(self.path.join("."));
            }
        }
    }
    let mut v = V {
        path: Vec::new(),
        bad: Vec::new(),
    };
    module.visit(&mut v);
    v.bad
}

fn to_vec(t: Tensor<2>) -> Vec<f32> {
    t.into_data().try_to_vec_as::<f32>().unwrap_or_default()
}

/// Prototypes in use (distinct arg-max over the batch) and the mean entropy (nats) of the
/// samples' codes: ln K when every code is uniform (no sample is assigned to anything, the
/// collapsed state), near 0 when each sample is assigned to one prototype.
fn code_stats(codes: Tensor<2>) -> (usize, f64) {
    let [b, k] = codes.dims();
    let v = to_vec(codes);
    if v.len() != b * k || b == 0 {
        return (0, 0.0);
    }
    let mut used = vec![false; k];
    let mut entropy = 0f64;
    for row in v.chunks(k) {
        let mut best = 0;
        let total: f64 = row.iter().map(|&x| x as f64).sum::<f64>().max(1e-30);
        for (j, &x) in row.iter().enumerate() {
            let p = x as f64 / total;
            if p > 0.0 {
                entropy -= p * p.ln() / b as f64;
            }
            if x > row[best] {
                best = j;
            }
        }
        used[best] = true;
    }
    (used.iter().filter(|&&u| u).count(), entropy)
}

struct Metrics {
    path: PathBuf,
    file: std::fs::File,
}

impl Metrics {
    /// Opens the metrics file, keeping only lines up to `iteration` (a resumed run replays
    /// the iterations after its checkpoint).
    fn open(
        path: &Path,
        keep_until: Option<usize>,
    ) -> Result<(Self, Vec<serde_json::Value>), TrainError> {
        let mut kept = Vec::new();
        if let (Some(limit), Ok(text)) = (keep_until, std::fs::read_to_string(path)) {
            for line in text.lines() {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
                    let it = v.get("iteration").and_then(|x| x.as_u64()).unwrap_or(0) as usize;
                    if it <= limit {
                        kept.push(v);
                    }
                }
            }
        }
        let mut file = std::fs::File::create(path).map_err(|e| TrainError::io(path, e))?;
        for v in &kept {
            writeln!(file, "{v}").map_err(|e| TrainError::io(path, e))?;
        }
        Ok((
            Self {
                path: path.to_path_buf(),
                file,
            },
            kept,
        ))
    }

    fn write(&mut self, v: &serde_json::Value) -> Result<(), TrainError> {
        writeln!(self.file, "{v}").map_err(|e| TrainError::io(&self.path, e))
    }
}

fn series(history: &[serde_json::Value], kind: &str, x: &str, y: &str) -> Vec<(f64, f64)> {
    history
        .iter()
        .filter(|v| v.get("type").and_then(|t| t.as_str()) == Some(kind))
        .filter_map(|v| Some((v.get(x)?.as_f64()?, v.get(y)?.as_f64()?)))
        .collect()
}

fn write_plots(dir: &Path, history: &[serde_json::Value]) -> Result<Vec<PathBuf>, TrainError> {
    let plots = [
        (
            "loss.png",
            "SWAV LOSS",
            "step",
            "iteration",
            "loss",
            "ITERATION",
        ),
        (
            "lr.png",
            "LEARNING RATE",
            "step",
            "iteration",
            "lr",
            "ITERATION",
        ),
        (
            "knn.png",
            "KNN TOP-1 (%)",
            "epoch",
            "epoch",
            "knn_top1",
            "EPOCH",
        ),
    ];
    let mut out = Vec::new();
    for (file, title, kind, x, y, xl) in plots {
        let p = dir.join(file);
        line_chart(&p, title, xl, &series(history, kind, x, y))?;
        out.push(p);
    }
    Ok(out)
}

fn checkpoint_path(p: &Path) -> PathBuf {
    if p.is_dir() {
        p.join(CHECKPOINT_FILE)
    } else {
        p.to_path_buf()
    }
}

/// Describes what differs between two configs' sections, field by field.
fn differences(a: &impl Serialize, b: &impl Serialize) -> Vec<String> {
    let (Ok(a), Ok(b)) = (serde_json::to_value(a), serde_json::to_value(b)) else {
        return vec!["(cannot compare)".into()];
    };
    match (a.as_object(), b.as_object()) {
        (Some(a), Some(b)) => a
            .iter()
            .filter(|(k, v)| b.get(*k) != Some(v))
            .map(|(k, v)| {
                format!(
                    "{k}: {v} in the checkpoint, {} now",
                    b.get(k).cloned().unwrap_or_default()
                )
            })
            .collect(),
        _ => vec![],
    }
}

/// Trains SwAV as `config` says, on `data`, with the backbone `build` makes (any
/// [`Backbone`]). Resumes from the run folder's checkpoint when `run.auto_resume` is set and
/// one exists, or from `options.resume_from`.
pub fn train<E, F>(
    config: &TrainConfig,
    data: &RunData,
    build: F,
    options: &RunOptions,
) -> Result<TrainOutcome<E>, TrainError>
where
    E: Backbone + Module + burn::module::ModuleDisplay + 'static,
    F: FnOnce(&Device) -> Result<E, TrainError>,
{
    config.validate()?;
    let s = &config.swav;
    let out_dir = config.run.out_dir.clone();
    std::fs::create_dir_all(&out_dir).map_err(|e| TrainError::io(&out_dir, e))?;
    let bases = devices_for(config)?;
    let world = bases.len();
    let base = bases[0].clone();
    let device = base.clone().autodiff();

    let multicrop = multicrop_for(config)?;
    // One loader per worker, each on its shard of the epoch; the decode threads are shared out.
    let decode_workers = workers(config).div_ceil(world).max(1);
    let loaders = (0..world)
        .map(|rank| {
            Loader::new(
                data.train.clone(),
                MultiCrop::new(multicrop.clone())?,
                LoaderConfig {
                    batch_size: s.batch_size,
                    seed: s.seed,
                    workers: decode_workers,
                    prefetch: config.data.prefetch,
                    shuffle: true,
                    drop_last: true,
                    rank,
                    world_size: world,
                    warn: rank == 0,
                },
            )
            .map_err(TrainError::from)
        })
        .collect::<Result<Vec<_>, TrainError>>()?;
    let iters_per_epoch = loaders[0].batches_per_epoch();
    let (base_lr, final_lr, start_lr) = s.learning_rates();
    let schedule = LrSchedule::new(
        base_lr,
        final_lr,
        start_lr,
        s.warmup_epochs,
        s.epochs,
        iters_per_epoch,
    );

    let spec = spec_for(config);
    let mut model = seeded_init(&device, s.seed, |d| -> Result<SwavModel<E>, TrainError> {
        Ok(spec.wrap(build(d)?, d)?)
    })?;
    let mut optim = Optimizer::new(OptimConfig {
        kind: s.optimizer,
        momentum: s.momentum,
        weight_decay: s.wd,
        trust: s.lars_trust_coefficient,
        exclude_bn_bias: s.lars_exclude_bn_bias,
    });
    let mut queues: Vec<Option<EmbeddingQueue>> = (0..world).map(|_| None).collect();
    let (mut epoch, mut next_batch, mut iteration, mut elapsed_before) =
        (0usize, 0usize, 0usize, 0f64);

    let ckpt_file = out_dir.join(CHECKPOINT_FILE);
    let resume = match &options.resume_from {
        Some(p) => Some(checkpoint_path(p)),
        None if config.run.auto_resume && ckpt_file.is_file() => Some(ckpt_file.clone()),
        None => None,
    };
    let mut resumed_from = None;
    let mut resumed_scaler = None;
    if let Some(path) = &resume {
        let ckpt = read_checkpoint(path)?;
        let state: TrainState = ckpt
            .metadata
            .get(STATE_KEY)
            .ok_or_else(|| {
                TrainError::Checkpoint(format!("{}: no training state in it", path.display()))
            })
            .and_then(|t| {
                serde_json::from_str(t).map_err(|e| {
                    TrainError::Checkpoint(format!("{}: bad training state: {e}", path.display()))
                })
            })?;
        let mut diff = differences(&state.config.swav, &config.swav);
        diff.extend(differences(&state.config.data, &config.data));
        if !diff.is_empty() {
            return Err(TrainError::Checkpoint(format!(
                "{} was written by a run with another configuration ({}); start a new run folder \
                 or use the same config",
                path.display(),
                diff.join("; ")
            )));
        }
        if state.iters_per_epoch != iters_per_epoch {
            return Err(TrainError::Checkpoint(format!(
                "{}: {} iterations per epoch then, {iters_per_epoch} now (the dataset changed)",
                path.display(),
                state.iters_per_epoch
            )));
        }
        model = ckpt.load_model(model)?;
        optim.import(&ckpt.arrays, &state.optim_steps, &base)?;
        if let Some(filled) = &state.queue_filled {
            // Every worker's queue: rank 0's under `queue`, the others' under `queue.rank<r>`.
            let all_filled = std::iter::once(filled).chain(&state.queue_filled_ranks);
            for (rank, filled) in all_filled.enumerate() {
                let name = queue_array_name(rank);
                let a = ckpt.arrays.get(&name).ok_or_else(|| {
                    TrainError::Checkpoint(format!(
                        "{}: the queue of worker {rank} (`{name}`) is missing",
                        path.display()
                    ))
                })?;
                let qs = QueueState {
                    slots: a.shape.first().copied().unwrap_or(0),
                    len: a.shape.get(1).copied().unwrap_or(0),
                    dim: a.shape.get(2).copied().unwrap_or(0),
                    filled: filled.clone(),
                    values: a.values.clone(),
                };
                let slot = queues.get_mut(rank).ok_or_else(|| {
                    TrainError::Checkpoint(format!(
                        "{}: holds a queue for worker {rank}, this run has {world} workers",
                        path.display()
                    ))
                })?;
                *slot = Some(EmbeddingQueue::from_state(
                    &qs,
                    &bases[rank].clone().autodiff(),
                )?);
            }
        }
        resumed_scaler = state.loss_scaler;
        epoch = state.epoch;
        next_batch = state.next_batch;
        iteration = state.iteration;
        elapsed_before = state.elapsed_s;
        resumed_from = Some(iteration);
    }

    let resolved = config.to_toml()?;
    let cfg_path = out_dir.join(CONFIG_FILE);
    std::fs::write(&cfg_path, resolved).map_err(|e| TrainError::io(&cfg_path, e))?;
    let metrics_path = out_dir.join(METRICS_FILE);
    let (mut metrics, mut history) = Metrics::open(&metrics_path, resumed_from)?;

    let save = |model: &SwavModel<E>,
                optim: &Optimizer,
                queues: &[Option<EmbeddingQueue>],
                epoch: usize,
                next_batch: usize,
                iteration: usize,
                elapsed: f64,
                loss_scaler: Option<crate::LossScaler>|
     -> Result<(), TrainError> {
        // BatchNorm running statistics hold their latest update aside until synchronised;
        // `valid` synchronises them in place (the state is shared), so the file has it.
        drop(model.valid());
        let bad = non_finite(model);
        if !bad.is_empty() {
            return Err(TrainError::NonFinite(format!(
                "epoch {epoch}, iteration {iteration}: the weights of {} are NaN or infinite; the checkpoint \
                 {} was not overwritten. Lower the learning rate",
                bad.join(", "),
                ckpt_file.display()
            )));
        }
        let (mut arrays, steps) = optim.export()?;
        let mut queue_filled = None;
        let mut queue_filled_ranks = Vec::new();
        for (rank, q) in queues.iter().enumerate() {
            let Some(q) = q else { continue };
            let st = q.state();
            arrays.push(StateArray {
                name: queue_array_name(rank),
                shape: vec![st.slots, st.len, st.dim],
                values: st.values,
            });
            if rank == 0 {
                queue_filled = Some(st.filled);
            } else {
                queue_filled_ranks.push(st.filled);
            }
        }
        let state = TrainState {
            epoch,
            next_batch,
            iteration,
            elapsed_s: elapsed,
            config: config.clone(),
            optim_steps: steps,
            queue_filled,
            queue_filled_ranks,
            iters_per_epoch,
            loss_scaler,
        };
        let mut meta = BTreeMap::new();
        meta.insert(
            STATE_KEY.to_string(),
            serde_json::to_string(&state).map_err(|e| TrainError::Checkpoint(e.to_string()))?,
        );
        meta.insert(
            SPEC_KEY.to_string(),
            serde_json::to_string(&spec).map_err(|e| TrainError::Checkpoint(e.to_string()))?,
        );
        write_checkpoint(&ckpt_file, model, arrays, &meta)?;
        Ok(())
    };

    let collapse_loss = (s.nmb_prototypes[0] as f64).ln();
    let mut summary = RunSummary {
        completed: false,
        epochs: s.epochs,
        iterations: iteration,
        iterations_this_session: 0,
        resumed_from_iteration: resumed_from,
        time_s: 0.0,
        images_per_s: 0.0,
        data_time_fraction: 0.0,
        last_loss: None,
        last_epoch_loss: None,
        collapse_loss,
        skipped_files: Vec::new(),
        knn: None,
        precision: String::new(),
        batchnorm: if world == 1 {
            "batch statistics of the one worker's batch".to_string()
        } else if s.sync_bn {
            format!(
                "synchronised: statistics of the global batch ({world} workers x {} images), \
                 forward and backward",
                s.batch_size
            )
        } else {
            format!(
                "per-worker batch statistics ({world} workers, {} images each; running statistics \
                 averaged over the workers)",
                s.batch_size
            )
        },
        warnings: Vec::new(),
        data: data.description.clone(),
        out_dir: out_dir.clone(),
        checkpoint: ckpt_file.clone(),
        plots: Vec::new(),
        metrics: metrics_path.clone(),
    };

    let total_iters = schedule.len();
    let mut progress = Progress::new(config.run.quiet, total_iters, iteration);
    let started = Instant::now();
    let (mut data_time, mut step_time) = (0f64, 0f64);
    let batch = s.batch_size;
    let global_batch = batch * world;

    let mut group = WorkerGroup::<E>::new(bases.clone(), s, batch);
    let autocast = crate::autocast_for(s, &bases);
    group.set_autocast(autocast);
    // f16 needs loss scaling (bf16 has f32's range); the scale continues across a resume.
    let mut scaler =
        (autocast == Some(burn::tensor::DType::F16)).then(|| resumed_scaler.unwrap_or_default());
    summary.precision = match autocast {
        Some(burn::tensor::DType::F16) => {
            "mixed: convolutions and head in f16 with dynamic loss scaling; BatchNorm, \
             embeddings, Sinkhorn and loss in f32"
        }
        Some(_) => {
            "mixed: convolutions and head in bf16; BatchNorm, embeddings, Sinkhorn and loss in f32"
        }
        None => "f32",
    }
    .to_string();
    if s.use_fp16 && autocast.is_none() {
        // Said rather than silently ignored: the original's recipes ask for apex O1.
        let w = "swav.use_fp16 = true: mixed precision runs on GPU devices; on the CPU backend \
                 the run trains in f32 (its half-precision kernels are slower; set use_fp16 = \
                 false to silence this)"
            .to_string();
        progress.warn(&w);
        summary.warnings.push(w);
    }
    while epoch < s.epochs {
        if s.queue_active(epoch) {
            // Each worker's queue lives on its device.
            for (q, d) in queues.iter_mut().zip(&bases).filter(|(q, _)| q.is_none()) {
                *q = Some(EmbeddingQueue::for_run(
                    s.queue_length,
                    s.batch_size,
                    world,
                    s.crops_for_assign.len(),
                    s.feat_dim,
                    &d.clone().autodiff(),
                )?);
            }
        }
        let (mut epoch_loss, mut epoch_steps) = (0f64, 0usize);
        let (mut used_min, mut entropy_sum, mut stat_n) = (usize::MAX, 0f64, 0usize);
        let epoch_start = Instant::now();
        let mut epoch_images = 0usize;
        let mut shards: Vec<_> = loaders
            .iter()
            .map(|l| l.epoch(epoch as u64, next_batch))
            .collect();
        let mut window = (Instant::now(), 0usize, 0f64, 0f64);
        loop {
            let t0 = Instant::now();
            let Some(rank_batches) = shards
                .iter_mut()
                .map(Iterator::next)
                .collect::<Option<Vec<_>>>()
            else {
                break;
            };
            let t_data = t0.elapsed().as_secs_f64();
            let t1 = Instant::now();
            let lr = schedule.lr(iteration);
            let batch_index = rank_batches[0].index;

            model = normalize_heads(model);
            let log_now = (iteration + 1) % config.run.log_every == 0;
            let groups = rank_batches.into_iter().map(|b| b.groups).collect();
            if let Some(sc) = &scaler {
                group.set_loss_scale(sc.scale);
            }
            let out = group.step(&model, groups, &mut queues, log_now)?;
            let loss_value = out.loss;
            if !loss_value.is_finite() {
                progress.finish();
                return Err(TrainError::NonFinite(format!(
                    "epoch {epoch}, iteration {iteration} (batch {batch_index} of the epoch): loss {loss_value}, lr {lr:.6}; {}. \
                     The last good checkpoint is {} (written before this step). Usual causes: a learning rate \
                     too high, f16 overflow, epsilon too small",
                    out.diagnostic.unwrap_or_default(),
                    ckpt_file.display()
                )));
            }
            let frozen = iteration < s.freeze_prototypes_niters;
            // An f16 overflow in the gradients: no update this step, a lower scale next.
            let apply = scaler.as_mut().is_none_or(|sc| sc.update(out.grads_finite));
            if apply {
                model = optim.step(model, &out.grads, lr, &|p: &str| {
                    frozen && p.starts_with("prototypes.")
                });
            } else if let Some(sc) = &scaler {
                metrics.write(&serde_json::json!({
                    "type": "overflow", "epoch": epoch, "iteration": iteration,
                    "loss_scale": sc.scale, "skipped_steps": sc.skipped,
                }))?;
            }
            model = out.with_running_stats(model);
            iteration += 1;
            summary.iterations_this_session += 1;
            epoch_loss += loss_value;
            epoch_steps += 1;
            epoch_images += global_batch;
            summary.last_loss = Some(loss_value);
            let t_step = t1.elapsed().as_secs_f64();
            data_time += t_data;
            step_time += t_step;
            window.1 += global_batch;
            window.2 += t_data;
            window.3 += t_step;

            if let Some(codes) = out.codes.into_iter().next() {
                let (used, entropy) = code_stats(codes);
                used_min = used_min.min(used);
                entropy_sum += entropy;
                stat_n += 1;
                let secs = window.0.elapsed().as_secs_f64().max(1e-9);
                metrics.write(&serde_json::json!({
                    "type": "step", "epoch": epoch, "iteration": iteration, "loss": loss_value,
                    "lr": lr, "images_per_s": window.1 as f64 / secs, "data_time_s": window.2,
                    "compute_time_s": window.3, "code_entropy": entropy, "prototypes_used": used,
                    "queue_used": out.queue_used, "prototypes_frozen": frozen, "workers": world,
                }))?;
                history.push(serde_json::json!({"type": "step", "iteration": iteration, "loss": loss_value, "lr": lr}));
                window = (Instant::now(), 0, 0.0, 0.0);
            }
            let rate = summary.iterations_this_session as f64 * global_batch as f64
                / started.elapsed().as_secs_f64().max(1e-9);
            progress.step(epoch, s.epochs, iteration, loss_value, lr, rate);

            if options.stop_after == Some(summary.iterations_this_session) {
                progress.finish();
                drop(model.valid());
                summary.iterations = iteration;
                summary.time_s = started.elapsed().as_secs_f64();
                return Ok(TrainOutcome { model, summary });
            }
            if config.run.checkpoint_every > 0
                && iteration % config.run.checkpoint_every == 0
                && batch_index + 1 < iters_per_epoch
            {
                save(
                    &model,
                    &optim,
                    &queues,
                    epoch,
                    batch_index + 1,
                    iteration,
                    elapsed_before + started.elapsed().as_secs_f64(),
                    scaler,
                )?;
            }
        }
        drop(shards);
        next_batch = 0;
        epoch += 1;
        save(
            &model,
            &optim,
            &queues,
            epoch,
            0,
            iteration,
            elapsed_before + started.elapsed().as_secs_f64(),
            scaler,
        )?;

        let mean_loss = if epoch_steps > 0 {
            epoch_loss / epoch_steps as f64
        } else {
            f64::NAN
        };
        summary.last_epoch_loss = Some(mean_loss).filter(|l| l.is_finite());
        let knn_due =
            config.run.knn_every > 0 && (epoch % config.run.knn_every == 0 || epoch == s.epochs);
        let knn = if knn_due {
            knn_monitor(&model.backbone, config, data, &base)?
        } else {
            None
        };
        if let Some(k) = &knn {
            summary.knn = Some(k.clone());
        }
        let secs = epoch_start.elapsed().as_secs_f64().max(1e-9);
        let line = serde_json::json!({
            "type": "epoch", "epoch": epoch, "iteration": iteration, "loss": mean_loss,
            "lr": schedule.lr(iteration.saturating_sub(1)), "images_per_s": epoch_images as f64 / secs,
            "time_s": secs, "knn_top1": knn.as_ref().map(|k| k.top1), "knn_top5": knn.as_ref().map(|k| k.top5),
            "code_entropy": if stat_n > 0 { Some(entropy_sum / stat_n as f64) } else { None },
            "prototypes_used_min": if stat_n > 0 { Some(used_min) } else { None },
            "skipped_files": loaders.iter().map(|l| l.skipped().len()).sum::<usize>(),
        });
        metrics.write(&line)?;
        history.push(line);
        summary.plots = write_plots(&out_dir, &history)?;

        // Collapse: the loss stays at ln K and the codes use a handful of prototypes.
        let k0 = s.nmb_prototypes[0];
        // With more prototypes than samples, equipartition alone spreads each code over at
        // least K / B prototypes: "uniform" is judged within the entropy range that leaves.
        let floor = (k0 as f64 / global_batch as f64).max(1.0).ln();
        let ln_k = (k0 as f64).ln();
        let uniform_codes =
            stat_n > 0 && entropy_sum / stat_n as f64 >= ln_k - 0.05 * (ln_k - floor);
        let few = stat_n > 0 && used_min <= (k0.min(batch) / 10).max(1);
        let at_ln_k = (mean_loss - collapse_loss).abs() <= 0.02 * collapse_loss;
        if epoch >= 2 && at_ln_k && (few || uniform_codes) {
            let w = format!(
                "epoch {epoch}: the loss ({mean_loss:.4}) stays at ln K = {collapse_loss:.4}, the codes are {} and \
                 use as few as {used_min} prototypes in a batch: the model may have collapsed. Usual remedies: freeze the prototypes longer \
                 (freeze_prototypes_niters), a smaller epsilon (0.03), a smaller or later queue, fewer crops, a lower lr (or, for short runs with LARS, a higher one or AdamW)",
                if uniform_codes {
                    "near uniform"
                } else {
                    "confident"
                }
            );
            progress.warn(&w);
            summary.warnings.push(w);
        }
        progress.epoch_done(epoch, s.epochs, mean_loss, knn.as_ref().map(|k| k.top1));
    }
    progress.finish();
    drop(model.valid());
    summary.completed = true;
    summary.iterations = iteration;
    summary.time_s = started.elapsed().as_secs_f64();
    summary.images_per_s = summary.iterations_this_session as f64 * global_batch as f64
        / (step_time + data_time).max(1e-9);
    summary.data_time_fraction = data_time / (data_time + step_time).max(1e-9);
    // A bad file is met again every epoch: list each file once, with the epochs it was met in.
    let mut by_file: BTreeMap<String, (String, Vec<u64>)> = BTreeMap::new();
    for s in loaders.iter().flat_map(|l| l.skipped()) {
        by_file
            .entry(s.source)
            .or_insert_with(|| (s.reason, Vec::new()))
            .1
            .push(s.epoch);
    }
    summary.skipped_files = by_file
        .into_iter()
        .map(|(file, (reason, epochs))| format!("{file} (epochs {epochs:?}): {reason}"))
        .collect();
    let sp = out_dir.join(SUMMARY_FILE);
    let text = serde_json::to_string_pretty(&summary).map_err(|e| TrainError::io(&sp, e))?;
    std::fs::write(&sp, text).map_err(|e| TrainError::io(&sp, e))?;
    Ok(TrainOutcome { model, summary })
}
