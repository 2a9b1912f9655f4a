//! `swav step-check`: one SwAV training step on `--device` (with `--amp` if asked) against the
//! same step on the CPU in f32, from the same initial weights and the same batch: the loss, the
//! codes and every parameter's gradient compared, printed as one JSON line; exit status 1 when a
//! difference exceeds its tolerance. The check that a GPU backend, a precision or a kernel
//! setting computes what the CPU computes.

use anyhow::{Context, Result, bail};
use burn::module::Module;
use clap::Args;
use swav_core::SwavConfig;
use swav_data::CropGroupBatch;
use swav_models::SwavModelSpec;
use swav_train::compare::{StepDiff, StepRecord, StepTolerance};
use swav_train::{TrainConfig, WorkerGroup, devices_for, seeded_init};

/// Options of `swav step-check`.
#[derive(Args, Debug)]
pub struct StepCheckArgs {
    /// The device checked: `wgpu`, `vulkan`, `cuda`, ... (or `cpu`, e.g. for `--amp` alone).
    #[arg(long, default_value = "wgpu")]
    pub device: String,
    /// Mixed precision on the checked side: `f16` (loss scale 2^16) or `bf16`.
    #[arg(long)]
    pub amp: Option<String>,
    /// Mixed precision on the reference side (the CPU), to measure a precision's own error.
    #[arg(long)]
    pub reference_amp: Option<String>,
    /// Data-parallel workers on each side, each with `--batch` images (on a GPU: devices r =
    /// 0..N of the API, or `--devices`).
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// The checked side's devices by rank, comma-separated (e.g. `wgpu,wgpu` for two workers
    /// sharing one adapter); overrides `--device`.
    #[arg(long, value_delimiter = ',')]
    pub devices: Vec<String>,
    /// Synchronised BatchNorm over the workers.
    #[arg(long)]
    pub sync_bn: bool,
    /// Backbone.
    #[arg(long, default_value = "resnet18")]
    pub arch: String,
    /// Base width of the ResNet.
    #[arg(long, default_value_t = 8)]
    pub base_width: usize,
    /// The ImageNet stem instead of the CIFAR one (3x3 stride 1, no max-pool).
    #[arg(long)]
    pub imagenet_stem: bool,
    /// Crops as `NxS,...`; the first two are the assignment crops.
    #[arg(long, default_value = "2x32")]
    pub crops: String,
    /// Images per worker.
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// Prototypes.
    #[arg(long, default_value_t = 256)]
    pub prototypes: usize,
    /// Seed of the weights and the batch.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Tolerances `LOSS,CODES,GRADS,TENSOR` (relative loss, largest code difference, relative
    /// L2 of all gradients, of any one gradient); default: the measured ones of the precision.
    #[arg(long, value_name = "LOSS,CODES,GRADS,TENSOR")]
    pub tolerance: Option<String>,
}

/// The tolerances of a precision on the checked side against the CPU in f32: about three times
/// the largest difference measured (docs/benchmarks.md, "Checking the GPU path on lavapipe").
/// f32: wgpu on lavapipe against the CPU, loss 8e-8, codes 4e-7, gradients 3.2e-3 together and
/// 6.6e-3 for the worst tensor (a BatchNorm scale: a ReLU whose input rounds to the other side
/// of zero changes the backward pass; fusion off gives the same). f16 and bf16: the CPU's own
/// autocast over three seeds, loss 8e-5 / 1.2e-3, codes 8e-4 / 4e-3, gradients 0.13 / 0.30
/// together and 0.30 / 0.73 for the worst tensor: the step's gradients at initialisation are
/// small sums of large terms, so the half type's rounding shows in them.
pub fn default_tolerance(amp: Option<&str>) -> StepTolerance {
    match amp {
        Some("bf16") => StepTolerance {
            loss_rel: 4e-3,
            codes_max_abs: 1.5e-2,
            grads_rel: 0.9,
            tensor_rel: 2.2,
        },
        Some(_) => StepTolerance {
            loss_rel: 3e-4,
            codes_max_abs: 3e-3,
            grads_rel: 0.4,
            tensor_rel: 0.9,
        },
        None => StepTolerance {
            loss_rel: 1e-5,
            codes_max_abs: 1e-5,
            grads_rel: 1e-2,
            tensor_rel: 3e-2,
        },
    }
}

fn parse_tolerance(s: &str) -> Result<StepTolerance> {
    let v: Vec<f64> = s
        .split(',')
        .map(|x| x.trim().parse::<f64>())
        .collect::<Result<_, _>>()
        .with_context(|| format!("--tolerance `{s}`: expected four numbers"))?;
    let [loss_rel, codes_max_abs, grads_rel, tensor_rel] = v[..] else {
        bail!("--tolerance `{s}`: expected LOSS,CODES,GRADS,TENSOR");
    };
    Ok(StepTolerance {
        loss_rel,
        codes_max_abs,
        grads_rel,
        tensor_rel,
    })
}

/// One side of the comparison: its devices and precision.
struct Side<'a> {
    devices: Vec<burn::tensor::Device>,
    amp: Option<&'a str>,
}

