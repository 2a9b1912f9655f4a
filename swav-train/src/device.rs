//! Devices: the names a config uses for them, the workers' devices of a data-parallel run, and
//! seeded initialisation on a device.

use burn::module::Module;
use burn::tensor::{Device, Tensor};

use crate::TrainError;
use crate::config::{GpuApi, TrainConfig, gpu_name};

/// Serialises "seed the device, then draw initial weights": burn's generator belongs to the
/// device, so two runs initialising at once in one process (tests, a sweep) would otherwise
/// interleave their draws and lose reproducibility.
static INIT_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Seeds `device`'s generator with `seed`, builds a module with `init` and draws all its
/// (lazily initialised) parameters while no other seeded initialisation of this crate runs, so
/// the weights depend on the seed alone.
pub fn seeded_init<M: Module, E>(
    device: &Device,
    seed: u64,
    init: impl FnOnce(&Device) -> Result<M, E>,
) -> Result<M, E> {
    struct Touch;
    impl burn::module::ModuleVisitor for Touch {
        fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<D>>) {
            drop(param.val());
        }
    }
    let _guard = INIT_LOCK
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    device.seed(seed);
    let module = init(device)?;
    module.visit(&mut Touch);
    Ok(module)
}

/// The device of a config's `run.device` (the first worker's, and the one that evaluates).
pub fn device_for(config: &TrainConfig) -> Result<Device, TrainError> {
    device_named(&config.run.device, "run.device")
}

/// The device a name in the config designates: `cpu`; with the `wgpu` feature `wgpu` / `gpu`
/// (the default adapter, on the platform's API: Vulkan with SPIR-V kernels on Linux and
/// Windows where the adapter supports it, WGSL otherwise), `wgpu:N` (the N-th discrete GPU),
/// `vulkan` / `vulkan:N` (pinned to Vulkan); with the `cuda` feature `cuda` / `cuda:N` (burn's
/// CUDA backend, GPU N).
pub fn device_named(name: &str, field: &str) -> Result<Device, TrainError> {
    let device_error = |reason: String| TrainError::Device {
        field: field.to_string(),
        name: name.to_string(),
        reason,
    };
    let gpu = gpu_name(name).map_err(|e| device_error(e.to_string()))?;
    match (name, gpu) {
        ("cpu", _) => Ok(Device::flex()),
        #[cfg(feature = "wgpu-bare")]
        (_, Some((api @ (GpuApi::Wgpu | GpuApi::Vulkan), index))) => {
            use burn::tensor::DeviceKind;
            let kind = index.map_or(DeviceKind::DefaultDevice, DeviceKind::DiscreteGpu);
            Ok(if api == GpuApi::Vulkan {
                Device::vulkan(kind)
            } else {
                Device::wgpu(kind)
            })
        }
        #[cfg(feature = "cuda")]
        (_, Some((GpuApi::Cuda, index))) => {
            swav_engine::cuda_driver_loads().map_err(|e| device_error(e.to_string()))?;
            Ok(Device::cuda(
                index.map_or(burn::tensor::DeviceIndex::Default, Into::into),
            ))
        }
        (_, gpu) => Err(device_error(format!(
            "not built into this binary ({})",
            not_built_hint(gpu.map(|(api, _)| api))
        ))),
    }
}

/// What to choose or rebuild with when a device name is not built in.
fn not_built_hint(wanted: Option<GpuApi>) -> String {
    let mut built = vec!["cpu"];
    if cfg!(feature = "wgpu-bare") {
        built.extend(["wgpu", "wgpu:N", "vulkan", "vulkan:N"]);
    }
    if cfg!(feature = "cuda") {
        built.extend(["cuda", "cuda:N"]);
    }
    let rebuild = match wanted {
        Some(GpuApi::Cuda) => "rebuild with `--features cuda` for NVIDIA GPUs through CUDA",
        Some(GpuApi::Wgpu | GpuApi::Vulkan) => {
            "rebuild with `--features wgpu` for GPUs through wgpu"
        }
        None => "rebuild with `--features wgpu` or `--features cuda` for GPUs",
    };
    format!("choose {}, or {rebuild}", built.join(", "))
}

