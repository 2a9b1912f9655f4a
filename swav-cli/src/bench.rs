//! `cargo xtask bench`: SwAV training-step throughput on random data, on the same shapes and
//! with the same step as `scripts/peers/torch_swav_step.py` (the PyTorch peer), so the two can
//! be timed on the same machine: prototype normalisation, multi-crop forward grouped by
//! resolution, Sinkhorn codes of crops 0 and 1 without gradient, swapped-prediction loss,
//! backward, SGD step (lr 0.1, momentum 0.9, wd 1e-6). Prints one JSON line per run.

use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::module::Module;
use clap::Args;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use swav_core::{OptimizerKind, SwavConfig};
use swav_data::CropGroupBatch;
use swav_models::SwavModelSpec;
use swav_train::{OptimConfig, Optimizer, TrainConfig, WorkerGroup, devices_for, seeded_init};

/// Options of `cargo xtask bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Backbone (`resnet18`, `resnet50`, ...).
    #[arg(long, default_value = "resnet50")]
    pub arch: String,
    /// Images per step.
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Crops as `NxS,...` (e.g. `2x224,6x96` or `2x32`).
    #[arg(long, default_value = "2x224,6x96")]
    pub crops: String,
    /// Timed steps.
    #[arg(long, default_value_t = 20)]
    pub steps: usize,
    /// Untimed steps first.
    #[arg(long, default_value_t = 5)]
    pub warmup: usize,
    /// CIFAR stem (3x3 stride-1 first convolution, no max-pool).
    #[arg(long)]
    pub cifar_stem: bool,
    /// Base width of the ResNet (64 as torchvision).
    #[arg(long, default_value_t = 64)]
    pub base_width: usize,
    /// `cpu` (burn flex); `wgpu` / `wgpu:N` / `vulkan` in a build with `--features wgpu`;
    /// `cuda` / `cuda:N` in a build with `--features cuda`.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Data-parallel workers, each with `--batch` images (the trainer's `swav.world_size`).
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Synchronised BatchNorm over the workers (the trainer's `swav.sync_bn`).
    #[arg(long)]
    pub sync_bn: bool,
    /// Mixed precision as the trainer's `use_fp16` (`f16`, with a loss scale of 2^16, or
    /// `bf16`); meant for GPU devices (on the CPU, flex's half kernels are slower).
    #[arg(long)]
    pub amp: Option<String>,
    /// Measure the multi-crop loader instead of the step: decode, augment and batch the images
    /// of this folder (class folders, or `train/` with class folders) into `--crops`, `--batch`
    /// images a batch, `--steps` batches after `--warmup`.
    #[arg(long, value_name = "DIR")]
    pub loader: Option<std::path::PathBuf>,
    /// The loader's decode threads (default: all cores).
    #[arg(long)]
    pub loader_workers: Option<usize>,
    /// The loader's augmentation preset (`data.augment`: swav, cifar, stl10, ...).
    #[arg(long, default_value = "swav")]
    pub augment: String,
    /// Measure the linear probe (cached mode, streamed from a feature file) instead of the
    /// step, at this shape: `ROWS,DIM,CLASSES` (ImageNet: 1281167,2048,1000), seeded random
    /// features and labels, batches of `--batch`, on `--device`; 10,000 test rows.
    #[arg(long, value_name = "ROWS,DIM,CLASSES")]
    pub probe: Option<String>,
    /// The feature file of `--probe` (created when missing; default: a temporary one).
    #[arg(long)]
    pub probe_file: Option<std::path::PathBuf>,
    /// Epochs of `--probe`.
    #[arg(long, default_value_t = 1)]
    pub probe_epochs: usize,
}

