//! `cargo xtask pretrain`: SwAV pretraining from a config (the built-in demo by default), then
//! the kNN accuracy of the trained backbone next to the same backbone at random initialisation.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use swav_models::{BackboneRegistry, BuildBackbone, ModelTask, SwavModelSpec, TaskBackbone};
use swav_train::process::SharedProcessGroup;
use swav_train::{
    DataKind, RunData, RunOptions, RunSummary, TrainConfig, Trainer, open_data, spec_for,
};

/// Options of `cargo xtask pretrain`.
#[derive(Args, Debug)]
pub struct PretrainArgs {
    /// A TOML config (see `configs/`); without one, the built-in demo on Shapes10.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Data location; sets `data.path` (and `data.kind = "folder"` when the config uses the
    /// built-in data).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Data kind.
    #[arg(long, value_parser = ["shapes10", "folder", "cifar10", "cifar100", "stl10", "mnist"])]
    pub data_kind: Option<String>,
    /// The run folder (`run.out_dir`).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Number of epochs (`swav.epochs`).
    #[arg(long)]
    pub epochs: Option<usize>,
    /// `run.device`: cpu; with `--features wgpu` wgpu (or gpu), wgpu:N, vulkan, vulkan:N;
    /// with `--features cuda` cuda, cuda:N.
    #[arg(long)]
    pub device: Option<String>,
    /// Data-parallel workers (`swav.world_size`), each with `batch_size` images: threads on the
    /// CPU, GPUs 0..N with a GPU device.
    #[arg(long)]
    pub devices: Option<usize>,
    /// Any field: `--set swav.base_lr=0.5 --set batch_size=128` (bare names when unambiguous).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Resume from this checkpoint or run folder (by default a run folder's own checkpoint is
    /// picked up automatically).
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Start from scratch even if the run folder has a checkpoint (it is overwritten).
    #[arg(long)]
    pub fresh: bool,
    /// No progress bar: one line per epoch.
    #[arg(long)]
    pub quiet: bool,
    /// Skip the random-initialisation kNN baseline at the end.
    #[arg(long)]
    pub no_baseline: bool,
    /// Stop after this many iterations of this process without writing anything more, as a
    /// kill would (the last checkpoint stays; the same command resumes from it). For checks
    /// of resume, e.g. on another device.
    #[arg(long, value_name = "N")]
    pub stop_after: Option<usize>,
    /// Inject a fault on purpose, for the fault suite: nan-loss@N, inf-loss@N, nan-grad@N or
    /// inf-grad@N (the step completing iteration N).
    #[arg(long, value_name = "FAULT", hide = true)]
    pub inject_fault: Option<swav_train::InjectedFault>,
}

/// The resolved configuration of the arguments.
pub fn resolve(args: &PretrainArgs) -> Result<TrainConfig> {
    let mut overrides = data_overrides(args.data.as_deref(), args.data_kind.as_deref());
    if let Some(o) = &args.out {
        overrides.push(format!(
            "run.out_dir={}",
            toml_string(&o.display().to_string())
        ));
    }
    if let Some(e) = args.epochs {
        overrides.push(format!("swav.epochs={e}"));
    }
    if let Some(d) = &args.device {
        overrides.push(format!("run.device={}", toml_string(d)));
    }
    if let Some(n) = args.devices {
        overrides.push(format!("swav.world_size={n}"));
    }
    if args.quiet {
        overrides.push("run.quiet=true".into());
    }
    if args.fresh {
        overrides.push("run.auto_resume=false".into());
    }
    overrides.extend(args.set.iter().cloned());
    let mut config = match &args.config {
        Some(p) => TrainConfig::load(p, &overrides)?,
        None => {
            // Real data without a config: the CPU recipe measured on CIFAR-10, not the demo's
            // (tuned for the generated shapes, it learns nothing on photographs).
            let base = if real_data_default(args) {
                TrainConfig::folder_default()?
            } else {
                TrainConfig::demo()
            };
            TrainConfig::from_toml(&base.to_toml()?, &overrides)?
        }
    };
    folder_if_path(&mut config, args.data.is_some(), args.data_kind.is_some());
    config.validate()?;
    Ok(config)
}

/// Whether the run takes the real-data default recipe ([`TrainConfig::folder_default`]): data
/// given, no config.
fn real_data_default(args: &PretrainArgs) -> bool {
    args.config.is_none() && (args.data.is_some() || args.data_kind.is_some())
}

/// A value as a TOML string literal.
pub fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// The config overrides of `--data PATH` and `--data-kind K`.
pub fn data_overrides(data: Option<&std::path::Path>, kind: Option<&str>) -> Vec<String> {
    let mut o = Vec::new();
    if let Some(k) = kind {
        o.push(format!("data.kind={}", toml_string(k)));
    }
    if let Some(p) = data {
        o.push(format!(
            "data.path={}",
            toml_string(&p.display().to_string())
        ));
    }
    o
}

