//! Convolutions for burn's `flex` CPU backend as one GEMM per image, forward and backward.
//!
//! burn 0.22 on flex computes a convolution's weight gradient as another convolution over the
//! input and output gradient with batch and channel axes swapped; it ran at a third of the
//! forward's speed and took about half of a ResNet's convolution time; flex's forward converts
//! to channels-last and back around its GEMM. Here, per image `b`, in NCHW with
//! `col(x_b)` the `[C·kh·kw, Ho·Wo]` patch matrix:
//!
//! - forward: `Y_b[O, Ho·Wo] = W[O, C·kh·kw] · col(x_b)` (a 1x1 stride-1 convolution uses `x_b`
//!   itself);
//! - input gradient: `dcol = Wᵀ · dY_b`, added back onto `dX_b` (col2im);
//! - weight gradient: `dW += dY_b · col(x_b)ᵀ`, one accumulator per thread, summed in order.
//!
//! The 3x3 stride-1 "same" convolutions with 16 channels and more take Winograd's algorithm
//! instead ([`crate::winograd`]): forward, input gradient and (up to 512 x 512 channels) weight
//! gradient; wider ones on larger images take the weight gradient by shifted GEMMs
//! ([`conv3x3_weight_grad_shifted`]).
//!
//! Images are split over the rayon threads (the GEMM itself is split when there are fewer
//! images than threads); every sum runs in a fixed order, so results do not depend on timing.
//! Measured per kernel and per training step in docs/benchmarks.md
//! (`cargo run -p swav-models --example conv_parts`, `cargo xtask bench`).
//!
//! It enters burn through a backend extension ([`FastConvBackend`]) with its own backward for
//! `Autodiff<Flex>`. It serves f32 convolutions without bias, groups or dilation and with
//! symmetric padding on flex; any other case falls back to burn's own kernels inside the flex
//! implementation, and every other backend uses burn's `conv2d` ([`conv2d_no_bias`]).
//!
//! Training-mode BatchNorm ([`batch_norm`], [`FastBatchNormBackend`]) goes the same way: on flex,
//! per-channel statistics in f64 and one fused normalising pass (backward: two per-channel sums
//! and one pass) instead of burn's default, which transposes every activation to `[C, B·H·W]`
//! and back; the running statistics are updated exactly as burn's `BatchNorm` does.

use crate::simd::multiversion;
use burn::backend::autodiff::NodeId;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::ops::ModuleOps;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, DispatchDevice, Flex, backend_extension};
use burn::tensor::ops::ConvOptions;
use burn::tensor::{DType, Tensor, TensorData};
use rayon::prelude::*;

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

