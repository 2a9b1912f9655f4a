//! The one layer API every backbone goes through: convolution, BatchNorm and Linear forwards over
//! burn's own modules (`Conv2d`, `BatchNorm`, `Linear`), each applying, where it is in force:
//!
//! - mixed precision ([`crate::precision::with_autocast`]): convolutions and Linear layers in
//!   the half type, BatchNorm in f32;
//! - synchronised BatchNorm ([`crate::syncbn::with_synchronised_batch_norm`]): training-mode
//!   statistics of the global batch of a data-parallel group;
//! - the fast CPU path (the `engine` feature, on by default): the engine's GEMM / Winograd
//!   convolutions and fused BatchNorm on burn's flex backend, burn's own kernels elsewhere.
//!
//! A backbone built from burn's modules gets all three by calling these instead of the modules'
//! `forward` (see the ResNet here and the `tinynet` crate). A BatchNorm whose `forward` is called
//! directly keeps per-worker statistics; the trainer detects such layers
//! ([`crate::syncbn::with_synchronised_batch_norm_checked`]) and says so in the run summary.

use burn::nn::conv::Conv2d;
use burn::nn::{BatchNorm, Linear, PaddingConfig2d};
use burn::tensor::Tensor;
use burn::tensor::ops::ConvOptions;

use crate::precision::{autocast_dtype, to_compute, to_f32};

#[cfg(feature = "engine")]
use swav_engine::FusedBatchNorm;
#[cfg(feature = "engine")]
pub use swav_engine::{is_flex, with_burn_kernels};

/// A convolution's forward. Explicit or no padding: the input, weight and bias in the autocast
/// type when one is installed; without bias through the engine's kernels (on flex) or burn's
/// `conv2d`. "Same" padding (which depends on the input size) takes burn's own forward in f32.
pub fn conv2d(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    let padding = match &conv.padding {
        PaddingConfig2d::Explicit(top, left, bottom, right) => [(*top, *bottom), (*left, *right)],
        PaddingConfig2d::Valid => [(0, 0), (0, 0)],
        PaddingConfig2d::Same => return conv.forward(to_f32(x)),
    };
    let options = ConvOptions::new_with_padding(conv.stride, padding, conv.dilation, conv.groups);
    let x = to_compute(x);
    let weight = to_compute(conv.weight.val());
    match &conv.bias {
        Some(bias) => {
            burn::tensor::module::conv2d(x, weight, Some(to_compute(bias.val())), options)
        }
        None => conv2d_no_bias(x, weight, options),
    }
}

#[cfg(feature = "engine")]
fn conv2d_no_bias(x: Tensor<4>, weight: Tensor<4>, options: ConvOptions<2>) -> Tensor<4> {
    swav_engine::conv2d_no_bias(x, weight, options)
}

#[cfg(not(feature = "engine"))]
fn conv2d_no_bias(x: Tensor<4>, weight: Tensor<4>, options: ConvOptions<2>) -> Tensor<4> {
    burn::tensor::module::conv2d(x, weight, None, options)
}

/// BatchNorm's forward, for any input `[B, C, ...]`, computed and returned in f32 (a
/// half-precision convolution's output is cast first). In training mode: synchronised over the
/// data-parallel group installed on this thread when there is one; otherwise the engine's fused
/// kernels on flex, or tensor operations on other backends; the running statistics are updated
/// as PyTorch does (with the unbiased batch variance, where burn's own `BatchNorm` takes the
/// biased one). In eval mode: burn's `BatchNorm::forward` (the running statistics).
pub fn batch_norm<const D: usize>(bn: &BatchNorm, x: Tensor<D>) -> Tensor<D> {
    let x = to_f32(x);
    let training = x.device().is_autodiff() && bn.training.is_enabled();
    if !training {
        return bn.forward(x);
    }
    #[cfg(feature = "engine")]
    {
        if let Some(group) = crate::syncbn::current_group() {
            return crate::syncbn::synchronised_batch_norm(bn, x, &group);
        }
        match swav_engine::batch_norm_train(x, bn.gamma.val(), bn.beta.val(), bn.epsilon) {
            FusedBatchNorm::Done {
                output,
                mean,
                variance,
            } => {
                let count = (output.shape().num_elements() / output.dims()[1].max(1)) as f64;
                crate::bn_stats::update_running_stats(bn, mean, variance, count);
                output
            }
            FusedBatchNorm::NotServed(x) => crate::bn_stats::batch_norm_train(bn, x),
        }
    }
    #[cfg(not(feature = "engine"))]
    crate::bn_stats::batch_norm_train(bn, x)
}

/// A Linear layer's forward in the autocast type (its weight and bias cast; burn's own forward
/// when none is installed).
pub fn linear<const D: usize>(layer: &Linear, x: Tensor<D>) -> Tensor<D> {
    if autocast_dtype().is_none() {
        return layer.forward(x);
    }
    let weight = to_compute(layer.weight.val());
    let bias = layer.bias.as_ref().map(|b| to_compute(b.val()));
    burn::tensor::module::linear(to_compute(x), weight, bias)
}
