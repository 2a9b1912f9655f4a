//! The CPU engine under swav-rs: faster kernels for burn's `flex` backend, entered through
//! burn's backend extensions, and the collective operation of data-parallel training.
//!
//! - [`conv2d_no_bias`]: a 2-D convolution without bias. On flex, f32: forward, input gradient
//!   and weight gradient by one GEMM per image, or by Winograd F(4x4, 3x3) for 3x3 stride-1
//!   "same" convolutions with 16 channels or more; burn's `conv2d` everywhere else.
//! - [`batch_norm_train`]: training-mode BatchNorm statistics, normalisation and backward as
//!   fused passes on flex (`None` where it does not serve, for the caller to use burn's).
//! - [`all_reduce_sum`]: the element-wise sum of a tensor over a data-parallel group
//!   ([`Collective`]), differentiable (its backward sums the workers' gradients).
//! - [`is_flex`], [`with_burn_kernels`]: which path a device takes; burn's own kernels on this
//!   thread for comparisons.
//! - `BlockCache` (feature `block-cache`): a global allocator for binaries that keeps large
//!   freed blocks for the next training step.
//! - `kernels` (feature `internals`): the slice-level kernels, for this crate's tests and
//!   benchmarks.
//!
//! The kernels are compiled for AVX-512, AVX2 + FMA and the baseline, chosen at run time
//! (without fused multiply-adds written out, all three versions round alike), and every sum runs
//! in a fixed order, so results do not depend on thread timing. Model code reaches the engine
//! through `swav_models::layers`; nothing here knows about models.

mod all_reduce;
mod batch_norm;
#[cfg(feature = "block-cache")]
mod block_cache;
mod bn_kernels;
mod conv;
mod dispatch;
#[cfg(feature = "cuda")]
mod driver;
#[cfg_attr(not(feature = "internals"), allow(dead_code))]
mod gemm_conv;
#[cfg_attr(not(feature = "internals"), allow(dead_code))]
mod geometry;
mod simd;
#[cfg_attr(not(feature = "internals"), allow(dead_code))]
mod winograd;

pub use all_reduce::{SharedCollective, all_reduce_sum};
pub use batch_norm::{FusedBatchNorm, batch_norm_train};
#[cfg(feature = "block-cache")]
pub use block_cache::{BlockCache, BlockCacheStats};
pub use conv::conv2d_no_bias;
pub use dispatch::{backend_name, is_flex, with_burn_kernels};
#[cfg(feature = "cuda")]
pub use driver::cuda_driver_loads;
pub use swav_core::Collective;

/// The slice-level kernels behind [`conv2d_no_bias`]: contiguous NCHW f32 in, contiguous f32
/// out, for this crate's tests and benchmarks (feature `internals`).
#[cfg(feature = "internals")]
pub mod kernels {
    pub use crate::gemm_conv::{
        conv2d_forward, conv2d_forward_im2col, conv2d_input_grad, conv2d_input_grad_im2col,
        conv2d_weight_grad, conv2d_weight_grad_im2col, conv3x3_weight_grad_shifted,
    };
    pub use crate::geometry::ConvGeometry;
    /// Winograd F(2x2, 3x3) and F(4x4, 3x3) for 3x3 stride-1 "same" convolutions.
    pub mod winograd {
        pub use crate::winograd::{
            DEFAULT_TILE, Tile, conv3x3_forward, conv3x3_forward_with, conv3x3_input_grad,
            conv3x3_input_grad_with, conv3x3_weight_grad, serves, serves_weight_grad,
        };
    }
}
