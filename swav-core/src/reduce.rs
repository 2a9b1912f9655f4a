//! Reductions across data-parallel workers, as a parameter of the math rather than a global.
//!
//! The original `distributed_sinkhorn` calls `dist.all_reduce` on two sums. Here the reduction
//! is an [`AllReduce`] value, the math's parameter. Every reduction of a run (the Sinkhorn's
//! sums, synchronised BatchNorm's statistics, gradients across processes, stop flags) goes
//! through one transport trait, [`Collective`], on host values: [`SingleWorker`] for one worker
//! (no communication), [`LocalGroup`]'s workers for threads of one process, and an MPI group
//! for processes (swav-train). Every [`Collective`] is an [`AllReduce`], through one host round
//! trip ([`reduce_data`]).

use std::fmt::Debug;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use burn::tensor::{Tensor, TensorData};

/// Sums and maxima of tensors across the workers of a data-parallel group.
///
/// Every worker calls the same methods in the same order with tensors of the same shape; each
/// receives the reduced tensor. The result must be identical on every worker (bit for bit),
/// so that the workers stay in step.
pub trait AllReduce {
    /// Number of workers in the group.
    fn world_size(&self) -> usize;
    /// This worker's rank, in `0..world_size()`.
    fn rank(&self) -> usize;
    /// Element-wise sum over the workers.
    fn sum<const D: usize>(&self, tensor: Tensor<D>) -> Tensor<D>;
    /// Element-wise maximum over the workers.
    fn max<const D: usize>(&self, tensor: Tensor<D>) -> Tensor<D>;
}

/// The collective operations of a data-parallel group, on host values: the one transport every
/// reduction of a run goes through.
///
/// Every worker calls the same operations in the same order with buffers of the same length;
/// each receives the same bits.
pub trait Collective: Send + Sync + Debug {
    /// Number of workers in the group.
    fn world_size(&self) -> usize;
    /// This worker's rank, in `0..world_size()`.
    fn rank(&self) -> usize;
    /// Element-wise sum over the workers, in place.
    fn sum_f64(&self, values: &mut [f64]);
    /// Element-wise maximum over the workers, in place.
    fn max_f64(&self, values: &mut [f64]);
    /// Element-wise sum of f32 values over the workers, in place (gradients in buckets); through
    /// f64 unless the transport sums f32 itself.
    fn sum_f32(&self, values: &mut [f32]) {
        let mut wide: Vec<f64> = values.iter().map(|&v| f64::from(v)).collect();
        self.sum_f64(&mut wide);
        for (v, w) in values.iter_mut().zip(wide) {
            *v = w as f32;
        }
    }
    /// Ends the group after this worker failed, so that no other worker waits in a reduction
    /// for ever (`message` says why, where the transport prints it).
    fn abort(&self, message: &str);
}

impl<C: Collective + ?Sized> Collective for Arc<C> {
    fn world_size(&self) -> usize {
        (**self).world_size()
    }
    fn rank(&self) -> usize {
        (**self).rank()
    }
    fn sum_f64(&self, values: &mut [f64]) {
        (**self).sum_f64(values)
    }
    fn max_f64(&self, values: &mut [f64]) {
        (**self).max_f64(values)
    }
    fn sum_f32(&self, values: &mut [f32]) {
        (**self).sum_f32(values)
    }
    fn abort(&self, message: &str) {
        (**self).abort(message)
    }
}

/// Which reduction [`reduce_data`] applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReduceOp {
    /// Element-wise sum.
    Sum,
    /// Element-wise maximum.
    Max,
}

/// The host round trip of every reduction: `data` as f64, reduced over `group`, back in its own
/// float type (a group of one returns it as it is).
///
/// # Panics
/// If `data` is not floating point (the reductions of a run are on float tensors).
pub fn reduce_data<C: Collective + ?Sized>(
    group: &C,
    data: TensorData,
    op: ReduceOp,
) -> TensorData {
    if group.world_size() == 1 {
        return data;
    }
    let dtype = data.dtype();
    let shape = data.shape().clone();
    let mut values: Vec<f64> = data
        .convert::<f64>()
        .try_into_vec::<f64>()
        .expect("a float tensor converts to f64");
    match op {
        ReduceOp::Sum => group.sum_f64(&mut values),
        ReduceOp::Max => group.max_f64(&mut values),
    }
    TensorData::new(values, shape).convert_dtype(dtype)
}

/// `tensor` reduced over `group` through the host, on its device, in its float type.
fn reduce_tensor<C: Collective + ?Sized, const D: usize>(
    group: &C,
    tensor: Tensor<D>,
    op: ReduceOp,
) -> Tensor<D> {
    if group.world_size() == 1 {
        return tensor;
    }
    let device = tensor.device();
    let dtype = tensor.dtype();
    let data = reduce_data(group, tensor.into_data(), op);
    Tensor::<D>::from_data(data, (&device, dtype))
}

