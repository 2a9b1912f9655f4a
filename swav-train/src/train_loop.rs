//! The run loop behind [`crate::Trainer::run`]: [`TrainLoop`] holds a run's state by name
//! (where it is, its optimiser, queues, loss scale, timers and summary) and runs it in parts:
//! [`TrainLoop::start`] (devices, model, resume, outputs), [`TrainLoop::step`] (one
//! data-parallel step, its checks and records), [`TrainLoop::end_epoch`] (checkpoint, kNN
//! monitor, epoch record, collapse watch) and the three endings (completed, preempted, killed).

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;
use std::time::Instant;

use burn::module::Module;
use burn::tensor::{DType, Device};
use swav_core::EmbeddingQueue;
use swav_data::{Batch, SkippedSample};
use swav_eval::KnnResult;
use swav_models::{SwavModel, SwavModelSpec, TaskBackbone};

use crate::TrainError;
use crate::adapters::knn_monitor;
use crate::amp::LossScaler;
use crate::config::TrainConfig;
use crate::data::RunData;
use crate::device::{devices_for, seeded_init};
use crate::diagnostics::{CodeTally, NoLearningWatch, code_stats};
use crate::fault::{FaultHook, inject};
use crate::metrics::{JsonLines, MetricsSink, Record};
use crate::objective::normalize_heads;
use crate::observer::{StepProgress, TrainObserver};
use crate::optim::{OptimConfig, Optimizer};
use crate::outcome::{RunOptions, RunSummary, TrainOutcome};
use crate::parallel::{ParallelStep, WorkerGroup};
use crate::process::SharedProcessGroup;
use crate::run_dir::{CHECKPOINT_FILE, CONFIG_FILE, Position, SUMMARY_FILE, Saver};
use crate::schedule::LrSchedule;
use crate::source::BatchSource;
use crate::stop::Preempted;

/// The parts a run is put together from (what [`crate::Trainer`] collected).
pub(crate) struct Parts<'r, 'a> {
    pub config: &'r TrainConfig,
    pub data: &'r RunData,
    pub options: &'r RunOptions,
    pub faults: Option<&'r dyn FaultHook>,
    pub source: &'r (dyn BatchSource + 'a),
    pub observer: &'r mut dyn TrainObserver,
    pub sinks: Vec<Box<dyn MetricsSink + 'a>>,
    pub spec: SwavModelSpec,
}

/// This process's workers: their ranks in the run and their devices.
struct LocalWorkers {
    ranks: Range<usize>,
    bases: Vec<Device>,
}

/// Where the run is: the epoch, its next batch, the iterations done.
#[derive(Debug, Clone, Copy, Default)]
struct Cursor {
    epoch: usize,
    next_batch: usize,
    iteration: usize,
}

/// Seconds of this process's training: since it started, and spent on data and on steps.
struct StepTimer {
    started: Instant,
    /// Seconds of training in the sessions before this one (from the checkpoint).
    before_s: f64,
    data_s: f64,
    step_s: f64,
}

impl StepTimer {
    fn start(before_s: f64) -> Self {
        Self {
            started: Instant::now(),
            before_s,
            data_s: 0.0,
            step_s: 0.0,
        }
    }

    /// Seconds since this process started training.
    fn elapsed_s(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// Seconds of training over all sessions (what a checkpoint stores).
    fn total_s(&self) -> f64 {
        self.before_s + self.elapsed_s()
    }
}

/// The steps between two step records: images, data and compute seconds.
struct Window {
    start: Instant,
    images: usize,
    data_s: f64,
    compute_s: f64,
}

impl Window {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            images: 0,
            data_s: 0.0,
            compute_s: 0.0,
        }
    }
}

/// An epoch's figures so far.
struct EpochStats {
    start: Instant,
    loss_sum: f64,
    steps: usize,
    images: usize,
    codes: CodeTally,
}

impl EpochStats {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            loss_sum: 0.0,
            steps: 0,
            images: 0,
            codes: CodeTally::default(),
        }
    }

    /// The mean loss of the epoch's steps (NaN for none).
    fn mean_loss(&self) -> f64 {
        if self.steps > 0 {
            self.loss_sum / self.steps as f64
        } else {
            f64::NAN
        }
    }
}

/// A step's figures for its record.
struct StepFigures {
    loss: f64,
    lr: f64,
    prototypes_used: usize,
    code_entropy: f64,
    prototypes_frozen: bool,
    queue_used: bool,
}

