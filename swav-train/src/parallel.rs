//! Data-parallel SwAV: one model replica per device, each on its own shard of the batch, in
//! lockstep.
//!
//! A [`WorkerGroup`] owns one thread per worker (rank). Each step the coordinator (the thread
//! that calls [`WorkerGroup::step`]) sends every worker the current model and that worker's
//! batch and queue; the worker forks the model onto its device, runs the multi-crop forward,
//! computes its codes with the distributed Sinkhorn (the total and the per-prototype sums are
//! reduced over the workers through [`LocalWorker`], the batch size is global, the per-sample
//! normalisation local, as the original's `distributed_sinkhorn`), the swapped-prediction loss
//! of its local batch, and the backward pass, and sends back its gradients as burn's
//! [`GradientsParams`]. The coordinator moves them to the first device
//! ([`GradientsParams::to_device`]) and sums them in rank order with burn's
//! [`GradientsAccumulator`], as burn-train's multi-device strategy does: each worker's loss is
//! divided by the number of workers before its backward, so the sum is the gradient of the
//! mean loss, which is the loss of one worker with the whole global batch.
//!
//! One code path for any number of workers: with one worker there is no communication (the
//! Sinkhorn reductions return their input), and the arithmetic is that of a single device.
//!
//! Collective all-reduce (`burn::tensor::distributed::all_reduce`) is not used: in burn 0.22.1
//! only the CUDA backend has a transport (NCCL); on the CPU (`flex`) backend the call is
//! unimplemented and on wgpu it panics inside cubecl. See `docs/design/data-parallel.md`.
//!
//! BatchNorm: by default every replica normalises with the statistics of its own local batch
//! (per-worker statistics, as PyTorch's DDP without SyncBatchNorm). With `swav.sync_bn` and several
//! workers, every BatchNorm of the backbone and head uses the statistics of the global batch
//! instead ([`swav_models::syncbn`]: the per-channel sums are reduced over the workers in the
//! forward pass, and the gradients through them in the backward pass, through the same
//! [`LocalWorker`]), as the original's `SyncBatchNorm`. Either way each replica has running
//! statistics of its own for the step (burn's shared [`burn::module::RunningState`] would average
//! the threads' updates in whatever order they arrive, and a multi-crop step updates each layer
//! once per resolution); after the step they are averaged over the workers in rank order and
//! written into the coordinator's model ([`ParallelStep::with_running_stats`]). Only evaluation
//! reads them.

use std::sync::mpsc::{Receiver, Sender, channel};
use std::thread::JoinHandle;

use std::collections::HashMap;

use burn::module::{Module, ModuleDisplay, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::{DType, Device, Tensor};
use swav_core::{Collective, EmbeddingQueue, LocalGroup, SwavConfig};
use swav_data::CropGroupBatch;
use swav_models::precision::with_autocast;
use swav_models::syncbn::{SharedCollective, with_synchronised_batch_norm_checked};
use swav_models::{Backbone, SwavModel};

use crate::TrainError;
use crate::diagnostics::diagnose;
use crate::objective::forward_loss;
use crate::process::{SharedProcessGroup, all_reduce_gradients, average_running};

/// What a worker is asked to compute.
struct Job<E> {
    model: SwavModel<E>,
    groups: Vec<CropGroupBatch>,
    queue: Option<EmbeddingQueue>,
    want_codes: bool,
    autocast: Option<DType>,
    loss_scale: f64,
}

/// What a worker sends back.
struct Reply {
    rank: usize,
    grads: GradientsParams,
    loss: f64,
    codes: Option<Tensor<2>>,
    queue: Option<EmbeddingQueue>,
    queue_used: bool,
    diagnostic: Option<String>,
    running: Vec<(ParamId, Tensor<1>)>,
    unsynchronised: Vec<String>,
}

/// The result of one data-parallel step.
#[derive(Debug)]
pub struct ParallelStep {
    /// The gradients of the mean loss over all workers, on the first device, by parameter.
    pub grads: GradientsParams,
    /// The loss averaged over the workers (each worker's loss is the mean over its batch).
    pub loss: f64,
    /// Each worker's loss, by rank.
    pub worker_losses: Vec<f64>,
    /// The codes of the first head's first assignment crop, `[B, K]`, of the workers asked for
    /// them, by rank: rank 0 alone with [`WorkerGroup::step`], every worker with
    /// [`WorkerGroup::step_all_codes`].
    pub codes: Vec<Tensor<2>>,
    /// Whether the queue took part in the Sinkhorn this step.
    pub queue_used: bool,
    /// For a non-finite loss: which worker and what its scores and loss parts were.
    pub diagnostic: Option<String>,
    /// Seconds spent combining the gradients (moving them to the first device and summing).
    pub combine_s: f64,
    /// The running statistics (BatchNorm means and variances, flattened) after the step,
    /// averaged over the workers, by id.
    pub running: HashMap<ParamId, Tensor<1>>,
    /// Whether every gradient is finite (checked when the loss was scaled: an f16 overflow
    /// makes the caller skip the update and lower the scale).
    pub grads_finite: bool,
    /// With synchronised BatchNorm: the model's BatchNorm layers that did not take the
    /// synchronised path this step (a backbone calling `BatchNorm::forward` itself instead of
    /// `swav_models::layers::batch_norm`); they normalised with per-worker statistics.
    pub unsynchronised_batch_norms: Vec<String>,
}

impl ParallelStep {
    /// `model` with its running statistics replaced by those of this step (the tensors that do
    /// not require a gradient, matched by id).
    pub fn with_running_stats<M: Module>(&self, model: M) -> M {
        struct Set<'a>(&'a HashMap<ParamId, Tensor<1>>);
        impl ModuleMapper for Set<'_> {
            fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
                let (id, tensor, mapper) = param.consume();
                match self.0.get(&id) {
                    Some(v) if !tensor.is_require_grad() => {
                        let dims = tensor.dims();
                        let new = v.clone().to_device(&tensor.device()).reshape(dims);
                        Param::from_mapped_value(id, new, mapper)
                    }
                    _ => Param::from_mapped_value(id, tensor, mapper),
                }
            }
        }
        if self.running.is_empty() {
            return model;
        }
        model.map(&mut Set(&self.running))
    }
}

