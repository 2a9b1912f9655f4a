//! Criterion benchmark of `sinkhorn` on the CPU backend (flex) at the paper's sizes:
//! B = 4096 (the global batch of the headline run) and B = 256, K = 3000, 3 iterations.
//!
//! Run: `cargo bench -p swav-core --bench sinkhorn`

#![allow(missing_docs)] // criterion_group! generates an undocumented function.

use burn::tensor::{Device, Tensor, TensorData};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use swav_core::{SingleWorker, SinkhornConfig, sinkhorn};

fn scores(b: usize, k: usize, device: &Device) -> Tensor<2> {
    let mut rng = ChaCha8Rng::seed_from_u64(31);
    let v: Vec<f32> = (0..b * k).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    Tensor::from_data(TensorData::new(v, [b, k]), device)
}

fn bench(c: &mut Criterion) {
    let device = Device::flex();
    let cfg = SinkhornConfig::default();
    let mut group = c.benchmark_group("sinkhorn_flex");
    group.sample_size(20);
    for (b, k) in [(256, 3000), (4096, 3000)] {
        let s = scores(b, k, &device);
        group.bench_with_input(
            BenchmarkId::from_parameter(format!("{b}x{k}")),
            &s,
            |bench, s| {
                bench.iter(|| {
                    let codes = sinkhorn(s.clone(), &cfg, &SingleWorker);
                    // Reading one value forces the (possibly lazy) computation to finish.
                    codes.slice([0..1, 0..1]).into_scalar::<f32>()
                })
            },
        );
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default();
    targets = bench
}
criterion_main!(benches);