/// The streamed linear probe at a given shape: random features written once to a feature file,
/// then `--probe-epochs` epochs timed.
fn probe_bench(args: &BenchArgs, shape: &str) -> Result<()> {
    let dims: Vec<usize> = shape
        .split(',')
        .map(|v| v.trim().parse::<usize>())
        .collect::<Result<_, _>>()
        .with_context(|| format!("--probe `{shape}`: expected ROWS,DIM,CLASSES"))?;
    let [rows, dim, classes] = dims[..] else {
        bail!("--probe `{shape}`: expected ROWS,DIM,CLASSES");
    };
    let tmp = std::env::temp_dir().join(format!("swav-probe-{rows}x{dim}.features"));
    let path = args.probe_file.clone().unwrap_or(tmp.clone());
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let written = Instant::now();
    let file = match swav_eval::FeatureFile::open(&path) {
        Ok(f) if f.len() == rows && f.dim() == dim => f,
        _ => {
            let mut w = swav_eval::FeatureWriter::create(&path, dim)?;
            let chunk = 4096;
            let mut i = 0;
            while i < rows {
                let n = chunk.min(rows - i);
                let values: Vec<f32> = (0..n * dim)
                    .map(|_| rng.random_range(-1.0f32..1.0))
                    .collect();
                let labels: Vec<Option<usize>> = (i..i + n).map(|r| Some(r % classes)).collect();
                w.append(&values, &labels)?;
                i += n;
            }
            w.finish()?
        }
    };
    let write_s = written.elapsed().as_secs_f64();
    let test_rows = 10_000usize;
    let test = swav_eval::Features {
        values: (0..test_rows * dim)
            .map(|_| rng.random_range(-1.0f32..1.0))
            .collect(),
        dim,
        labels: (0..test_rows).map(|r| Some(r % classes)).collect(),
        indices: (0..test_rows).collect(),
        skipped: Vec::new(),
    };
    let mut cfg = TrainConfig::default();
    cfg.run.device = args.device.clone();
    let device = swav_train::device_for(&cfg)?;
    let config = swav_eval::LinearProbeConfig {
        epochs: args.probe_epochs,
        batch_size: args.batch,
        ..swav_eval::LinearProbeConfig::default()
    };
    let t = Instant::now();
    let r = swav_eval::linear_probe_streamed(&file, &test, classes, &config, &device)?;
    let secs = t.elapsed().as_secs_f64();
    let epoch_s = secs / args.probe_epochs as f64;
    println!(
        "{}",
        serde_json::json!({
            "impl": "swav-rs", "check": "linear-probe", "rows": rows, "dim": dim,
            "classes": classes, "batch": args.batch, "epochs": args.probe_epochs,
            "device": args.device, "backend": swav_engine::backend_name(&device),
            "threads": std::thread::available_parallelism().map_or(1, |n| n.get()),
            "feature_file": path.display().to_string(), "feature_file_write_s": (write_s * 10.0).round() / 10.0,
            "seconds": (secs * 10.0).round() / 10.0, "epoch_s": (epoch_s * 10.0).round() / 10.0,
            "images_per_s": (rows as f64 * args.probe_epochs as f64 / secs).round(),
            "hundred_epochs_h": (epoch_s * 100.0 / 3600.0 * 100.0).round() / 100.0,
            "last_train_loss": r.epochs.last().map(|e| e.train_loss),
        })
    );
    Ok(())
}

/// The loader's throughput on a folder: images per second through decode, multi-crop
/// augmentation and batching, as the trainer's default source runs it.
fn loader_bench(args: &BenchArgs, dir: &std::path::Path, crops: &[(usize, usize)]) -> Result<()> {
    use swav_train::{BatchSource, DataKind, MultiCropSource, open_data};
    let mut cfg = TrainConfig::default();
    cfg.data.kind = DataKind::Folder;
    cfg.data.path = Some(dir.to_path_buf());
    cfg.data.augment = args.augment.clone();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    cfg.data.workers = args.loader_workers.unwrap_or(threads);
    cfg.swav.batch_size = args.batch;
    cfg.swav.nmb_crops = crops.iter().map(|c| c.0).collect();
    cfg.swav.size_crops = crops.iter().map(|c| c.1).collect();
    // The original's scales: the first group large crops, the others small ones.
    cfg.swav.min_scale_crops = (0..crops.len())
        .map(|i| if i == 0 { 0.14 } else { 0.05 })
        .collect();
    cfg.swav.max_scale_crops = (0..crops.len())
        .map(|i| if i == 0 { 1.0 } else { 0.14 })
        .collect();
    cfg.validate()?;
    let data = open_data(&cfg.data, cfg.swav.seed, (0, 0))?;
    let source = MultiCropSource::new(&cfg, &data, 1)?;
    let per_epoch = source.batches_per_epoch();
    if per_epoch == 0 {
        bail!(
            "{}: fewer images than one batch of {}",
            dir.display(),
            args.batch
        );
    }
    let (mut done, mut epoch) = (0usize, 0usize);
    let mut started = None;
    while done < args.warmup + args.steps {
        for _batch in source.epoch(epoch, 0, 0)? {
            done += 1;
            if done == args.warmup {
                started = Some(Instant::now());
            }
            if done == args.warmup + args.steps {
                break;
            }
        }
        epoch += 1;
    }
    let secs = started.map_or(0.0, |t| t.elapsed().as_secs_f64()).max(1e-9);
    let images = (args.batch * args.steps) as f64;
    println!(
        "{}",
        serde_json::json!({
            "impl": "swav-rs", "check": "loader", "data": dir.display().to_string(),
            "augment": args.augment, "crops": args.crops, "batch": args.batch,
            "workers": cfg.data.workers, "threads": threads,
            "images_per_s": (images / secs * 10.0).round() / 10.0,
            "skipped": source.skipped().len(),
        })
    );
    Ok(())
}