/// The tensors of `model` that take no gradient (running statistics), flattened, by id.
fn running_stats<M: Module>(model: &M) -> Vec<(ParamId, Tensor<1>)> {
    struct Get(Vec<(ParamId, Tensor<1>)>);
    impl ModuleVisitor for Get {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if !param.is_require_grad() {
                let t = param.val();
                let n = t.shape().num_elements();
                self.0.push((param.id, t.reshape([n])));
            }
        }
    }
    // Folds the updates the forward passes left pending into the value.
    drop(model.valid());
    let mut get = Get(Vec::new());
    model.visit(&mut get);
    get.0
}

/// Divides every gradient of `model`'s parameters in `grads` by `scale`; whether all are finite.
fn unscale<M: Module>(grads: &mut GradientsParams, model: &M, scale: f64) -> bool {
    struct Unscale<'a> {
        grads: &'a mut GradientsParams,
        factor: f64,
        squares: Option<Tensor<1>>,
    }
    impl ModuleVisitor for Unscale<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(g) = self.grads.remove::<D>(param.id) {
                let g = g.mul_scalar(self.factor);
                let sq = g.clone().square().sum();
                self.squares = Some(match self.squares.take() {
                    Some(s) => s.add(sq),
                    None => sq,
                });
                self.grads.register::<D>(param.id, g);
            }
        }
    }
    let mut v = Unscale {
        grads,
        factor: 1.0 / scale,
        squares: None,
    };
    model.visit(&mut v);
    // One read-back for the whole model: inf or NaN anywhere makes the sum non-finite.
    v.squares.is_none_or(|s| s.into_scalar::<f32>().is_finite())
}

/// One thread per data-parallel worker, each bound to a device.
pub struct WorkerGroup<E> {
    processes: Option<SharedProcessGroup>,
    autocast: Option<DType>,
    loss_scale: f64,
    devices: Vec<Device>,
    jobs: Vec<Sender<Job<E>>>,
    replies: Receiver<Result<Reply, Failure>>,
    handles: Vec<JoinHandle<()>>,
}

