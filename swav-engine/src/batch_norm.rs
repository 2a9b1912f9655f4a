//! Training-mode BatchNorm on flex through a backend extension ([`FastBatchNormBackend`]) with
//! its own backward, by the fused kernels of [`crate::bn_kernels`], in place of burn's default,
//! which transposes every activation to `[C, B·H·W]` and back and runs one element-wise pass
//! per operation.

use burn::backend::autodiff::NodeId;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::ops::ModuleOps;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, Flex, backend_extension};
use burn::tensor::{DType, Tensor};

use crate::bn_kernels::{batch_norm_backward_f32, batch_norm_train_f32};
use crate::dispatch::{burn_kernels_only, flex_tensor, is_flex};

/// BatchNorm in training mode (batch statistics) on flex as two fused passes per direction,
/// in place of burn's default, which transposes every activation to `[C, B·H·W]` and back and
/// runs one element-wise pass per operation. Returns the output, the batch mean and the biased
/// batch variance (what burn's `batch_norm_train` returns).
#[backend_extension(Flex, Autodiff)]
pub trait FastBatchNormBackend: Backend {
    /// Normalise `x` (`[B, C, H, W]`) with its batch statistics, then scale and shift.
    fn fast_batch_norm_train(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);

    /// Gradients of `fast_batch_norm_train` for `x`, `gamma` and `beta`.
    fn fast_batch_norm_backward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        variance: FloatTensor<Self>,
        epsilon: f64,
        output_grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);
}

fn flex_f32(t: &burn::backend::flex::FlexTensor) -> Option<Vec<f32>> {
    let t = t.to_contiguous();
    t.as_slice::<f32>().map(|s| s.to_vec())
}

impl FastBatchNormBackend for Flex {
    fn fast_batch_norm_train(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let shape = x.layout().shape().clone();
        let x = x.to_contiguous();
        let (Some(xv), Some(g), Some(b)) = (x.as_slice::<f32>(), flex_f32(&gamma), flex_f32(&beta))
        else {
            let r = Self::batch_norm_train(x, gamma, beta, epsilon);
            return (r.output, r.mean, r.variance);
        };
        let channels = shape[1];
        let plane = shape.num_elements() / (shape[0] * channels).max(1);
        let (out, mean, var) = batch_norm_train_f32(xv, &g, &b, channels, plane, epsilon);
        (
            flex_tensor(out, shape.to_vec()),
            flex_tensor(mean, vec![channels]),
            flex_tensor(var, vec![channels]),
        )
    }

    fn fast_batch_norm_backward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        variance: FloatTensor<Self>,
        epsilon: f64,
        output_grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let shape = x.layout().shape().clone();
        let x = x.to_contiguous();
        let dy = output_grad.to_contiguous();
        let vectors = (flex_f32(&gamma), flex_f32(&mean), flex_f32(&variance));
        let (Some(xv), Some(dyv), (Some(g), Some(m), Some(v))) =
            (x.as_slice::<f32>(), dy.as_slice::<f32>(), vectors)
        else {
            let r = Self::batch_norm_train_backward(x, gamma, mean, variance, epsilon, dy);
            return (r.x_grad, r.gamma_grad, r.beta_grad);
        };
        let channels = shape[1];
        let plane = shape.num_elements() / (shape[0] * channels).max(1);
        let (dx, dg, db) = batch_norm_backward_f32(xv, dyv, &g, &m, &v, channels, plane, epsilon);
        (
            flex_tensor(dx, shape.to_vec()),
            flex_tensor(dg, vec![channels]),
            flex_tensor(db, vec![channels]),
        )
    }
}

