//! Convolutions for burn's `flex` CPU backend through a backend extension ([`FastConvBackend`])
//! with its own backward for `Autodiff<Flex>`: the forward, input gradient and weight gradient
//! by the slice-level kernels of [`crate::gemm_conv`] (one GEMM per image, Winograd for 3x3
//! stride-1 convolutions). burn 0.22 on flex computes a convolution's weight gradient as another
//! convolution over the input and output gradient with batch and channel axes swapped, at a
//! third of the forward's speed, and its forward converts to channels-last and back around its
//! GEMM.
//!
//! The kernels serve f32 convolutions without bias, groups or dilation and with symmetric
//! padding on flex; any other case falls back to burn's own kernels inside the flex
//! implementation, and every other backend uses burn's `conv2d` ([`conv2d_no_bias`]).

use burn::backend::autodiff::NodeId;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::ops::ModuleOps;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, Flex, backend_extension};
use burn::tensor::ops::ConvOptions;
use burn::tensor::{DType, Tensor};

use crate::dispatch::{burn_kernels_only, flex_tensor, is_flex};
use crate::gemm_conv::{conv2d_forward, conv2d_input_grad, conv2d_weight_grad};
use crate::geometry::{ConvGeometry, out_size};

/// A 2-D convolution without bias whose weight gradient is computed by [`conv2d_weight_grad`]
/// on flex. Implemented for `Flex` and `Autodiff<Flex>`; reached through `Dispatch`.
#[backend_extension(Flex, Autodiff)]
pub trait FastConvBackend: Backend {
    /// `conv2d(x, weight, None, options)`, differentiable where the backend is.
    fn fast_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self>;

    /// The gradient of `fast_conv2d` with respect to `x`, given the output's gradient.
    fn fast_conv2d_x_grad(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self>;

    /// The gradient of `fast_conv2d` with respect to `weight`, given the output's gradient.
    fn fast_conv2d_weight_grad(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self>;
}

impl FastConvBackend for Flex {
    fn fast_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        let xs = x.layout().shape().clone();
        let ws = weight.layout().shape().clone();
        let out = [
            out_size(xs[2], ws[2], options.stride[0], options.padding_begin()[0]),
            out_size(xs[3], ws[3], options.stride[1], options.padding_begin()[1]),
        ];
        let Some(geometry) = geometry(&[&x, &weight], &xs, &ws, out, &options) else {
            return Self::conv2d(x, weight, None, options);
        };
        let x = x.to_contiguous();
        let weight = weight.to_contiguous();
        let (Some(xv), Some(wv)) = (x.as_slice::<f32>(), weight.as_slice::<f32>()) else {
            return Self::conv2d(x, weight, None, options);
        };
        let shape = vec![xs[0], ws[0], out[0], out[1]];
        flex_tensor(conv2d_forward(xv, wv, &geometry), shape)
    }

    fn fast_conv2d_x_grad(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        flex_conv_backward(x, weight, output_grad, options, true)
    }

    fn fast_conv2d_weight_grad(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        flex_conv_backward(x, weight, output_grad, options, false)
    }
}

/// A convolution's input gradient (`wrt_x`, from the weight and output gradient) or weight
/// gradient (from the input and output gradient) on flex, by the kernels here where they serve
/// the case, else by burn's.
fn flex_conv_backward(
    x: burn::backend::flex::FlexTensor,
    weight: burn::backend::flex::FlexTensor,
    output_grad: burn::backend::flex::FlexTensor,
    options: ConvOptions<2>,
    wrt_x: bool,
) -> burn::backend::flex::FlexTensor {
    let burns = |x, weight, g, options| {
        if wrt_x {
            Flex::conv2d_x_backward(x, weight, g, options)
        } else {
            Flex::conv2d_weight_backward(x, weight, g, options)
        }
    };
    let Some(geometry) = backward_geometry(&x, &weight, &output_grad, &options) else {
        return burns(x, weight, output_grad, options);
    };
    // The kernel reads the weight (input gradient) or the input (weight gradient).
    let operand = if wrt_x { &weight } else { &x }.to_contiguous();
    let g = output_grad.to_contiguous();
    let (Some(ov), Some(gv)) = (operand.as_slice::<f32>(), g.as_slice::<f32>()) else {
        return burns(x, weight, g, options);
    };
    if wrt_x {
        let shape = x.layout().shape().to_vec();
        flex_tensor(conv2d_input_grad(ov, gv, &geometry), shape)
    } else {
        let shape = weight.layout().shape().to_vec();
        flex_tensor(conv2d_weight_grad(ov, gv, &geometry), shape)
    }
}

/// The geometry of a convolution's backward, from its input, weight and output gradient.
fn backward_geometry(
    x: &burn::backend::flex::FlexTensor,
    weight: &burn::backend::flex::FlexTensor,
    output_grad: &burn::backend::flex::FlexTensor,
    options: &ConvOptions<2>,
) -> Option<ConvGeometry> {
    let gs = output_grad.layout().shape();
    if gs.num_dims() != 4 {
        return None;
    }
    let tensors = [x, weight, output_grad];
    let (xs, ws) = (x.layout().shape(), weight.layout().shape());
    geometry(&tensors, xs, ws, [gs[2], gs[3]], options)
}

/// The geometry of a convolution the kernels here handle (f32, 4-D, no groups, no dilation,
/// symmetric padding, a kernel that fits the padded input), or `None` for burn's own path.
fn geometry(
    tensors: &[&burn::backend::flex::FlexTensor],
    xs: &burn::tensor::Shape,
    ws: &burn::tensor::Shape,
    out: [usize; 2],
    options: &ConvOptions<2>,
) -> Option<ConvGeometry> {
    let ok = tensors.iter().all(|t| t.dtype() == DType::F32)
        && xs.num_dims() == 4
        && ws.num_dims() == 4
        && options.groups == 1
        && options.dilation == [1, 1]
        && !options.is_asymmetric()
        && ws[1] == xs[1]
        && xs[2] + 2 * options.padding_begin()[0] >= ws[2]
        && xs[3] + 2 * options.padding_begin()[1] >= ws[3];
    ok.then(|| ConvGeometry {
        batch: xs[0],
        channels_in: xs[1],
        height: xs[2],
        width: xs[3],
        channels_out: ws[0],
        kernel: [ws[2], ws[3]],
        out,
        stride: options.stride,
        padding: options.padding_begin(),
    })
}

impl<B: Backend + FastConvBackend, C: CheckpointStrategy> FastConvBackend for Autodiff<B, C> {
    fn fast_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct FastConv2dBackward;

