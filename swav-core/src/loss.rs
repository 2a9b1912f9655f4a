//! The swapped-prediction loss (paper eq. 1-2): each crop's softmax over the prototypes
//! predicts the codes of another crop of the same image.

use burn::tensor::Tensor;
use burn::tensor::activation::log_softmax;

use crate::queue::EmbeddingQueue;
use crate::reduce::AllReduce;
use crate::sinkhorn::{SinkhornConfig, blocked_sum_dim, pad_to_blocks, sinkhorn};

/// The codes of one assignment crop.
#[derive(Debug, Clone)]
pub struct AssignmentCodes {
    /// Index of the crop whose scores gave these codes.
    pub crop: usize,
    /// The codes, `[B, K]`, rows summing to 1, without gradient.
    pub codes: Tensor<2>,
}

/// What [`swav_loss`] returns.
#[derive(Debug, Clone)]
pub struct SwavLossOutput {
    /// The scalar loss, `[1]`, differentiable with respect to the scores.
    pub loss: Tensor<1>,
    /// For each prototype head, the codes of each assignment crop.
    pub codes: Vec<Vec<AssignmentCodes>>,
    /// Whether the queue's embeddings were added before the Sinkhorn this step.
    pub queue_used: bool,
}

/// The swapped-prediction loss of one prototype head, given the codes.
///
/// `scores` is `[n_crops x B, K]`, crop after crop (as the model returns them). For every
/// assignment crop `i` with codes `q`, and every other crop `v`, the term is
/// `-mean_b sum_k q[b, k] log softmax(scores_v[b] / temperature)[k]`; the terms of crop `i`
/// are divided by `n_crops - 1`, and the result averaged over the assignment crops. The log
/// softmax is computed directly (never `log(softmax)`), so a zero code times a very negative
/// log-probability is 0, not NaN.
///
/// # Panics
/// If `codes` is empty, if the rows of `scores` are not a multiple of `batch_size`, if there
/// are fewer than two crops, or if a code's crop or shape does not fit.
pub fn swapped_prediction_loss(
    scores: Tensor<2>,
    batch_size: usize,
    codes: &[AssignmentCodes],
    temperature: f64,
) -> Tensor<1> {
    let [rows, k] = scores.dims();
    assert!(
        !codes.is_empty(),
        "the loss needs at least one assignment crop"
    );
    assert!(
        batch_size > 0 && rows % batch_size == 0,
        "scores have {rows} rows, not a multiple of the batch size {batch_size}"
    );
    let n_crops = rows / batch_size;
    assert!(
        n_crops >= 2,
        "the swapped prediction needs at least two crops, got {n_crops}"
    );

    // log p for every crop at once: [n_crops, B, K].
    let log_p = log_softmax(scores.div_scalar(temperature), 1).reshape([n_crops, batch_size, k]);
    // Summing log p over all crops, then removing the assignment crop's own term, gives the sum
    // over "every other crop" with one reduction instead of n_crops - 1 slices.
    let all_crops = log_p.clone().sum_dim(0).reshape([batch_size, k]);

    let mut total: Option<Tensor<1>> = None;
    for c in codes {
        assert!(
            c.crop < n_crops,
            "assignment crop {} of {n_crops} crops",
            c.crop
        );
        assert_eq!(
            c.codes.dims(),
            [batch_size, k],
            "codes of crop {} have the wrong shape",
            c.crop
        );
        let own = log_p.clone().narrow(0, c.crop, 1).reshape([batch_size, k]);
        let others = all_crops.clone().sub(own);
        // Two-stage sums (see `blocked_sum_dim`) keep f32 accurate for K in the thousands.
        let term = blocked_total(c.codes.clone().mul(others))
            .neg()
            .div_scalar((batch_size * (n_crops - 1)) as f64);
        total = Some(match total {
            None => term,
            Some(t) => t.add(term),
        });
    }
    total
        .expect("codes is not empty")
        .div_scalar(codes.len() as f64)
}

/// Sum of all elements of a 2-d tensor, `[1]`, in two stages per dimension.
fn blocked_total(t: Tensor<2>) -> Tensor<1> {
    blocked_sum_dim(blocked_sum_dim(pad_to_blocks(t), 1), 0).reshape([1])
}

