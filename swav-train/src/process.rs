//! Data-parallel workers in separate processes, one worker per process: the collective
//! operations a run needs from the processes' transport ([`ProcessGroup`]), and the per-step
//! work that crosses processes (gradients in buckets, running statistics, losses, the stop
//! decision, the queues a checkpoint holds).
//!
//! The transport is MPI under the `mpi` feature ([`crate::mpi`]); the trait keeps the trainer
//! free of it, so the code path of a run in one process and of a run over several is the same
//! but for these calls. Each process holds one replica of the model and applies the same update
//! from the same all-reduced gradients, so the replicas stay equal without broadcasting weights.

use std::sync::Arc;

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::{Tensor, TensorData};
use swav_core::{Collective, EmbeddingQueue, QueueState};

use crate::TrainError;

/// A group of processes, one data-parallel worker each: the workspace's [`Collective`] (every
/// reduction of a run goes through it) and what only processes need beside it.
///
/// Every process calls each operation the same number of times, in the same order, with
/// buffers of the same length (but for [`ProcessGroup::gather_f32`]).
pub trait ProcessGroup: Collective {
    /// This process's rank among the group's processes on its machine (which of the machine's
    /// GPUs it takes when `run.devices` does not say).
    fn local_rank(&self) -> usize {
        self.rank()
    }
    /// Every process's `mine`, by rank, at rank 0 (`None` on the others).
    fn gather_f32(&self, mine: &[f32]) -> Option<Vec<Vec<f32>>>;
    /// Ends this process's part in the group (MPI_Finalize); no collective may follow. Called
    /// before a process exits on its own (a preempted run's exit status).
    fn finish(&self) {}
}

/// Environment variables MPI launchers set for the processes they start, with the job's size
/// (Open MPI; MPICH's Hydra, Intel MPI and Slurm's PMI).
const LAUNCHER_SIZE_VARIABLES: [&str; 2] = ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE"];

/// Environment variables MPI launchers set with a process's rank on its machine (Open MPI;
/// MPICH's Hydra; Slurm).
const LAUNCHER_LOCAL_RANK_VARIABLES: [&str; 3] = [
    "OMPI_COMM_WORLD_LOCAL_RANK",
    "MPI_LOCALRANKID",
    "SLURM_LOCALID",
];

/// This process's rank on its machine, as the MPI launcher that started it says.
pub fn launcher_local_rank() -> Option<usize> {
    LAUNCHER_LOCAL_RANK_VARIABLES
        .iter()
        .find_map(|v| std::env::var(v).ok())
        .and_then(|n| n.trim().parse().ok())
}

/// The number of processes of the MPI job this process was started in by `mpirun`, `mpiexec`
/// or `srun`, if it was (1 for a job of one).
pub fn launcher_job_size() -> Option<usize> {
    LAUNCHER_SIZE_VARIABLES
        .iter()
        .find_map(|v| std::env::var(v).ok())
        .and_then(|n| n.trim().parse().ok())
}

/// A shared handle on the group.
pub type SharedProcessGroup = Arc<dyn ProcessGroup>;

/// Gradients all-reduced in buckets of about this many bytes of f32 (PyTorch DDP's default
/// bucket is 25 MiB): one collective per bucket, not per tensor.
pub const GRADIENT_BUCKET_BYTES: usize = 25 << 20;

/// The gradients of `model`'s parameters in `grads`, summed over the processes in buckets of
/// [`GRADIENT_BUCKET_BYTES`]: parameters in the model's visiting order (the same on every
/// process), each bucket one flat f32 buffer. Returns the number of buckets.
pub fn all_reduce_gradients<M: Module>(
    grads: &mut GradientsParams,
    model: &M,
    group: &dyn Collective,
) -> usize {
    struct Collect<'a> {
        grads: &'a mut GradientsParams,
        taken: Vec<(ParamId, Vec<usize>, Tensor<1>)>,
    }
    impl ModuleVisitor for Collect<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(g) = self.grads.remove::<D>(param.id) {
                let dims = g.dims().to_vec();
                let n = g.shape().num_elements();
                self.taken.push((param.id, dims, g.reshape([n])));
            }
        }
    }
    let mut c = Collect {
        grads,
        taken: Vec::new(),
    };
    model.visit(&mut c);
    let taken = c.taken;
    let per_bucket = (GRADIENT_BUCKET_BYTES / 4).max(1);
    let mut buckets = 0;
    let mut start = 0;
    while start < taken.len() {
        // Whole tensors per bucket; a tensor larger than a bucket is a bucket of its own.
        let mut end = start;
        let mut len = 0;
        while end < taken.len() && (end == start || len + taken[end].2.dims()[0] <= per_bucket) {
            len += taken[end].2.dims()[0];
            end += 1;
        }
        let mut flat: Vec<f32> = Vec::with_capacity(len);
        for (_, _, g) in &taken[start..end] {
            flat.extend(g.to_data().convert::<f32>().iter::<f32>());
        }
        group.sum_f32(&mut flat);
        let mut at = 0;
        for (id, dims, g) in &taken[start..end] {
            let n = g.dims()[0];
            let device = g.device();
            let summed = Tensor::<1>::from_data(
                TensorData::new(flat[at..at + n].to_vec(), [n]),
                (&device, g.dtype()),
            );
            at += n;
            register(grads, *id, summed, dims);
        }
        buckets += 1;
        start = end;
    }
    buckets
}

