//! Devices: the names a config uses for them, the workers' devices of a data-parallel run, and
//! seeded initialisation on a device.

use burn::module::Module;
use burn::tensor::{Device, Tensor};

use crate::TrainError;
use crate::config::TrainConfig;

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

/// The device a name in the config designates: `cpu`, `wgpu` / `gpu`, `wgpu:N`, or
/// `ws://host:port` (a remote server, connected here).
pub fn device_named(name: &str, field: &str) -> Result<Device, TrainError> {
    match name {
        "cpu" => Ok(Device::flex()),
        #[cfg(feature = "wgpu")]
        "wgpu" | "gpu" => Ok(Device::wgpu(burn::tensor::DeviceKind::DefaultDevice)),
        #[cfg(feature = "wgpu")]
        other if other.starts_with("wgpu:") => {
            let index = other["wgpu:".len()..].parse::<usize>().map_err(|_| {
                TrainError::ConfigFile(format!(
                    "{field} = `{other}`: the GPU index after `wgpu:` must be a number"
                ))
            })?;
            Ok(Device::wgpu(burn::tensor::DeviceKind::DiscreteGpu(index)))
        }
        #[cfg(feature = "remote")]
        other if other.starts_with("ws://") => {
            let host = burn::tensor::remote::RemoteHost::websocket(other);
            Device::remote_options(&host).init().map_err(|e| {
                TrainError::ConfigFile(format!(
                    "{field} = `{other}`: cannot connect to the remote server ({e}); is \
                     `swav-remote-server` running there and the port open?"
                ))
            })
        }
        other => Err(TrainError::ConfigFile(format!(
            "{field} = `{other}` is not built into this binary ({})",
            match (cfg!(feature = "wgpu"), cfg!(feature = "remote")) {
                (true, true) => "choose cpu, wgpu, wgpu:N or ws://host:port",
                (true, false) =>
                    "choose cpu, wgpu or wgpu:N; rebuild with `--features remote` for ws://",
                (false, true) =>
                    "choose cpu or ws://host:port; rebuild with `--features wgpu` for GPUs",
                (false, false) =>
                    "choose cpu, or rebuild with `--features wgpu` for GPUs through wgpu \
                                   (`--features remote` for ws:// servers)",
            }
        ))),
    }
}

/// The devices of a run's workers, by rank: `swav.world_size` of them. `run.devices` names
/// them when given. Otherwise, on the CPU every worker uses the one `flex` device (burn's CPU
/// device has no index; the workers are threads); with `wgpu`, worker r uses GPU r (`wgpu:N`:
/// GPUs N, N + 1, ...).
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
    if n == 1 || config.run.device == "cpu" {
        return Ok(vec![first; n]);
    }
    #[cfg(feature = "wgpu")]
    {
        let start = config
            .run
            .device
            .strip_prefix("wgpu:")
            .and_then(|i| i.parse::<usize>().ok())
            .unwrap_or(0);
        Ok((start..start + n)
            .map(|i| Device::wgpu(burn::tensor::DeviceKind::DiscreteGpu(i)))
            .collect())
    }
    #[cfg(not(feature = "wgpu"))]
    Ok(vec![first; n])
}
