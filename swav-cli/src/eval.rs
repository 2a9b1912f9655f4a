//! `cargo xtask linear-eval`, `knn-eval` and `assign`: evaluations of a pretrained checkpoint
//! (ours, or PyTorch weights that swav-models imports), or of the same backbone at random
//! initialisation, on the data the checkpoint was trained on (the built-in Shapes10 for the
//! demo) or on `--data PATH`. Each writes a JSON report (with the command, checkpoint and
//! config) and prints a readable summary.

use std::path::{Path, PathBuf};

use crate::pretrain::{data_overrides, folder_if_path};
use anyhow::{Context, Result, bail};
use clap::Args;
use swav_eval::{
    KnnConfig, LinearProbeConfig, ProbeAugment, ProbeMode, assign_clusters, extract_features,
    knn_classify, linear_probe_cached, linear_probe_protocol, plot::confusion_chart,
};
use swav_models::{
    BackboneRegistry, BuildBackbone, ModelTask, SwavModel, SwavModelSpec, TaskBackbone,
    load_swav_checkpoint, read_checkpoint,
};
use swav_train::{
    CHECKPOINT_FILE, TrainConfig, checkpoint_config, device_for, open_data, seeded_init,
};

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

/// Options of `cargo xtask linear-eval`.
#[derive(Args, Debug)]
pub struct LinearArgs {
    /// The weights, data and device.
    #[command(flatten)]
    pub model: ModelArgs,
    /// `cached` (features once, no augmentation: fast) or `protocol` (the original: augmented
    /// images through the frozen backbone every epoch).
    #[arg(long, default_value = "cached", value_parser = ["cached", "protocol"])]
    pub mode: String,
    /// Epochs (the protocol's 100 by default).
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Learning rate (the protocol's 0.3 by default).
    #[arg(long)]
    pub lr: Option<f64>,
    /// Batch size of the classifier (the protocol's 256 by default).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Cached mode: keep the training features in a file on disk (`<out>/train.features`)
    /// and stream mini-batches from it, for feature sets larger than memory (ImageNet's 1.28 M
    /// x 2048 floats are 10.5 GB). Chosen by itself when they would take over 4 GiB.
    #[arg(long)]
    pub features_on_disk: bool,
}

/// Options of `cargo xtask knn-eval`.
#[derive(Args, Debug)]
pub struct KnnArgs {
    /// The weights, data and device.
    #[command(flatten)]
    pub model: ModelArgs,
    /// Neighbours (several: `--k 20 --k 200`).
    #[arg(long, default_values_t = [20usize, 200])]
    pub k: Vec<usize>,
    /// Temperatures, one per `--k` (default 0.07 for k = 20, 0.1 for k = 200, as the peers).
    #[arg(long)]
    pub temperature: Vec<f64>,
}

/// Options of `cargo xtask assign`.
#[derive(Args, Debug)]
pub struct AssignArgs {
    /// The weights, data and device.
    #[command(flatten)]
    pub model: ModelArgs,
    /// Prototype head.
    #[arg(long, default_value_t = 0)]
    pub head: usize,
    /// Temperature of the confidence (the training temperature by default).
    #[arg(long)]
    pub temperature: Option<f64>,
    /// Assign the training split instead of the test split.
    #[arg(long)]
    pub train_split: bool,
    /// Also draw the clusters: a PNG with the most confident images of each of the largest
    /// clusters, and a histogram of their labels when the images are labelled.
    #[arg(long)]
    pub grid: bool,
    /// Clusters in the grid (the largest).
    #[arg(long, default_value_t = 10)]
    pub grid_clusters: usize,
    /// Images per cluster in the grid (the most confident).
    #[arg(long, default_value_t = 12)]
    pub grid_images: usize,
}

/// Where the weights come from.
enum Weights {
    /// A PyTorch file (original SwAV checkpoint or torchvision state dict).
    PyTorch(PathBuf),
    /// Our checkpoint, already read.
    Ours(Box<swav_models::Checkpoint>),
}

/// A loaded model with where it came from.
struct Loaded<E> {
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

/// The labelled train and test splits and the class count.
fn splits(
    config: &TrainConfig,
    args: &ModelArgs,
) -> Result<(
    swav_train::DynDataset,
    swav_train::DynDataset,
    usize,
    String,
)> {
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
    Ok((train, test, classes, desc))
}

fn command_line() -> String {
    let mut a: Vec<String> = std::env::args().skip(1).collect();
    a.insert(0, "cargo xtask".into());
    a.join(" ")
}

fn write_json(path: &Path, v: &serde_json::Value) -> Result<()> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_string_pretty(v)?)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

fn tag(args: &ModelArgs) -> &'static str {
    if args.random_init {
        "random-init"
    } else {
        "trained"
    }
}

