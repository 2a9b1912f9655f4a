//! The configuration of a training run: the method's knobs ([`SwavConfig`], section `[swav]`),
//! the data (`[data]`) and the run itself (`[run]`), read from TOML with command-line
//! overrides of any field, validated as a whole before any work starts.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use swav_core::SwavConfig;

use crate::TrainError;

/// Which dataset to pretrain on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DataKind {
    /// The built-in Shapes10 (generated, no download).
    Shapes10,
    /// An image folder (`root/<class>/<image>`, or `root/train/...` and `root/test|val/...`).
    Folder,
    /// CIFAR-10 binary files.
    Cifar10,
    /// CIFAR-100 binary files (fine labels).
    Cifar100,
    /// STL-10 binary files: pretraining on `train` + `unlabeled`, the monitor on train/test.
    Stl10,
    /// MNIST or Fashion-MNIST IDX files.
    Mnist,
}

/// The data of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataConfig {
    /// The dataset kind.
    pub kind: DataKind,
    /// Its location (not used by Shapes10).
    pub path: Option<PathBuf>,
    /// The augmentation pipeline apart from the crops (which come from `[swav]`): `swav`
    /// (the original's colour jitter 0.8 and blur), `cifar` (jitter 0.4, no blur) or `stl10`.
    pub augment: String,
    /// Shapes10: training images.
    pub shapes10_train: usize,
    /// Shapes10: test images.
    pub shapes10_test: usize,
    /// Shapes10: generator seed.
    pub shapes10_seed: u64,
    /// Pretrain on at most this many images (a seeded class-balanced choice when labelled, the
    /// first ones otherwise); 0 for all.
    pub limit: usize,
    /// Threads that decode and augment (0: one per core).
    pub workers: usize,
    /// Batches prepared ahead of the model.
    pub prefetch: usize,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            kind: DataKind::Shapes10,
            path: None,
            augment: "cifar".into(),
            shapes10_train: 2000,
            shapes10_test: 1000,
            shapes10_seed: 1,
            limit: 0,
            workers: 0,
            prefetch: 4,
        }
    }
}

/// `configs/cifar10-cpu.toml`: the CIFAR-10 recipe for two CPU cores (its results:
/// `docs/results.md`), also the base of [`TrainConfig::folder_default`].
pub const CIFAR10_CPU_RECIPE: &str = include_str!("../../configs/cifar10-cpu.toml");

/// The run itself: where it writes, how often, what it watches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunConfig {
    /// The run folder (config, checkpoint, metrics, plots, summary).
    pub out_dir: PathBuf,
    /// `cpu` (burn's flex backend); a GPU through burn's wgpu backend (the `wgpu` feature):
    /// `wgpu` / `gpu` (the default adapter; SPIR-V kernels on Vulkan, WGSL elsewhere), `wgpu:N`
    /// (the N-th discrete GPU), `vulkan` / `vulkan:N` (pinned to Vulkan); or an NVIDIA GPU
    /// through burn's CUDA backend (the `cuda` feature): `cuda` / `cuda:N`.
    pub device: String,
    /// The device of each data-parallel worker, by rank, when they differ (empty: every worker
    /// on `device`). One entry per worker (`swav.world_size`): `cpu` or a GPU name as for
    /// `device`. Under `mpirun` (the `mpi` feature), entry r is the device of the process of
    /// rank r; without the list, a GPU `device` means the GPU of the process's rank on its
    /// machine.
    pub devices: Vec<String>,
    /// Write a checkpoint every N iterations (0: only at epoch ends).
    pub checkpoint_every: usize,
    /// Write a metrics line every N iterations.
    pub log_every: usize,
    /// Run the kNN monitor every N epochs (0: never; the last epoch always, when > 0).
    pub knn_every: usize,
    /// Warn when the kNN monitor's top-1 stays at or below the same network at random
    /// initialisation (measured once when the run starts) for this many evaluations in a row
    /// (0: never).
    pub knn_patience: usize,
    /// kNN neighbours.
    pub knn_k: usize,
    /// kNN temperature.
    pub knn_temperature: f64,
    /// Memory-bank size of the monitor (a seeded class-balanced choice; 0: the whole split).
    pub knn_train_samples: usize,
    /// Test samples of the monitor (0: the whole split).
    pub knn_test_samples: usize,
    /// Where metrics go besides `metrics.jsonl` (always written): any of `png` (loss, lr and
    /// kNN plots), `csv` (`metrics_step.csv`, `metrics_epoch.csv`), `tensorboard` (an event
    /// file under `tensorboard/`); `jsonl` is accepted and changes nothing.
    pub metrics: Vec<String>,
    /// No progress bar; one line per epoch (read by the binary that shows progress).
    pub quiet: bool,
    /// Where GPU kernels and autotune results persist between runs (see
    /// `swav_train::kernel_cache_dir`; unset: `$SWAV_KERNEL_CACHE` or the user's cache folder).
    pub kernel_cache: Option<PathBuf>,
    /// Continue from the run folder's checkpoint when there is one.
    pub auto_resume: bool,
}

