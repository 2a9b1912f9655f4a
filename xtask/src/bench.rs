//! `cargo xtask bench`: SwAV training-step throughput on random data, on the same shapes and
//! with the same step as `../shared/refs/torch_swav_step.py` (the PyTorch peer), so the two can
//! be timed on the same machine: prototype normalisation, multi-crop forward grouped by
//! resolution, Sinkhorn codes of crops 0 and 1 without gradient, swapped-prediction loss,
//! backward, SGD step (lr 0.1, momentum 0.9, wd 1e-6). Prints one JSON line per run.

use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::tensor::{Device, Distribution, Tensor};
use clap::Args;
use swav_core::{OptimizerKind, SwavConfig};
use swav_models::SwavModelSpec;
use swav_train::{OptimConfig, Optimizer, seeded_init};

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
    /// `cpu` (burn flex).
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

fn parse_crops(s: &str) -> Result<Vec<(usize, usize)>> {
    s.split(',')
        .map(|c| {
            let (n, size) = c
                .split_once('x')
                .with_context(|| format!("crop `{c}` is not NxS"))?;
            Ok((n.trim().parse()?, size.trim().parse()?))
        })
        .collect()
}

/// Runs `cargo xtask bench`.
pub fn run(args: &BenchArgs) -> Result<()> {
    if args.device != "cpu" {
        bail!(
            "--device {} is not built into this binary; the CPU (flex) is",
            args.device
        );
    }
    let crops = parse_crops(&args.crops)?;
    let n_crops: usize = crops.iter().map(|c| c.0).sum();
    if n_crops < 2 || args.batch == 0 || args.steps == 0 {
        bail!("need at least 2 crops, a batch and a step");
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let base = Device::flex();
    let device = base.clone().autodiff();
    // The peer's model: head 2048 -> 128, 3000 prototypes.
    let spec = SwavModelSpec {
        arch: args.arch.clone(),
        base_width: args.base_width,
        cifar_stem: args.cifar_stem,
        hidden_mlp: 2048,
        feat_dim: 128,
        prototypes: vec![3000],
    };
    let mut model = seeded_init(&device, 0, |d| spec.init(d))?;
    let mut optim = Optimizer::new(OptimConfig {
        kind: OptimizerKind::Sgd,
        momentum: 0.9,
        weight_decay: 1e-6,
        trust: 0.001,
        exclude_bn_bias: false,
    });
    // The peer's loss settings: crops 0 and 1 assigned, T 0.1, epsilon 0.05, 3 iterations.
    let swav = SwavConfig::default();
    // One tensor per resolution group, crop-major, as the loader makes them.
    let groups: Vec<Tensor<4>> = crops
        .iter()
        .map(|&(n, s)| {
            Tensor::random(
                [n * args.batch, 3, s, s],
                Distribution::Normal(0.0, 1.0),
                &device,
            )
        })
        .collect();
    let mut last = 0f32;
    let mut timed = 0f64;
    for i in 0..args.warmup + args.steps {
        let t = Instant::now();
        model = swav_train::normalize_heads(model);
        let (_, lo) = swav_train::forward_loss(&model, &groups, args.batch, &swav, None);
        last = lo.loss.clone().into_scalar::<f32>();
        let grads = lo.loss.backward();
        model = optim.step(model, &grads, 0.1, &|_| false);
        if i >= args.warmup {
            timed += t.elapsed().as_secs_f64();
        }
    }
    println!(
        "{}",
        serde_json::json!({
            "impl": "swav-rs", "backend": "burn flex (CPU)", "threads": threads,
            "arch": args.arch, "base_width": args.base_width, "cifar_stem": args.cifar_stem,
            "batch": args.batch, "crops": args.crops, "device": args.device,
            "images_per_s": ((args.batch * args.steps) as f64 / timed * 10.0).round() / 10.0,
            "step_ms": (1000.0 * timed / args.steps as f64 * 100.0).round() / 100.0,
            "loss": last,
        })
    );
    Ok(())
}
