//! The SwAV objective of one batch: the multi-crop forward, the codes (Sinkhorn-Knopp, with the
//! queue when it is full) and the swapped-prediction loss, in the original's order. The single-
//! and multi-worker paths both run it ([`crate::WorkerGroup`] on every worker).

use burn::module::Module;
use burn::tensor::Tensor;
use swav_core::{
    AllReduce, EmbeddingQueue, SwavConfig, SwavLossOutput, normalize_prototypes,
    swav_loss_multi_head,
};
use swav_models::{Backbone, SwavModel};

/// The SwAV objective of one batch, in the original's order: the multi-crop forward of
/// `groups` (one tensor per resolution group, crop-major, `batch` images), then for each prototype head the
/// codes of `crops_for_assign` without gradient (with the queue when it is full) and the
/// swapped-prediction loss. The prototypes must have been normalised ([`normalize_heads`]).
/// `reduce` combines the Sinkhorn's sums over the data-parallel workers
/// ([`swav_core::SingleWorker`] for one).
/// Returns each head's scores and the loss with its codes.
pub fn forward_loss<E: Backbone + Module, R: AllReduce>(
    model: &SwavModel<E>,
    groups: &[Tensor<4>],
    batch: usize,
    s: &SwavConfig,
    queue: Option<&mut EmbeddingQueue>,
    reduce: &R,
) -> (Vec<Tensor<2>>, SwavLossOutput) {
    let out = model.forward(groups);
    let heads: Vec<(Tensor<2>, Tensor<2>)> = out
        .scores
        .iter()
        .zip(&model.prototypes.heads)
        .map(|(sc, h)| (sc.clone(), h.weight.val().detach()))
        .collect();
    let lo = swav_loss_multi_head(
        &heads,
        out.embeddings,
        batch,
        &s.crops_for_assign,
        s.temperature,
        &s.sinkhorn(),
        queue,
        reduce,
    );
    (out.scores, lo)
}

/// Normalises every prototype head (without gradient), as the original does before each step.
pub fn normalize_heads<E: Module>(mut model: SwavModel<E>) -> SwavModel<E> {
    model.prototypes.heads = model
        .prototypes
        .heads
        .into_iter()
        .map(normalize_prototypes)
        .collect();
    model
}