/// The whole SwAV objective for one prototype head: codes for the assignment crops (with the
/// queue when it is full), then the swapped-prediction loss.
///
/// - `scores`: `[n_crops x B, K]`, z . prototypes for every crop, with gradient.
/// - `embeddings`: `[n_crops x B, D]`, the normalised z (only read when `queue` is given).
/// - `prototypes`: the current (normalised) prototypes in burn `Linear` layout `[D, K]` (only
///   read when the queue is used).
///
/// The order is the original's, step 5 of its loop: for each assignment crop, without
/// gradient, prepend the queue's scores under the current prototypes if the queue is full, then
/// push this crop's embeddings into the queue, then take the last B rows of the Sinkhorn codes.
/// With several workers, `reduce` combines the Sinkhorn sums; the queue stays per worker.
///
/// # Panics
/// As [`swapped_prediction_loss`], and if `crops_for_assign` is empty.
#[allow(clippy::too_many_arguments)]
pub fn swav_loss<R: AllReduce>(
    scores: Tensor<2>,
    embeddings: Tensor<2>,
    prototypes: Tensor<2>,
    batch_size: usize,
    crops_for_assign: &[usize],
    temperature: f64,
    sinkhorn_config: &SinkhornConfig,
    queue: Option<&mut EmbeddingQueue>,
    reduce: &R,
) -> SwavLossOutput {
    swav_loss_multi_head(
        &[(scores, prototypes)],
        embeddings,
        batch_size,
        crops_for_assign,
        temperature,
        sinkhorn_config,
        queue,
        reduce,
    )
}

/// [`swav_loss`] for several prototype heads (the paper's multi-clustering variant): each
/// head gets its own codes and loss, the loss is averaged over heads, and the queue (of
/// embeddings, shared by the heads) is pushed once per assignment crop.
///
/// `heads` holds, per head, its scores `[n_crops x B, K_h]` and prototypes `[D, K_h]`.
///
/// # Panics
/// As [`swav_loss`], and if `heads` is empty.
#[allow(clippy::too_many_arguments)]
pub fn swav_loss_multi_head<R: AllReduce>(
    heads: &[(Tensor<2>, Tensor<2>)],
    embeddings: Tensor<2>,
    batch_size: usize,
    crops_for_assign: &[usize],
    temperature: f64,
    sinkhorn_config: &SinkhornConfig,
    mut queue: Option<&mut EmbeddingQueue>,
    reduce: &R,
) -> SwavLossOutput {
    assert!(!heads.is_empty(), "at least one prototype head");
    assert!(!crops_for_assign.is_empty(), "at least one assignment crop");
    // The original decides once per step, before any push: the queue is used once it is full.
    let queue_used = queue.as_ref().is_some_and(|q| q.is_full());

    let mut codes: Vec<Vec<AssignmentCodes>> = vec![Vec::new(); heads.len()];
    for (slot, &crop) in crops_for_assign.iter().enumerate() {
        for (h, (scores, prototypes)) in heads.iter().enumerate() {
            let mut out = scores
                .clone()
                .detach()
                .narrow(0, crop * batch_size, batch_size);
            if queue_used && let Some(q) = queue.as_deref() {
                let stored = q.scores(slot, prototypes.clone()).cast(out.dtype());
                out = Tensor::cat(vec![stored, out.without_autodiff()], 0);
            }
            let n = out.dims()[0];
            let q = sinkhorn(out, sinkhorn_config, reduce).narrow(0, n - batch_size, batch_size);
            codes[h].push(AssignmentCodes { crop, codes: q });
        }
        if let Some(q) = queue.as_deref_mut() {
            q.push(
                slot,
                embeddings.clone().narrow(0, crop * batch_size, batch_size),
            );
        }
    }

    let mut loss: Option<Tensor<1>> = None;
    for ((scores, _), head_codes) in heads.iter().zip(&codes) {
        let l = swapped_prediction_loss(scores.clone(), batch_size, head_codes, temperature);
        loss = Some(match loss {
            None => l,
            Some(acc) => acc.add(l),
        });
    }
    let loss = loss
        .expect("heads is not empty")
        .div_scalar(heads.len() as f64);
    SwavLossOutput {
        loss,
        codes,
        queue_used,
    }
}
