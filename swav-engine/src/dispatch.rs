//! Which kernels a tensor operation takes: the engine's on burn's `flex` CPU backend, burn's own
//! everywhere else, and burn's own on flex too inside [`with_burn_kernels`].

use burn::backend::DispatchDevice;

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

/// Whether [`with_burn_kernels`] is in force on this thread.
pub(crate) fn burn_kernels_only() -> bool {
    BURN_KERNELS_ONLY.with(|c| c.get())
}

/// An f32 flex tensor of the given shape.
pub(crate) fn flex_tensor(values: Vec<f32>, shape: Vec<usize>) -> burn::backend::flex::FlexTensor {
    burn::backend::flex::FlexTensor::from_data(burn::tensor::TensorData::new(values, shape))
}

/// The name of the backend that runs `device`, as burn reports it: for example
/// `dispatch<autodiff<flex>>` on the CPU, or on a GPU the compiler and whether kernel fusion
/// is on (`dispatch<fusion<cubecl<wgpu<spirv>>>>`).
pub fn backend_name(device: &burn::tensor::Device) -> String {
    <burn::backend::Dispatch as burn::backend::Backend>::name(device.as_dispatch())
}