/// The devices of a run's workers, by rank: `swav.world_size` of them. `run.devices` names
/// them when given. Otherwise, on the CPU every worker uses the one `flex` device (burn's CPU
/// device has no index; the workers are threads); on a GPU, worker r uses GPU r of the same API
/// (`wgpu:N`, `cuda:N`: GPUs N, N + 1, ...).
pub fn devices_for(config: &TrainConfig) -> Result<Vec<Device>, TrainError> {
    if !config.run.devices.is_empty() {
        return config
            .run
            .devices
            .iter()
            .enumerate()
            .map(|(rank, d)| device_named(d, &format!("run.devices[{rank}]")))
            .collect();
    }
    let first = device_for(config)?;
    let n = config.swav.world_size.max(1);
    match gpu_name(&config.run.device) {
        Ok(Some((api, start))) if n > 1 => {
            let start = start.unwrap_or(0);
            (start..start + n)
                .map(|i| device_named(&format!("{}:{i}", api.prefix()), "run.device"))
                .collect()
        }
        _ => Ok(vec![first; n]),
    }
}

/// Where GPU kernels and autotune results persist between runs: `run.kernel_cache` when set,
/// else `$SWAV_KERNEL_CACHE`, else `$XDG_CACHE_HOME/swav-rs/kernels`, else
/// `~/.cache/swav-rs/kernels`. The folder is specific to the GPU model, driver and swav-rs
/// build it was filled with; copied to another machine of the same kind (same GPU, driver and
/// binary) it saves that machine the compilation and autotuning of the first steps.
pub fn kernel_cache_dir(config: &TrainConfig) -> std::path::PathBuf {
    if let Some(dir) = &config.run.kernel_cache {
        return dir.clone();
    }
    if let Some(dir) = std::env::var_os("SWAV_KERNEL_CACHE").filter(|d| !d.is_empty()) {
        return dir.into();
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|d| !d.is_empty())
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".cache")))
        .unwrap_or_else(|| std::path::PathBuf::from(".cache"));
    base.join("swav-rs").join("kernels")
}

/// Whether any of the config's devices is a GPU.
pub fn uses_gpu(config: &TrainConfig) -> bool {
    std::iter::once(&config.run.device)
        .chain(&config.run.devices)
        .any(|d| matches!(gpu_name(d), Ok(Some(_))))
}

/// Points the GPU runtime's persistent cache (compiled kernels, autotune results) at
/// [`kernel_cache_dir`], before any GPU device starts: `Ok(Some(dir))` when it took effect,
/// `Ok(None)` on the CPU, without a GPU build, with `SWAV_KERNEL_CACHE=off` (CubeCL's own
/// settings and cache folder), or when the runtime was configured already (a `cubecl.toml` read
/// first, or an earlier call in this process), where the existing setting stays.
pub fn configure_kernel_cache(
    config: &TrainConfig,
) -> Result<Option<std::path::PathBuf>, TrainError> {
    if !uses_gpu(config) || std::env::var_os("SWAV_KERNEL_CACHE").is_some_and(|v| v == "off") {
        return Ok(None);
    }
    #[cfg(any(feature = "wgpu-bare", feature = "cuda"))]
    {
        use burn::cubecl::config::cache::CacheConfig;
        use burn::cubecl::config::{CubeClRuntimeConfig, RuntimeConfig};
        let dir = kernel_cache_dir(config);
        std::fs::create_dir_all(&dir).map_err(|e| TrainError::io(&dir, e))?;
        let mut runtime = CubeClRuntimeConfig::from_current_dir().override_from_env();
        runtime.environment.path = CacheConfig::Directory(dir.clone());
        Ok(CubeClRuntimeConfig::try_set(runtime).then_some(dir))
    }
    #[cfg(not(any(feature = "wgpu-bare", feature = "cuda")))]
    {
        let _ = config;
        Ok(None)
    }
}

/// Which of burn's GPU defaults this build has (the `gpu-autotune` and `gpu-fusion` features,
/// both in `wgpu` and `cuda`; `wgpu-bare` has neither).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct GpuBuild {
    /// The fastest kernel per shape, measured at run time.
    pub autotune: bool,
    /// Kernel fusion.
    pub fusion: bool,
}

/// This build's GPU defaults.
pub fn gpu_build() -> GpuBuild {
    GpuBuild {
        autotune: cfg!(feature = "gpu-autotune"),
        fusion: cfg!(feature = "gpu-fusion"),
    }
}