/// What the run does after a step.
enum StepEnd {
    /// The next step.
    Continue,
    /// Stop as a kill would, writing nothing more ([`RunOptions::stop_after`]).
    Killed,
    /// Stop on request, after the checkpoint this step wrote.
    Preempted,
}

/// Where the run starts: from scratch or a checkpoint.
struct StartPoint {
    cursor: Cursor,
    elapsed_s: f64,
    resumed_from: Option<usize>,
    scaler: Option<LossScaler>,
    /// Said when resume fell back to the previous checkpoint.
    note: Option<String>,
}

/// A run while it trains.
pub(crate) struct TrainLoop<'r, 'a, E> {
    parts: Parts<'r, 'a>,
    local: LocalWorkers,
    /// The first local worker's device (the kNN monitor's).
    base: Device,
    world: usize,
    iters_per_epoch: usize,
    schedule: LrSchedule,
    optim: Optimizer,
    queues: Vec<Option<EmbeddingQueue>>,
    group: WorkerGroup<E>,
    scaler: Option<LossScaler>,
    saver: Saver<'r>,
    jsonl: Option<JsonLines>,
    summary: RunSummary,
    cursor: Cursor,
    timer: StepTimer,
    knn_baseline: Option<KnnResult>,
    watch: Option<NoLearningWatch>,
    /// The iteration of the newest checkpoint in the run folder (the resumed one, at first).
    last_checkpoint: Option<usize>,
    checked_sync: bool,
}

impl<'r, 'a, E: TaskBackbone> TrainLoop<'r, 'a, E> {
    /// Trains the run `parts` describe with the backbone `build` makes.
    pub fn go<F>(parts: Parts<'r, 'a>, build: F) -> Result<TrainOutcome<E>, TrainError>
    where
        F: FnOnce(&Device) -> Result<E, TrainError>,
    {
        let (lp, model) = Self::start(parts, build)?;
        lp.run(model)
    }

    /// The devices, the model (resumed when asked), the run folder's outputs and the workers.
    fn start<F>(mut parts: Parts<'r, 'a>, build: F) -> Result<(Self, SwavModel<E>), TrainError>
    where
        F: FnOnce(&Device) -> Result<E, TrainError>,
    {
        let config = parts.config;
        let s = &config.swav;
        let out_dir = config.run.out_dir.clone();
        std::fs::create_dir_all(&out_dir).map_err(|e| TrainError::io(&out_dir, e))?;
        let kernel_cache = crate::device::configure_kernel_cache(config)?;
        let bases = devices_for(config)?;
        let world = bases.len();
        let processes = parts.options.processes.clone();
        let local = local_workers(config, &bases, processes.as_ref())?;
        let base = local.bases[0].clone();
        let iters_per_epoch = parts.source.batches_per_epoch();
        if iters_per_epoch == 0 {
            return Err(TrainError::NoCompleteBatch {
                batch_size: s.batch_size,
                workers: world,
            });
        }
        let schedule = schedule_for(config, iters_per_epoch);
        let spec = parts.spec.clone();
        let Prepared {
            model,
            optim,
            queues,
            knn_baseline,
            from,
        } = prepare_model(&parts, build, &bases, &base, iters_per_epoch)?;
        let jsonl = open_outputs(&mut parts, &out_dir, from.resumed_from)?;
        let saver = Saver {
            file: out_dir.join(CHECKPOINT_FILE),
            config,
            spec,
            iters_per_epoch,
            faults: parts.faults,
            processes: processes.clone(),
        };
        let mut summary = initial_summary(config, parts.data, world, &from);
        summary.backend = swav_engine::backend_name(&base.clone().autodiff());
        summary.kernel_cache = kernel_cache;
        summary.knn_baseline = knn_baseline.clone();
        let watch = knn_baseline
            .as_ref()
            .map(|b| NoLearningWatch::new(b.top1, config.run.knn_patience));
        parts
            .observer
            .started(schedule.len(), from.cursor.iteration);
        let timer = StepTimer::start(from.elapsed_s);
        let group = match &processes {
            Some(p) => WorkerGroup::in_processes(base.clone(), s, s.batch_size, p.clone()),
            None => WorkerGroup::new(bases.clone(), s, s.batch_size),
        };
        let mut lp = Self {
            parts,
            local,
            base,
            world,
            iters_per_epoch,
            schedule,
            optim,
            queues,
            group,
            scaler: None,
            saver,
            jsonl,
            summary,
            cursor: from.cursor,
            timer,
            knn_baseline,
            watch,
            last_checkpoint: from.resumed_from,
            checked_sync: false,
        };
        if let Some(note) = from.note {
            lp.warn(note);
        }
        lp.set_precision(&bases, from.scaler);
        Ok((lp, model))
    }

