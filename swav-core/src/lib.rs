//! The math of SwAV (Caron et al., 2020, "Unsupervised Learning of Visual Features by
//! Contrasting Cluster Assignments", arXiv 2006.09882) as plain functions and small types on
//! burn tensors.
//!
//! Nothing here reads a global or needs a process group: the distributed reductions of the
//! Sinkhorn-Knopp algorithm go through an [`AllReduce`] parameter ([`SingleWorker`] for one
//! worker, [`LocalGroup`] for several workers on threads of one process), so the code that
//! trains on one device is the code that trains on many.
//!
//! - [`sinkhorn()`]: codes from scores (equipartition over the batch, paper eq. 3).
//! - [`swapped_prediction_loss`] and [`swav_loss`]: the swapped prediction (paper eq. 1-2),
//!   with the queue and several prototype heads.
//! - [`normalize_prototypes`] and [`l2_normalize`]: the unit-norm constraints.
//! - [`EmbeddingQueue`]: the queue of past embeddings used with small batches.
//! - [`SwavConfig`]: every knob of the method, with the paper's defaults and presets.
//!
//! ```
//! use burn::tensor::{Device, Tensor};
//! use swav_core::{sinkhorn, SinkhornConfig, SingleWorker};
//!
//! let device = Device::flex();
//! let scores = Tensor::<2>::from_floats([[0.9, 0.1, -0.2], [0.3, 0.8, 0.0]], &device);
//! let codes = sinkhorn(scores, &SinkhornConfig::default(), &SingleWorker);
//! assert_eq!(codes.dims(), [2, 3]);
//! ```

/// The README's example, compiled and run as a doc test.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeExample;

mod config;
mod error;
mod loss;
mod prototypes;
mod queue;
mod reduce;
mod sinkhorn;

pub use config::{HalfType, OptimizerKind, PRESETS, SwavConfig};
pub use error::CoreError;
pub use loss::{
    AssignmentCodes, SwavLossOutput, swapped_prediction_loss, swav_loss, swav_loss_multi_head,
};
pub use prototypes::{l2_normalize, normalize_prototypes, normalize_prototypes_weight};
pub use queue::{EmbeddingQueue, QueueState, effective_queue_length};
pub use reduce::{
    AllReduce, Collective, LocalGroup, LocalWorker, ReduceOp, SingleWorker, reduce_data,
};
pub use sinkhorn::{SinkhornConfig, SinkhornPrecision, sinkhorn};