/// Registers a flat gradient under `id` in its parameter's shape.
fn register(grads: &mut GradientsParams, id: ParamId, flat: Tensor<1>, dims: &[usize]) {
    match *dims {
        [a] => grads.register::<1>(id, flat.reshape([a])),
        [a, b] => grads.register::<2>(id, flat.reshape([a, b])),
        [a, b, c] => grads.register::<3>(id, flat.reshape([a, b, c])),
        [a, b, c, d] => grads.register::<4>(id, flat.reshape([a, b, c, d])),
        _ => {
            // Parameters of other ranks are not in any model of this crate; keep the tensor
            // flat rather than lose it.
            grads.register::<1>(id, flat)
        }
    }
}

/// Running statistics (flattened, by id, in the model's order) summed over the processes and
/// divided by their number: the average of the replicas'.
pub fn average_running(
    running: Vec<(ParamId, Tensor<1>)>,
    group: &dyn Collective,
) -> Vec<(ParamId, Tensor<1>)> {
    let mut flat: Vec<f32> = Vec::new();
    for (_, t) in &running {
        flat.extend(t.to_data().convert::<f32>().iter::<f32>());
    }
    group.sum_f32(&mut flat);
    let world = group.world_size() as f32;
    let mut at = 0;
    running
        .into_iter()
        .map(|(id, t)| {
            let n = t.dims()[0];
            let values: Vec<f32> = flat[at..at + n].iter().map(|v| v / world).collect();
            at += n;
            let device = t.device();
            (
                id,
                Tensor::<1>::from_data(TensorData::new(values, [n]), (&device, t.dtype())),
            )
        })
        .collect()
}

/// Whether any process asks to stop (a preemption signal reaches the processes of an `mpirun`
/// at different moments; they must stop after the same step).
pub fn any(group: &dyn Collective, mine: bool) -> bool {
    let mut v = [if mine { 1.0 } else { 0.0 }];
    group.max_f64(&mut v);
    v[0] > 0.0
}

/// Every process's queue at rank 0, in `queues` by rank (the other processes' entries are left
/// as they are). Called by every process before rank 0 writes a checkpoint.
pub fn gather_queues(
    queues: &mut [Option<EmbeddingQueue>],
    group: &dyn ProcessGroup,
) -> Result<(), TrainError> {
    let rank = group.rank();
    // [present, slots, len, dim, filled..., values...]: counts are far below 2^24, exact in f32.
    let mine: Vec<f32> = match queues.get(rank).and_then(Option::as_ref) {
        Some(q) => {
            let st = q.state();
            let mut v = vec![1.0, st.slots as f32, st.len as f32, st.dim as f32];
            v.extend(st.filled.iter().map(|&f| f as f32));
            v.extend(st.values);
            v
        }
        None => vec![0.0],
    };
    let Some(all) = group.gather_f32(&mine) else {
        return Ok(());
    };
    for (r, v) in all.into_iter().enumerate() {
        if r == rank || v.first() != Some(&1.0) || r >= queues.len() {
            continue;
        }
        let bad = || TrainError::Parallel(format!("rank {r} sent a malformed queue"));
        let header = v.get(1..4).ok_or_else(bad)?;
        let (slots, len, dim) = (header[0] as usize, header[1] as usize, header[2] as usize);
        let filled: Vec<usize> = v
            .get(4..4 + slots)
            .ok_or_else(bad)?
            .iter()
            .map(|&f| f as usize)
            .collect();
        let state = QueueState {
            slots,
            len,
            dim,
            filled,
            values: v.get(4 + slots..).ok_or_else(bad)?.to_vec(),
        };
        let device = queues[rank]
            .as_ref()
            .map(|q| q.embeddings(0).device())
            .unwrap_or_default();
        queues[r] = Some(EmbeddingQueue::from_state(&state, &device)?);
    }
    Ok(())
}