/// `cargo xtask linear-eval` with the loaded model.
fn linear_with<E: TaskBackbone>(args: &LinearArgs, loaded: Loaded<E>) -> Result<()> {
    let mode: ProbeMode = args.mode.parse()?;
    let mut probe = LinearProbeConfig::default();
    if let Some(e) = args.epochs {
        probe.epochs = e;
    }
    if let Some(l) = args.lr {
        probe.lr = l;
    }
    if let Some(b) = args.batch_size {
        probe.batch_size = b;
    }
    probe.validate()?;
    let m = &args.model;
    let (train, test, classes, desc) = splits(&loaded.config, m)?;
    let device = device_for(&loaded.config)?;
    let ex = crate::extract_config(&loaded.config, m.batch)?;
    eprintln!("linear probe ({mode} mode) of {} on {desc}", loaded.source);
    let started = std::time::Instant::now();
    let test_f = extract_features(&loaded.model.backbone, test.as_ref(), &ex, &device)?;
    let (result, skipped_train) = match mode {
        ProbeMode::Cached => {
            let bytes = train.len() as u64 * test_f.dim as u64 * 4;
            if args.features_on_disk || bytes > 4 << 30 {
                std::fs::create_dir_all(&loaded.out_dir)
                    .with_context(|| format!("creating {}", loaded.out_dir.display()))?;
                let path = loaded.out_dir.join("train.features");
                eprintln!(
                    "training features on disk: {} ({:.1} GB), streamed in mini-batches",
                    path.display(),
                    bytes as f64 / 1e9
                );
                let (file, skipped) = swav_eval::extract_features_to_file(
                    &loaded.model.backbone,
                    train.as_ref(),
                    &ex,
                    &device,
                    &path,
                )?;
                let r = swav_eval::linear_probe_streamed(&file, &test_f, classes, &probe, &device)?;
                (r, skipped)
            } else {
                let train_f =
                    extract_features(&loaded.model.backbone, train.as_ref(), &ex, &device)?;
                let r = linear_probe_cached(&train_f, &test_f, classes, &probe, &device)?;
                (r, train_f.skipped)
            }
        }
        ProbeMode::Protocol => {
            let aug = ProbeAugment::original(ex.transform.crop, ex.transform.normalize);
            linear_probe_protocol(
                &loaded.model.backbone,
                train.as_ref(),
                &test_f,
                classes,
                &probe,
                &aug,
                &ex,
                &device,
            )?
        }
    };
    let secs = started.elapsed().as_secs_f64();
    let t = tag(m);
    let png = loaded.out_dir.join(format!("linear_{t}_confusion.png"));
    confusion_chart(
        &png,
        &format!(
            "LINEAR PROBE {} TOP-1 {:.1}",
            t.to_uppercase(),
            result.last.top1
        ),
        &result.last.confusion,
    )?;
    let report = loaded.out_dir.join(format!("linear_{t}.json"));
    write_json(
        &report,
        &serde_json::json!({
            "evaluation": "linear probe",
            "command": command_line(),
            "weights": loaded.source,
            "random_init": m.random_init,
            "data": desc,
            "time_s": secs,
            "skipped_files": skipped_train.iter().chain(&test_f.skipped)
                .map(|(_, f, why)| format!("{f}: {why}")).collect::<Vec<_>>(),
            "result": result,
            "config": loaded.config,
        }),
    )?;
    println!(
        "== linear probe ({} mode{})",
        result.mode,
        if result.mode == ProbeMode::Cached {
            ": features extracted once without augmentation; the original protocol is --mode protocol"
        } else {
            ": the original protocol"
        }
    );
    println!("weights: {}", loaded.source);
    println!("data: {desc}");
    println!(
        "{} epochs, lr {} cosine to {}, batch {}, momentum {}, wd {}",
        probe.epochs,
        probe.lr,
        probe.final_lr,
        probe.batch_size,
        probe.momentum,
        probe.weight_decay
    );
    println!(
        "top-1 best {:.2}% (epoch {}), last {:.2}%; top-5 best-epoch {:.2}%, last {:.2}%",
        result.best_top1,
        result.best_epoch + 1,
        result.last.top1,
        result.best_top5,
        result.last.top5
    );
    println!(
        "skipped files: {}",
        skipped_train.len() + test_f.skipped.len()
    );
    println!("time {secs:.1} s");
    println!("report: {}", report.display());
    println!("confusion matrix: {}", png.display());
    Ok(())
}