pub(crate) fn parse_crops(s: &str) -> Result<Vec<(usize, usize)>> {
    s.split(',')
        .map(|c| {
            let (n, size) = c
                .split_once('x')
                .with_context(|| format!("crop `{c}` is not NxS"))?;
            Ok((n.trim().parse()?, size.trim().parse()?))
        })
        .collect()
}

/// Mixed precision on `group` as the trainer's `use_fp16` sets it: `f16` (loss scale 2^16),
/// `bf16`, or f32 (`None`).
pub(crate) fn set_amp(
    group: &mut WorkerGroup<swav_models::ResNet>,
    amp: Option<&str>,
) -> Result<()> {
    match amp {
        None => {}
        Some("f16") => {
            group.set_autocast(Some(burn::tensor::DType::F16));
            group.set_loss_scale(swav_train::LossScaler::INITIAL);
        }
        Some("bf16") => group.set_autocast(Some(burn::tensor::DType::BF16)),
        Some(other) => bail!("--amp takes f16 or bf16, not `{other}`"),
    }
    Ok(())
}

/// `workers` batches of `batch` images each, as the loader lays them out (one group per
/// resolution of `crops`, `(count, size)`), with seeded uniform values in [-2, 2].
pub(crate) fn random_batches(
    crops: &[(usize, usize)],
    batch: usize,
    workers: usize,
    seed: u64,
) -> Vec<Vec<CropGroupBatch>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..workers)
        .map(|_| {
            crops
                .iter()
                .map(|&(n, s)| CropGroupBatch {
                    size: s as u32,
                    count: n,
                    batch,
                    data: (0..n * batch * 3 * s * s)
                        .map(|_| rng.random_range(-2.0f32..2.0))
                        .collect(),
                })
                .collect()
        })
        .collect()
}

/// The peer's model (head 2048 -> 128, 3000 prototypes), drawn on the CPU and moved to
/// `device`: the same initial weights on every backend, so their losses compare (each backend's
/// own generator draws other numbers).
fn peer_model(
    args: &BenchArgs,
    device: &burn::tensor::Device,
) -> Result<swav_models::SwavModel<swav_models::ResNet>> {
    let spec = SwavModelSpec {
        arch: args.arch.clone(),
        base_width: args.base_width,
        cifar_stem: args.cifar_stem,
        hidden_mlp: 2048,
        feat_dim: 128,
        prototypes: vec![3000],
        backbone: serde_json::Value::Null,
    };
    let cpu = burn::tensor::Device::flex().autodiff();
    Ok(seeded_init(&cpu, 0, |d| spec.init(d))?.fork(device))
}

/// What the timed steps measured.
struct StepTimes {
    /// Seconds of the timed steps.
    timed_s: f64,
    /// Seconds of those spent combining gradients.
    exchange_s: f64,
    /// Seconds from the command's start to the end of the first step.
    first_step_s: Option<f64>,
    /// The last step's loss.
    loss: f64,
}

/// `--warmup` untimed steps, then `--steps` timed ones, of the trainer's step and update.
fn time_steps(
    args: &BenchArgs,
    mut model: swav_models::SwavModel<swav_models::ResNet>,
    group: &WorkerGroup<swav_models::ResNet>,
    batches: Vec<Vec<swav_data::CropGroupBatch>>,
    local: usize,
    started: Instant,
) -> Result<StepTimes> {
    let mut optim = Optimizer::new(OptimConfig {
        kind: OptimizerKind::Sgd,
        momentum: 0.9,
        weight_decay: 1e-6,
        trust: 0.001,
        exclude_bn_bias: false,
        clip: false,
    });
    let mut queues: Vec<_> = (0..local).map(|_| None).collect();
    let mut times = StepTimes {
        timed_s: 0.0,
        exchange_s: 0.0,
        first_step_s: None,
        loss: 0.0,
    };
    for i in 0..args.warmup + args.steps {
        let t = Instant::now();
        model = swav_train::normalize_heads(model);
        let out = group.step(&model, batches.clone(), &mut queues, false)?;
        times.loss = out.loss;
        model = optim.step(model, &out.grads, 0.1, &|_| false);
        model = out.with_running_stats(model);
        // From the command's start: device start-up, kernel compilation and autotuning, which
        // a kernel cache carried from an earlier run saves.
        times
            .first_step_s
            .get_or_insert(started.elapsed().as_secs_f64());
        if i >= args.warmup {
            times.timed_s += t.elapsed().as_secs_f64();
            times.exchange_s += out.combine_s;
        }
    }
    Ok(times)
}