impl<E> WorkerGroup<E>
where
    E: Backbone + Module + ModuleDisplay + 'static,
{
    /// Starts one worker per entry of `devices` (rank = position), computing the SwAV loss of
    /// `swav` on local batches of `batch` images. A device may appear several times (several
    /// CPU workers share the `flex` device). The devices are the base devices; the workers
    /// differentiate on their autodiff versions.
    ///
    /// # Panics
    /// If `devices` is empty.
    pub fn new(devices: Vec<Device>, swav: &SwavConfig, batch: usize) -> Self {
        Self::start(devices, swav, batch, None)
    }

    /// The worker of this process in a group of processes, one worker each (`mpirun`): its
    /// reductions (the Sinkhorn's sums, synchronised BatchNorm's statistics) and the step's
    /// gradients, running statistics and losses go through `processes`.
    pub fn in_processes(
        device: Device,
        swav: &SwavConfig,
        batch: usize,
        processes: SharedProcessGroup,
    ) -> Self {
        Self::start(vec![device], swav, batch, Some(processes))
    }

    fn start(
        devices: Vec<Device>,
        swav: &SwavConfig,
        batch: usize,
        processes: Option<SharedProcessGroup>,
    ) -> Self {
        assert!(!devices.is_empty(), "a worker group needs a device");
        let world = devices.len();
        let (reply_tx, replies) = channel();
        let mut jobs = Vec::with_capacity(world);
        let mut handles = Vec::with_capacity(world);
        // Each worker's group: this process's place among the processes, or its thread's.
        let reducers: Vec<SharedCollective> = match &processes {
            Some(p) => vec![p.clone()],
            None => LocalGroup::workers(world)
                .into_iter()
                .map(|w| -> SharedCollective { std::sync::Arc::new(w) })
                .collect(),
        };
        for (rank, reduce) in reducers.into_iter().enumerate() {
            let (tx, rx) = channel::<Job<E>>();
            jobs.push(tx);
            let device = devices[rank].clone().autodiff();
            let swav = swav.clone();
            let out = reply_tx.clone();
            let handle = std::thread::Builder::new()
                .name(format!("swav-worker-{rank}"))
                .spawn(move || worker_loop(rank, device, reduce, swav, batch, rx, out))
                .expect("the OS starts a thread");
            handles.push(handle);
        }
        Self {
            processes,
            autocast: None,
            loss_scale: 1.0,
            devices,
            jobs,
            replies,
            handles,
        }
    }

    /// Mixed precision for the following steps: the workers' forward passes under
    /// [`swav_models::precision::with_autocast`] with this half type, or f32 (`None`).
    pub fn set_autocast(&mut self, dtype: Option<DType>) {
        self.autocast = dtype;
    }

    /// The factor the workers multiply their loss by before the backward pass (f16 loss
    /// scaling; 1 by default). The returned gradients are divided by it again and checked for
    /// overflow ([`ParallelStep::grads_finite`]).
    pub fn set_loss_scale(&mut self, scale: f64) {
        self.loss_scale = scale;
    }

    /// Number of workers of this process.
    pub fn world_size(&self) -> usize {
        self.devices.len()
    }

    /// The workers' devices, by rank.
    pub fn devices(&self) -> &[Device] {
        &self.devices
    }

    /// One step: every worker computes the loss and gradients of `model` on its batch
    /// (`batches[rank]`: the crop groups of that worker's images) with its queue
    /// (`queues[rank]`, updated in place). The prototypes must have been normalised. Returns
    /// the combined gradients; the caller applies the optimiser to `model`.
    pub fn step(
        &self,
        model: &SwavModel<E>,
        batches: Vec<Vec<CropGroupBatch>>,
        queues: &mut [Option<EmbeddingQueue>],
        want_codes: bool,
    ) -> Result<ParallelStep, TrainError> {
        self.run(model, batches, queues, |rank| want_codes && rank == 0)
    }

    /// [`WorkerGroup::step`], returning every worker's codes (for tests and diagnostics).
    pub fn step_all_codes(
        &self,
        model: &SwavModel<E>,
        batches: Vec<Vec<CropGroupBatch>>,
        queues: &mut [Option<EmbeddingQueue>],
    ) -> Result<ParallelStep, TrainError> {
        self.run(model, batches, queues, |_| true)
    }

    fn run(
        &self,
        model: &SwavModel<E>,
        batches: Vec<Vec<CropGroupBatch>>,
        queues: &mut [Option<EmbeddingQueue>],
        want_codes: impl Fn(usize) -> bool,
    ) -> Result<ParallelStep, TrainError> {
        let world = self.world_size();
        if batches.len() != world || queues.len() != world {
            return Err(TrainError::Parallel(format!(
                "{} batches and {} queues for {world} workers",
                batches.len(),
                queues.len()
            )));
        }
        self.dispatch(model, batches, queues, want_codes)?;
        let replies = self.collect()?;
        let t_combine = std::time::Instant::now();
        let (mut out, mut running) = self.combine(model, replies, queues)?;
        if let Some(p) = &self.processes {
            // The other processes' workers: gradients in buckets, then the running statistics
            // and every worker's loss.
            all_reduce_gradients(&mut out.grads, model, p.as_ref());
            running = average_running(running, p.as_ref());
            let mut losses = vec![0.0; p.world_size()];
            losses[p.rank()] = out.worker_losses.first().copied().unwrap_or(0.0);
            p.sum_f64(&mut losses);
            out.worker_losses = losses;
            out.queue_used = crate::process::any(p.as_ref(), out.queue_used);
        }
        if self.loss_scale != 1.0 {
            out.grads_finite = unscale(&mut out.grads, model, self.loss_scale);
        }
        out.running = running
            .into_iter()
            .map(|(id, t)| {
                if world > 1 {
                    (id, t.div_scalar(world as f64))
                } else {
                    (id, t)
                }
            })
            .collect();
        out.combine_s = t_combine.elapsed().as_secs_f64();
        out.loss = out.worker_losses.iter().sum::<f64>() / out.worker_losses.len().max(1) as f64;
        Ok(out)
    }

    /// Sends each worker its job: the model, its batch, its queue (taken until it replies).
    fn dispatch(
        &self,
        model: &SwavModel<E>,
        batches: Vec<Vec<CropGroupBatch>>,
        queues: &mut [Option<EmbeddingQueue>],
        want_codes: impl Fn(usize) -> bool,
    ) -> Result<(), TrainError> {
        for (rank, (groups, queue)) in batches.into_iter().zip(queues.iter_mut()).enumerate() {
            let job = Job {
                model: model.clone(),
                groups,
                queue: queue.take(),
                want_codes: want_codes(rank),
                autocast: self.autocast,
                loss_scale: self.loss_scale,
            };
            self.jobs[rank]
                .send(job)
                .map_err(|_| TrainError::Parallel(format!("worker {rank} has stopped")))?;
        }
        Ok(())
    }

    /// Every worker's reply, by rank; an error naming the worker that failed first.
    fn collect(&self) -> Result<Vec<Reply>, TrainError> {
        let world = self.world_size();
        let mut replies: Vec<Option<Reply>> = (0..world).map(|_| None).collect();
        let mut failures: Vec<Failure> = Vec::new();
        for _ in 0..world {
            match self.replies.recv() {
                Ok(Ok(reply)) => {
                    let rank = reply.rank;
                    replies[rank] = Some(reply);
                }
                Ok(Err(f)) => failures.push(f),
                Err(_) => {
                    return Err(TrainError::Parallel(
                        "a worker stopped in the middle of a step".into(),
                    ));
                }
            }
        }
        if !failures.is_empty() {
            // The worker that failed first is the one whose message is not the abort's.
            failures.sort_by_key(|f| (f.message.contains("group aborted"), f.rank));
            let list: Vec<String> = failures
                .iter()
                .map(|f| format!("worker {}: {}", f.rank, f.message))
                .collect();
            return Err(TrainError::Parallel(format!(
                "a worker failed, the step was abandoned and the group stopped ({})",
                list.join("; ")
            )));
        }
        replies
            .into_iter()
            .enumerate()
            .map(|(rank, r)| {
                r.ok_or_else(|| {
                    TrainError::Parallel(format!("worker {rank} sent no result this step"))
                })
            })
            .collect()
    }

    /// This process's workers' replies combined: the gradients and running statistics summed in
    /// rank order on the first device (so the result does not depend on which worker finished
    /// first), the queues given back, the losses, codes and diagnostics listed.
    fn combine(
        &self,
        model: &SwavModel<E>,
        replies: Vec<Reply>,
        queues: &mut [Option<EmbeddingQueue>],
    ) -> Result<(ParallelStep, Vec<(ParamId, Tensor<1>)>), TrainError> {
        let target = &self.devices[0];
        let mut acc = GradientsAccumulator::<SwavModel<E>>::new();
        let mut out = ParallelStep {
            grads: GradientsParams::new(),
            loss: 0.0,
            worker_losses: Vec::with_capacity(replies.len()),
            codes: Vec::new(),
            queue_used: false,
            diagnostic: None,
            combine_s: 0.0,
            running: HashMap::new(),
            grads_finite: true,
            unsynchronised_batch_norms: Vec::new(),
        };
        let mut running: Vec<(ParamId, Tensor<1>)> = Vec::new();
        for (rank, reply) in replies.into_iter().enumerate() {
            queues[rank] = reply.queue;
            let grads = if rank == 0 {
                reply.grads
            } else {
                reply.grads.to_device(target, model)
            };
            acc.accumulate(model, grads);
            if rank == 0 {
                running = reply.running;
                out.unsynchronised_batch_norms = reply.unsynchronised;
            } else {
                for ((id, sum), (id_r, v)) in running.iter_mut().zip(reply.running) {
                    if *id != id_r {
                        return Err(TrainError::Parallel(format!(
                            "worker {rank} returned running statistics in another order"
                        )));
                    }
                    *sum = sum.clone().add(v.to_device(&sum.device()));
                }
            }
            out.worker_losses.push(reply.loss);
            out.queue_used |= reply.queue_used;
            if let Some(d) = reply.diagnostic {
                out.diagnostic
                    .get_or_insert_with(String::new)
                    .push_str(&format!("worker {rank}: {d}; "));
            }
            out.codes.extend(reply.codes);
        }
        out.grads = acc.grads();
        Ok((out, running))
    }
}