    /// Mixed precision as the config asks and the devices allow; f16 with loss scaling (its
    /// scale continuing across a resume), bf16 without (it has f32's range).
    fn set_precision(&mut self, bases: &[Device], resumed: Option<LossScaler>) {
        let s = &self.parts.config.swav;
        let autocast = crate::autocast_for(s, bases);
        self.group.set_autocast(autocast);
        self.scaler = (autocast == Some(DType::F16)).then(|| resumed.unwrap_or_default());
        self.summary.precision = match autocast {
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
                "swav.use_fp16 = true: mixed precision runs on GPU devices; on the CPU backend \
                 the run trains in f32 (its half-precision kernels are slower; set use_fp16 = \
                 false to silence this)"
                    .to_string(),
            );
        }
    }

    /// The epochs from where the run starts to the end (or to a stop).
    fn run(mut self, mut model: SwavModel<E>) -> Result<TrainOutcome<E>, TrainError> {
        let source = self.parts.source;
        while self.cursor.epoch < self.parts.config.swav.epochs {
            self.ensure_queues()?;
            let mut stats = EpochStats::new();
            let (epoch, start) = (self.cursor.epoch, self.cursor.next_batch);
            let mut shards = self
                .local
                .ranks
                .clone()
                .map(|rank| source.epoch(epoch, start, rank))
                .collect::<Result<Vec<_>, TrainError>>()?;
            let mut window = Window::new();
            loop {
                let t0 = Instant::now();
                let Some(batches) = shards
                    .iter_mut()
                    .map(Iterator::next)
                    .collect::<Option<Vec<_>>>()
                else {
                    break;
                };
                let data_s = t0.elapsed().as_secs_f64();
                let (m, end) = self.step(model, batches, data_s, &mut stats, &mut window)?;
                model = m;
                match end {
                    StepEnd::Continue => {}
                    StepEnd::Killed => return Ok(self.killed(model)),
                    StepEnd::Preempted => {
                        drop(shards);
                        return self.preempted(model);
                    }
                }
            }
            drop(shards);
            if self.end_epoch(&model, stats)? {
                return self.preempted(model);
            }
        }
        self.completed(model)
    }

    /// Each local worker's queue, on its device, once the config's queue starts.
    fn ensure_queues(&mut self) -> Result<(), TrainError> {
        let s = &self.parts.config.swav;
        if !s.queue_active(self.cursor.epoch) {
            return Ok(());
        }
        let queues = &mut self.queues[self.local.ranks.clone()];
        for (q, d) in queues.iter_mut().zip(&self.local.bases) {
            if q.is_none() {
                *q = Some(EmbeddingQueue::for_run(
                    s.queue_length,
                    s.batch_size,
                    self.world,
                    s.crops_for_assign.len(),
                    s.feat_dim,
                    &d.clone().autodiff(),
                )?);
            }
        }
        Ok(())
    }

    /// One data-parallel step on `batches` (one per local worker, fetched in `data_s`), its
    /// checks, its update and its records; then what the run does next.
    fn step(
        &mut self,
        model: SwavModel<E>,
        batches: Vec<Batch>,
        data_s: f64,
        stats: &mut EpochStats,
        window: &mut Window,
    ) -> Result<(SwavModel<E>, StepEnd), TrainError> {
        let t1 = Instant::now();
        let config = self.parts.config;
        let iteration = self.cursor.iteration;
        let lr = self.schedule.lr(iteration);
        let batch_index = batches[0].index;
        let model = normalize_heads(model);
        let log_now = (iteration + 1).is_multiple_of(config.run.log_every);
        let groups = batches.into_iter().map(|b| b.groups).collect();
        if let Some(sc) = &self.scaler {
            self.group.set_loss_scale(sc.scale);
        }
        let queues = &mut self.queues[self.local.ranks.clone()];
        let mut out = self.group.step(&model, groups, queues, log_now)?;
        if let Some(faults) = self.parts.faults {
            inject(faults, iteration + 1, &model, &mut out.loss, &mut out.grads);
        }
        self.check_sync_once(&out);
        self.refuse_non_finite(&model, &mut out, lr, batch_index)?;
        let frozen = iteration < config.swav.freeze_prototypes_niters;
        let model = self.update(model, &out, lr, frozen)?;
        let model = out.with_running_stats(model);
        self.cursor.iteration += 1;
        self.summary.iterations_this_session += 1;
        self.summary.last_loss = Some(out.loss);
        let images = self.global_batch();
        let step_s = t1.elapsed().as_secs_f64();
        stats.loss_sum += out.loss;
        stats.steps += 1;
        stats.images += images;
        self.timer.data_s += data_s;
        self.timer.step_s += step_s;
        window.images += images;
        window.data_s += data_s;
        window.compute_s += step_s;
        if let Some(codes) = out.codes.into_iter().next() {
            let (used, entropy) = code_stats(codes);
            stats.codes.add(used, entropy);
            let figures = StepFigures {
                loss: out.loss,
                lr,
                prototypes_used: used,
                code_entropy: entropy,
                prototypes_frozen: frozen,
                queue_used: out.queue_used,
            };
            let record = self.step_record(window, &figures);
            self.record(record)?;
            *window = Window::new();
        }
        self.report_progress(out.loss, lr);
        let end = self.after_step(&model, batch_index)?;
        Ok((model, end))
    }

    /// With synchronised BatchNorm: said once, in the summary and as a warning, when layers of
    /// the model did not take the synchronised path.
    fn check_sync_once(&mut self, out: &ParallelStep) {
        if std::mem::replace(&mut self.checked_sync, true) {
            return;
        }
        let missed = &out.unsynchronised_batch_norms;
        if missed.is_empty() {
            return;
        }
        let (world, batch) = (self.world, self.parts.config.swav.batch_size);
        self.summary.batchnorm = format!(
            "partly synchronised: {} BatchNorm layer(s) of the model ({}) do not go through \
             swav_models::layers::batch_norm and use per-worker statistics ({world} workers, \
             {batch} images each); the others use the global batch's",
            missed.len(),
            missed.join(", "),
        );
        let w = format!(
            "swav.sync_bn = true, but {} BatchNorm layer(s) ({}) call burn's \
             BatchNorm::forward directly and are not synchronised; call \
             swav_models::layers::batch_norm in the backbone",
            missed.len(),
            missed.join(", ")
        );
        self.warn(w);
    }

    /// Ends the run with an error naming the step and the last good checkpoint when the loss,
    /// or (without loss scaling) a gradient, is not finite.
    fn refuse_non_finite(
        &mut self,
        model: &SwavModel<E>,
        out: &mut ParallelStep,
        lr: f64,
        batch_index: usize,
    ) -> Result<(), TrainError> {
        let Cursor {
            epoch, iteration, ..
        } = self.cursor;
        let loss = out.loss;
        let at = format!("epoch {epoch}, iteration {iteration} (batch {batch_index} of the epoch)");
        if !loss.is_finite() {
            self.parts.observer.finished();
            return Err(TrainError::NonFinite(format!(
                "{at}: loss {loss}, lr {lr:.6}; {}. {}. Usual causes: a learning rate too high, \
                 f16 overflow, epsilon too small",
                out.diagnostic.take().unwrap_or_default(),
                self.last_good(),
            )));
        }
        // A non-finite gradient under a finite loss would poison the weights unseen (f16 runs
        // check and skip in the loss scaler instead).
        if self.scaler.is_some() || crate::diagnostics::grads_finite(model, &out.grads) {
            return Ok(());
        }
        self.parts.observer.finished();
        let bad = crate::diagnostics::non_finite_grads(model, &out.grads);
        let which = if bad.is_empty() {
            "some parameters".to_string()
        } else {
            bad.join(", ")
        };
        Err(TrainError::NonFinite(format!(
            "{at}: the loss {loss} is finite but the gradients of {which} hold NaN or infinite \
             values; the update was not applied. {}. Usual causes: a learning rate too high, an \
             operation without a finite gradient in a custom backbone",
            self.last_good()
        )))
    }

    /// The last good checkpoint, named only if there is one, and when it was written.
    fn last_good(&self) -> String {
        match self.last_checkpoint {
            Some(at) => format!(
                "The last good checkpoint is {} (iteration {at}, before this step)",
                self.saver.file.display()
            ),
            None => format!(
                "No checkpoint was written yet (one is written every {} iterations and at each \
                 epoch's end), so nothing is kept to resume from",
                self.parts.config.run.checkpoint_every
            ),
        }
    }

    /// The optimiser's update (prototypes held while frozen); with f16 loss scaling, a step whose
    /// gradients overflowed is skipped, recorded, and the scale lowered.
    fn update(
        &mut self,
        model: SwavModel<E>,
        out: &ParallelStep,
        lr: f64,
        frozen: bool,
    ) -> Result<SwavModel<E>, TrainError> {
        let apply = self
            .scaler
            .as_mut()
            .is_none_or(|sc| sc.update(out.grads_finite));
        if apply {
            let hold = |p: &str| frozen && p.starts_with("prototypes.");
            return Ok(self.optim.step(model, &out.grads, lr, &hold));
        }
        if let Some(sc) = self.scaler {
            let r = Record::new(
                "overflow",
                self.cursor.epoch,
                self.cursor.iteration,
                serde_json::json!({ "loss_scale": sc.scale, "skipped_steps": sc.skipped }),
            );
            self.record(r)?;
        }
        Ok(model)
    }

    /// The `step` record of the window that ends at this step.
    fn step_record(&self, window: &Window, f: &StepFigures) -> Record {
        let secs = window.start.elapsed().as_secs_f64().max(1e-9);
        Record::new(
            "step",
            self.cursor.epoch,
            self.cursor.iteration,
            serde_json::json!({
                "loss": f.loss, "lr": f.lr,
                "images_per_s": window.images as f64 / secs, "data_time_s": window.data_s,
                "compute_time_s": window.compute_s, "code_entropy": f.code_entropy,
                "prototypes_used": f.prototypes_used, "queue_used": f.queue_used,
                "prototypes_frozen": f.prototypes_frozen, "workers": self.world,
            }),
        )
    }

    /// The observer's view of the step just done.
    fn report_progress(&mut self, loss: f64, lr: f64) {
        let images = self.global_batch();
        let rate = self.summary.iterations_this_session as f64 * images as f64
            / self.timer.elapsed_s().max(1e-9);
        self.parts.observer.step(&StepProgress {
            epoch: self.cursor.epoch,
            epochs: self.parts.config.swav.epochs,
            iteration: self.cursor.iteration,
            total_iterations: self.schedule.len(),
            loss,
            lr,
            images_per_s: rate,
        });
    }

    /// After a step: a kill on request, a stop request mid-epoch (checkpointed here; after an
    /// epoch's last batch the epoch's end is written first), or the periodic checkpoint.
    fn after_step(
        &mut self,
        model: &SwavModel<E>,
        batch_index: usize,
    ) -> Result<StepEnd, TrainError> {
        let options = self.parts.options;
        if options.stop_after == Some(self.summary.iterations_this_session) {
            return Ok(StepEnd::Killed);
        }
        let mid_epoch = batch_index + 1 < self.iters_per_epoch;
        if self.stop_now() && mid_epoch {
            self.cursor.next_batch = batch_index + 1;
            self.checkpoint(model)?;
            return Ok(StepEnd::Preempted);
        }
        let every = self.parts.config.run.checkpoint_every;
        if every > 0 && self.cursor.iteration.is_multiple_of(every) && mid_epoch {
            self.cursor.next_batch = batch_index + 1;
            self.checkpoint(model)?;
        }
        Ok(StepEnd::Continue)
    }

    /// Writes the checkpoint at the cursor.
    fn checkpoint(&mut self, model: &SwavModel<E>) -> Result<(), TrainError> {
        let at = Position {
            epoch: self.cursor.epoch,
            next_batch: self.cursor.next_batch,
            iteration: self.cursor.iteration,
            elapsed_s: self.timer.total_s(),
        };
        let queues = &mut self.queues;
        self.saver
            .save(model, &self.optim, queues, at, self.scaler)?;
        self.last_checkpoint = Some(self.cursor.iteration);
        Ok(())
    }

    /// The epoch's end: its checkpoint, the kNN monitor when due, the epoch record, the
    /// collapse and no-learning warnings. Returns whether a stop request ends the run here.
    fn end_epoch(&mut self, model: &SwavModel<E>, stats: EpochStats) -> Result<bool, TrainError> {
        let config = self.parts.config;
        let epochs = config.swav.epochs;
        self.cursor.next_batch = 0;
        self.cursor.epoch += 1;
        let epoch = self.cursor.epoch;
        self.checkpoint(model)?;
        let mean_loss = stats.mean_loss();
        self.summary.last_epoch_loss = Some(mean_loss).filter(|l| l.is_finite());
        let knn_due = config.run.knn_every > 0
            && (epoch.is_multiple_of(config.run.knn_every) || epoch == epochs);
        let knn = if knn_due && is_leader(self.parts.options.processes.as_ref()) {
            knn_monitor(&model.backbone, config, self.parts.data, &self.base)?
        } else {
            None
        };
        if let Some(k) = &knn {
            self.summary.knn = Some(k.clone());
            if let Some(w) = self.watch.as_mut().and_then(|w| w.observe(epoch, k.top1)) {
                self.warn(w);
            }
        }
        let record = self.epoch_record(&stats, mean_loss, knn.as_ref());
        self.record(record)?;
        let s = &config.swav;
        if let Some(w) = crate::diagnostics::collapse_warning(
            epoch,
            mean_loss,
            self.summary.collapse_loss,
            s.nmb_prototypes[0],
            s.batch_size,
            self.global_batch(),
            &stats.codes,
        ) {
            self.warn(w);
        }
        let top1 = knn.as_ref().map(|k| k.top1);
        self.parts.observer.epoch(epoch, epochs, mean_loss, top1);
        Ok(self.stop_now() && epoch < epochs)
    }

    /// The `epoch` record of the epoch just ended.
    fn epoch_record(&self, stats: &EpochStats, mean_loss: f64, knn: Option<&KnnResult>) -> Record {
        let secs = stats.start.elapsed().as_secs_f64().max(1e-9);
        let iteration = self.cursor.iteration;
        Record::new(
            "epoch",
            self.cursor.epoch,
            iteration,
            serde_json::json!({
                "loss": mean_loss, "lr": self.schedule.lr(iteration.saturating_sub(1)),
                "images_per_s": stats.images as f64 / secs, "time_s": secs,
                "knn_top1": knn.map(|k| k.top1),
                "knn_top5": knn.map(|k| k.top5),
                "knn_baseline_top1": knn.and(self.knn_baseline.as_ref()).map(|b| b.top1),
                "code_entropy": stats.codes.mean_entropy(),
                "prototypes_used_min": stats.codes.fewest_used(),
                "skipped_files": self.parts.source.skipped().len(),
            }),
        )
    }

    /// Images per iteration over all workers.
    fn global_batch(&self) -> usize {
        self.parts.config.swav.batch_size * self.world
    }

    /// Whether to stop now: asked of this process, or of any process of the group (they must
    /// stop after the same step).
    fn stop_now(&self) -> bool {
        let options = self.parts.options;
        let mine = options
            .stop
            .as_ref()
            .is_some_and(crate::stop::StopRequest::is_requested);
        match &options.processes {
            Some(p) => crate::process::any(p.as_ref(), mine),
            None => mine,
        }
    }

    fn warn(&mut self, text: String) {
        self.parts.observer.warning(&text);
        self.summary.warnings.push(text);
    }

    /// Records to `metrics.jsonl` and the sinks (rank 0 alone records).
    fn record(&mut self, record: Record) -> Result<(), TrainError> {
        let Some(jsonl) = &mut self.jsonl else {
            return Ok(());
        };
        jsonl.record(&record)?;
        for sink in &mut self.parts.sinks {
            sink.record(&record)?;
        }
        Ok(())
    }

    /// The end of all epochs.
    fn completed(mut self, model: SwavModel<E>) -> Result<TrainOutcome<E>, TrainError> {
        self.parts.observer.finished();
        self.summary.completed = true;
        self.write_summary()?;
        drop(model.valid());
        Ok(TrainOutcome {
            model,
            summary: self.summary,
        })
    }

    /// The end on a stop request, after its checkpoint at the cursor was written.
    fn preempted(mut self, model: SwavModel<E>) -> Result<TrainOutcome<E>, TrainError> {
        self.parts.observer.finished();
        self.summary.preempted = Some(Preempted {
            iteration: self.cursor.iteration,
            epoch: self.cursor.epoch,
            checkpoint: self.summary.checkpoint.clone(),
        });
        self.write_summary()?;
        drop(model.valid());
        Ok(TrainOutcome {
            model,
            summary: self.summary,
        })
    }

    /// The end as a kill would leave it: nothing more written.
    fn killed(mut self, model: SwavModel<E>) -> TrainOutcome<E> {
        self.parts.observer.finished();
        drop(model.valid());
        self.summary.iterations = self.cursor.iteration;
        self.summary.time_s = self.timer.elapsed_s();
        TrainOutcome {
            model,
            summary: self.summary,
        }
    }

    /// The summary's closing figures, the sinks closed and `summary.json` written (rank 0).
    fn write_summary(&mut self) -> Result<(), TrainError> {
        let images = self.global_batch();
        let summary = &mut self.summary;
        summary.plots.clear();
        for sink in &mut self.parts.sinks {
            summary.plots.extend(sink.close()?);
        }
        let timer = &self.timer;
        let busy_s = (timer.step_s + timer.data_s).max(1e-9);
        summary.iterations = self.cursor.iteration;
        summary.time_s = timer.elapsed_s();
        summary.images_per_s = summary.iterations_this_session as f64 * images as f64 / busy_s;
        summary.data_time_fraction = timer.data_s / busy_s;
        summary.skipped_files = skipped_by_file(self.parts.source.skipped());
        if !is_leader(self.parts.options.processes.as_ref()) {
            return Ok(());
        }
        let sp = summary.out_dir.join(SUMMARY_FILE);
        let text = serde_json::to_string_pretty(&summary).map_err(|e| TrainError::io(&sp, e))?;
        swav_models::atomic::write_atomically(&sp, text.as_bytes())
            .map_err(|e| TrainError::io(&sp, e))
    }
}

