//! Unit-norm constraints: L2 normalisation of embeddings and of the prototype vectors.

use burn::module::Param;
use burn::nn::Linear;
use burn::tensor::Tensor;

/// Divides `x` by its L2 norm along `dim`, like PyTorch's `F.normalize(x, dim, eps=1e-12)`:
/// `x / max(||x||, 1e-12)`. Differentiable.
///
/// # Panics
/// If `dim >= D`.
pub fn l2_normalize<const D: usize>(x: Tensor<D>, dim: usize) -> Tensor<D> {
    let norm = x.clone().square().sum_dim(dim).sqrt().clamp_min(1e-12);
    x.div(norm)
}

/// Returns the prototype matrix with every prototype rescaled to unit L2 norm, without
/// gradient.
///
/// `weight` is in burn's `Linear` layout, `[D, K]` (input dimension first): prototype `k` is
/// column `k`, normalised over `D`. (The original stores PyTorch's `[K, D]` and normalises
/// rows; it is the same operation.) The result is a fresh leaf that keeps the input's
/// `require_grad` setting, so the optimiser keeps updating it.
pub fn normalize_prototypes_weight(weight: Tensor<2>) -> Tensor<2> {
    let require_grad = weight.is_require_grad();
    l2_normalize(weight.detach(), 0)
        .detach()
        .set_require_grad(require_grad)
}

/// Normalises the prototypes held by a bias-free `Linear` layer in place of its weight (step 2
/// of the training iteration, done under `torch.no_grad()` in the original). The parameter
/// keeps its id, so optimiser state attached to it is kept.
pub fn normalize_prototypes(mut prototypes: Linear) -> Linear {
    prototypes.weight = normalize_prototypes_param(prototypes.weight);
    prototypes
}

fn normalize_prototypes_param(param: Param<Tensor<2>>) -> Param<Tensor<2>> {
    param.map(normalize_prototypes_weight)
}