impl<E> Drop for WorkerGroup<E> {
    fn drop(&mut self) {
        // Closing the job channels ends the workers' loops.
        self.jobs.clear();
        for h in self.handles.drain(..) {
            // A worker that panicked has already reported through the closed reply channel.
            drop(h.join());
        }
    }
}

fn worker_loop<E: Backbone + Module + ModuleDisplay>(
    rank: usize,
    device: Device,
    reduce: SharedCollective,
    swav: SwavConfig,
    batch: usize,
    jobs: Receiver<Job<E>>,
    out: Sender<Result<Reply, Failure>>,
) {
    while let Ok(job) = jobs.recv() {
        // A panic (a bug, a device lost, memory) must not leave the other workers
        // waiting in a reduction for ever: the group is aborted, every worker reports, and the
        // coordinator returns an error.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            worker_step(rank, &device, &reduce, &swav, batch, job)
        }))
        .map_err(|payload| {
            let message = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "a panic without a message".into());
            reduce.abort(&format!(
                "swav-rs: worker {} of {} failed: {message}",
                reduce.rank(),
                reduce.world_size()
            ));
            Failure { rank, message }
        });
        if out.send(result).is_err() {
            break;
        }
    }
}

/// A worker's step that panicked.
struct Failure {
    rank: usize,
    message: String,
}