/// `cargo xtask knn-eval` with the loaded model.
fn knn_with<E: TaskBackbone>(args: &KnnArgs, loaded: Loaded<E>) -> Result<()> {
    let m = &args.model;
    let (train, test, classes, desc) = splits(&loaded.config, m)?;
    let device = device_for(&loaded.config)?;
    let ex = crate::extract_config(&loaded.config, m.batch)?;
    if !args.temperature.is_empty() && args.temperature.len() != args.k.len() {
        bail!(
            "{} --temperature values for {} --k values: give one per k, or none",
            args.temperature.len(),
            args.k.len()
        );
    }
    eprintln!("kNN of {} on {desc}", loaded.source);
    let started = std::time::Instant::now();
    let train_f = extract_features(&loaded.model.backbone, train.as_ref(), &ex, &device)?;
    let test_f = extract_features(&loaded.model.backbone, test.as_ref(), &ex, &device)?;
    let mut results = Vec::new();
    println!("== kNN");
    println!("weights: {}", loaded.source);
    println!("data: {desc}");
    for (i, &k) in args.k.iter().enumerate() {
        let temperature = match args.temperature.get(i) {
            Some(&t) => t,
            None if k == 200 => KnnConfig::k200().temperature,
            None => KnnConfig::k20().temperature,
        };
        let cfg = KnnConfig {
            k,
            temperature,
            ..KnnConfig::default()
        };
        let mut r = knn_classify(&train_f, &test_f, classes, &cfg, &device)?;
        println!(
            "k = {k}, T = {temperature}: top-1 {:.2}%, top-5 {:.2}%",
            r.top1, r.top5
        );
        r.predictions.clear();
        results.push(r);
    }
    let secs = started.elapsed().as_secs_f64();
    let t = tag(m);
    let report = loaded.out_dir.join(format!("knn_{t}.json"));
    write_json(
        &report,
        &serde_json::json!({
            "evaluation": "kNN",
            "command": command_line(),
            "weights": loaded.source,
            "random_init": m.random_init,
            "data": desc,
            "time_s": secs,
            "skipped_files": train_f.skipped.iter().chain(&test_f.skipped)
                .map(|(_, f, why)| format!("{f}: {why}")).collect::<Vec<_>>(),
            "results": results,
            "config": loaded.config,
        }),
    )?;
    println!(
        "skipped files: {}",
        train_f.skipped.len() + test_f.skipped.len()
    );
    println!("time {secs:.1} s");
    println!("report: {}", report.display());
    Ok(())
}

