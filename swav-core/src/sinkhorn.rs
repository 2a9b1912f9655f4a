//! Sinkhorn-Knopp codes: the equipartitioned soft assignment of a batch to the prototypes
//! (paper section 3.1, eq. 3 and its solution Q* = Diag(u) exp(C^T Z / eps) Diag(v)).

use burn::tensor::{DType, FloatDType, Tensor};
use serde::{Deserialize, Serialize};

use crate::CoreError;
use crate::reduce::AllReduce;

/// The float type the Sinkhorn iterations run in, whatever the type of the scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SinkhornPrecision {
    /// 32-bit floats (the default; also used when the scores arrive in f16 or bf16).
    #[default]
    F32,
    /// 64-bit floats, as VISSL offers, for very small epsilon.
    F64,
}

impl SinkhornPrecision {
    fn dtype(self) -> FloatDType {
        match self {
            Self::F32 => FloatDType::F32,
            Self::F64 => FloatDType::F64,
        }
    }
}

/// Parameters of the Sinkhorn-Knopp iterations.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SinkhornConfig {
    /// Entropic regularisation: the scores are divided by it before the exponential
    /// (0.05 in the paper; smaller gives harder codes).
    pub epsilon: f64,
    /// Number of row-then-column normalisation rounds (3 in the paper).
    pub iterations: usize,
    /// Float type of the computation.
    pub precision: SinkhornPrecision,
}

impl Default for SinkhornConfig {
    fn default() -> Self {
        Self {
            epsilon: 0.05,
            iterations: 3,
            precision: SinkhornPrecision::F32,
        }
    }
}

impl SinkhornConfig {
    /// Checks the values, naming the offending field.
    pub fn validate(&self) -> Result<(), CoreError> {
        if !(self.epsilon.is_finite() && self.epsilon > 0.0) {
            return Err(CoreError::config(
                "epsilon",
                format!("must be a positive number, got {}", self.epsilon),
            ));
        }
        if self.iterations == 0 {
            return Err(CoreError::config(
                "sinkhorn_iterations",
                "must be at least 1 (0 would return un-normalised codes)",
            ));
        }
        Ok(())
    }
}

/// Replaces exact zeros by one, so that a row or column whose mass underflowed stays zero
/// instead of becoming NaN (0 / 0).
fn guard_zero<const D: usize>(sums: Tensor<D>) -> Tensor<D> {
    let zero = sums.clone().equal_elem(0.0);
    sums.mask_fill(zero, 1.0)
}

/// Width of the partial sums of [`blocked_sum_dim`].
const BLOCK: usize = 32;

/// Sum along `dim` of a 2-d tensor whose size along `dim` is a multiple of [`BLOCK`], in two
/// stages (blocks of 32, then the block sums).
///
/// A running f32 sum of n terms drifts by up to ~n x 6e-8 relative: measured on the CPU
/// backend, summing K = 3000 equal codes gave 1.00006 instead of 1. Two short stages bound the
/// error by ~(32 + n / 32) x 6e-8, like PyTorch's pairwise sums.
pub(crate) fn blocked_sum_dim(t: Tensor<2>, dim: usize) -> Tensor<2> {
    let [r, c] = t.dims();
    if dim == 0 {
        debug_assert_eq!(r % BLOCK, 0);
        t.reshape([r / BLOCK, BLOCK, c])
            .sum_dim(1)
            .sum_dim(0)
            .reshape([1, c])
    } else {
        debug_assert_eq!(c % BLOCK, 0);
        t.reshape([r, c / BLOCK, BLOCK])
            .sum_dim(2)
            .sum_dim(1)
            .reshape([r, 1])
    }
}

/// Pads a 2-d tensor with zeros so both sizes are multiples of [`BLOCK`].
pub(crate) fn pad_to_blocks(t: Tensor<2>) -> Tensor<2> {
    let [r, c] = t.dims();
    let (pr, pc) = (r.div_ceil(BLOCK) * BLOCK, c.div_ceil(BLOCK) * BLOCK);
    if (pr, pc) == (r, c) {
        return t;
    }
    let opts = (&t.device(), t.dtype());
    Tensor::<2>::zeros([pr, pc], opts).slice_assign([0..r, 0..c], t)
}

/// Computes the SwAV codes Q of a batch of scores by Sinkhorn-Knopp.
///
/// `scores` is `[B, K]`: this worker's B samples against K prototypes (cosine similarities in
/// SwAV). The result is `[B, K]`, non-negative, each row (sample) summing to 1, and, after
/// enough iterations, each prototype receiving B_global / K of the mass over all workers.
///
/// The algorithm is the original `distributed_sinkhorn`: `Q = exp(scores / eps)^T`, divided by
/// its total; then `iterations` times, each prototype row divided by its sum and by K, and each
/// sample column divided by its sum and by B_global; finally multiplied by B_global. The total
/// and the prototype sums are reduced over the workers with `reduce`, the sample sums are
/// local, and B_global = B x `reduce.world_size()`. (We keep the `[B, K]` layout rather than
/// transposing: prototype sums are sums over the batch dimension.)
///
/// Made numerically safe:
/// - the global maximum of the scores (over all workers) is subtracted before the exponential,
///   which changes nothing mathematically (the total normalisation removes it) but keeps
///   `exp` from overflowing when `scores / eps` exceeds ~88 in f32;
/// - the computation runs in `config.precision` (f32 by default), also when the scores are
///   f16 or bf16; the codes are returned in the scores' float type;
/// - sums are taken in two stages, so f32 stays accurate for K and B in the thousands;
/// - a prototype or sample sum that is exactly zero (all of its entries underflowed) is left
///   at zero rather than producing NaN.
///
/// No gradient flows through the codes: the input is detached and the result is a constant.
///
/// # Panics
/// If `scores` has a zero dimension.
pub fn sinkhorn<R: AllReduce>(scores: Tensor<2>, config: &SinkhornConfig, reduce: &R) -> Tensor<2> {
    let [b, k] = scores.dims();
    assert!(
        b > 0 && k > 0,
        "sinkhorn needs a non-empty [B, K] score matrix, got [{b}, {k}]"
    );
    let out_dtype: DType = scores.dtype();
    let scores = scores
        .detach()
        .without_autodiff()
        .cast(config.precision.dtype());

    let max = reduce.max(scores.clone().max()).reshape([1, 1]);
    // (s - max) / eps as s * (1 / eps) - max / eps: one pass fewer over the big matrix.
    let inv_eps = 1.0 / config.epsilon;
    let q = scores
        .mul_scalar(inv_eps)
        .sub(max.mul_scalar(inv_eps))
        .exp(); // [B, K]
    // Zero padding is inert: padded prototypes and samples have zero sums, which stay zero.
    let mut q = pad_to_blocks(q);

    let total = reduce.sum(blocked_sum_dim(blocked_sum_dim(q.clone(), 1), 0));
    q = q.div(guard_zero(total));

    let b_global = (b * reduce.world_size()) as f64;
    for _ in 0..config.iterations {
        // Dividing by (sum x K) in one pass over the big matrix instead of two.
        let per_prototype = reduce.sum(blocked_sum_dim(q.clone(), 0)); // [1, K], all workers
        q = q.div(guard_zero(per_prototype).mul_scalar(k as f64));
        let per_sample = blocked_sum_dim(q.clone(), 1); // [B, 1], local: a sample is on one worker
        q = q.div(guard_zero(per_sample).mul_scalar(b_global));
    }
    q.slice([0..b, 0..k]).mul_scalar(b_global).cast(out_dtype)
}