fn worker_step<E: Backbone + Module + ModuleDisplay>(
    rank: usize,
    device: &Device,
    reduce: &SharedCollective,
    swav: &SwavConfig,
    batch: usize,
    job: Job<E>,
) -> Reply {
    let world = reduce.world_size();
    // A replica of its own: new autodiff leaves, so the workers' graphs stay apart, and
    // running statistics of its own.
    let model = job.model.fork(device).valid().train();
    let groups: Vec<Tensor<4>> = job
        .groups
        .into_iter()
        .map(|g| crate::source::group_tensor(g, device))
        .collect();
    let mut queue = job.queue;
    let (autocast, loss_scale) = (job.autocast, job.loss_scale);
    let mut forward_backward = || {
        let (scores, lo) = forward_loss(&model, &groups, batch, swav, queue.as_mut(), reduce);
        let loss = lo.loss.clone().into_scalar::<f32>() as f64;
        let diagnostic = (!loss.is_finite()).then(|| diagnose(&scores, &lo, batch, swav));
        // The mean over the workers, times the f16 loss scale (1 without).
        let factor = loss_scale / world as f64;
        let scaled = if factor != 1.0 {
            lo.loss.clone().mul_scalar(factor)
        } else {
            lo.loss.clone()
        };
        let grads = GradientsParams::from_grads(scaled.backward(), &model);
        (lo, loss, diagnostic, grads)
    };
    let mut with_precision = || match autocast {
        Some(dtype) => with_autocast(dtype, &mut forward_backward),
        None => forward_backward(),
    };
    let ((lo, loss, diagnostic, grads), unsynchronised) = if swav.sync_bn && world > 1 {
        with_synchronised_batch_norm_checked(reduce.clone(), &model, with_precision)
    } else {
        (with_precision(), Vec::new())
    };
    let codes = job
        .want_codes
        .then(|| {
            lo.codes
                .first()
                .and_then(|h| h.first())
                .map(|c| c.codes.clone())
        })
        .flatten();
    let running = running_stats(&model);
    Reply {
        unsynchronised,
        running,
        rank,
        grads,
        loss,
        codes,
        queue,
        queue_used: lo.queue_used,
        diagnostic,
    }
}
