//! burn's BatchNorm running-statistics update, for the BatchNorm paths that compute the batch
//! statistics themselves.

use burn::nn::BatchNorm;
use burn::tensor::Tensor;

/// burn's `BatchNorm` running-statistics update from a batch's mean and biased variance.
pub(crate) fn update_running_stats(bn: &BatchNorm, mean: Tensor<1>, variance: Tensor<1>) {
    let device = mean.device();
    let running_mean = bn.running_mean.value_sync().to_device(&device);
    let running_var = bn.running_var.value_sync().to_device(&device);
    let running_mean = running_mean
        .mul_scalar(1.0 - bn.momentum)
        .add(mean.detach().mul_scalar(bn.momentum));
    let running_var = running_var
        .mul_scalar(1.0 - bn.momentum)
        .add(variance.detach().mul_scalar(bn.momentum));
    bn.running_mean.update(running_mean.detach());
    bn.running_var.update(running_var.detach());
}