/// `--data PATH` without `--data-kind` over a config that uses the built-in data means an
/// image folder.
pub fn folder_if_path(config: &mut TrainConfig, data: bool, kind: bool) {
    if data && !kind && config.data.kind == DataKind::Shapes10 {
        config.data.kind = DataKind::Folder;
    }
}

/// Runs `cargo xtask pretrain` (under `mpirun`, this process's worker of the job).
pub fn run(args: &PretrainArgs) -> Result<()> {
    let processes = crate::processes()?;
    let result = run_in(args, processes.clone());
    if let (Err(e), Some(p)) = (&result, &processes)
        && p.world_size() > 1
    {
        // The other processes would wait for this one in their next collective.
        p.abort(&format!(
            "swav-rs: rank {} of {} failed: {e:#}",
            p.rank(),
            p.world_size()
        ));
    }
    result
}

fn run_in(args: &PretrainArgs, processes: Option<SharedProcessGroup>) -> Result<()> {
    let mut config = resolve(args)?;
    let leader = processes.as_ref().is_none_or(|p| p.rank() == 0);
    if let Some(p) = &processes {
        let n = p.world_size();
        if config.swav.world_size > 1 && config.swav.world_size != n {
            bail!(
                "swav.world_size is {} (--devices), but mpirun started {n} processes: under \
                 mpirun each process is one worker, so leave it out or make it {n}",
                config.swav.world_size
            );
        }
        config.swav.world_size = n;
        if !leader {
            config.run.quiet = true;
        }
        config.validate()?;
    }
    if args.fresh && args.resume.is_some() {
        bail!("--fresh and --resume contradict each other");
    }
    // The backbone is looked up before any data is opened: an unknown name is refused at once.
    let spec = crate::Registry::describe(&spec_for(&config))?;
    let data = open_data(
        &config.data,
        config.swav.seed,
        (config.run.knn_train_samples, config.run.knn_test_samples),
    )?;
    let s = &config.swav;
    let task = PretrainTask {
        args,
        config: &config,
        data: &data,
        processes,
    };
    if !leader {
        return crate::Registry::run(&spec, task)?;
    }
    eprintln!(
        "swav-rs pretrain: {} (base width {}{}), {} x {} crops, K = {:?}, {} epochs of batch {} on {}{}",
        s.arch,
        s.base_width,
        if s.cifar_stem { ", CIFAR stem" } else { "" },
        s.nmb_crops
            .iter()
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
            .join("+"),
        s.size_crops
            .iter()
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
            .join("/"),
        s.nmb_prototypes,
        s.epochs,
        s.batch_size,
        config.run.device,
        match &task.processes {
            Some(_) => format!(" x {} MPI processes, one worker each", s.world_size),
            None if s.world_size > 1 => format!(" x {} data-parallel workers", s.world_size),
            None => String::new(),
        }
    );
    eprintln!("data: {}", data.description);
    eprintln!("run folder: {}", config.run.out_dir.display());
    if real_data_default(args) {
        eprintln!(
            "recipe: the CPU recipe measured on CIFAR-10 (configs/cifar10-cpu.toml: ResNet-18 \
             of base width 16, 2 x 32 crops, 3000 prototypes, LARS, 15 epochs; images are \
             cropped and resized to 32 px), the default for --data without --config. The \
             demo's recipe is tuned for its generated shapes and does not learn on photographs. \
             For larger images, more time or a GPU, pass --config (docs/guide.md: \"Training on \
             your data\")."
        );
    }
    crate::Registry::run(&spec, task)?
}

/// The run and its report, for whatever backbone the config names.
struct PretrainTask<'a> {
    args: &'a PretrainArgs,
    config: &'a TrainConfig,
    data: &'a RunData,
    processes: Option<SharedProcessGroup>,
}