fn run_side(
    side: Side<'_>,
    model: &swav_models::SwavModel<swav_models::ResNet>,
    swav: &SwavConfig,
    args: &StepCheckArgs,
    batches: Vec<Vec<CropGroupBatch>>,
) -> Result<(StepRecord, String, f64)> {
    let device = side.devices[0].clone().autodiff();
    let model = swav_train::normalize_heads(model.clone().fork(&device));
    let mut group = WorkerGroup::new(side.devices, swav, args.batch);
    crate::bench::set_amp(&mut group, side.amp)?;
    let t = std::time::Instant::now();
    let step = group.step_all_codes(&model, batches, &mut vec![None; args.workers])?;
    let seconds = t.elapsed().as_secs_f64();
    if !step.grads_finite {
        bail!(
            "the step on {} gave non-finite gradients",
            swav_engine::backend_name(&device)
        );
    }
    Ok((
        StepRecord::read(&model, &step),
        swav_engine::backend_name(&device),
        seconds,
    ))
}

/// Runs `swav step-check`.
pub fn run(args: &StepCheckArgs) -> Result<()> {
    let crops = crate::bench::parse_crops(&args.crops)?;
    if crops.iter().map(|c| c.0).sum::<usize>() < 2 || args.batch == 0 || args.workers == 0 {
        bail!("need at least 2 crops, a batch and a worker");
    }
    let tolerance = match &args.tolerance {
        Some(s) => parse_tolerance(s)?,
        None => default_tolerance(args.amp.as_deref()),
    };
    let mut cfg = TrainConfig::default();
    cfg.run.device = args.device.clone();
    cfg.run.devices = args.devices.clone();
    cfg.swav.world_size = args.workers;
    if !cfg.run.devices.is_empty() && cfg.run.devices.len() != args.workers {
        bail!(
            "--devices names {} devices for {} workers",
            cfg.run.devices.len(),
            args.workers
        );
    }
    let kernel_cache = swav_train::configure_kernel_cache(&cfg)?;
    let checked = devices_for(&cfg)?;
    let spec = SwavModelSpec {
        arch: args.arch.clone(),
        base_width: args.base_width,
        cifar_stem: !args.imagenet_stem,
        hidden_mlp: 2048,
        feat_dim: 128,
        prototypes: vec![args.prototypes],
        backbone: serde_json::Value::Null,
    };
    let cpu = burn::tensor::Device::flex();
    let model = seeded_init(&cpu.clone().autodiff(), args.seed, |d| spec.init(d))?;
    let swav = SwavConfig {
        sync_bn: args.sync_bn,
        nmb_prototypes: vec![args.prototypes],
        ..SwavConfig::default()
    };
    let data =
        crate::bench::random_batches(&crops, args.batch, args.workers, args.seed.wrapping_add(1));
    let reference = Side {
        devices: vec![cpu; args.workers],
        amp: args.reference_amp.as_deref(),
    };
    let (b, b_backend, b_s) = run_side(reference, &model, &swav, args, data.clone())?;
    let side = Side {
        devices: checked,
        amp: args.amp.as_deref(),
    };
    let (a, a_backend, a_s) = run_side(side, &model, &swav, args, data)?;
    let diff = StepDiff::between(&a, &b)?;
    let exceeding = diff.exceeding(&tolerance);
    report(
        args,
        &diff,
        &exceeding,
        [&a_backend, &b_backend],
        [a_s, b_s],
        &kernel_cache,
        [a.loss, b.loss],
    );
    if !exceeding.is_empty() {
        bail!(
            "the step on {} differs from the CPU's: {}",
            args.device,
            exceeding.join("; ")
        );
    }
    Ok(())
}

fn report(
    args: &StepCheckArgs,
    diff: &StepDiff,
    exceeding: &[String],
    backends: [&str; 2],
    seconds: [f64; 2],
    kernel_cache: &Option<std::path::PathBuf>,
    losses: [f64; 2],
) {
    let mut worst: Vec<_> = diff.grads.iter().collect();
    worst.sort_by(|x, y| y.rel.total_cmp(&x.rel));
    for g in worst.iter().take(5) {
        eprintln!(
            "  {:<48} relative difference {:.3e} (norm {:.3e})",
            g.path, g.rel, g.norm
        );
    }
    let worst = worst.first();
    println!(
        "{}",
        serde_json::json!({
            "impl": "swav-rs", "check": "step", "device": args.device, "devices": args.devices,
            "amp": args.amp.as_deref().unwrap_or("off"),
            "reference_amp": args.reference_amp.as_deref().unwrap_or("off"),
            "backend": backends[0], "reference_backend": backends[1],
            "workers": args.workers, "sync_bn": args.sync_bn, "arch": args.arch,
            "base_width": args.base_width, "crops": args.crops, "batch": args.batch,
            "kernel_cache": kernel_cache, "gpu_build": swav_train::gpu_build(),
            "loss": losses[0], "reference_loss": losses[1],
            "loss_rel": diff.loss_rel, "codes_max_abs": diff.codes_max_abs,
            "codes_rel": diff.codes_rel, "grads_rel": diff.grads_rel,
            "worst_gradient": worst.map(|g| g.path.clone()),
            "worst_gradient_rel": worst.map(|g| g.rel),
            "gradients": diff.grads.len(),
            "step_s": seconds[0], "reference_step_s": seconds[1],
            "within_tolerance": exceeding.is_empty(),
        })
    );
}
