//! The evaluation commands of a pretrained checkpoint (ours, or PyTorch weights that
//! swav-models imports), or of the same backbone at random initialisation, on the data the
//! checkpoint was trained on (the built-in Shapes10 for the demo) or on `--data PATH`: one module
//! each (`linear-eval`, `knn-eval`, `assign`, `semisup`); this module loads the model and data
//! they share. Each writes a JSON report (with the command, checkpoint and config) and prints a
//! readable summary.

use std::path::{Path, PathBuf};

use crate::pretrain::{data_overrides, folder_if_path};
use anyhow::{Context, Result, bail};
use clap::Args;
use swav_models::{
    BackboneRegistry, BuildBackbone, ModelTask, SwavModel, SwavModelSpec, TaskBackbone,
    load_swav_checkpoint, read_checkpoint,
};
use swav_train::{
    CHECKPOINT_FILE, TrainConfig, checkpoint_config, device_for, open_data, seeded_init,
};

mod assign;
mod knn;
mod linear;
mod semisup;

pub use assign::AssignArgs;
pub use knn::KnnArgs;
pub use linear::LinearArgs;
pub use semisup::SemiSupArgs;

use assign::assign_with;
use knn::knn_with;
use linear::linear_with;
use semisup::semisup_with;

/// Which model to evaluate and on what data (shared by the evaluation commands).
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// Our checkpoint (a run folder or its `checkpoint.bpk`), or a PyTorch SwAV / torchvision
    /// file (`.pth`, `.pt`, `.tar`) together with `--arch` and friends.
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// Evaluate the same backbone at random initialisation (seeded as pretraining seeds it)
    /// instead of the checkpoint's weights: the baseline to compare against.
    #[arg(long)]
    pub random_init: bool,
    /// Training config to take the architecture and data from when the checkpoint has none
    /// (PyTorch files); default: the built-in demo's.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Config overrides, as in `pretrain` (`--set arch=resnet50 --set hidden_mlp=2048`).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// For PyTorch files: the dict key that holds the weights (e.g. `state_dict`).
    #[arg(long)]
    pub top_level_key: Option<String>,
    /// Data location (an image folder with train/ and test/ or val/, or a binary dataset with
    /// `--data-kind`); default: the checkpoint's own training data.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Data kind.
    #[arg(long, value_parser = ["shapes10", "folder", "cifar10", "cifar100", "stl10", "mnist"])]
    pub data_kind: Option<String>,
    /// At most this many training images (class-balanced; 0: all).
    #[arg(long, default_value_t = 0)]
    pub train_limit: usize,
    /// At most this many test images (class-balanced; 0: all).
    #[arg(long, default_value_t = 0)]
    pub test_limit: usize,
    /// Images per forward pass of the backbone (feature extraction).
    #[arg(long = "extract-batch", alias = "batch", default_value_t = 256)]
    pub batch: usize,
    /// Report folder; default `<run folder>/eval` (or `runs/eval`).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Where the network runs: cpu; with `--features wgpu` wgpu (or gpu), wgpu:N, vulkan,
    /// vulkan:N; with `--features cuda` cuda, cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// Where the weights come from.
enum Weights {
    /// A PyTorch file (original SwAV checkpoint or torchvision state dict).
    PyTorch(PathBuf),
    /// Our checkpoint, already read.
    Ours(Box<swav_models::Checkpoint>),
}

/// A loaded model with where it came from.
pub(super) struct Loaded<E> {
    model: SwavModel<E>,
    config: TrainConfig,
    source: String,
    out_dir: PathBuf,
}

fn is_pytorch(p: &Path) -> bool {
    matches!(
        p.extension().and_then(|e| e.to_str()),
        Some("pth" | "pt" | "tar" | "bin" | "pth.tar")
    )
}

/// The config (architecture, data) an evaluation uses and where its weights come from, before
/// the backbone type is known.
struct Prepared {
    config: TrainConfig,
    weights: Option<Weights>,
    spec: SwavModelSpec,
    random_init: bool,
    top_level_key: Option<String>,
    out: Option<PathBuf>,
}