impl ModelTask for PretrainTask<'_> {
    type Output = Result<()>;

    fn run<E: TaskBackbone>(self, spec: &SwavModelSpec, build: &BuildBackbone<E>) -> Result<()> {
        let PretrainTask {
            args,
            config,
            data,
            processes,
        } = self;
        let leader = processes.as_ref().is_none_or(|p| p.rank() == 0);
        let options = RunOptions {
            resume_from: args.resume.clone(),
            stop_after: args.stop_after,
            stop: Some(crate::signals::stop_on_signals()?),
            processes: processes.clone(),
        };
        let mut progress = crate::progress::Progress::new(config.run.quiet);
        let mut silent = swav_train::Silent;
        // Under mpirun, rank 0 shows the progress.
        let observer: &mut dyn swav_train::TrainObserver =
            if leader { &mut progress } else { &mut silent };
        let mut trainer = Trainer::new(config, data).options(options);
        if let Some(fault) = &args.inject_fault {
            trainer = trainer.faults(fault);
        }
        let outcome = trainer
            .observer(observer)
            .backbone_config(spec.backbone.clone())
            .run(|d| Ok(build(d)?))?;
        if let Some(p) = &outcome.summary.preempted {
            // Every process of an MPI job stops after the same step and leaves the job.
            if let Some(g) = &processes {
                g.finish();
            }
            if !leader {
                std::process::exit(crate::signals::PREEMPTED_EXIT);
            }
            // Stopped by SIGTERM / SIGINT: the checkpoint is written; say how to go on.
            eprintln!(
                "stopped on request after iteration {} (epoch {} continues); checkpoint: {}",
                p.iteration,
                p.epoch,
                p.checkpoint.display()
            );
            eprintln!(
                "resume: run the same command again without --fresh (it continues from the \
                 checkpoint), or add --resume {}",
                config.run.out_dir.display()
            );
            std::process::exit(crate::signals::PREEMPTED_EXIT);
        }
        if !leader {
            // Rank 0 reports and draws.
            return Ok(());
        }
        report(args, config, &outcome.summary)?;
        clusters(config, data, &outcome.model)
    }
}

/// The trained model's clusters on the labelled test split, drawn (`<run>/clusters.png`): the
/// largest ten, their most confident images and their labels.
fn clusters<E: TaskBackbone>(
    config: &TrainConfig,
    data: &RunData,
    model: &swav_models::SwavModel<E>,
) -> Result<()> {
    let Some(test) = &data.knn_test else {
        return Ok(());
    };
    let ex = crate::extract_config(config, 256)?;
    let device = swav_train::device_for(config)?;
    let a = swav_eval::assign_clusters(
        model,
        test.as_ref(),
        &ex,
        0,
        config.swav.temperature,
        &device,
    )?;
    let png = config.run.out_dir.join("clusters.png");
    let rows = swav_eval::cluster_grid(&a, test.as_ref(), &png, 10, 12)?;
    println!(
        "clusters: {} ({} largest of the {} clusters the {} test images fall into{})",
        png.display(),
        rows.len(),
        a.clusters_used,
        a.rows.len(),
        a.purity
            .map(|p| format!("; purity {p:.1}%"))
            .unwrap_or_default()
    );
    Ok(())
}

/// Prints the run's summary, then the kNN of the same backbone at random initialisation.
fn report(args: &PretrainArgs, config: &TrainConfig, sm: &RunSummary) -> Result<()> {
    println!();
    println!("== summary");
    if let Some(it) = sm.resumed_from_iteration {
        println!("resumed from iteration {it}");
    }
    println!(
        "trained {} iterations ({} in this session) in {:.1} s: {:.1} images/s, data wait {:.1}% of step time",
        sm.iterations,
        sm.iterations_this_session,
        sm.time_s,
        sm.images_per_s,
        100.0 * sm.data_time_fraction
    );
    if let Some(l) = sm.last_epoch_loss {
        println!(
            "last epoch mean loss {l:.4} (collapse level ln K = {:.4})",
            sm.collapse_loss
        );
    }
    println!("backend: {}", sm.backend);
    if let Some(dir) = &sm.kernel_cache {
        println!("kernel cache: {}", dir.display());
    }
    println!("batch norm: {}", sm.batchnorm);
    println!("precision: {}", sm.precision);
    println!("skipped files: {}", sm.skipped_files.len());
    for f in sm.skipped_files.iter().take(10) {
        println!("  {f}");
    }
    for w in &sm.warnings {
        println!("warning: {w}");
    }
    println!("checkpoint: {}", sm.checkpoint.display());
    println!("metrics: {}", sm.metrics.display());
    for p in &sm.plots {
        println!("metrics output: {}", p.display());
    }
    if let Some(k) = &sm.knn {
        println!(
            "kNN (k = {}, T = {}) on {} test images, memory bank {}: trained top-1 {:.2}%, top-5 {:.2}%",
            k.config.k, k.config.temperature, k.test_samples, k.train_samples, k.top1, k.top5
        );
        if !args.no_baseline {
            // Measured by the run when it started (the same network before training): whenever
            // the monitor ran, so did the baseline.
            let r = sm
                .knn_baseline
                .clone()
                .context("the run measured no kNN baseline")?;
            println!(
                "kNN same backbone at random initialisation: top-1 {:.2}%, top-5 {:.2}%  (trained - random = {:+.2} points)",
                r.top1,
                r.top5,
                k.top1 - r.top1
            );
            let path = config.run.out_dir.join("knn_baseline.json");
            let text =
                serde_json::to_string_pretty(&serde_json::json!({"trained": k, "random_init": r}))?;
            swav_models::atomic::write_atomically(&path, text.as_bytes())
                .with_context(|| format!("writing {}", path.display()))?;
        }
    }
    Ok(())
}