/// `cargo xtask assign` with the loaded model.
fn assign_with<E: TaskBackbone>(args: &AssignArgs, loaded: Loaded<E>) -> Result<()> {
    let m = &args.model;
    let data = open_data(
        &loaded.config.data,
        loaded.config.swav.seed,
        (m.train_limit, m.test_limit),
    )?;
    let (split, ds) = if args.train_split {
        ("train", data.knn_train.unwrap_or(data.train))
    } else {
        match data.knn_test {
            Some(t) => ("test", t),
            None => ("train", data.knn_train.unwrap_or(data.train)),
        }
    };
    let device = device_for(&loaded.config)?;
    let ex = crate::extract_config(&loaded.config, m.batch)?;
    let temperature = args.temperature.unwrap_or(loaded.config.swav.temperature);
    let a = assign_clusters(
        &loaded.model,
        ds.as_ref(),
        &ex,
        args.head,
        temperature,
        &device,
    )?;
    let t = tag(m);
    let csv = loaded.out_dir.join(format!("assign_{t}_{split}.csv"));
    a.write_csv(&csv)?;
    let report = loaded.out_dir.join(format!("assign_{t}_{split}.json"));
    let mean_conf = a.rows.iter().map(|r| r.confidence).sum::<f64>() / a.rows.len().max(1) as f64;
    write_json(
        &report,
        &serde_json::json!({
            "evaluation": "cluster assignment",
            "command": command_line(),
            "weights": loaded.source,
            "random_init": m.random_init,
            "split": split,
            "images": a.rows.len(),
            "head": a.head,
            "prototypes": a.prototypes,
            "clusters_used": a.clusters_used,
            "purity": a.purity,
            "mean_confidence": mean_conf,
            "temperature": a.temperature,
            "skipped_files": a.skipped.iter().map(|(_, f, why)| format!("{f}: {why}")).collect::<Vec<_>>(),
            "csv": csv,
            "config": loaded.config,
        }),
    )?;
    println!("== cluster assignment ({split} split)");
    println!("weights: {}", loaded.source);
    println!(
        "{} images into {} of {} prototypes (head {}), mean confidence {:.3} at T = {}",
        a.rows.len(),
        a.clusters_used,
        a.prototypes,
        a.head,
        mean_conf,
        a.temperature
    );
    match a.purity {
        Some(p) => println!("cluster purity {p:.2}%"),
        None => println!("cluster purity: no labels"),
    }
    println!("skipped files: {}", a.skipped.len());
    println!("assignments: {}", csv.display());
    println!("report: {}", report.display());
    if args.grid {
        let png = loaded.out_dir.join(format!("assign_{t}_{split}_grid.png"));
        let rows =
            swav_eval::cluster_grid(&a, ds.as_ref(), &png, args.grid_clusters, args.grid_images)?;
        println!(
            "cluster grid ({} largest clusters, up to {} images each): {}",
            rows.len(),
            args.grid_images,
            png.display()
        );
    }
    Ok(())
}

/// Options of `cargo xtask semisup`.
#[derive(Args, Debug)]
pub struct SemiSupArgs {
    /// The weights, data and device.
    #[command(flatten)]
    pub model: ModelArgs,
    /// A seeded class-balanced fraction of the training labels (0.01 and 0.1 as the paper).
    #[arg(long, default_value_t = 0.1)]
    pub fraction: f64,
    /// A list file of image names to use as labelled (the ImageNet 1 % / 10 % list format);
    /// overrides --fraction.
    #[arg(long)]
    pub subset_list: Option<PathBuf>,
    /// The original's recipe to start from: `10pct` (backbone lr 0.01, head 0.2) or `1pct`
    /// (0.02 and 5).
    #[arg(long, default_value = "10pct", value_parser = ["10pct", "1pct"])]
    pub recipe: String,
    /// Epochs (20; the decay epochs 12 and 16 scale with it).
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Backbone learning rate.
    #[arg(long)]
    pub lr_backbone: Option<f64>,
    /// Head learning rate.
    #[arg(long)]
    pub lr_head: Option<f64>,
    /// Batch size (256).
    #[arg(long)]
    pub batch_size: Option<usize>,
}