/// Reads the checkpoint's config and spec (or the given config), with the command line's
/// overrides.
fn prepare(args: &ModelArgs) -> Result<Prepared> {
    let mut overrides = data_overrides(args.data.as_deref(), args.data_kind.as_deref());
    overrides.extend(args.set.iter().cloned());
    let base_config = |stored: Option<TrainConfig>| -> Result<TrainConfig> {
        let text = match (&args.config, stored) {
            (Some(p), _) => std::fs::read_to_string(p)
                .with_context(|| format!("reading config {}", p.display()))?,
            (None, Some(c)) => c.to_toml()?,
            (None, None) => TrainConfig::demo().to_toml()?,
        };
        let mut c = TrainConfig::from_toml(&text, &overrides)?;
        folder_if_path(&mut c, args.data.is_some(), args.data_kind.is_some());
        // The evaluation's own device, whatever the run that wrote the checkpoint used.
        c.run.device = args.device.clone();
        c.run.devices.clear();
        Ok(c)
    };
    let ckpt_path = args.checkpoint.as_ref().map(|p| {
        if p.is_dir() {
            p.join(CHECKPOINT_FILE)
        } else {
            p.clone()
        }
    });
    // Our checkpoint is read once: its config and spec, then its weights.
    let mut stored_spec = None;
    let (config, weights): (TrainConfig, Option<Weights>) = match &ckpt_path {
        Some(p) if is_pytorch(p) => (base_config(None)?, Some(Weights::PyTorch(p.clone()))),
        Some(p) => {
            let ckpt = read_checkpoint(p)?;
            let stored = checkpoint_config(&ckpt)?;
            let mut c = base_config(stored)?;
            // The architecture is the checkpoint's, whatever the config says.
            if let Some(spec) = ckpt.spec()? {
                apply_spec(&mut c, &spec);
                stored_spec = Some(spec);
            }
            (c, Some(Weights::Ours(Box::new(ckpt))))
        }
        None if args.random_init => (base_config(None)?, None),
        None => bail!(
            "give --checkpoint (a run folder, checkpoint.bpk or PyTorch file), or --random-init"
        ),
    };
    config.validate()?;
    // The checkpoint's spec names its backbone and its configuration; otherwise the config's.
    let spec = match stored_spec {
        Some(spec) => spec,
        None => swav_train::spec_for(&config),
    };
    Ok(Prepared {
        config,
        weights,
        spec,
        random_init: args.random_init,
        top_level_key: args.top_level_key.clone(),
        out: args.out.clone(),
    })
}

/// Builds the backbone the spec names (seeded as pretraining seeds it) and loads the weights.
fn finish<E: TaskBackbone>(p: Prepared, build: &BuildBackbone<E>) -> Result<Loaded<E>> {
    let Prepared {
        config,
        weights,
        spec,
        random_init,
        top_level_key,
        out,
    } = p;
    swav_train::configure_kernel_cache(&config)?;
    let device = device_for(&config)?;
    let seed = config.swav.seed;
    let mut model = seeded_init(&device, seed, |d| spec.wrap(build(d)?, d))?;
    let mut source = format!("random initialisation (seed {seed})");
    if !random_init {
        match &weights {
            Some(Weights::PyTorch(p)) => {
                model = load_swav_checkpoint(model, p, top_level_key.as_deref())?;
                source = p.display().to_string();
            }
            Some(Weights::Ours(ckpt)) => {
                model = ckpt.load_model(model)?;
                source = ckpt.path().display().to_string();
            }
            None => {}
        }
    }
    let run_dir = match &weights {
        Some(Weights::Ours(ckpt)) => ckpt.path().parent().map(Path::to_path_buf),
        _ => None,
    };
    let out_dir = match out {
        Some(o) => o,
        None => run_dir
            .map(|d| d.join("eval"))
            .unwrap_or_else(|| PathBuf::from("runs/eval")),
    };
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    Ok(Loaded {
        model,
        config,
        source,
        out_dir,
    })
}

