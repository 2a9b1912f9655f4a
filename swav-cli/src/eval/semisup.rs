//! `semisup`: semi-supervised fine-tuning of the whole network on a fraction of the labels (or
//! the SwAV paper's image lists).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use swav_models::TaskBackbone;
use swav_train::device_for;

use super::{Loaded, ModelArgs, command_line, splits, tag, write_json};

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
pub(super) fn semisup_with<E: TaskBackbone>(args: &SemiSupArgs, loaded: Loaded<E>) -> Result<()> {
    let m = &args.model;
    let super::Splits {
        train,
        test,
        classes,
        description: desc,
    } = splits(&loaded.config, m)?;
    let device = device_for(&loaded.config)?;
    let ex = crate::extract_config(&loaded.config, m.batch)?;
    let recipe = recipe_for(args, &ex, loaded.config.swav.seed)?;
    let (subset, subset_desc) = labelled_subset(args, &train, recipe.seed)?;
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
    print_summary(&loaded.source, &desc, &subset_desc, &recipe, &result);
    println!("time {secs:.1} s");
    println!("report: {}", report.display());
    Ok(())
}

/// The recipe `--recipe` names, with the command line's epochs (the decay epochs scaled with
/// them), learning rates and batch size, the checkpoint's seed and the loader's workers.
fn recipe_for(
    args: &SemiSupArgs,
    ex: &swav_eval::ExtractConfig,
    seed: u64,
) -> Result<swav_train::SemiSupConfig> {
    let (crop, normalize) = (ex.transform.crop, ex.transform.normalize);
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
    recipe.seed = seed;
    recipe.workers = ex.workers;
    Ok(recipe)
}

/// The labelled images: those of `--subset-list`, or a class-balanced `--fraction`; and how
/// they were chosen, for the report.
fn labelled_subset(
    args: &SemiSupArgs,
    train: &swav_train::DynDataset,
    seed: u64,
) -> Result<(Vec<usize>, String)> {
    Ok(match &args.subset_list {
        Some(list) => (
            indices_from_list(train.as_ref(), list)?,
            format!("list {}", list.display()),
        ),
        None => (
            swav_data::class_balanced_fraction(train, args.fraction, seed)?,
            format!("class-balanced fraction {} (seed {seed})", args.fraction),
        ),
    })
}

/// The fine-tuning's readable summary.
fn print_summary(
    source: &str,
    desc: &str,
    subset_desc: &str,
    recipe: &swav_train::SemiSupConfig,
    result: &swav_train::SemiSupResult,
) {
    println!("== semi-supervised fine-tuning");
    println!("weights: {}", source);
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
}