/// An f32 flex tensor of the given shape.
fn flex_tensor(values: Vec<f32>, shape: Vec<usize>) -> burn::backend::flex::FlexTensor {
    burn::backend::flex::FlexTensor::from_data(TensorData::new(values, shape))
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

fn out_size(size: usize, kernel: usize, stride: usize, padding: usize) -> usize {
    (size + 2 * padding).saturating_sub(kernel) / stride.max(1) + 1
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

/// Whether `device` runs on burn's flex backend (directly or under autodiff).
pub fn is_flex(device: &burn::tensor::Device) -> bool {
    match device.as_dispatch() {
        DispatchDevice::Flex(_) => true,
        DispatchDevice::Autodiff(inner) => {
            matches!(inner.clone().inner(), DispatchDevice::Flex(_))
        }
        #[allow(unreachable_patterns)]
        _ => false,
    }
}

std::thread_local! {
    static BURN_KERNELS_ONLY: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with this thread's convolutions and BatchNorms on burn's own kernels (those here
/// bypassed), for comparisons and benchmarks of the two paths. Other threads are unaffected.
pub fn with_burn_kernels<T>(f: impl FnOnce() -> T) -> T {
    let before = BURN_KERNELS_ONLY.with(|c| c.replace(true));
    let out = f();
    BURN_KERNELS_ONLY.with(|c| c.set(before));
    out
}

/// A convolution without bias: through [`FastConvBackend`] on flex (whose kernels take the
/// cases they serve and hand the rest to burn's), burn's `conv2d` on every other backend. The
/// same values either way, to rounding.
pub fn conv2d_no_bias(x: Tensor<4>, weight: Tensor<4>, options: ConvOptions<2>) -> Tensor<4> {
    if !BURN_KERNELS_ONLY.with(|c| c.get()) && is_flex(&x.device()) {
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

/// The shape of one convolution, as [`conv2d_weight_grad`] needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvGeometry {
    /// Images in the batch.
    pub batch: usize,
    /// Input channels.
    pub channels_in: usize,
    /// Input height.
    pub height: usize,
    /// Input width.
    pub width: usize,
    /// Output channels.
    pub channels_out: usize,
    /// Kernel height and width.
    pub kernel: [usize; 2],
    /// Output height and width.
    pub out: [usize; 2],
    /// Stride (rows, columns).
    pub stride: [usize; 2],
    /// Zero padding before the first row and column (the same after).
    pub padding: [usize; 2],
}

impl ConvGeometry {
    /// A 3x3, stride-1, padding-1 ("same") convolution of `batch` images of `channels_in` x
    /// `height` x `width` into `channels_out` channels of the same size.
    pub fn same_3x3(
        batch: usize,
        channels_in: usize,
        height: usize,
        width: usize,
        channels_out: usize,
    ) -> Self {
        Self {
            batch,
            channels_in,
            height,
            width,
            channels_out,
            kernel: [3, 3],
            out: [height, width],
            stride: [1, 1],
            padding: [1, 1],
        }
    }
}

/// How many images share one weight-gradient GEMM: enough that its inner dimension (images x
/// output positions) reaches [`GEMM_COLUMNS`], but no more than leaves every thread a group of
/// its own. Late ResNet stages have few output positions per image (16 at 4x4): one GEMM per
/// image would read and write the `O x C·kh·kw` accumulator once per image for a product of
/// depth 16. (The forward and the input gradient stay one GEMM per image: grouping them,
/// which needs the images gathered and scattered, measured slower at every size,
/// `cargo run -p swav-models --example conv_parts`.)
fn images_per_gemm(g: &ConvGeometry) -> usize {
    let plane_out = (g.out[0] * g.out[1]).max(1);
    let per_thread = g.batch.div_ceil(rayon::current_num_threads().max(1)).max(1);
    (GEMM_COLUMNS / plane_out).clamp(1, per_thread)
}

/// The depth a weight-gradient GEMM should have at least, where the batch allows (see
/// [`images_per_gemm`]).
const GEMM_COLUMNS: usize = 256;

/// The column matrix of images `first..first + count`: `[C·kh·kw, count·Ho·Wo]`, image `k`'s
/// output positions in columns `k·Ho·Wo..`.
fn im2col_group(x: &[f32], g: &ConvGeometry, first: usize, count: usize, col: &mut [f32]) {
    let plane_in = g.channels_in * g.height * g.width;
    let plane_out = g.out[0] * g.out[1];
    for k in 0..count {
        let xb = &x[(first + k) * plane_in..(first + k + 1) * plane_in];
        im2col(xb, g, col, count * plane_out, k * plane_out);
    }
}

/// Images `first..first + count` of an `[B, O, Ho·Wo]` tensor as one `[O, count·Ho·Wo]` matrix.
fn gather_group(
    t: &[f32],
    channels: usize,
    plane: usize,
    first: usize,
    count: usize,
    out: &mut [f32],
) {
    let width = count * plane;
    for k in 0..count {
        let image = &t[(first + k) * channels * plane..(first + k + 1) * channels * plane];
        for (o, src) in image.chunks_exact(plane).enumerate() {
            out[o * width + k * plane..o * width + (k + 1) * plane].copy_from_slice(src);
        }
    }
}

/// The weight gradient of a convolution without groups or dilation, `[O, C, kh, kw]` row-major,
/// from the input `x` (`[B, C, H, W]`) and the output gradient (`[B, O, Ho, Wo]`), both
/// contiguous row-major f32: by Winograd's F(4x4, 3x3) ([`crate::winograd::conv3x3_weight_grad`])
/// where [`crate::winograd::serves_weight_grad`] says so (3x3 stride-1 "same" convolutions with
/// at least 16 channels on each side and at most 512 x 512), else by
/// [`conv3x3_weight_grad_shifted`] for the larger such convolutions on images of about 15x15
/// or more, else by [`conv2d_weight_grad_im2col`].
///
/// # Panics
/// If the slices' lengths do not match `geometry`.
pub fn conv2d_weight_grad(x: &[f32], output_grad: &[f32], geometry: &ConvGeometry) -> Vec<f32> {
    if crate::winograd::serves_weight_grad(geometry) {
        crate::winograd::conv3x3_weight_grad(x, output_grad, geometry)
    } else if shifted_serves(geometry) {
        conv3x3_weight_grad_shifted(x, output_grad, geometry)
    } else {
        conv2d_weight_grad_im2col(x, output_grad, geometry)
    }
}

/// Whether [`conv2d_weight_grad`] may take [`conv3x3_weight_grad_shifted`]: a 3x3 stride-1
/// "same" convolution with at least 16 channels on each side whose images are large enough
/// that the laid-out rows' extra zeros (one per row and one row per image) add at most 1/7 to
/// the GEMM depth (15x15 and up). On smaller images the im2col path is as fast or faster
/// (`cargo run --release -p swav-models --example conv_parts`, which times every path: at 16
/// px 14 vs 16 ms, at 8 px, where the zeros add 27 %, 16.5 vs 14.5 ms; at 4x4 they add 56 %).
fn shifted_serves(g: &ConvGeometry) -> bool {
    crate::winograd::serves(g) && 7 * (g.height + 1) * (g.width + 1) <= 8 * g.height * g.width
}

/// Images of one group laid out for [`conv3x3_weight_grad_shifted`]: per channel, a margin of
/// `W + 2` zeros, then each image's rows of `W` values each followed by one zero, each image
/// followed by a zero row, then the margin again. The zero after a row is that row's right
/// padding and the next row's left padding; the zero row is the bottom padding of one image and
/// the top padding of the next. Returns the length per channel.
fn lay_out_shifted(
    t: &[f32],
    channels: usize,
    g: &ConvGeometry,
    first: usize,
    count: usize,
    out: &mut Vec<f32>,
) -> usize {
    let (h, w) = (g.height, g.width);
    let row = w + 1;
    let margin = row + 1;
    let len = 2 * margin + count * (h + 1) * row;
    out.clear();
    out.resize(channels * len, 0.0);
    let plane = h * w;
    for (ch, dst) in out.chunks_exact_mut(len).enumerate() {
        for k in 0..count {
            let src = &t[((first + k) * channels + ch) * plane..][..plane];
            let base = margin + k * (h + 1) * row;
            for (y, line) in src.chunks_exact(w).enumerate() {
                dst[base + y * row..base + y * row + w].copy_from_slice(line);
            }
        }
    }
    len
}

/// The weight gradient of a 3x3, stride-1, padding-1 convolution without an im2col matrix:
/// with the input and the output gradient laid out as rows of `W + 1` (see
/// [`lay_out_shifted`]), the input a tap `(i, j)` reads for every output position is the
/// input laid out the same way and shifted by `(i - 1)·(W + 1) + j - 1`, so each tap's
/// `O x C` gradient is one GEMM of the output gradient against the shifted input, both read
/// where they lie (the output gradient's zeros cancel what the shift brings in from padding or
/// from a neighbouring image). Images are grouped for a GEMM depth of about 1024 positions;
/// the groups are spread over the threads, each with its own `[9, O, C]` accumulator. Same
/// arguments, result and panics as [`conv2d_weight_grad`]; any channel counts.
///
/// # Panics
/// If the geometry is not a 3x3, stride-1, padding-1 convolution, or the slices' lengths do
/// not match it.
pub fn conv3x3_weight_grad_shifted(x: &[f32], output_grad: &[f32], g: &ConvGeometry) -> Vec<f32> {
    assert!(
        g.kernel == [3, 3]
            && g.stride == [1, 1]
            && g.padding == [1, 1]
            && g.out == [g.height, g.width],
        "not a 3x3 stride-1 padding-1 convolution: {g:?}"
    );
    let (o, c) = (g.channels_out, g.channels_in);
    let (h, w) = (g.height, g.width);
    assert_eq!(x.len(), g.batch * c * h * w, "input length");
    assert_eq!(
        output_grad.len(),
        g.batch * o * h * w,
        "output gradient length"
    );
    let size = o * c * 9;
    if g.batch == 0 || h * w == 0 || size == 0 {
        return vec![0.0; size];
    }
    let row = w + 1;
    let per_image = (h + 1) * row;
    let threads = rayon::current_num_threads().max(1);
    let group = (SHIFTED_DEPTH / per_image).clamp(1, g.batch.div_ceil(threads));
    let groups = g.batch.div_ceil(group);
    let parts = threads.clamp(1, groups);
    let groups_per_part = groups.div_ceil(parts);
    let partials: Vec<Vec<f32>> = (0..parts)
        .into_par_iter()
        .map(|part| {
            // acc[t, o, c]: tap t's gradient.
            let mut acc = vec![0.0f32; size];
            let (mut xs, mut dys) = (Vec::new(), Vec::new());
            let first_group = part * groups_per_part;
            let last_group = ((part + 1) * groups_per_part).min(groups);
            for (n, gi) in (first_group..last_group).enumerate() {
                let first = gi * group;
                let count = group.min(g.batch - first);
                let x_len = lay_out_shifted(x, c, g, first, count, &mut xs);
                let dy_len = lay_out_shifted(output_grad, o, g, first, count, &mut dys);
                let margin = row + 1;
                let depth = count * per_image;
                for tap in 0..9 {
                    let (i, j) = (tap / 3, tap % 3);
                    let start = margin + i * row + j - row - 1;
                    let dst = &mut acc[tap * o * c..(tap + 1) * o * c];
                    // dst[O, C] (+)= dY[O, depth] · shifted(X)[depth, C]
                    #[allow(unsafe_code)]
                    // SAFETY: dst is o x c (row stride c). The output gradient is read as
                    // o x depth from dys[margin..] with row stride dy_len: its last element,
                    // (o - 1)·dy_len + margin + depth - 1, is within dys (o·dy_len long, as
                    // margin + depth < dy_len). The input is read as depth x c from xs[start..]
                    // with column stride x_len: start + depth - 1 + (c - 1)·x_len is within xs
                    // as start <= 2·margin and 2·margin + depth = x_len. No buffers overlap.
                    unsafe {
                        gemm::gemm(
                            o,
                            c,
                            depth,
                            dst.as_mut_ptr(),
                            1,
                            c as isize,
                            n > 0,
                            dys[margin..].as_ptr(),
                            1,
                            dy_len as isize,
                            xs[start..].as_ptr(),
                            x_len as isize,
                            1,
                            1.0,
                            1.0,
                            false,
                            false,
                            false,
                            gemm::Parallelism::None,
                        );
                    }
                }
            }
            acc
        })
        .collect();
    // Sum the parts and reorder [9, O, C] to [O, C, 9].
    let mut out = vec![0.0f32; size];
    out.par_chunks_mut(c * 9).enumerate().for_each(|(oo, dst)| {
        for partial in &partials {
            for (tap, src) in partial.chunks_exact(o * c).enumerate() {
                for (cc, v) in src[oo * c..(oo + 1) * c].iter().enumerate() {
                    dst[cc * 9 + tap] += v;
                }
            }
        }
    });
    out
}

/// The depth (positions of the laid-out images) [`conv3x3_weight_grad_shifted`] aims for per
/// GEMM, where the batch allows.
const SHIFTED_DEPTH: usize = 1024;

/// [`conv2d_weight_grad`] by im2col, for any geometry: per group of images, the column matrix
/// and one GEMM against the output gradient.
///
/// # Panics
/// If the slices' lengths do not match `geometry`.
pub fn conv2d_weight_grad_im2col(
    x: &[f32],
    output_grad: &[f32],
    geometry: &ConvGeometry,
) -> Vec<f32> {
    let g = geometry;
    let plane_in = g.height * g.width;
    let plane_out = g.out[0] * g.out[1];
    let cols = g.channels_in * g.kernel[0] * g.kernel[1];
    assert_eq!(x.len(), g.batch * g.channels_in * plane_in, "input length");
    assert_eq!(
        output_grad.len(),
        g.batch * g.channels_out * plane_out,
        "output gradient length"
    );
    let size = g.channels_out * cols;
    if g.batch == 0 || plane_out == 0 {
        return vec![0.0; size];
    }
    let group = images_per_gemm(g);
    let groups = g.batch.div_ceil(group);
    let parts = rayon::current_num_threads().clamp(1, groups);
    let groups_per_part = groups.div_ceil(parts);
    let partials: Vec<Vec<f32>> = (0..parts)
        .into_par_iter()
        .map(|part| {
            let mut acc = vec![0.0f32; size];
            let width = group * plane_out;
            let mut col = vec![0.0f32; cols * width];
            let mut gathered = vec![0.0f32; if group > 1 { g.channels_out * width } else { 0 }];
            let first_group = part * groups_per_part;
            let last_group = ((part + 1) * groups_per_part).min(groups);
            for (n, gi) in (first_group..last_group).enumerate() {
                let first = gi * group;
                let count = group.min(g.batch - first);
                let width = count * plane_out;
                let col = &mut col[..cols * width];
                im2col_group(x, g, first, count, col);
                let gb: &[f32] = if group > 1 {
                    gather_group(
                        output_grad,
                        g.channels_out,
                        plane_out,
                        first,
                        count,
                        &mut gathered,
                    );
                    &gathered[..g.channels_out * width]
                } else {
                    let per_image = g.channels_out * plane_out;
                    &output_grad[first * per_image..(first + 1) * per_image]
                };
                // acc[O, cols] (+)= gb[O, width] · colᵀ[width, cols]
                #[allow(unsafe_code)]
                // SAFETY: every pointer spans the buffer its strides describe: acc is
                // channels_out x cols (row stride cols), gb channels_out x width (row stride
                // width), and col is read transposed as width x cols (column stride width); the
                // buffers do not overlap.
                unsafe {
                    gemm::gemm(
                        g.channels_out,
                        cols,
                        width,
                        acc.as_mut_ptr(),
                        1,
                        cols as isize,
                        n > 0,
                        gb.as_ptr(),
                        1,
                        width as isize,
                        col.as_ptr(),
                        width as isize,
                        1,
                        1.0,
                        1.0,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
            }
            acc
        })
        .collect();
    let mut out = vec![0.0f32; size];
    for partial in &partials {
        for (o, p) in out.iter_mut().zip(partial) {
            *o += p;
        }
    }
    out
}

/// One image's columns, written into `col` with row stride `ld` from column `offset`: row
/// `(c, i, j)` holds, for every output position, the input value the kernel tap `(i, j)` of
/// channel `c` reads there (zero in the padding).
fn im2col(xb: &[f32], g: &ConvGeometry, col: &mut [f32], ld: usize, offset: usize) {
    let [kh, kw] = g.kernel;
    let [ho, wo] = g.out;
    let [sh, sw] = g.stride;
    let [ph, pw] = g.padding;
    let plane_out = ho * wo;
    for c in 0..g.channels_in {
        let plane = &xb[c * g.height * g.width..(c + 1) * g.height * g.width];
        for i in 0..kh {
            for j in 0..kw {
                let row = &mut col[((c * kh + i) * kw + j) * ld + offset..][..plane_out];
                let (ox_lo, ox_hi) = valid_columns(g.width, wo, sw, pw, j);
                for oy in 0..ho {
                    let dst = &mut row[oy * wo..(oy + 1) * wo];
                    let iy = (oy * sh + i) as isize - ph as isize;
                    if iy < 0 || iy >= g.height as isize {
                        dst.fill(0.0);
                        continue;
                    }
                    let src = &plane[iy as usize * g.width..(iy as usize + 1) * g.width];
                    dst[..ox_lo].fill(0.0);
                    dst[ox_hi..].fill(0.0);
                    if ox_lo == ox_hi {
                        continue;
                    }
                    let first = ox_lo * sw + j - pw;
                    if sw == 1 {
                        dst[ox_lo..ox_hi].copy_from_slice(&src[first..first + (ox_hi - ox_lo)]);
                    } else {
                        for (k, d) in dst[ox_lo..ox_hi].iter_mut().enumerate() {
                            *d = src[first + k * sw];
                        }
                    }
                }
            }
        }
    }
}

/// Splits the images of a batch over the rayon threads: `Some(threads)` when each image's GEMM
/// should itself use the threads (fewer images than threads), else `None`.
fn gemm_parallelism(batch: usize) -> gemm::Parallelism {
    let threads = rayon::current_num_threads();
    if batch < threads {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    }
}

/// The convolution's output, `[B, O, Ho, Wo]` row-major, from the input (`[B, C, H, W]`) and the
/// weight (`[O, C, kh, kw]`), both contiguous row-major f32: by Winograd's F(4x4, 3x3)
/// ([`crate::winograd`]) for the 3x3 stride-1 "same" convolutions it serves, else by
/// [`conv2d_forward_im2col`].
///
/// # Panics
/// If the slices' lengths do not match `geometry`.
pub fn conv2d_forward(x: &[f32], weight: &[f32], geometry: &ConvGeometry) -> Vec<f32> {
    if crate::winograd::serves(geometry) {
        crate::winograd::conv3x3_forward(x, weight, geometry)
    } else {
        conv2d_forward_im2col(x, weight, geometry)
    }
}

/// [`conv2d_forward`] by im2col and one GEMM per image, `Y_b = W · col(x_b)`, for any geometry.
///
/// # Panics
/// If the slices' lengths do not match `geometry`.
pub fn conv2d_forward_im2col(x: &[f32], weight: &[f32], geometry: &ConvGeometry) -> Vec<f32> {
    let g = geometry;
    let plane_in = g.height * g.width;
    let plane_out = g.out[0] * g.out[1];
    let cols = g.channels_in * g.kernel[0] * g.kernel[1];
    assert_eq!(x.len(), g.batch * g.channels_in * plane_in, "input length");
    assert_eq!(weight.len(), g.channels_out * cols, "weight length");
    let per_image = g.channels_out * plane_out;
    let mut y = vec![0.0f32; g.batch * per_image];
    if per_image == 0 || cols == 0 {
        return y;
    }
    let parallelism = gemm_parallelism(g.batch);
    let direct = g.kernel == [1, 1] && g.stride == [1, 1] && g.padding == [0, 0];
    y.par_chunks_mut(per_image).enumerate().for_each_init(
        || vec![0.0f32; if direct { 0 } else { cols * plane_out }],
        |col, (b, yb)| {
            let xb = &x[b * g.channels_in * plane_in..(b + 1) * g.channels_in * plane_in];
            let columns: &[f32] = if direct {
                xb
            } else {
                im2col(xb, g, col, plane_out, 0);
                col
            };
            // yb[O, plane_out] = weight[O, cols] · columns[cols, plane_out]
            #[allow(unsafe_code)]
            // SAFETY: yb is channels_out x plane_out (row stride plane_out), weight
            // channels_out x cols (row stride cols), columns cols x plane_out (row stride
            // plane_out); lengths checked above; no overlap.
            unsafe {
                gemm::gemm(
                    g.channels_out,
                    plane_out,
                    cols,
                    yb.as_mut_ptr(),
                    1,
                    plane_out as isize,
                    false,
                    weight.as_ptr(),
                    1,
                    cols as isize,
                    columns.as_ptr(),
                    1,
                    plane_out as isize,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    parallelism,
                );
            }
        },
    );
    y
}

/// The input gradient, `[B, C, H, W]` row-major, from the weight (`[O, C, kh, kw]`) and the
/// output gradient (`[B, O, Ho, Wo]`): for the convolutions [`crate::winograd`] serves,
/// Winograd's forward over the output gradient with the flipped, transposed weight, else
/// [`conv2d_input_grad_im2col`].
///
/// # Panics
/// If the slices' lengths do not match `geometry`.
pub fn conv2d_input_grad(weight: &[f32], output_grad: &[f32], geometry: &ConvGeometry) -> Vec<f32> {
    if crate::winograd::serves(geometry) {
        crate::winograd::conv3x3_input_grad(weight, output_grad, geometry)
    } else {
        conv2d_input_grad_im2col(weight, output_grad, geometry)
    }
}

/// [`conv2d_input_grad`] by one GEMM per image, `dcol = Wᵀ · dY_b`, scattered back by col2im,
/// for any geometry.
///
/// # Panics
/// If the slices' lengths do not match `geometry`.
pub fn conv2d_input_grad_im2col(
    weight: &[f32],
    output_grad: &[f32],
    geometry: &ConvGeometry,
) -> Vec<f32> {
    let g = geometry;
    let plane_in = g.height * g.width;
    let plane_out = g.out[0] * g.out[1];
    let cols = g.channels_in * g.kernel[0] * g.kernel[1];
    assert_eq!(weight.len(), g.channels_out * cols, "weight length");
    assert_eq!(
        output_grad.len(),
        g.batch * g.channels_out * plane_out,
        "output gradient length"
    );
    let per_image = g.channels_in * plane_in;
    let mut dx = vec![0.0f32; g.batch * per_image];
    if per_image == 0 || plane_out == 0 || cols == 0 {
        return dx;
    }
    let parallelism = gemm_parallelism(g.batch);
    let direct = g.kernel == [1, 1] && g.stride == [1, 1] && g.padding == [0, 0];
    dx.par_chunks_mut(per_image).enumerate().for_each_init(
        || vec![0.0f32; if direct { 0 } else { cols * plane_out }],
        |col, (b, dxb)| {
            let gb =
                &output_grad[b * g.channels_out * plane_out..(b + 1) * g.channels_out * plane_out];
            let target: &mut [f32] = if direct { dxb } else { col };
            // target[cols, plane_out] = weightᵀ[cols, O] · gb[O, plane_out]
            #[allow(unsafe_code)]
            // SAFETY: target is cols x plane_out (row stride plane_out; for the direct 1x1
            // case it is dxb, channels_in x plane_in with the same sizes), weight is read
            // transposed (column stride cols), gb is channels_out x plane_out; no overlap.
            unsafe {
                gemm::gemm(
                    cols,
                    plane_out,
                    g.channels_out,
                    target.as_mut_ptr(),
                    1,
                    plane_out as isize,
                    false,
                    weight.as_ptr(),
                    cols as isize,
                    1,
                    gb.as_ptr(),
                    1,
                    plane_out as isize,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    parallelism,
                );
            }
            if !direct {
                col2im(col, g, dxb, plane_out, 0);
            }
        },
    );
    dx
}

/// Adds one image's column gradients (in `col` with row stride `ld`, from column `offset`) back
/// onto its input gradient: the transpose of [`im2col`] (each input pixel receives the sum over
/// the taps that read it).
fn col2im(col: &[f32], g: &ConvGeometry, dxb: &mut [f32], ld: usize, offset: usize) {
    let [kh, kw] = g.kernel;
    let [ho, wo] = g.out;
    let [sh, sw] = g.stride;
    let [ph, pw] = g.padding;
    let plane_out = ho * wo;
    for c in 0..g.channels_in {
        let plane = &mut dxb[c * g.height * g.width..(c + 1) * g.height * g.width];
        for i in 0..kh {
            for j in 0..kw {
                let row = &col[((c * kh + i) * kw + j) * ld + offset..][..plane_out];
                let (ox_lo, ox_hi) = valid_columns(g.width, wo, sw, pw, j);
                if ox_lo == ox_hi {
                    continue;
                }
                let first = ox_lo * sw + j - pw;
                for oy in 0..ho {
                    let iy = (oy * sh + i) as isize - ph as isize;
                    if iy < 0 || iy >= g.height as isize {
                        continue;
                    }
                    let src = &row[oy * wo + ox_lo..oy * wo + ox_hi];
                    let dst = &mut plane[iy as usize * g.width..(iy as usize + 1) * g.width];
                    if sw == 1 {
                        for (d, v) in dst[first..first + src.len()].iter_mut().zip(src) {
                            *d += v;
                        }
                    } else {
                        for (k, v) in src.iter().enumerate() {
                            dst[first + k * sw] += v;
                        }
                    }
                }
            }
        }
    }
}

/// The output columns `ox_lo..ox_hi` whose input column `ox * stride + j - padding` lies inside
/// an image `width` wide.
fn valid_columns(
    width: usize,
    wo: usize,
    stride: usize,
    padding: usize,
    j: usize,
) -> (usize, usize) {
    let lo = padding.saturating_sub(j).div_ceil(stride).min(wo);
    let hi = if width + padding > j {
        ((width + padding - j - 1) / stride + 1).min(wo)
    } else {
        0
    };
    (lo, hi.max(lo))
}

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

/// f64 lanes the BatchNorm sums run over: independent additions (two AVX-512 vectors), so
/// the sums are not one chain of dependent additions.
const SUM_LANES: usize = 16;

/// `Σ f(i)` over `0..n` as [`SUM_LANES`] interleaved partial sums, then their total.
#[inline(always)]
fn lane_sum(n: usize, f: impl Fn(usize) -> f64) -> f64 {
    let mut lanes = [0.0f64; SUM_LANES];
    let full = n - n % SUM_LANES;
    for base in (0..full).step_by(SUM_LANES) {
        for (l, lane) in lanes.iter_mut().enumerate() {
            *lane += f(base + l);
        }
    }
    let tail: f64 = (full..n).map(&f).sum();
    lanes.iter().sum::<f64>() + tail
}

/// `Σ x` over one plane, in f64.
#[inline(always)]
fn plane_sum_body(x: &[f32]) -> f64 {
    lane_sum(x.len(), |i| x[i] as f64)
}

/// `Σ (x − mean)²` of one plane, in f64.
#[inline(always)]
fn plane_sq_dev_body(x: &[f32], mean: f64) -> f64 {
    lane_sum(x.len(), |i| {
        let d = x[i] as f64 - mean;
        d * d
    })
}

/// `(Σ dy, Σ dy · (x − mean))` of one plane, in f64.
#[inline(always)]
fn plane_grad_sums_body(dy: &[f32], x: &[f32], mean: f64) -> (f64, f64) {
    let x = &x[..dy.len()];
    (
        lane_sum(dy.len(), |i| dy[i] as f64),
        lane_sum(dy.len(), |i| dy[i] as f64 * (x[i] as f64 - mean)),
    )
}

/// `out = (x − mean) · scale + shift` over one plane.
#[inline(always)]
fn plane_normalize_body(out: &mut [f32], x: &[f32], mean: f32, scale: f32, shift: f32) {
    let x = &x[..out.len()];
    for (o, v) in out.iter_mut().zip(x) {
        *o = (v - mean) * scale + shift;
    }
}

/// BatchNorm's input gradient over one plane: `a · (dy − mean_dy − (x − mean) · k)`, in f64.
#[inline(always)]
fn plane_input_grad_body(dx: &mut [f32], x: &[f32], dy: &[f32], coefs: [f64; 4]) {
    let [a, mean, mean_dy, k] = coefs;
    let (x, dy) = (&x[..dx.len()], &dy[..dx.len()]);
    for ((o, xv), g) in dx.iter_mut().zip(x).zip(dy) {
        let xc = *xv as f64 - mean;
        *o = (a * (*g as f64 - mean_dy - xc * k)) as f32;
    }
}

multiversion!(
    /// [`plane_sum_body`] for the CPU at hand.
    fn plane_sum = plane_sum_body(x: &[f32]) -> f64
);
multiversion!(
    /// [`plane_sq_dev_body`] for the CPU at hand.
    fn plane_sq_dev = plane_sq_dev_body(x: &[f32], mean: f64) -> f64
);
multiversion!(
    /// [`plane_grad_sums_body`] for the CPU at hand.
    fn plane_grad_sums = plane_grad_sums_body(dy: &[f32], x: &[f32], mean: f64) -> (f64, f64)
);
multiversion!(
    /// [`plane_normalize_body`] for the CPU at hand.
    fn plane_normalize = plane_normalize_body(
        out: &mut [f32],
        x: &[f32],
        mean: f32,
        scale: f32,
        shift: f32,
    )
);
multiversion!(
    /// [`plane_input_grad_body`] for the CPU at hand.
    fn plane_input_grad = plane_input_grad_body(
        dx: &mut [f32],
        x: &[f32],
        dy: &[f32],
        coefs: [f64; 4],
    )
);

/// The planes of channel `c` in contiguous NCHW data (`channels` planes of `plane` values per
/// image).
fn channel_planes(
    data: &[f32],
    channels: usize,
    plane: usize,
    c: usize,
) -> impl Iterator<Item = &[f32]> {
    data.chunks_exact(plane.max(1))
        .skip(c)
        .step_by(channels.max(1))
}

/// Training-mode BatchNorm over contiguous NCHW f32: (output, mean, biased variance).
fn batch_norm_train_f32(
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    channels: usize,
    plane: usize,
    epsilon: f64,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let count = (x.len() / channels.max(1)).max(1) as f64;
    let stats: Vec<(f64, f64)> = (0..channels)
        .into_par_iter()
        .map(|c| {
            let mean = channel_planes(x, channels, plane, c)
                .map(plane_sum)
                .sum::<f64>()
                / count;
            let var = channel_planes(x, channels, plane, c)
                .map(|p| plane_sq_dev(p, mean))
                .sum::<f64>()
                / count;
            (mean, var)
        })
        .collect();
    let mut out = vec![0.0f32; x.len()];
    out.par_chunks_mut(plane.max(1))
        .zip(x.par_chunks(plane.max(1)))
        .enumerate()
        .for_each(|(p, (o, xp))| {
            let c = p % channels;
            let (mean, var) = stats[c];
            // (x − mean)·scale + beta, not x·scale + shift: no cancellation where the mean is
            // large against the spread.
            let scale = (gamma[c] as f64 / (var + epsilon).sqrt()) as f32;
            plane_normalize(o, xp, mean as f32, scale, beta[c]);
        });
    let mean = stats.iter().map(|s| s.0 as f32).collect();
    let var = stats.iter().map(|s| s.1 as f32).collect();
    (out, mean, var)
}

/// Gradients of training-mode BatchNorm: (dx, dgamma, dbeta).
#[allow(clippy::too_many_arguments)]
fn batch_norm_backward_f32(
    x: &[f32],
    dy: &[f32],
    gamma: &[f32],
    mean: &[f32],
    variance: &[f32],
    channels: usize,
    plane: usize,
    epsilon: f64,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let count = (x.len() / channels.max(1)).max(1) as f64;
    let sums: Vec<(f64, f64)> = (0..channels)
        .into_par_iter()
        .map(|c| {
            let m = mean[c] as f64;
            channel_planes(dy, channels, plane, c)
                .zip(channel_planes(x, channels, plane, c))
                .map(|(g, xp)| plane_grad_sums(g, xp, m))
                .fold((0.0, 0.0), |acc, s| (acc.0 + s.0, acc.1 + s.1))
        })
        .collect();
    let mut dx = vec![0.0f32; x.len()];
    dx.par_chunks_mut(plane.max(1))
        .enumerate()
        .for_each(|(p, d)| {
            let c = p % channels;
            let (sum_dy, sum_dy_xc) = sums[c];
            let inv_std = 1.0 / (variance[c] as f64 + epsilon).sqrt();
            let m = mean[c] as f64;
            // dx = gamma·inv_std·(dy − mean(dy) − x̂·mean(dy·x̂)), x̂ = (x − m)·inv_std
            let a = gamma[c] as f64 * inv_std;
            let mean_dy = sum_dy / count;
            let k = sum_dy_xc / count * inv_std * inv_std;
            let base = p * plane;
            let n = d.len();
            plane_input_grad(
                d,
                &x[base..base + n],
                &dy[base..base + n],
                [a, m, mean_dy, k],
            );
        });
    let dgamma = (0..channels)
        .map(|c| {
            let inv_std = 1.0 / (variance[c] as f64 + epsilon).sqrt();
            (sums[c].1 * inv_std) as f32
        })
        .collect();
    let dbeta = sums.iter().map(|s| s.0 as f32).collect();
    (dx, dgamma, dbeta)
}

/// BatchNorm's forward as burn's `BatchNorm::forward`, for any input `[B, C, ...]` (computed and
/// returned in f32, see [`crate::precision`]): in training
/// mode synchronised over the data-parallel group installed by
/// [`crate::syncbn::with_synchronised_batch_norm`] when there is one; otherwise, on flex (f32),
/// the statistics, normalisation and backward through [`FastBatchNormBackend`]. The running
/// statistics are updated exactly as burn does. Anything else is burn's own forward.
pub fn batch_norm<const D: usize>(bn: &burn::nn::BatchNorm, x: Tensor<D>) -> Tensor<D> {
    // In f32 whatever the input (a half-precision convolution's output under autocast).
    let x = crate::precision::to_f32(x);
    let device = x.device();
    let training = device.is_autodiff() && bn.training.is_enabled();
    if training && let Some(group) = crate::syncbn::current_group() {
        return crate::syncbn::synchronised_batch_norm(bn, x, &group);
    }
    let fast = !BURN_KERNELS_ONLY.with(|c| c.get())
        && training
        && D >= 2
        && x.dtype() == DType::F32
        && bn.gamma.val().dtype() == DType::F32
        && is_flex(&device);
    if !fast {
        return bn.forward(x);
    }
    let (out, mean, variance) = <Dispatch as FastBatchNormBackend>::fast_batch_norm_train(
        x.into_dispatch(),
        bn.gamma.val().into_dispatch(),
        bn.beta.val().into_dispatch(),
        bn.epsilon,
    );
    let (out, mean, variance) = (
        Tensor::<D>::from_dispatch(out),
        Tensor::<1>::from_dispatch(mean),
        Tensor::<1>::from_dispatch(variance),
    );
    update_running_stats(bn, mean, variance);
    out
}

/// burn's `BatchNorm` running-statistics update from a batch's mean and biased variance.
pub(crate) fn update_running_stats(bn: &burn::nn::BatchNorm, mean: Tensor<1>, variance: Tensor<1>) {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The BatchNorm plane kernels as dispatched (AVX-512 or AVX2 where the CPU has them) give
    /// the same bits as their bodies compiled for the baseline, called directly here.
    #[test]
    fn every_compiled_version_of_the_batch_norm_kernels_rounds_alike() {
        for n in [1, 15, 16, 35, 1024] {
            let x: Vec<f32> = (0..n)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
                .collect();
            let dy: Vec<f32> = (0..n)
                .map(|i| ((i * 53 % 89) as f32 - 44.0) / 9.0)
                .collect();
            assert_eq!(plane_sum(&x).to_bits(), plane_sum_body(&x).to_bits());
            assert_eq!(
                plane_sq_dev(&x, 0.3).to_bits(),
                plane_sq_dev_body(&x, 0.3).to_bits()
            );
            let (a, b) = plane_grad_sums(&dy, &x, -0.2);
            let (c, d) = plane_grad_sums_body(&dy, &x, -0.2);
            assert_eq!((a.to_bits(), b.to_bits()), (c.to_bits(), d.to_bits()));
            let (mut fast, mut base) = (vec![0.0f32; n], vec![0.0f32; n]);
            plane_normalize(&mut fast, &x, 0.1, 1.7, -0.4);
            plane_normalize_body(&mut base, &x, 0.1, 1.7, -0.4);
            assert_eq!(fast, base);
            plane_input_grad(&mut fast, &x, &dy, [1.3, 0.1, -0.05, 0.02]);
            plane_input_grad_body(&mut base, &x, &dy, [1.3, 0.1, -0.05, 0.02]);
            assert_eq!(fast, base);
            // The lanes add up to the plain sum (to rounding).
            let plain: f64 = x.iter().map(|v| *v as f64).sum();
            assert!((plane_sum(&x) - plain).abs() <= 1e-9 * plain.abs().max(1.0));
        }
    }
}
