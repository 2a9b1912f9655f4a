//! Reductions across data-parallel workers, as a parameter of the math rather than a global.
//!
//! The original `distributed_sinkhorn` calls `dist.all_reduce` on two sums. Here the reduction
//! is an [`AllReduce`] value: [`SingleWorker`] for one worker (no communication), and
//! [`LocalGroup`] for several workers that are threads of one process (used to test the
//! distributed algorithm and to train on several CPU devices). A backend collective can
//! implement the same trait.

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

/// The reduction of a group of one: returns its input.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SingleWorker;

impl AllReduce for SingleWorker {
    fn world_size(&self) -> usize {
        1
    }
    fn rank(&self) -> usize {
        0
    }
    fn sum<const D: usize>(&self, tensor: Tensor<D>) -> Tensor<D> {
        tensor
    }
    fn max<const D: usize>(&self, tensor: Tensor<D>) -> Tensor<D> {
        tensor
    }
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

    /// The element-wise sum of host values over the workers, combined in rank order in f64
    /// (the same bits on every worker). Every worker calls it with vectors of the same length.
    ///
    /// # Panics
    /// If the group was aborted, or the workers' vectors differ in length.
    pub fn sum_values(&self, values: Vec<f64>) -> Vec<f64> {
        if self.world_size == 1 {
            return values;
        }
        self.combine(values, |a, b| a + b)
    }

    fn reduce<const D: usize>(&self, tensor: Tensor<D>, combine: fn(f64, f64) -> f64) -> Tensor<D> {
        let device = tensor.device();
        let dtype = tensor.dtype();
        let shape = tensor.shape();
        let mine: Vec<f64> = tensor
            .into_data()
            .convert::<f64>()
            .try_into_vec::<f64>()
            .expect("a float tensor converts to f64");
        let combined = self.combine(mine, combine);
        // Created directly in the input's float type: going through the device's default type
        // (f32) would round an f64 reduction.
        Tensor::<D>::from_data(TensorData::new(combined, shape), (&device, dtype))
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

impl AllReduce for LocalWorker {
    fn world_size(&self) -> usize {
        self.world_size
    }
    fn rank(&self) -> usize {
        self.rank
    }
    fn sum<const D: usize>(&self, tensor: Tensor<D>) -> Tensor<D> {
        if self.world_size == 1 {
            return tensor;
        }
        self.reduce(tensor, |a, b| a + b)
    }
    fn max<const D: usize>(&self, tensor: Tensor<D>) -> Tensor<D> {
        if self.world_size == 1 {
            return tensor;
        }
        self.reduce(tensor, f64::max)
    }
}