        impl<B: Backend + FastConvBackend> Backward<B, 2> for FastConv2dBackward {
            type State = (NodeId, NodeId, ConvOptions<2>);

            fn backward(
                self,
                ops: Ops<Self::State, 2>,
                grads: &mut Gradients,
                checkpointer: &mut Checkpointer,
            ) {
                let [node_x, node_weight] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                let (x_state, weight_state, options) = ops.state;
                let x = checkpointer.retrieve_node_output::<B::FloatTensorPrimitive>(x_state);
                let weight =
                    checkpointer.retrieve_node_output::<B::FloatTensorPrimitive>(weight_state);
                if let Some(node) = node_x {
                    let gx = B::fast_conv2d_x_grad(
                        x.clone(),
                        weight.clone(),
                        grad.clone(),
                        options.clone(),
                    );
                    grads.register::<B>(node.id, gx);
                }
                if let Some(node) = node_weight {
                    let gw = B::fast_conv2d_weight_grad(x, weight, grad, options);
                    grads.register::<B>(node.id, gw);
                }
            }
        }

        match FastConv2dBackward
            .prepare::<C>([x.node(), weight.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let x_state = prep.checkpoint(&x);
                let weight_state = prep.checkpoint(&weight);
                prep.finish(
                    (x_state, weight_state, options.clone()),
                    B::fast_conv2d(x.into_primitive(), weight.into_primitive(), options),
                )
            }
            OpsKind::UnTracked(prep) => prep.finish(B::fast_conv2d(
                x.into_primitive(),
                weight.into_primitive(),
                options,
            )),
        }
    }

    fn fast_conv2d_x_grad(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        Self::conv2d_x_backward(x, weight, output_grad, options)
    }

    fn fast_conv2d_weight_grad(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        Self::conv2d_weight_backward(x, weight, output_grad, options)
    }
}

/// A convolution without bias: through [`FastConvBackend`] on flex (whose kernels take the
/// cases they serve and hand the rest to burn's), burn's `conv2d` on every other backend. The
/// same values either way, to rounding.
pub fn conv2d_no_bias(x: Tensor<4>, weight: Tensor<4>, options: ConvOptions<2>) -> Tensor<4> {
    if !burn_kernels_only() && is_flex(&x.device()) {
        let out = <Dispatch as FastConvBackend>::fast_conv2d(
            x.into_dispatch(),
            weight.into_dispatch(),
            options,
        );
        Tensor::from_dispatch(out)
    } else {
        burn::tensor::module::conv2d(x, weight, None, options)
    }
}