/// Whether this process writes the run folder (the only process, or rank 0 of a group).
fn is_leader(processes: Option<&SharedProcessGroup>) -> bool {
    processes.is_none_or(|p| p.rank() == 0)
}

/// This process's workers: all of them, or its own rank's in a group of processes.
fn local_workers(
    config: &TrainConfig,
    bases: &[Device],
    processes: Option<&SharedProcessGroup>,
) -> Result<LocalWorkers, TrainError> {
    let world = bases.len();
    let Some(p) = processes else {
        return Ok(LocalWorkers {
            ranks: 0..world,
            bases: bases.to_vec(),
        });
    };
    if p.world_size() != world {
        return Err(TrainError::ProcessCount {
            processes: p.world_size(),
            world_size: world,
        });
    }
    let rank = p.rank();
    // `run.devices` by rank; otherwise `run.device`, and for a GPU the machine's GPU of this
    // process's rank on it (cuda:0, cuda:1, ... on every machine).
    let pick = if config.run.devices.is_empty() {
        p.local_rank().min(world - 1)
    } else {
        rank
    };
    Ok(LocalWorkers {
        ranks: rank..rank + 1,
        bases: vec![bases[pick].clone()],
    })
}

/// The model at its seeded initialisation, or resumed, with its optimiser and queues.
struct Prepared<E> {
    model: SwavModel<E>,
    optim: Optimizer,
    queues: Vec<Option<EmbeddingQueue>>,
    /// The kNN monitor at random initialisation (leader, with the monitor on).
    knn_baseline: Option<KnnResult>,
    from: StartPoint,
}

