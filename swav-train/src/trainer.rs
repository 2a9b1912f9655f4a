//! The training run: [`Trainer`] puts the parts together (a [`BatchSource`], the objective on
//! one or several workers, the optimiser and schedule, checkpoints and resume, metric sinks, an
//! observer) and runs the epochs; [`train`] is the run with the default parts.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use burn::module::Module;
use burn::tensor::{DType, Device};
use serde::{Deserialize, Serialize};
use swav_core::EmbeddingQueue;
use swav_eval::KnnResult;
use swav_models::SwavModel;

use crate::TrainError;
use crate::adapters::{knn_monitor, spec_for};
use crate::config::TrainConfig;
use crate::data::RunData;
use crate::device::{devices_for, seeded_init};
use crate::diagnostics::code_stats;
use crate::fault::InjectedFault;
use crate::metrics::{JsonLines, MetricsSink, Record, sinks_named};
use crate::objective::normalize_heads;
use crate::observer::{Silent, StepProgress, TrainObserver};
use crate::optim::{OptimConfig, Optimizer};
use crate::parallel::WorkerGroup;
use crate::run_dir::{CHECKPOINT_FILE, CONFIG_FILE, Position, SUMMARY_FILE, Saver};
use crate::schedule::LrSchedule;
use crate::source::{BatchSource, MultiCropSource};
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
    /// A fault to inject on purpose (tests of what the run does about NaN and infinity).
    pub fault: Option<InjectedFault>,
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

/// A training run being put together: the config and data, then optional parts, then
/// [`Trainer::run`] with the backbone.
pub struct Trainer<'a> {
    config: &'a TrainConfig,
    data: &'a RunData,
    options: RunOptions,
    source: Option<Box<dyn BatchSource + 'a>>,
    observer: Option<&'a mut dyn TrainObserver>,
    sinks: Option<Vec<Box<dyn MetricsSink + 'a>>>,
    backbone_config: serde_json::Value,
}

/// Whether a stop was requested.
fn stop_requested(stop: &Option<StopRequest>) -> bool {
    stop.as_ref().is_some_and(StopRequest::is_requested)
}

/// Trains SwAV as `config` says, on `data`, with the backbone `build` makes (any
/// [`swav_models::Backbone`]), with the default parts: the multi-crop loader, the sinks of
/// `[run] metrics`, no observer. Resumes from the run folder's checkpoint when
/// `run.auto_resume` is set and one exists, or from `options.resume_from`.
pub fn train<E, F>(
    config: &TrainConfig,
    data: &RunData,
    build: F,
    options: &RunOptions,
) -> Result<TrainOutcome<E>, TrainError>
where
    E: swav_models::TaskBackbone,
    F: FnOnce(&Device) -> Result<E, TrainError>,
{
    Trainer::new(config, data)
        .options(options.clone())
        .run(build)
}

impl<'a> Trainer<'a> {
    /// A run of `config` on `data` (its training split feeds the default source, its kNN
    /// splits the monitor).
    pub fn new(config: &'a TrainConfig, data: &'a RunData) -> Self {
        Self {
            config,
            data,
            options: RunOptions::default(),
            source: None,
            observer: None,
            sinks: None,
            backbone_config: serde_json::Value::Null,
        }
    }

    /// How the run starts (resume, stop early).
    pub fn options(mut self, options: RunOptions) -> Self {
        self.options = options;
        self
    }