impl Default for RunConfig {
    fn default() -> Self {
        Self {
            out_dir: PathBuf::from("runs/swav"),
            device: "cpu".into(),
            devices: Vec::new(),
            checkpoint_every: 500,
            log_every: 10,
            knn_every: 1,
            knn_patience: 3,
            knn_k: 20,
            knn_temperature: 0.07,
            knn_train_samples: 10_000,
            knn_test_samples: 2_000,
            metrics: vec!["jsonl".into(), "png".into()],
            quiet: false,
            kernel_cache: None,
            auto_resume: true,
        }
    }
}

/// Everything a run needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// The method.
    pub swav: SwavConfig,
    /// The data.
    pub data: DataConfig,
    /// The run.
    pub run: RunConfig,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self::demo()
    }
}

/// Sections of a config file, in order.
const SECTIONS: [&str; 3] = ["swav", "data", "run"];

impl TrainConfig {
    /// The built-in demo: the `demo` SwAV preset on Shapes10, on the CPU, in `runs/demo` (what
    /// `configs/demo.toml` says; a test holds the two equal). It is also what a config file's
    /// missing sections take, so it is built here rather than parsed from the file.
    pub fn demo() -> Self {
        Self {
            swav: SwavConfig::demo(),
            data: DataConfig {
                augment: "demo".into(),
                ..DataConfig::default()
            },
            run: RunConfig {
                out_dir: PathBuf::from("runs/demo"),
                knn_every: 2,
                knn_train_samples: 2000,
                knn_test_samples: 1000,
                ..RunConfig::default()
            },
        }
    }

    /// What `pretrain --data DIR` runs without a config: the CPU recipe measured on CIFAR-10
    /// ([`CIFAR10_CPU_RECIPE`]: a ResNet-18 of base width 16, 2 x 32 crops, K = 3000, LARS, 15
    /// epochs), writing to `runs/swav`, with the kNN monitor bounded to 10,000 train and 2,000
    /// test samples so that it stays cheap on a folder of any size. The crops and the
    /// evaluation's resize are 32 px whatever the images' size: a CPU budget.
    ///
    /// # Errors
    /// Never for the recipe as shipped (its text is checked by the tests).
    pub fn folder_default() -> Result<Self, TrainError> {
        let mut c = Self::from_toml(CIFAR10_CPU_RECIPE, &[])?;
        c.run.out_dir = PathBuf::from("runs/swav");
        c.run.knn_train_samples = 10_000;
        c.run.knn_test_samples = 2_000;
        Ok(c)
    }

    /// Parses a TOML text, then applies `overrides` (`key=value`, where key is `section.field`
    /// or a bare field name that exists in exactly one section; the value is TOML, or a bare
    /// string). Unknown sections or fields are refused with their names.
    pub fn from_toml(text: &str, overrides: &[String]) -> Result<Self, TrainError> {
        let mut root: toml::Table =
            toml::from_str(text).map_err(|source| TrainError::ConfigSyntax { source })?;
        for key in root.keys() {
            if !SECTIONS.contains(&key.as_str()) {
                return Err(TrainError::config(
                    format!("[{key}]"),
                    "is not a section; a config has [swav], [data] and [run]",
                ));
            }
        }
        for o in overrides {
            apply_override(&mut root, o)?;
        }
        resolve_preset(&mut root)?;
        let config: TrainConfig = toml::Value::Table(root)
            .try_into()
            .map_err(|source| TrainError::ConfigSyntax { source })?;
        Ok(config)
    }