impl<C: Collective + ?Sized> AllReduce for C {
    fn world_size(&self) -> usize {
        Collective::world_size(self)
    }
    fn rank(&self) -> usize {
        Collective::rank(self)
    }
    fn sum<const D: usize>(&self, tensor: Tensor<D>) -> Tensor<D> {
        reduce_tensor(self, tensor, ReduceOp::Sum)
    }
    fn max<const D: usize>(&self, tensor: Tensor<D>) -> Tensor<D> {
        reduce_tensor(self, tensor, ReduceOp::Max)
    }
}

/// The group of one: every reduction returns its input.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SingleWorker;

impl Collective for SingleWorker {
    fn world_size(&self) -> usize {
        1
    }
    fn rank(&self) -> usize {
        0
    }
    fn sum_f64(&self, _values: &mut [f64]) {}
    fn max_f64(&self, _values: &mut [f64]) {}
    fn abort(&self, _message: &str) {}
}

/// Shared state of a [`LocalGroup`]: one slot per rank and a barrier that can be aborted.
#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    turn: Condvar,
    world_size: usize,
}

#[derive(Debug)]
struct State {
    slots: Vec<Option<Vec<f64>>>,
    /// Workers waiting at the barrier.
    arrived: usize,
    /// Barriers passed so far.
    generation: u64,
    /// Set by [`LocalWorker::abort`]: every wait fails from then on.
    aborted: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits until every worker has arrived; `false` if the group was aborted.
    fn wait(&self) -> bool {
        let mut st = self.lock();
        if st.aborted {
            return false;
        }
        st.arrived += 1;
        if st.arrived == self.world_size {
            st.arrived = 0;
            st.generation += 1;
            self.turn.notify_all();
            return true;
        }
        let generation = st.generation;
        while st.generation == generation && !st.aborted {
            st = self.turn.wait(st).unwrap_or_else(PoisonError::into_inner);
        }
        !st.aborted
    }
}

/// A data-parallel group whose workers are threads of one process.
///
/// Each worker (a [`LocalWorker`], sent to its own thread) copies its tensor to the host,
/// waits for the others, and combines all contributions in rank order in f64, so every worker
/// gets the same bits whatever the thread timing.
#[derive(Debug, Clone)]
pub struct LocalGroup;

impl LocalGroup {
    /// Creates the workers of a group of `world_size` threads, in rank order.
    ///
    /// # Panics
    /// If `world_size` is zero.
    pub fn workers(world_size: usize) -> Vec<LocalWorker> {
        assert!(world_size > 0, "a group needs at least one worker");
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                slots: vec![None; world_size],
                arrived: 0,
                generation: 0,
                aborted: false,
            }),
            turn: Condvar::new(),
            world_size,
        });
        (0..world_size)
            .map(|rank| LocalWorker {
                rank,
                world_size,
                shared: Arc::clone(&shared),
            })
            .collect()
    }
}

/// One worker of a [`LocalGroup`].
#[derive(Debug, Clone)]
pub struct LocalWorker {
    rank: usize,
    world_size: usize,
    shared: Arc<Shared>,
}

impl LocalWorker {
    /// Ends the group: every worker waiting in a reduction, now or later, panics with a message
    /// saying another worker failed, instead of waiting for ever. A worker that fails calls
    /// this (the trainer does, on a panic) so that the others stop too.
    pub fn abort(&self) {
        self.shared.lock().aborted = true;
        self.shared.turn.notify_all();
    }

    fn wait(&self) {
        if !self.shared.wait() {
            panic!("data-parallel group aborted: another worker failed during this step");
        }
    }

    /// Every worker's `mine`, combined in rank order.
    fn combine(&self, mine: Vec<f64>, combine: fn(f64, f64) -> f64) -> Vec<f64> {
        self.shared.lock().slots[self.rank] = Some(mine);
        self.wait();
        let combined = {
            let st = self.shared.lock();
            let mut acc: Option<Vec<f64>> = None;
            for slot in st.slots.iter() {
                let values = slot.as_ref().expect("every worker wrote its slot");
                acc = Some(match acc {
                    None => values.clone(),
                    Some(mut a) => {
                        assert_eq!(a.len(), values.len(), "workers reduced different shapes");
                        for (x, y) in a.iter_mut().zip(values) {
                            *x = combine(*x, *y);
                        }
                        a
                    }
                });
            }
            acc.expect("a group has at least one worker")
        };
        // The second wait keeps a fast worker from overwriting its slot for the next reduction
        // while a slow one is still reading this one.
        self.wait();
        combined
    }
}

impl Collective for LocalWorker {
    fn world_size(&self) -> usize {
        self.world_size
    }
    fn rank(&self) -> usize {
        self.rank
    }
    fn sum_f64(&self, values: &mut [f64]) {
        if self.world_size > 1 {
            let summed = self.combine(values.to_vec(), |a, b| a + b);
            values.copy_from_slice(&summed);
        }
    }
    fn max_f64(&self, values: &mut [f64]) {
        if self.world_size > 1 {
            let max = self.combine(values.to_vec(), f64::max);
            values.copy_from_slice(&max);
        }
    }
    fn abort(&self, _message: &str) {
        LocalWorker::abort(self);
    }
}