    /// Batches from `source` instead of the multi-crop loader over `data.train`.
    pub fn source(mut self, source: impl BatchSource + 'a) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// Progress goes to `observer`.
    pub fn observer(mut self, observer: &'a mut dyn TrainObserver) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Metrics go to `sinks` (beside `metrics.jsonl`) instead of those `[run] metrics` names.
    pub fn sinks(mut self, sinks: Vec<Box<dyn MetricsSink + 'a>>) -> Self {
        self.sinks = Some(sinks);
        self
    }

    /// The backbone's configuration, stored in checkpoints beside its name (`swav.arch`); the
    /// registry's description of it ([`swav_models::BackboneRegistry::describe`]).
    pub fn backbone_config(mut self, config: serde_json::Value) -> Self {
        self.backbone_config = config;
        self
    }

    /// Runs the epochs with the backbone `build` makes.
    pub fn run<E, F>(self, build: F) -> Result<TrainOutcome<E>, TrainError>
    where
        E: swav_models::TaskBackbone,
        F: FnOnce(&Device) -> Result<E, TrainError>,
    {
        let mut silent = Silent;
        let Trainer {
            config,
            data,
            options,
            source,
            observer,
            sinks,
            backbone_config,
        } = self;
        let observer: &mut dyn TrainObserver = match observer {
            Some(o) => o,
            None => &mut silent,
        };
        config.validate()?;
        let sinks = match sinks {
            Some(s) => s,
            None => sinks_named(&config.run.metrics)?,
        };
        let world = config.swav.world_size.max(1);
        let source: Box<dyn BatchSource + 'a> = match source {
            Some(s) => s,
            None => Box::new(MultiCropSource::new(config, data, world)?),
        };
        let mut spec = spec_for(config);
        spec.backbone = backbone_config;
        let run = Run {
            config,
            data,
            options: &options,
            source: source.as_ref(),
            observer,
            sinks,
            spec,
        };
        run.go(build)
    }
}

/// The parts of a run while it trains.
struct Run<'r, 'a> {
    config: &'r TrainConfig,
    data: &'r RunData,
    options: &'r RunOptions,
    source: &'r (dyn BatchSource + 'a),
    observer: &'r mut dyn TrainObserver,
    sinks: Vec<Box<dyn MetricsSink + 'a>>,
    spec: swav_models::SwavModelSpec,
}

impl Run<'_, '_> {
    /// Whether this process writes the run folder (the only process, or rank 0 of a group).
    fn leader(&self) -> bool {
        self.options
            .processes
            .as_ref()
            .is_none_or(|p| p.rank() == 0)
    }

    /// Whether to stop now: asked of this process, or of any process of the group (they must
    /// stop after the same step).
    fn stop_now(&self) -> bool {
        let mine = stop_requested(&self.options.stop);
        match &self.options.processes {
            Some(p) => crate::process::any(p.as_ref(), mine),
            None => mine,
        }
    }

    fn warn(&mut self, summary: &mut RunSummary, text: String) {
        self.observer.warning(&text);
        summary.warnings.push(text);
    }

    fn record(&mut self, jsonl: &mut Option<JsonLines>, record: Record) -> Result<(), TrainError> {
        let Some(jsonl) = jsonl else {
            // Not the leading process: rank 0 records.
            return Ok(());
        };
        jsonl.record(&record)?;
        for sink in &mut self.sinks {
            sink.record(&record)?;
        }
        Ok(())
    }

    fn close_sinks(&mut self, summary: &mut RunSummary) -> Result<(), TrainError> {
        summary.plots.clear();
        for sink in &mut self.sinks {
            summary.plots.extend(sink.close()?);
        }
        Ok(())
    }

