//! Forward + backward throughput of the backbones on the CPU backend (flex), next to PyTorch
//! on the same machine and threads (`torch_train_step.py` beside this file):
//! ResNet-18 with the CIFAR stem at 32 px, batch 64, and ResNet-50 at 224 px, batch 32.
//!
//! Run: `cargo bench -p swav-models --bench train_step` (flex uses the machine's cores).

use std::time::Instant;

use burn::tensor::{Device, Distribution, Tensor};
use swav_models::{Backbone, ResNetConfig};

/// As in the xtask binary: large freed blocks are reused (`SWAV_BLOCK_CACHE_MB=0` turns it off).
#[global_allocator]
static ALLOC: swav_engine::BlockCache = swav_engine::BlockCache::new();

fn measure(name: &str, cfg: ResNetConfig, batch: usize, side: usize, iters: usize) {
    let device = Device::flex().autodiff();
    let net = cfg.init(&device).expect("config");
    let x = Tensor::<4>::random(
        [batch, 3, side, side],
        Distribution::Normal(0.0, 1.0),
        &device,
    );
    let step = || {
        let loss = net.forward_features(x.clone()).sum();
        let grads = loss.backward();
        // Reading one gradient forces the whole backward pass to finish.
        let g = net.conv1.weight.val().grad(&grads).expect("gradient");
        g.sum().into_scalar::<f32>()
    };
    step();
    let start = Instant::now();
    for _ in 0..iters {
        step();
    }
    let dt = start.elapsed().as_secs_f64() / iters as f64;
    println!(
        "{name}: {:.1} images/s ({:.2} s per step of {batch})",
        batch as f64 / dt,
        dt
    );
}

fn main() {
    // `cargo bench -p swav-models --bench train_step -- resnet18` runs the matching one only.
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let wanted = |name: &str| filter.is_empty() || filter.iter().any(|f| name.contains(f.as_str()));
    let r18 = "resnet18-cifar 32px batch 64";
    if wanted(r18) {
        let cfg = ResNetConfig {
            cifar_stem: true,
            ..ResNetConfig::new(18)
        };
        measure(r18, cfg, 64, 32, 3);
    }
    let r50 = "resnet50 224px batch 32";
    if wanted(r50) {
        measure(r50, ResNetConfig::new(50), 32, 224, 1);
    }
}
