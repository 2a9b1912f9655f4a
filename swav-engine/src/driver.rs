//! Whether a GPU runtime's driver library is there, asked before a backend would start (and,
//! without it, panic on a thread of its own).
#![allow(unsafe_code)]

/// `Ok` when the NVIDIA driver's library (`libcuda.so.1` / `nvcuda.dll`), which burn's CUDA
/// backend opens at run time, loads on this machine; otherwise what is missing.
pub fn cuda_driver_loads() -> Result<(), String> {
    let names: &[&str] = if cfg!(windows) {
        &["nvcuda.dll"]
    } else {
        &["libcuda.so.1", "libcuda.so"]
    };
    for name in names {
        // SAFETY: opening the driver library runs its initialisers, exactly as the CUDA backend
        // does when it starts; the handle is closed again at once and nothing from it is
        // called.
        if unsafe { libloading::Library::new(*name) }.is_ok() {
            return Ok(());
        }
    }
    Err(format!(
        "the NVIDIA driver's library ({}) is not on this machine; CUDA devices need the NVIDIA \
         driver (the CUDA toolkit is not needed)",
        names.join(" or ")
    ))
}