    /// The summary's closing figures, the sinks closed and `summary.json` written: at the end of
    /// the run, or where a stop request ended it. `timing`: seconds since this process started
    /// training, step and data seconds, images per iteration.
    fn finish(
        &mut self,
        summary: &mut RunSummary,
        iteration: usize,
        timing: (f64, f64, f64, usize),
    ) -> Result<(), TrainError> {
        let (elapsed, step_time, data_time, global_batch) = timing;
        self.close_sinks(summary)?;
        summary.iterations = iteration;
        summary.time_s = elapsed;
        summary.images_per_s = summary.iterations_this_session as f64 * global_batch as f64
            / (step_time + data_time).max(1e-9);
        summary.data_time_fraction = data_time / (data_time + step_time).max(1e-9);
        // A bad file is met again every epoch: list each file once, with the epochs it was met in.
        let mut by_file: BTreeMap<String, (String, Vec<u64>)> = BTreeMap::new();
        for s in self.source.skipped() {
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
        if !self.leader() {
            return Ok(());
        }
        let sp = summary.out_dir.join(SUMMARY_FILE);
        let text = serde_json::to_string_pretty(&summary).map_err(|e| TrainError::io(&sp, e))?;
        std::fs::write(&sp, text).map_err(|e| TrainError::io(&sp, e))?;
        Ok(())
    }

    /// Ends the run on a stop request, after its checkpoint at `iteration` (continuing in
    /// `epoch`) was written.
    fn preempted(
        &mut self,
        summary: &mut RunSummary,
        (iteration, epoch): (usize, usize),
        timing: (f64, f64, f64, usize),
    ) -> Result<(), TrainError> {
        self.observer.finished();
        summary.preempted = Some(Preempted {
            iteration,
            epoch,
            checkpoint: summary.checkpoint.clone(),
        });
        self.finish(summary, iteration, timing)
    }

    fn go<E, F>(mut self, build: F) -> Result<TrainOutcome<E>, TrainError>
    where
        E: swav_models::TaskBackbone,
        F: FnOnce(&Device) -> Result<E, TrainError>,
    {
        let config = self.config;
        let s = &config.swav;
        let out_dir = config.run.out_dir.clone();
        std::fs::create_dir_all(&out_dir).map_err(|e| TrainError::io(&out_dir, e))?;
        let kernel_cache = crate::device::configure_kernel_cache(config)?;
        let bases = devices_for(config)?;
        let world = bases.len();
        let processes = self.options.processes.clone();
        let leader = self.leader();
        // This process's workers: all of them, or its own rank's in a group of processes.
        let (local_ranks, local_bases) = match &processes {
            Some(p) => {
                if p.size() != world {
                    return Err(TrainError::ConfigFile(format!(
                        "{} processes, but swav.world_size is {world}: a group of processes \
                         runs one worker each",
                        p.size()
                    )));
                }
                let rank = p.rank();
                // `run.devices` by rank; otherwise `run.device`, and for a GPU the machine's
                // GPU of this process's rank on it (cuda:0, cuda:1, ... on every machine).
                let pick = if config.run.devices.is_empty() {
                    p.local_rank().min(world - 1)
                } else {
                    rank
                };
                (rank..rank + 1, vec![bases[pick].clone()])
            }
            None => (0..world, bases.clone()),
        };
        let base = local_bases[0].clone();
        let device = base.clone().autodiff();

        let iters_per_epoch = self.source.batches_per_epoch();
        if iters_per_epoch == 0 {
            return Err(TrainError::ConfigFile(format!(
                "the data gives no complete batch of {} per worker ({world} workers): use a \
                 smaller swav.batch_size or more images",
                s.batch_size
            )));
        }
        let (base_lr, final_lr, start_lr) = s.learning_rates();
        let schedule = LrSchedule::new(
            base_lr,
            final_lr,
            start_lr,
            s.warmup_epochs,
            s.epochs,
            iters_per_epoch,
        );

        let spec = self.spec.clone();
        let mut model = seeded_init(&device, s.seed, |d| -> Result<SwavModel<E>, TrainError> {
            Ok(spec.wrap(build(d)?, d)?)
        })?;
        // The monitor's baseline: this network before any training (also when resuming, as the
        // checkpoint has not been loaded yet).
        let knn_baseline = if config.run.knn_every > 0 && leader {
            knn_monitor(&model.backbone, config, self.data, &base)?
        } else {
            None
        };
        let mut optim = Optimizer::new(OptimConfig {
            kind: s.optimizer,
            momentum: s.momentum,
            weight_decay: s.wd,
            trust: s.lars_trust_coefficient,
            exclude_bn_bias: s.lars_exclude_bn_bias,
            clip: s.lars_clip,
        });
        let mut queues: Vec<Option<EmbeddingQueue>> = (0..world).map(|_| None).collect();
        let (mut epoch, mut next_batch, mut iteration, mut elapsed_before) =
            (0usize, 0usize, 0usize, 0f64);

        let ckpt_file = out_dir.join(CHECKPOINT_FILE);
        let resume = crate::run_dir::choose_checkpoint(
            self.options.resume_from.as_deref(),
            &out_dir,
            config.run.auto_resume,
        )?;
        let mut resumed_from = None;
        let mut resumed_scaler = None;
        let mut fallback = None;
        if let Some((ckpt, note)) = &resume {
            fallback = note.clone();
            let (m, r) = crate::run_dir::resume(
                ckpt,
                config,
                iters_per_epoch,
                model,
                &mut optim,
                &mut queues,
                &bases,
            )?;
            model = m;
            resumed_scaler = r.loss_scaler;
            epoch = r.epoch;
            next_batch = r.next_batch;
            iteration = r.iteration;
            elapsed_before = r.elapsed_s;
            resumed_from = Some(iteration);
        }

        let mut jsonl = None;
        if leader {
            let resolved = config.to_toml()?;
            let cfg_path = out_dir.join(CONFIG_FILE);
            std::fs::write(&cfg_path, resolved).map_err(|e| TrainError::io(&cfg_path, e))?;
            let (lines, history) = JsonLines::open(&out_dir, resumed_from)?;
            for sink in &mut self.sinks {
                sink.open(&out_dir, &history)?;
            }
            jsonl = Some(lines);
        } else {
            self.sinks.clear();
        }

        let saver = Saver {
            file: ckpt_file.clone(),
            config,
            spec: &spec,
            iters_per_epoch,
            fail_from: self.options.fault.and_then(|f| f.checkpoints_fail_from()),
            processes: processes.clone(),
        };

        let collapse_loss = (s.nmb_prototypes[0] as f64).ln();
        let mut summary = RunSummary {
            completed: false,
            preempted: None,
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
            knn_baseline: None,
            precision: String::new(),
            batchnorm: if world == 1 {
                "batch statistics of the one worker's batch".to_string()
            } else if s.sync_bn {
                format!(
                    "synchronised: statistics of the global batch ({world} workers x {} \
                     images), forward and backward",
                    s.batch_size
                )
            } else {
                format!(
                    "per-worker batch statistics ({world} workers, {} images each; running \
                     statistics averaged over the workers)",
                    s.batch_size
                )
            },
            backend: swav_engine::backend_name(&device),
            kernel_cache,
            warnings: Vec::new(),
            data: self.data.description.clone(),
            out_dir: out_dir.clone(),
            checkpoint: ckpt_file.clone(),
            plots: Vec::new(),
            metrics: out_dir.join(crate::metrics::METRICS_FILE),
        };

        summary.knn_baseline = knn_baseline.clone();
        let mut watch = knn_baseline
            .as_ref()
            .map(|b| crate::diagnostics::NoLearningWatch::new(b.top1, config.run.knn_patience));
        if let Some(note) = fallback {
            self.warn(&mut summary, note);
        }
        let total_iters = schedule.len();
        self.observer.started(total_iters, iteration);
        let started = Instant::now();
        let (mut data_time, mut step_time) = (0f64, 0f64);
        let batch = s.batch_size;
        let global_batch = batch * world;

        let mut group = match &processes {
            Some(p) => WorkerGroup::<E>::in_processes(base.clone(), s, batch, p.clone()),
            None => WorkerGroup::<E>::new(bases.clone(), s, batch),
        };
        let autocast = crate::autocast_for(s, &bases);
        group.set_autocast(autocast);
        // f16 needs loss scaling (bf16 has f32's range); the scale continues across a resume.
        let mut scaler = (autocast == Some(DType::F16)).then(|| resumed_scaler.unwrap_or_default());
        summary.precision = match autocast {
            Some(DType::F16) => {
                "mixed: convolutions and head in f16 with dynamic loss scaling; BatchNorm, \
                 embeddings, Sinkhorn and loss in f32"
            }
            Some(_) => {
                "mixed: convolutions and head in bf16; BatchNorm, embeddings, Sinkhorn and loss \
                 in f32"
            }
            None => "f32",
        }
        .to_string();
        if s.use_fp16 && autocast.is_none() {
            // Said rather than silently ignored: the original's recipes ask for apex O1.
            self.warn(
                &mut summary,
                "swav.use_fp16 = true: mixed precision runs on GPU devices; on the CPU backend \
                 the run trains in f32 (its half-precision kernels are slower; set use_fp16 = \
                 false to silence this)"
                    .to_string(),
            );
        }
        let mut checked_sync = false;
        // The iteration of the newest checkpoint in the run folder (the resumed one, at first).
        let mut last_checkpoint = resumed_from;
        while epoch < s.epochs {
            if s.queue_active(epoch) {
                // Each worker's queue lives on its device (this process's workers').
                for (q, d) in queues[local_ranks.clone()]
                    .iter_mut()
                    .zip(&local_bases)
                    .filter(|(q, _)| q.is_none())
                {
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
            let mut shards = local_ranks
                .clone()
                .map(|rank| self.source.epoch(epoch, next_batch, rank))
                .collect::<Result<Vec<_>, TrainError>>()?;
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
                let mut out =
                    group.step(&model, groups, &mut queues[local_ranks.clone()], log_now)?;
                if let Some(fault) = &self.options.fault {
                    fault.apply(iteration + 1, &model, &mut out.loss, &mut out.grads);
                }
                if !checked_sync {
                    checked_sync = true;
                    let missed = &out.unsynchronised_batch_norms;
                    if !missed.is_empty() {
                        summary.batchnorm = format!(
                            "partly synchronised: {} BatchNorm layer(s) of the model ({}) do \
                             not go through swav_models::layers::batch_norm and use per-worker \
                             statistics ({world} workers, {} images each); the others use the \
                             global batch's",
                            missed.len(),
                            missed.join(", "),
                            s.batch_size
                        );
                        let w = format!(
                            "swav.sync_bn = true, but {} BatchNorm layer(s) ({}) call burn's \
                             BatchNorm::forward directly and are not synchronised; call \
                             swav_models::layers::batch_norm in the backbone",
                            missed.len(),
                            missed.join(", ")
                        );
                        self.warn(&mut summary, w);
                    }
                }
                let loss_value = out.loss;
                // Name the checkpoint only if there is one, and say when it was written.
                let last_good = || match last_checkpoint {
                    Some(at) => format!(
                        "The last good checkpoint is {} (iteration {at}, before this step)",
                        ckpt_file.display()
                    ),
                    None => format!(
                        "No checkpoint was written yet (one is written every {} iterations and \
                         at each epoch's end), so nothing is kept to resume from",
                        config.run.checkpoint_every
                    ),
                };
                if !loss_value.is_finite() {
                    self.observer.finished();
                    let last_good = last_good();
                    return Err(TrainError::NonFinite(format!(
                        "epoch {epoch}, iteration {iteration} (batch {batch_index} of the \
                         epoch): loss {loss_value}, lr {lr:.6}; {}. {last_good}. Usual causes: \
                         a learning rate too high, f16 overflow, epsilon too small",
                        out.diagnostic.unwrap_or_default(),
                    )));
                }
                // A non-finite gradient under a finite loss would poison the weights unseen
                // (f16 runs check and skip in the loss scaler instead).
                if scaler.is_none() && !crate::diagnostics::grads_finite(&model, &out.grads) {
                    self.observer.finished();
                    let bad = crate::diagnostics::non_finite_grads(&model, &out.grads);
                    return Err(TrainError::NonFinite(format!(
                        "epoch {epoch}, iteration {iteration} (batch {batch_index} of the \
                         epoch): the loss {loss_value} is finite but the gradients of {} hold \
                         NaN or infinite values; the update was not applied. {}. Usual causes: \
                         a learning rate too high, an operation without a finite gradient in a \
                         custom backbone",
                        if bad.is_empty() {
                            "some parameters".to_string()
                        } else {
                            bad.join(", ")
                        },
                        last_good()
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
                    let r = Record::new(
                        "overflow",
                        epoch,
                        iteration,
                        serde_json::json!({
                            "loss_scale": sc.scale, "skipped_steps": sc.skipped,
                        }),
                    );
                    self.record(&mut jsonl, r)?;
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
                    let r = Record::new(
                        "step",
                        epoch,
                        iteration,
                        serde_json::json!({
                            "loss": loss_value, "lr": lr,
                            "images_per_s": window.1 as f64 / secs, "data_time_s": window.2,
                            "compute_time_s": window.3, "code_entropy": entropy,
                            "prototypes_used": used, "queue_used": out.queue_used,
                            "prototypes_frozen": frozen, "workers": world,
                        }),
                    );
                    self.record(&mut jsonl, r)?;
                    window = (Instant::now(), 0, 0.0, 0.0);
                }
                let rate = summary.iterations_this_session as f64 * global_batch as f64
                    / started.elapsed().as_secs_f64().max(1e-9);
                self.observer.step(&StepProgress {
                    epoch,
                    epochs: s.epochs,
                    iteration,
                    total_iterations: total_iters,
                    loss: loss_value,
                    lr,
                    images_per_s: rate,
                });

                if self.options.stop_after == Some(summary.iterations_this_session) {
                    self.observer.finished();
                    drop(model.valid());
                    summary.iterations = iteration;
                    summary.time_s = started.elapsed().as_secs_f64();
                    return Ok(TrainOutcome { model, summary });
                }
                if self.stop_now() && batch_index + 1 < iters_per_epoch {
                    // Mid-epoch: the checkpoint continues at the next batch. (After an epoch's
                    // last batch the epoch's end is written first, below.)
                    let at = Position {
                        epoch,
                        next_batch: batch_index + 1,
                        iteration,
                        elapsed_s: elapsed_before + started.elapsed().as_secs_f64(),
                    };
                    saver.save(&model, &optim, &mut queues, at, scaler)?;
                    drop(shards);
                    let timing = (
                        started.elapsed().as_secs_f64(),
                        step_time,
                        data_time,
                        global_batch,
                    );
                    self.preempted(&mut summary, (iteration, epoch), timing)?;
                    drop(model.valid());
                    return Ok(TrainOutcome { model, summary });
                }
                if config.run.checkpoint_every > 0
                    && iteration % config.run.checkpoint_every == 0
                    && batch_index + 1 < iters_per_epoch
                {
                    let at = Position {
                        epoch,
                        next_batch: batch_index + 1,
                        iteration,
                        elapsed_s: elapsed_before + started.elapsed().as_secs_f64(),
                    };
                    saver.save(&model, &optim, &mut queues, at, scaler)?;
                    last_checkpoint = Some(iteration);
                }
            }
            drop(shards);
            next_batch = 0;
            epoch += 1;
            let at = Position {
                epoch,
                next_batch: 0,
                iteration,
                elapsed_s: elapsed_before + started.elapsed().as_secs_f64(),
            };
            saver.save(&model, &optim, &mut queues, at, scaler)?;
            last_checkpoint = Some(iteration);

            let mean_loss = if epoch_steps > 0 {
                epoch_loss / epoch_steps as f64
            } else {
                f64::NAN
            };
            summary.last_epoch_loss = Some(mean_loss).filter(|l| l.is_finite());
            let knn_due = config.run.knn_every > 0
                && (epoch % config.run.knn_every == 0 || epoch == s.epochs);
            let knn = if knn_due && leader {
                knn_monitor(&model.backbone, config, self.data, &base)?
            } else {
                None
            };
            if let Some(k) = &knn {
                summary.knn = Some(k.clone());
                if let Some(w) = watch.as_mut().and_then(|w| w.observe(epoch, k.top1)) {
                    self.warn(&mut summary, w);
                }
            }
            let secs = epoch_start.elapsed().as_secs_f64().max(1e-9);
            let skipped = self.source.skipped().len();
            let r = Record::new(
                "epoch",
                epoch,
                iteration,
                serde_json::json!({
                    "loss": mean_loss, "lr": schedule.lr(iteration.saturating_sub(1)),
                    "images_per_s": epoch_images as f64 / secs, "time_s": secs,
                    "knn_top1": knn.as_ref().map(|k| k.top1),
                    "knn_top5": knn.as_ref().map(|k| k.top5),
                    "knn_baseline_top1": knn.as_ref().and(knn_baseline.as_ref()).map(|b| b.top1),
                    "code_entropy": if stat_n > 0 { Some(entropy_sum / stat_n as f64) } else { None },
                    "prototypes_used_min": if stat_n > 0 { Some(used_min) } else { None },
                    "skipped_files": skipped,
                }),
            );
            self.record(&mut jsonl, r)?;

            if let Some(w) = crate::diagnostics::collapse_warning(
                epoch,
                mean_loss,
                collapse_loss,
                s.nmb_prototypes[0],
                batch,
                global_batch,
                (used_min, entropy_sum, stat_n),
            ) {
                self.warn(&mut summary, w);
            }
            self.observer
                .epoch(epoch, s.epochs, mean_loss, knn.as_ref().map(|k| k.top1));
            if self.stop_now() && epoch < s.epochs {
                // The epoch's end is checkpointed (above): stop there.
                let timing = (
                    started.elapsed().as_secs_f64(),
                    step_time,
                    data_time,
                    global_batch,
                );
                self.preempted(&mut summary, (iteration, epoch), timing)?;
                drop(model.valid());
                return Ok(TrainOutcome { model, summary });
            }
        }
        self.observer.finished();
        summary.completed = true;
        let timing = (
            started.elapsed().as_secs_f64(),
            step_time,
            data_time,
            global_batch,
        );
        self.finish(&mut summary, iteration, timing)?;
        drop(model.valid());
        Ok(TrainOutcome { model, summary })
    }
}