/// The seeded model (measured by the kNN monitor before any training, also when resuming, as
/// the checkpoint has not been loaded yet), then resumed when asked.
fn prepare_model<E: TaskBackbone, F>(
    parts: &Parts<'_, '_>,
    build: F,
    bases: &[Device],
    base: &Device,
    iters_per_epoch: usize,
) -> Result<Prepared<E>, TrainError>
where
    F: FnOnce(&Device) -> Result<E, TrainError>,
{
    let config = parts.config;
    let spec = &parts.spec;
    let device = base.clone().autodiff();
    let model = seeded_init(
        &device,
        config.swav.seed,
        |d| -> Result<SwavModel<E>, TrainError> { Ok(spec.wrap(build(d)?, d)?) },
    )?;
    let knn_baseline = if config.run.knn_every > 0 && is_leader(parts.options.processes.as_ref()) {
        knn_monitor(&model.backbone, config, parts.data, base)?
    } else {
        None
    };
    let mut optim = optimizer_for(config);
    let mut queues: Vec<Option<EmbeddingQueue>> = (0..bases.len()).map(|_| None).collect();
    let (model, from) = resume_if_asked(
        parts,
        iters_per_epoch,
        model,
        &mut optim,
        &mut queues,
        bases,
    )?;
    Ok(Prepared {
        model,
        optim,
        queues,
        knn_baseline,
        from,
    })
}

