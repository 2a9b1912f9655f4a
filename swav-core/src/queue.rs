//! The queue of past embeddings that SwAV adds to small batches before computing codes
//! (paper section 4 / appendix: "when the batch is small, we use features from previous
//! batches to augment the size of Z in eq. 3").

use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::CoreError;

/// The queue length the original actually uses: `queue_length` rounded down to a multiple of
/// the global batch (`batch_size x world_size`), so that every worker's share is a whole number
/// of its batches.
pub fn effective_queue_length(queue_length: usize, batch_size: usize, world_size: usize) -> usize {
    let global = batch_size * world_size;
    if global == 0 {
        return 0;
    }
    queue_length - queue_length % global
}

/// One worker's queue: for each crop used for assignment, its `len` most recent embeddings,
/// newest first.
///
/// It starts empty (all zeros) and is *used* only once full, as the original does. Its scores
/// are always recomputed with the current prototypes ([`EmbeddingQueue::scores`]), so stored
/// embeddings stay valid while the prototypes move.
#[derive(Debug, Clone)]
pub struct EmbeddingQueue {
    slots: Vec<Tensor<2>>,
    filled: Vec<usize>,
    len: usize,
    dim: usize,
}

/// A queue's contents as plain data, for checkpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueState {
    /// Number of assignment crops (one queue each).
    pub slots: usize,
    /// Rows per slot on this worker.
    pub len: usize,
    /// Embedding dimension.
    pub dim: usize,
    /// How many rows of each slot have been written (capped at `len`).
    pub filled: Vec<usize>,
    /// The embeddings, slot-major then row-major, `slots x len x dim` values.
    pub values: Vec<f32>,
}

impl EmbeddingQueue {
    /// An empty queue of `len` rows of `dim` values for each of `slots` assignment crops.
    pub fn new(slots: usize, len: usize, dim: usize, device: &Device) -> Self {
        Self {
            slots: (0..slots)
                .map(|_| Tensor::zeros([len, dim], device))
                .collect(),
            filled: vec![0; slots],
            len,
            dim,
        }
    }

    /// The queue of one worker for a run: `queue_length` (global, as in the config) rounded down
    /// with [`effective_queue_length`], then split evenly over the workers.
    ///
    /// Refused when the rounded length is zero (a queue shorter than one global batch).
    pub fn for_run(
        queue_length: usize,
        batch_size: usize,
        world_size: usize,
        slots: usize,
        dim: usize,
        device: &Device,
    ) -> Result<Self, CoreError> {
        let effective = effective_queue_length(queue_length, batch_size, world_size);
        if effective == 0 {
            return Err(CoreError::config(
                "queue_length",
                format!(
                    "is {queue_length}, shorter than one global batch ({batch_size} x {world_size} workers); \
                     use 0 for no queue or at least {}",
                    batch_size * world_size
                ),
            ));
        }
        if slots == 0 || dim == 0 {
            return Err(CoreError::config(
                "crops_for_assign",
                "a queue needs at least one assignment crop and a non-zero embedding size",
            ));
        }
        Ok(Self::new(slots, effective / world_size, dim, device))
    }

    /// Rows per slot.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the queue has no rows at all.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Embedding dimension.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Number of assignment crops (slots).
    pub fn slots(&self) -> usize {
        self.slots.len()
    }

    /// Whether every slot has been filled once; only then does SwAV use the queue.
    pub fn is_full(&self) -> bool {
        self.len > 0 && self.filled.iter().all(|&f| f >= self.len)
    }

    /// The stored embeddings of `slot`, `[len, dim]`, newest first.
    ///
    /// # Panics
    /// If `slot` is out of range.
    pub fn embeddings(&self, slot: usize) -> Tensor<2> {
        self.slots[slot].clone()
    }

    /// Scores of the stored embeddings of `slot` under `prototypes` (burn `Linear` layout
    /// `[dim, K]`), `[len, K]`, without gradient.
    ///
    /// # Panics
    /// If `slot` is out of range or the prototypes' first dimension is not `dim`.
    pub fn scores(&self, slot: usize, prototypes: Tensor<2>) -> Tensor<2> {
        let [d, _] = prototypes.dims();
        assert_eq!(
            d, self.dim,
            "prototypes are [{d}, K], the queue holds {}-d embeddings",
            self.dim
        );
        let w = prototypes.detach().without_autodiff();
        let q = self.slots[slot].clone().without_autodiff().cast(w.dtype());
        q.matmul(w)
    }

    /// Shifts `slot` down by the batch and writes `embeddings` (`[B, dim]`) at the top, as the
    /// original's `queue[i, bs:] = queue[i, :-bs]; queue[i, :bs] = embedding`.
    ///
    /// # Panics
    /// If `slot` is out of range, or `embeddings` is not `[B, dim]` with `B <= len`.
    pub fn push(&mut self, slot: usize, embeddings: Tensor<2>) {
        let [b, d] = embeddings.dims();
        assert_eq!(
            d, self.dim,
            "embeddings are {d}-d, the queue holds {}-d",
            self.dim
        );
        assert!(
            b <= self.len,
            "a batch of {b} does not fit a queue of {}",
            self.len
        );
        let old = self.slots[slot].clone();
        let new = embeddings.detach().without_autodiff().cast(old.dtype());
        self.slots[slot] = if b == self.len {
            new
        } else {
            Tensor::cat(vec![new, old.narrow(0, 0, self.len - b)], 0)
        };
        self.filled[slot] = (self.filled[slot] + b).min(self.len);
    }

    /// The queue as plain data.
    pub fn state(&self) -> QueueState {
        let mut values = Vec::with_capacity(self.slots.len() * self.len * self.dim);
        for slot in &self.slots {
            let data = slot.to_data().convert::<f32>();
            values.extend(data.iter::<f32>());
        }
        QueueState {
            slots: self.slots.len(),
            len: self.len,
            dim: self.dim,
            filled: self.filled.clone(),
            values,
        }
    }

    /// Rebuilds a queue from [`EmbeddingQueue::state`], refusing data of the wrong size.
    pub fn from_state(state: &QueueState, device: &Device) -> Result<Self, CoreError> {
        let per_slot = state.len * state.dim;
        if state.values.len() != state.slots * per_slot {
            return Err(CoreError::QueueState(format!(
                "{} values for {} slots of {} x {}",
                state.values.len(),
                state.slots,
                state.len,
                state.dim
            )));
        }
        if state.filled.len() != state.slots || state.filled.iter().any(|&f| f > state.len) {
            return Err(CoreError::QueueState(format!(
                "fill counts {:?} do not fit {} slots of {} rows",
                state.filled, state.slots, state.len
            )));
        }
        let slots = (0..state.slots)
            .map(|s| {
                let values = state.values[s * per_slot..(s + 1) * per_slot].to_vec();
                Tensor::from_data(TensorData::new(values, [state.len, state.dim]), device)
            })
            .collect();
        Ok(Self {
            slots,
            filled: state.filled.clone(),
            len: state.len,
            dim: state.dim,
        })
    }

    /// Checks that a restored queue fits this run (same slots, length and dimension).
    pub fn check_compatible(&self, slots: usize, len: usize, dim: usize) -> Result<(), CoreError> {
        if self.slots() != slots || self.len != len || self.dim != dim {
            return Err(CoreError::QueueState(format!(
                "saved queue is {} x {} x {}, this run needs {slots} x {len} x {dim}",
                self.slots(),
                self.len,
                self.dim
            )));
        }
        Ok(())
    }
}