/// An evaluation command, run with whatever backbone the checkpoint names.
enum Command<'a> {
    Linear(&'a LinearArgs),
    Knn(&'a KnnArgs),
    Assign(&'a AssignArgs),
    Semisup(&'a SemiSupArgs),
}

struct EvalTask<'a> {
    command: Command<'a>,
    prepared: Prepared,
}

impl ModelTask for EvalTask<'_> {
    type Output = Result<()>;

    fn run<E: TaskBackbone>(self, _spec: &SwavModelSpec, build: &BuildBackbone<E>) -> Result<()> {
        let loaded = finish(self.prepared, build)?;
        match self.command {
            Command::Linear(a) => linear_with(a, loaded),
            Command::Knn(a) => knn_with(a, loaded),
            Command::Assign(a) => assign_with(a, loaded),
            Command::Semisup(a) => semisup_with(a, loaded),
        }
    }
}

/// Prepares `model`'s config and runs `command` through the binary's backbone registry.
fn dispatch(model: &ModelArgs, command: Command<'_>) -> Result<()> {
    let prepared = prepare(model)?;
    let spec = prepared.spec.clone();
    crate::Registry::run(&spec, EvalTask { command, prepared })?
}

/// Runs `cargo xtask linear-eval`.
pub fn linear(args: &LinearArgs) -> Result<()> {
    dispatch(&args.model, Command::Linear(args))
}

/// Runs `cargo xtask knn-eval`.
pub fn knn(args: &KnnArgs) -> Result<()> {
    dispatch(&args.model, Command::Knn(args))
}

/// Runs `cargo xtask assign`.
pub fn assign(args: &AssignArgs) -> Result<()> {
    dispatch(&args.model, Command::Assign(args))
}

/// Runs `cargo xtask semisup`.
pub fn semisup(args: &SemiSupArgs) -> Result<()> {
    dispatch(&args.model, Command::Semisup(args))
}

fn apply_spec(c: &mut TrainConfig, spec: &SwavModelSpec) {
    c.swav.arch = spec.arch.clone();
    c.swav.base_width = spec.base_width;
    c.swav.cifar_stem = spec.cifar_stem;
    c.swav.hidden_mlp = spec.hidden_mlp;
    c.swav.feat_dim = spec.feat_dim;
    c.swav.nmb_prototypes = spec.prototypes.clone();
}

/// The labelled splits an evaluation uses.
pub(super) struct Splits {
    /// The labelled training split.
    pub train: swav_train::DynDataset,
    /// The labelled test split.
    pub test: swav_train::DynDataset,
    /// Classes.
    pub classes: usize,
    /// What they are, for the report.
    pub description: String,
}

/// The labelled train and test splits and the class count.
pub(super) fn splits(config: &TrainConfig, args: &ModelArgs) -> Result<Splits> {
    let data = open_data(
        &config.data,
        config.swav.seed,
        (args.train_limit, args.test_limit),
    )?;
    let train = data
        .knn_train
        .context("the data has no labelled training split")?;
    let test = data
        .knn_test
        .context("the data has no labelled test split (an image folder needs test/ or val/)")?;
    let classes = data.classes.context("the data has no class count")?;
    let source = data
        .description
        .split(';')
        .next()
        .unwrap_or_default()
        .to_string();
    let desc = format!(
        "{source}; evaluated on {} labelled train / {} test images, {classes} classes",
        train.len(),
        test.len()
    );
    Ok(Splits {
        train,
        test,
        classes,
        description: desc,
    })
}

pub(super) fn command_line() -> String {
    let mut a: Vec<String> = std::env::args().skip(1).collect();
    a.insert(0, "cargo xtask".into());
    a.join(" ")
}

pub(super) fn write_json(path: &Path, v: &serde_json::Value) -> Result<()> {
    swav_models::atomic::write_atomically(path, serde_json::to_string_pretty(v)?.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

pub(super) fn tag(args: &ModelArgs) -> &'static str {
    if args.random_init {
        "random-init"
    } else {
        "trained"
    }
}