/// The learning-rate schedule of the config, over `iters_per_epoch` iterations an epoch.
fn schedule_for(config: &TrainConfig, iters_per_epoch: usize) -> LrSchedule {
    let s = &config.swav;
    let (base_lr, final_lr, start_lr) = s.learning_rates();
    LrSchedule::new(
        base_lr,
        final_lr,
        start_lr,
        s.warmup_epochs,
        s.epochs,
        iters_per_epoch,
    )
}

/// The optimiser of the config.
fn optimizer_for(config: &TrainConfig) -> Optimizer {
    let s = &config.swav;
    Optimizer::new(OptimConfig {
        kind: s.optimizer,
        momentum: s.momentum,
        weight_decay: s.wd,
        trust: s.lars_trust_coefficient,
        exclude_bn_bias: s.lars_exclude_bn_bias,
        clip: s.lars_clip,
    })
}

/// The model, optimiser and queues from the checkpoint the options or the run folder name, and
/// where the run continues; or the fresh model and the start.
fn resume_if_asked<E: TaskBackbone>(
    parts: &Parts<'_, '_>,
    iters_per_epoch: usize,
    model: SwavModel<E>,
    optim: &mut Optimizer,
    queues: &mut [Option<EmbeddingQueue>],
    bases: &[Device],
) -> Result<(SwavModel<E>, StartPoint), TrainError> {
    let config = parts.config;
    let out_dir = &config.run.out_dir;
    let requested = parts.options.resume_from.as_deref();
    let chosen = crate::run_dir::choose_checkpoint(requested, out_dir, config.run.auto_resume)?;
    let Some((ckpt, note)) = chosen else {
        let start = StartPoint {
            cursor: Cursor::default(),
            elapsed_s: 0.0,
            resumed_from: None,
            scaler: None,
            note: None,
        };
        return Ok((model, start));
    };
    let (model, r) =
        crate::run_dir::resume(&ckpt, config, iters_per_epoch, model, optim, queues, bases)?;
    let start = StartPoint {
        cursor: Cursor {
            epoch: r.epoch,
            next_batch: r.next_batch,
            iteration: r.iteration,
        },
        elapsed_s: r.elapsed_s,
        resumed_from: Some(r.iteration),
        scaler: r.loss_scaler,
        note,
    };
    Ok((model, start))
}