/// Indices of `ds` whose file names are listed in `list` (one per line).
fn indices_from_list(ds: &dyn swav_data::ImageDataset, list: &Path) -> Result<Vec<usize>> {
    let text =
        std::fs::read_to_string(list).with_context(|| format!("reading {}", list.display()))?;
    let mut by_name: std::collections::HashMap<String, Vec<usize>> = Default::default();
    for i in 0..ds.len() {
        let d = ds.describe(i);
        if let Some(n) = Path::new(&d).file_name().and_then(|n| n.to_str()) {
            by_name.entry(n.to_string()).or_default().push(i);
        }
    }
    let mut out = Vec::new();
    for (line_no, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let name = Path::new(line)
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or(line);
        match by_name.get(name).map(Vec::as_slice) {
            Some([i]) => out.push(*i),
            Some(many) => bail!(
                "{} line {}: `{name}` matches {} images of the training set",
                list.display(),
                line_no + 1,
                many.len()
            ),
            None => bail!(
                "{} line {}: `{name}` is not an image of the training set",
                list.display(),
                line_no + 1
            ),
        }
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// `cargo xtask semisup` with the loaded model.
fn semisup_with<E: TaskBackbone>(args: &SemiSupArgs, loaded: Loaded<E>) -> Result<()> {
    let m = &args.model;
    let (train, test, classes, desc) = splits(&loaded.config, m)?;
    let device = device_for(&loaded.config)?;
    let ex = crate::extract_config(&loaded.config, m.batch)?;
    let normalize = ex.transform.normalize;
    let crop = ex.transform.crop;
    let mut recipe = match args.recipe.as_str() {
        "10pct" | "10" => swav_train::SemiSupConfig::imagenet_10pct(crop, normalize),
        "1pct" | "1" => swav_train::SemiSupConfig::imagenet_1pct(crop, normalize),
        other => bail!("--recipe `{other}` is unknown; choose 10pct or 1pct"),
    };
    if let Some(e) = args.epochs {
        recipe.decay_epochs = recipe
            .decay_epochs
            .iter()
            .map(|d| (d * e).div_ceil(recipe.epochs))
            .collect();
        recipe.epochs = e;
    }
    if let Some(l) = args.lr_backbone {
        recipe.lr_backbone = l;
    }
    if let Some(l) = args.lr_head {
        recipe.lr_head = l;
    }
    if let Some(b) = args.batch_size {
        recipe.batch_size = b;
    }
    recipe.seed = loaded.config.swav.seed;
    recipe.workers = ex.workers;
    let (subset, subset_desc) = match &args.subset_list {
        Some(list) => (
            indices_from_list(train.as_ref(), list)?,
            format!("list {}", list.display()),
        ),
        None => (
            swav_data::class_balanced_fraction(&train, args.fraction, recipe.seed)?,
            format!(
                "class-balanced fraction {} (seed {})",
                args.fraction, recipe.seed
            ),
        ),
    };
    eprintln!(
        "semi-supervised fine-tuning of {} on {} labelled images ({subset_desc}) of {desc}",
        loaded.source,
        subset.len()
    );
    let started = std::time::Instant::now();
    let (_, result) = swav_train::finetune(
        loaded.model.backbone,
        &train,
        &subset,
        &test,
        classes,
        &recipe,
        &ex,
        &device,
    )?;
    let secs = started.elapsed().as_secs_f64();
    let t = tag(m);
    let report = loaded.out_dir.join(format!("semisup_{t}.json"));
    write_json(
        &report,
        &serde_json::json!({
            "evaluation": "semi-supervised fine-tuning",
            "command": command_line(),
            "weights": loaded.source,
            "random_init": m.random_init,
            "data": desc,
            "subset": subset_desc,
            "time_s": secs,
            "result": result,
            "config": loaded.config,
        }),
    )?;
    println!("== semi-supervised fine-tuning");
    println!("weights: {}", loaded.source);
    println!("data: {desc}");
    println!(
        "labelled: {} of {} training images ({subset_desc})",
        result.labelled_images, result.train_images
    );
    println!(
        "{} epochs, backbone lr {}, head lr {}, x{} at epochs {:?}, batch {}, momentum {}, wd {}",
        recipe.epochs,
        recipe.lr_backbone,
        recipe.lr_head,
        recipe.decay_factor,
        recipe.decay_epochs,
        recipe.batch_size,
        recipe.momentum,
        recipe.weight_decay
    );
    println!(
        "top-1 best {:.2}% (epoch {}), last {:.2}%; top-5 last {:.2}%",
        result.best_top1,
        result.best_epoch + 1,
        result.last_top1,
        result.last_top5
    );
    println!("skipped files: {}", result.skipped_files.len());
    println!("time {secs:.1} s");
    println!("report: {}", report.display());
    Ok(())
}
