//! Training-mode BatchNorm's statistics as PyTorch keeps them: the batch normalised with its
//! biased variance, the running variance updated with the unbiased one (`n / (n - 1)` times it,
//! n values per channel). burn's own `BatchNorm` averages the biased variance into its running
//! statistics, which makes eval-mode features drift from PyTorch's where few values reach a
//! channel (a ResNet's last stage on small crops, the head's BatchNorm on a small batch).

use burn::nn::BatchNorm;
use burn::tensor::Tensor;

/// Updates `bn`'s running statistics from a batch's `mean` and biased `variance` over `count`
/// values per channel, with `bn`'s momentum, as `torch.nn.BatchNorm` does.
pub(crate) fn update_running_stats(
    bn: &BatchNorm,
    mean: Tensor<1>,
    variance: Tensor<1>,
    count: f64,
) {
    let device = mean.device();
    let running_mean = bn.running_mean.value_sync().to_device(&device);
    let running_var = bn.running_var.value_sync().to_device(&device);
    let unbiased = if count > 1.0 {
        variance.detach().mul_scalar(count / (count - 1.0))
    } else {
        variance.detach()
    };
    let running_mean = running_mean
        .mul_scalar(1.0 - bn.momentum)
        .add(mean.detach().mul_scalar(bn.momentum));
    let running_var = running_var
        .mul_scalar(1.0 - bn.momentum)
        .add(unbiased.mul_scalar(bn.momentum));
    bn.running_mean.update(running_mean.detach());
    bn.running_var.update(running_var.detach());
}

/// The per-channel sum of `x` (`[B, C, ...]`), as `[C]`.
pub(crate) fn per_channel<const D: usize>(x: Tensor<D>) -> Tensor<1> {
    let channels = x.dims()[1];
    let mut t = x;
    for d in (0..D).filter(|&d| d != 1) {
        t = t.sum_dim(d);
    }
    t.reshape([channels])
}

/// Training-mode BatchNorm of `x` (`[B, C, ...]`) from tensor operations, on any backend: the
/// batch's statistics, and the running statistics updated as PyTorch does.
pub(crate) fn batch_norm_train<const D: usize>(bn: &BatchNorm, x: Tensor<D>) -> Tensor<D> {
    let channels = x.dims()[1];
    let count = (x.shape().num_elements() / channels.max(1)).max(1) as f64;
    let mut broadcast = [1usize; D];
    broadcast[1] = channels;
    let mean = per_channel(x.clone()).div_scalar(count);
    let centred = x.sub(mean.clone().reshape(broadcast));
    let variance = per_channel(centred.clone().square()).div_scalar(count);
    let scale = bn
        .gamma
        .val()
        .div(variance.clone().add_scalar(bn.epsilon).sqrt());
    let out = centred
        .mul(scale.reshape(broadcast))
        .add(bn.beta.val().reshape(broadcast));
    update_running_stats(bn, mean, variance, count);
    out
}