/// Runs `cargo xtask bench`.
pub fn run(args: &BenchArgs) -> Result<()> {
    let crops = parse_crops(&args.crops)?;
    let n_crops: usize = crops.iter().map(|c| c.0).sum();
    if n_crops < 2 || args.batch == 0 || args.steps == 0 || args.workers == 0 {
        bail!("need at least 2 crops, a batch, a step and a worker");
    }
    if let Some(dir) = &args.loader {
        return loader_bench(args, dir, &crops);
    }
    if let Some(shape) = &args.probe {
        return probe_bench(args, shape);
    }
    let started = Instant::now();
    // Under mpirun: one worker per process (`--workers` is the number of processes).
    let processes = crate::processes()?;
    let workers = processes.as_ref().map_or(args.workers, |p| p.world_size());
    let rank = processes.as_ref().map_or(0, |p| p.rank());
    let mut cfg = TrainConfig::default();
    cfg.run.device = args.device.clone();
    cfg.swav.world_size = workers;
    let kernel_cache = swav_train::configure_kernel_cache(&cfg)?;
    let devices = devices_for(&cfg)?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let device = devices[0].clone().autodiff();
    let model = peer_model(args, &device)?;
    // The peer's loss settings: crops 0 and 1 assigned, T 0.1, epsilon 0.05, 3 iterations.
    let swav = SwavConfig {
        sync_bn: args.sync_bn,
        ..SwavConfig::default()
    };
    // The trainer's path: one worker thread per device, each with its batch of `--batch`
    // images as the loader makes them (one group per resolution, crop-major).
    let local = match &processes {
        Some(_) => 1,
        None => workers,
    };
    let mut group = match &processes {
        Some(p) => WorkerGroup::in_processes(devices[rank].clone(), &swav, args.batch, p.clone()),
        None => WorkerGroup::new(devices, &swav, args.batch),
    };
    set_amp(&mut group, args.amp.as_deref())?;
    let batches = random_batches(crops.as_slice(), args.batch, local, rank as u64);
    let times = time_steps(args, model, &group, batches, local, started)?;
    let (timed, exchange, first_step_s, last) = (
        times.timed_s,
        times.exchange_s,
        times.first_step_s,
        times.loss,
    );
    let images = (args.batch * workers * args.steps) as f64;
    if rank != 0 {
        // Rank 0 reports for the job.
        return Ok(());
    }
    let cache = crate::ALLOC.get().map(|a| a.stats());
    println!(
        "{}",
        serde_json::json!({
            "impl": "swav-rs", "backend": swav_engine::backend_name(&device), "kernel_cache": kernel_cache,
            "threads": threads, "workers": workers, "processes": processes.as_ref().map_or(1, |p| p.world_size()),
            "sync_bn": args.sync_bn,
            "amp": args.amp.as_deref().unwrap_or("off"),
            "arch": args.arch, "base_width": args.base_width, "cifar_stem": args.cifar_stem,
            "batch_per_worker": args.batch, "crops": args.crops, "device": args.device,
            "images_per_s": (images / timed * 10.0).round() / 10.0,
            "step_ms": (1000.0 * timed / args.steps as f64 * 100.0).round() / 100.0,
            "gradient_combine_ms": (1000.0 * exchange / args.steps as f64 * 100.0).round() / 100.0,
            "first_step_s": first_step_s.map(|t| (t * 100.0).round() / 100.0),
            "loss": last,
            "block_cache": cache.map(|c| serde_json::json!({
                "hits": c.hits, "misses": c.misses,
                "held_mib": c.held_bytes >> 20, "budget_mib": c.budget_bytes >> 20,
            })),
        })
    );
    Ok(())
}