/// On the leading process: the resolved config written, `metrics.jsonl` opened (continued when
/// resuming from `resumed_from`) and the sinks opened with its history. Elsewhere: no sinks.
fn open_outputs(
    parts: &mut Parts<'_, '_>,
    out_dir: &Path,
    resumed_from: Option<usize>,
) -> Result<Option<JsonLines>, TrainError> {
    if !is_leader(parts.options.processes.as_ref()) {
        parts.sinks.clear();
        return Ok(None);
    }
    let resolved = parts.config.to_toml()?;
    let cfg_path = out_dir.join(CONFIG_FILE);
    swav_models::atomic::write_atomically(&cfg_path, resolved.as_bytes())
        .map_err(|e| TrainError::io(&cfg_path, e))?;
    let (lines, history) = JsonLines::open(out_dir, resumed_from)?;
    for sink in &mut parts.sinks {
        sink.open(out_dir, &history)?;
    }
    Ok(Some(lines))
}

/// The summary before the first step (of this process, from `from`).
fn initial_summary(
    config: &TrainConfig,
    data: &RunData,
    world: usize,
    from: &StartPoint,
) -> RunSummary {
    let s = &config.swav;
    let out_dir = &config.run.out_dir;
    let batchnorm = if world == 1 {
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
    };
    RunSummary {
        completed: false,
        preempted: None,
        epochs: s.epochs,
        iterations: from.cursor.iteration,
        iterations_this_session: 0,
        resumed_from_iteration: from.resumed_from,
        time_s: 0.0,
        images_per_s: 0.0,
        data_time_fraction: 0.0,
        last_loss: None,
        last_epoch_loss: None,
        collapse_loss: (s.nmb_prototypes[0] as f64).ln(),
        skipped_files: Vec::new(),
        knn: None,
        knn_baseline: None,
        batchnorm,
        backend: String::new(),
        kernel_cache: None,
        precision: String::new(),
        warnings: Vec::new(),
        data: data.description.clone(),
        out_dir: out_dir.clone(),
        checkpoint: out_dir.join(CHECKPOINT_FILE),
        plots: Vec::new(),
        metrics: out_dir.join(crate::metrics::METRICS_FILE),
    }
}

/// A file skipped as unreadable: why, and the epochs it was met in.
struct SkippedFile {
    reason: String,
    epochs: Vec<u64>,
}

/// The skipped samples, each file once with the epochs it was met in (a bad file is met again
/// every epoch).
fn skipped_by_file(skipped: Vec<SkippedSample>) -> Vec<String> {
    let mut by_file: BTreeMap<String, SkippedFile> = BTreeMap::new();
    for s in skipped {
        by_file
            .entry(s.source)
            .or_insert_with(|| SkippedFile {
                reason: s.reason,
                epochs: Vec::new(),
            })
            .epochs
            .push(s.epoch);
    }
    by_file
        .into_iter()
        .map(|(file, f)| format!("{file} (epochs {:?}): {}", f.epochs, f.reason))
        .collect()
}