    /// Reads a TOML file (see [`TrainConfig::from_toml`]); errors name the file.
    pub fn load(path: impl AsRef<Path>, overrides: &[String]) -> Result<Self, TrainError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| TrainError::ConfigRead {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml(&text, overrides).map_err(|e| TrainError::InConfigFile {
            path: path.to_path_buf(),
            source: Box::new(e),
        })
    }

    /// The config as TOML (what is saved in the run folder).
    pub fn to_toml(&self) -> Result<String, TrainError> {
        Ok(toml::to_string_pretty(self)?)
    }

    /// Checks everything that can be checked before opening data: the method's fields, the
    /// data and run settings.
    pub fn validate(&self) -> Result<(), TrainError> {
        self.swav.validate()?;
        let bad = |field: &str, reason: &str| Err(TrainError::config(field, reason));
        if self.data.kind != DataKind::Shapes10 && self.data.path.is_none() {
            return bad("data.path", "is required for this data kind");
        }
        if self.data.kind == DataKind::Shapes10
            && self.data.shapes10_train < self.swav.batch_size * self.swav.world_size
        {
            return bad("data.shapes10_train", "is smaller than one global batch");
        }
        if swav_augment::MultiCropConfig::preset(&self.data.augment).is_err() {
            return bad(
                "data.augment",
                "must be one of swav, swav-2x224, swav-2x160-4x96, cifar, stl10",
            );
        }
        if self.data.prefetch == 0 {
            return bad("data.prefetch", "must be at least 1");
        }
        let known = |d: &str| d == "cpu" || matches!(gpu_name(d), Ok(Some(_)));
        if !known(&self.run.device) {
            return bad("run.device", &format!("must be `cpu`, {GPU_NAMES}"));
        }
        if !self.run.devices.is_empty() {
            if self.run.devices.len() != self.swav.world_size {
                return Err(TrainError::config(
                    "run.devices",
                    format!(
                        "names {} devices for {} workers (swav.world_size); give one per \
                         worker or none",
                        self.run.devices.len(),
                        self.swav.world_size
                    ),
                ));
            }
            for d in &self.run.devices {
                if !known(d) {
                    return Err(TrainError::config(
                        "run.devices",
                        format!(
                            "entry `{d}` must be `cpu` or {GPU_NAMES} (workers on other \
                             machines: one process each under mpirun, the `mpi` feature)"
                        ),
                    ));
                }
            }
        }
        // The sinks' own list decides which names are known (one place for them).
        crate::metrics::sinks_named(&self.run.metrics)?;
        if self.run.log_every == 0 {
            return bad("run.log_every", "must be at least 1");
        }
        if self.run.knn_k == 0 {
            return bad("run.knn_k", "must be at least 1");
        }
        if !(self.run.knn_temperature.is_finite() && self.run.knn_temperature > 0.0) {
            return bad("run.knn_temperature", "must be positive");
        }
        if self.swav.world_size > 1 && self.run.device == "cpu" && self.swav.world_size > 64 {
            return bad(
                "swav.world_size",
                "is more than 64 CPU workers (each is a thread with a model replica)",
            );
        }
        Ok(())
    }
}

/// `[swav] preset = "NAME"`: the [`SwavConfig`] preset of that name (defined once, in
/// swav-core) under the section's other fields, which take precedence.
fn resolve_preset(root: &mut toml::Table) -> Result<(), TrainError> {
    let Some(toml::Value::Table(swav)) = root.get_mut("swav") else {
        return Ok(());
    };
    let Some(name) = swav.remove("preset") else {
        return Ok(());
    };
    let name = name
        .as_str()
        .ok_or_else(|| TrainError::config("swav.preset", "must be a string"))?;
    let preset =
        SwavConfig::preset(name).map_err(|e| TrainError::config("swav.preset", e.to_string()))?;
    let toml::Value::Table(mut merged) = toml::Value::try_from(preset)? else {
        return Err(TrainError::config("swav.preset", "is not a table"));
    };
    merged.extend(std::mem::take(swav));
    *swav = merged;
    Ok(())
}