impl<B: Backend + FastBatchNormBackend, C: CheckpointStrategy> FastBatchNormBackend
    for Autodiff<B, C>
{
    fn fast_batch_norm_train(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        #[derive(Debug)]
        struct FastBatchNormBackward;

        impl<B: Backend + FastBatchNormBackend> Backward<B, 3> for FastBatchNormBackward {
            type State = (
                NodeId,
                B::FloatTensorPrimitive,
                B::FloatTensorPrimitive,
                B::FloatTensorPrimitive,
                f64,
            );

            fn backward(
                self,
                ops: Ops<Self::State, 3>,
                grads: &mut Gradients,
                checkpointer: &mut Checkpointer,
            ) {
                let [node_x, node_gamma, node_beta] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                let (x_state, gamma, mean, variance, epsilon) = ops.state;
                let x = checkpointer.retrieve_node_output::<B::FloatTensorPrimitive>(x_state);
                let (dx, dgamma, dbeta) =
                    B::fast_batch_norm_backward(x, gamma, mean, variance, epsilon, grad);
                if let Some(node) = node_x {
                    grads.register::<B>(node.id, dx);
                }
                if let Some(node) = node_gamma {
                    grads.register::<B>(node.id, dgamma);
                }
                if let Some(node) = node_beta {
                    grads.register::<B>(node.id, dbeta);
                }
            }
        }

        let gamma_value = gamma.primitive().clone();
        match FastBatchNormBackward
            .prepare::<C>([x.node(), gamma.node(), beta.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let x_state = prep.checkpoint(&x);
                let (out, mean, variance) = B::fast_batch_norm_train(
                    x.into_primitive(),
                    gamma.into_primitive(),
                    beta.into_primitive(),
                    epsilon,
                );
                let out = prep.finish(
                    (
                        x_state,
                        gamma_value,
                        mean.clone(),
                        variance.clone(),
                        epsilon,
                    ),
                    out,
                );
                (
                    out,
                    FloatTensor::<Self>::new(mean),
                    FloatTensor::<Self>::new(variance),
                )
            }
            OpsKind::UnTracked(prep) => {
                let (out, mean, variance) = B::fast_batch_norm_train(
                    x.into_primitive(),
                    gamma.into_primitive(),
                    beta.into_primitive(),
                    epsilon,
                );
                (
                    prep.finish(out),
                    FloatTensor::<Self>::new(mean),
                    FloatTensor::<Self>::new(variance),
                )
            }
        }
    }

    fn fast_batch_norm_backward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        variance: FloatTensor<Self>,
        epsilon: f64,
        output_grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let r = Self::batch_norm_train_backward(x, gamma, mean, variance, epsilon, output_grad);
        (r.x_grad, r.gamma_grad, r.beta_grad)
    }
}

/// Training-mode BatchNorm of `x` (`[B, C, ...]`, f32) with its batch statistics, scaled by
/// `gamma` and shifted by `beta`, by the fused flex kernels, differentiable under autodiff:
/// [`FusedBatchNorm::Done`]. Where they do not serve the case (another backend, another float
/// type, inside [`crate::with_burn_kernels`]), [`FusedBatchNorm::NotServed`] hands the input
/// back for the caller's own BatchNorm. The running statistics are the caller's.
pub fn batch_norm_train<const D: usize>(
    x: Tensor<D>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    epsilon: f64,
) -> FusedBatchNorm<D> {
    let serves = !burn_kernels_only()
        && D >= 2
        && x.dtype() == DType::F32
        && gamma.dtype() == DType::F32
        && beta.dtype() == DType::F32
        && is_flex(&x.device());
    if !serves {
        return FusedBatchNorm::NotServed(x);
    }
    let (out, mean, variance) = <Dispatch as FastBatchNormBackend>::fast_batch_norm_train(
        x.into_dispatch(),
        gamma.into_dispatch(),
        beta.into_dispatch(),
        epsilon,
    );
    FusedBatchNorm::Done {
        output: Tensor::<D>::from_dispatch(out),
        mean: Tensor::<1>::from_dispatch(mean),
        variance: Tensor::<1>::from_dispatch(variance),
    }
}

/// What [`batch_norm_train`] did.
// Returned by value once per BatchNorm call and taken apart at once: boxing the larger variant
// would add an allocation per call for nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum FusedBatchNorm<const D: usize> {
    /// Computed by the fused kernels.
    Done {
        /// The normalised, scaled and shifted output.
        output: Tensor<D>,
        /// The batch mean per channel.
        mean: Tensor<1>,
        /// The biased batch variance per channel.
        variance: Tensor<1>,
    },
    /// Not a case the kernels serve: the input, handed back.
    NotServed(Tensor<D>),
}
