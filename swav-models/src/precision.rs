//! Mixed precision ("autocast"): convolutions and the head's Linear layers compute in a half
//! type (f16 or bf16) while the parameters, BatchNorm, the embeddings, the prototype scores (and
//! so the Sinkhorn and the loss) stay in f32, as PyTorch's autocast / apex O1 do for SwAV.
//!
//! [`with_autocast`] installs the half type for a forward pass on the calling thread. Inside it:
//!
//! - every convolution and Linear layer that goes through [`crate::layers`] casts their input and
//!   weight to the half type and return a half output (the casts are differentiable: the
//!   parameters' gradients arrive in f32);
//! - every BatchNorm ([`crate::layers::batch_norm`]) casts its input to f32 first, so
//!   normalisation, ReLU, residual sums and pooling run in f32;
//! - [`crate::SwavModel::forward`] returns f32 embeddings and scores (the prototypes are not
//!   cast: the scores feed `exp(score / ε)` in the Sinkhorn).
//!
//! A backbone from another crate gets the same by calling [`crate::layers`]; one that calls its
//! modules' own `forward` keeps f32 there. With f16, gradients of small
//! activations can underflow: the trainer scales the loss (dynamic loss scaling); bf16 has f32's
//! range and needs none.

use std::cell::Cell;

use burn::tensor::{DType, Tensor};

std::thread_local! {
    static AUTOCAST: Cell<Option<DType>> = const { Cell::new(None) };
}

/// Runs `f` with convolutions and Linear layers computing in `dtype` (f16 or bf16) on this
/// thread; the previous setting is restored afterwards, also on a panic.
///
/// # Panics
/// If `dtype` is not a half float type.
pub fn with_autocast<T>(dtype: DType, f: impl FnOnce() -> T) -> T {
    assert!(
        matches!(dtype, DType::F16 | DType::BF16),
        "autocast takes f16 or bf16, not {dtype:?}"
    );
    struct Restore(Option<DType>);
    impl Drop for Restore {
        fn drop(&mut self) {
            AUTOCAST.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(AUTOCAST.with(|c| c.replace(Some(dtype))));
    f()
}

/// The half type installed by [`with_autocast`] on this thread, if any.
pub fn autocast_dtype() -> Option<DType> {
    AUTOCAST.with(Cell::get)
}

/// `x` in the autocast type when one is installed (and `x` is not already in it).
pub(crate) fn to_compute<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    match autocast_dtype() {
        Some(dtype) if x.dtype() != dtype => x.cast(dtype),
        _ => x,
    }
}

/// `x` in f32 when it is in another float type.
pub(crate) fn to_f32<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    if x.dtype() == DType::F32 {
        x
    } else {
        x.cast(DType::F32)
    }
}