/// Applies one `key=value` override to the parsed table.
fn apply_override(root: &mut toml::Table, text: &str) -> Result<(), TrainError> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| TrainError::overriding(text, "is not key=value (e.g. swav.epochs=10)"))?;
    let key = key.trim();
    let value = value.trim();
    let (section, field) = match key.split_once('.') {
        Some((s, f)) => {
            if !SECTIONS.contains(&s) {
                return Err(TrainError::overriding(
                    text,
                    format!("unknown section `{s}` (swav, data, run)"),
                ));
            }
            (s.to_string(), f.to_string())
        }
        None => {
            let defaults = toml::Value::try_from(TrainConfig::demo())?;
            let owners: Vec<&str> = SECTIONS
                .iter()
                .copied()
                .filter(|s| {
                    defaults
                        .get(s)
                        .and_then(|t| t.as_table())
                        .is_some_and(|t| t.contains_key(key) || optional_field(s, key))
                })
                .collect();
            match owners.as_slice() {
                [one] => (one.to_string(), key.to_string()),
                [] => {
                    return Err(TrainError::overriding(
                        text,
                        format!("no field `{key}` in [swav], [data] or [run]"),
                    ));
                }
                _ => {
                    return Err(TrainError::overriding(
                        text,
                        format!("`{key}` is ambiguous; write it as section.{key}"),
                    ));
                }
            }
        }
    };
    let parsed: toml::Value = match toml::from_str::<toml::Table>(&format!("v = {value}")) {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or(toml::Value::String(value.to_string())),
        Err(_) => toml::Value::String(value.to_string()),
    };
    let table = root
        .entry(section.clone())
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    let table = table
        .as_table_mut()
        .ok_or_else(|| TrainError::config(format!("[{section}]"), "must be a table"))?;
    table.insert(field, parsed);
    Ok(())
}

/// Fields that are absent from a serialised default because their default is `None`.
fn optional_field(section: &str, key: &str) -> bool {
    (section == "data" && key == "path") || (section == "run" && key == "kernel_cache")
}

/// The GPU API a device name selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GpuApi {
    /// burn's wgpu backend on the platform's API (Vulkan with SPIR-V kernels where the adapter
    /// supports it, WGSL elsewhere).
    Wgpu,
    /// burn's wgpu backend pinned to Vulkan.
    Vulkan,
    /// burn's CUDA backend.
    Cuda,
}

impl GpuApi {
    /// The name's prefix in a config (`wgpu`, `vulkan`, `cuda`).
    pub(crate) fn prefix(self) -> &'static str {
        match self {
            GpuApi::Wgpu => "wgpu",
            GpuApi::Vulkan => "vulkan",
            GpuApi::Cuda => "cuda",
        }
    }
}

/// The GPU device names a config accepts, for messages.
pub(crate) const GPU_NAMES: &str =
    "`wgpu` (or `gpu`), `wgpu:N`, `vulkan`, `vulkan:N`, `cuda`, `cuda:N`";

/// A GPU device name split into its API and index (`None`: the default device): `wgpu`, `gpu`,
/// `wgpu:N`, `vulkan`, `vulkan:N`, `cuda`, `cuda:N`. `None` for other names; an error for a
/// malformed index.
pub(crate) fn gpu_name(name: &str) -> Result<Option<(GpuApi, Option<usize>)>, String> {
    let (api, index) = match name.split_once(':') {
        Some((api, index)) => (api, Some(index)),
        None => (name, None),
    };
    let gpu = match api {
        "wgpu" | "gpu" => GpuApi::Wgpu,
        "vulkan" => GpuApi::Vulkan,
        "cuda" => GpuApi::Cuda,
        _ => return Ok(None),
    };
    match index {
        None => Ok(Some((gpu, None))),
        Some(i) => i
            .parse::<usize>()
            .map(|i| Some((gpu, Some(i))))
            .map_err(|_| format!("the GPU index after `{api}:` must be a number, not `{i}`")),
    }
}
