//! Data-parallel training on several CPU workers: one step on 2 workers with local batch B
//! equals one step on 1 worker with batch 2B (loss, codes, gradients, updated weights), and a
//! 2-worker run killed and resumed ends exactly where the uninterrupted run does. Workers in
//! separate processes under mpirun: `xtask/tests/mpi.rs`.

use std::path::Path;

use burn::module::{Module, ModuleVisitor, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Linear, LinearConfig, PaddingConfig2d};
use burn::optim::GradientsParams;
use burn::store::ModuleSnapshot;
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use swav_core::{OptimizerKind, SwavConfig};
use swav_data::CropGroupBatch;
use swav_models::{Backbone, ResNet, SwavModel, SwavModelSpec};
use swav_tinynet::TinyNet;

mod common;
use common::{Bypass, bits, tiny};
use swav_train::{
    OptimConfig, Optimizer, RunOptions, TrainConfig, TrainError, WorkerGroup, normalize_heads,
    open_data, seeded_init, spec_for, train,
};

/// A backbone without BatchNorm, so that per-worker statistics are out of the picture.
#[derive(Module, Debug)]
struct NoBn {
    conv: Conv2d,
    fc: Linear,
}

impl NoBn {
    fn new(device: &Device) -> Self {
        Self {
            conv: Conv2dConfig::new([3, 6], [3, 3])
                .with_padding(PaddingConfig2d::Same)
                .init(device),
            fc: LinearConfig::new(6, 12).init(device),
        }
    }
}

impl Backbone for NoBn {
    fn feature_dim(&self) -> usize {
        12
    }

    fn forward_features(&self, images: Tensor<4>) -> Tensor<2> {
        let x = relu(self.conv.forward(images));
        let [b, c, h, w] = x.dims();
        let pooled = x.reshape([b, c, h * w]).mean_dim(2).reshape([b, c]);
        relu(self.fc.forward(pooled))
    }
}

/// Two crops of 12 px and two of 6 px, two prototype heads, a one-layer head (no BatchNorm).
fn swav() -> SwavConfig {
    SwavConfig {
        nmb_crops: vec![2, 2],
        size_crops: vec![12, 6],
        min_scale_crops: vec![0.3, 0.1],
        max_scale_crops: vec![1.0, 0.3],
        hidden_mlp: 0,
        feat_dim: 8,
        nmb_prototypes: vec![10, 7],
        ..SwavConfig::default()
    }
}

/// Random crops for `ranks` workers of `b` images each, as the loader lays them out
/// (crop-major within each resolution group), and the same images as one batch of
/// `ranks x b` (worker 0's images first).
fn batches(
    cfg: &SwavConfig,
    ranks: usize,
    b: usize,
    seed: u64,
) -> (Vec<Vec<CropGroupBatch>>, Vec<CropGroupBatch>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut per_rank: Vec<Vec<CropGroupBatch>> = vec![Vec::new(); ranks];
    let mut whole = Vec::new();
    for (&count, &size) in cfg.nmb_crops.iter().zip(&cfg.size_crops) {
        let img = 3 * size * size;
        // values[rank][crop][image]
        let values: Vec<Vec<Vec<f32>>> = (0..ranks)
            .map(|_| {
                (0..count)
                    .map(|_| {
                        (0..b * img)
                            .map(|_| rng.random_range(-1.5f32..1.5))
                            .collect()
                    })
                    .collect()
            })
            .collect();
        for (rank, v) in values.iter().enumerate() {
            per_rank[rank].push(CropGroupBatch {
                size: size as u32,
                count,
                batch: b,
                data: v.concat(),
            });
        }
        let mut data = Vec::with_capacity(ranks * count * b * img);
        for crop in 0..count {
            for v in &values {
                data.extend_from_slice(&v[crop]);
            }
        }
        whole.push(CropGroupBatch {
            size: size as u32,
            count,
            batch: ranks * b,
            data,
        });
    }
    (per_rank, whole)
}

fn floats<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_to_vec_as::<f32>().expect("f32 values")
}

/// Every parameter's gradient, in visiting order.
fn grads_of<M: Module>(model: &M, grads: &GradientsParams) -> Vec<(String, Vec<f32>)> {
    struct V<'a> {
        grads: &'a GradientsParams,
        out: Vec<(String, Vec<f32>)>,
    }
    impl ModuleVisitor for V<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(g) = self.grads.get::<D>(param.id) {
                self.out.push((param.id.to_string(), floats(g)));
            }
        }
    }
    let mut v = V {
        grads,
        out: Vec::new(),
    };
    model.visit(&mut v);
    v.out
}

fn params_of<M: ModuleSnapshot + Module>(m: &M) -> Vec<(String, Vec<f32>)> {
    let mut v: Vec<(String, Vec<f32>)> = m
        .collect(None, None, false)
        .into_iter()
        .map(|t| {
            let name = t.name.clone();
            let bytes = t.into_bytes().expect("bytes");
            let values = bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            (name, values)
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Asserts every parameter's gradients agree to `tolerance` of their own scale, except where
/// that scale is rounding noise: the bias of the head's Linear before its BatchNorm has a
/// gradient of exactly zero in exact arithmetic (the normalisation removes any shift), so a
/// tensor is held to at least 1e-3 of the model's largest gradient. Returns that largest value.
fn grads_close(g1: &[(String, Vec<f32>)], g2: &[(String, Vec<f32>)], tolerance: f64) -> f64 {
    assert_eq!(g1.len(), g2.len());
    let model_scale = g1
        .iter()
        .flat_map(|(_, v)| v.iter())
        .fold(0f64, |m, x| m.max((*x as f64).abs()));
    for ((id, a), (_, b)) in g1.iter().zip(g2) {
        let own = a
            .iter()
            .chain(b)
            .fold(0f64, |m, &x| m.max((x as f64).abs()));
        let d = rel_diff(a, b) * own / own.max(1e-3 * model_scale);
        assert!(d < tolerance, "gradient of parameter {id} differs by {d}");
    }
    model_scale
}

/// Largest difference relative to the larger magnitude of the two vectors.
fn rel_diff(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let scale = a
        .iter()
        .chain(b)
        .fold(0f64, |m, &x| m.max((x as f64).abs()))
        .max(1e-12);
    a.iter()
        .zip(b)
        .fold(0f64, |m, (&x, &y)| m.max((x as f64 - y as f64).abs()))
        / scale
}

fn model(cfg: &SwavConfig, device: &Device) -> SwavModel<NoBn> {
    let spec = SwavModelSpec {
        arch: "nobn".into(),
        base_width: 0,
        cifar_stem: false,
        hidden_mlp: cfg.hidden_mlp,
        feat_dim: cfg.feat_dim,
        prototypes: cfg.nmb_prototypes.clone(),
        backbone: serde_json::Value::Null,
    };
    let m = seeded_init(device, 11, |d| -> Result<_, TrainError> {
        Ok(spec.wrap(NoBn::new(d), d)?)
    })
    .expect("model");
    normalize_heads(m)
}

fn sgd() -> Optimizer {
    Optimizer::new(OptimConfig {
        kind: OptimizerKind::Sgd,
        momentum: 0.9,
        weight_decay: 1e-4,
        trust: 0.001,
        exclude_bn_bias: false,
        clip: false,
    })
}

/// One step of `m` on 1 worker with the whole batch of `2 x b` images and on 2 workers with `b`
/// each (the same images); and the two halves.
fn one_and_two<E>(
    cfg: &SwavConfig,
    m: &SwavModel<E>,
    b: usize,
    seed: u64,
) -> (
    swav_train::ParallelStep,
    swav_train::ParallelStep,
    Vec<Vec<CropGroupBatch>>,
)
where
    E: Backbone + Module + burn::module::ModuleDisplay + 'static,
{
    let cpu = Device::flex();
    let (halves, whole) = batches(cfg, 2, b, seed);
    let one = WorkerGroup::new(vec![cpu.clone()], cfg, 2 * b);
    let two = WorkerGroup::new(vec![cpu.clone(), cpu], cfg, b);
    let single = one
        .step_all_codes(m, vec![whole], &mut [None])
        .expect("one worker");
    let pair = two
        .step_all_codes(m, halves.clone(), &mut [None, None])
        .expect("two workers");
    (single, pair, halves)
}

#[test]
fn two_workers_with_batch_b_step_as_one_worker_with_batch_2b() {
    let cfg = swav();
    let cpu = Device::flex();
    let device = cpu.clone().autodiff();
    let b = 6;
    let m = model(&cfg, &device);
    let (single, pair, halves) = one_and_two(&cfg, &m, b, 3);

    // The loss: the mean of the workers' losses is the loss of the whole batch.
    assert!(
        (single.loss - pair.loss).abs() <= 1e-5 * single.loss.abs(),
        "loss {} (1 worker) vs {} (2 workers: {:?})",
        single.loss,
        pair.loss,
        pair.worker_losses
    );
    assert!(
        (pair.worker_losses[0] - pair.worker_losses[1]).abs() > 1e-4,
        "the two halves should have different losses: {:?}",
        pair.worker_losses
    );

    // The codes: the distributed Sinkhorn on the halves is the Sinkhorn of the whole batch.
    let whole_codes = floats(single.codes[0].clone());
    let joined: Vec<f32> = pair.codes.iter().flat_map(|c| floats(c.clone())).collect();
    assert!(
        rel_diff(&whole_codes, &joined) < 1e-5,
        "codes differ by {}",
        rel_diff(&whole_codes, &joined)
    );
    // ... and not the Sinkhorn of one half alone: the reduction over workers matters.
    let alone = WorkerGroup::new(vec![cpu.clone()], &cfg, b);
    let half0 = alone
        .step_all_codes(&m, vec![halves[0].clone()], &mut [None])
        .expect("half alone");
    let local = floats(half0.codes[0].clone());
    assert!(
        rel_diff(&local, &joined[..local.len()]) > 1e-3,
        "the codes of worker 0 do not depend on worker 1's samples"
    );

    // The gradients, parameter by parameter.
    let g1 = grads_of(&m, &single.grads);
    let g2 = grads_of(&m, &pair.grads);
    assert_eq!(g1.len(), g2.len());
    assert!(g1.len() >= 5, "conv, fc, head and two prototype heads");
    for ((id, a), (_, b)) in g1.iter().zip(&g2) {
        let d = rel_diff(a, b);
        assert!(d < 1e-4, "gradient of parameter {id} differs by {d}");
    }

    // The updated weights after one optimiser step.
    let mut o1 = sgd();
    let mut o2 = sgd();
    let after1 = o1.step(m.clone(), &single.grads, 0.5, &|_| false);
    let after2 = o2.step(m.clone(), &pair.grads, 0.5, &|_| false);
    let before = params_of(&m);
    let (p1, p2) = (params_of(&after1), params_of(&after2));
    let mut moved = 0;
    for (((name, a), (_, b)), (_, z)) in p1.iter().zip(&p2).zip(&before) {
        assert!(
            rel_diff(a, b) < 1e-5,
            "{name} differs after the step by {}",
            rel_diff(a, b)
        );
        if rel_diff(a, z) > 1e-4 {
            moved += 1;
        }
    }
    assert!(moved >= 5, "the step changed only {moved} tensors");
}

/// A narrow ResNet-18 (BatchNorm in every block) under a head with BatchNorm1d.
fn resnet_model(cfg: &SwavConfig, device: &Device) -> SwavModel<ResNet> {
    let spec = SwavModelSpec {
        arch: "resnet18".into(),
        base_width: 4,
        cifar_stem: true,
        hidden_mlp: cfg.hidden_mlp,
        feat_dim: cfg.feat_dim,
        prototypes: cfg.nmb_prototypes.clone(),
        backbone: serde_json::Value::Null,
    };
    let m = seeded_init(device, 5, |d| spec.init(d)).expect("model");
    normalize_heads(m)
}

/// With synchronised BatchNorm, BatchNorm is out of the picture too: 2 workers x B step as
/// 1 worker x 2B with a ResNet and a BatchNorm head (loss, codes, every gradient, the running
/// statistics, the weights after a step); with per-worker statistics they do not.
#[test]
fn synchronised_batchnorm_steps_two_workers_as_one_with_the_whole_batch() {
    let cfg = SwavConfig {
        hidden_mlp: 16,
        sync_bn: true,
        ..swav()
    };
    let cpu = Device::flex();
    let m = resnet_model(&cfg, &cpu.clone().autodiff());
    let b = 5;
    let (single, pair, halves) = one_and_two(&cfg, &m, b, 21);

    let loss_diff = (single.loss - pair.loss).abs() / single.loss.abs();
    assert!(
        loss_diff <= 1e-5,
        "loss {} (1 worker) vs {} (2 workers)",
        single.loss,
        pair.loss
    );
    let joined: Vec<f32> = pair.codes.iter().flat_map(|c| floats(c.clone())).collect();
    let codes_diff = rel_diff(&floats(single.codes[0].clone()), &joined);
    assert!(codes_diff < 1e-4, "codes differ by {codes_diff}");

    let g1 = grads_of(&m, &single.grads);
    let g2 = grads_of(&m, &pair.grads);
    assert_eq!(g1.len(), g2.len());
    assert!(
        g1.len() > 60,
        "every conv, BatchNorm, head and prototype tensor"
    );
    let model_scale = grads_close(&g1, &g2, 1e-4);
    let head_bias = floats(
        single
            .grads
            .get::<1>(m.head.fc1.bias.as_ref().expect("fc1 has a bias").id)
            .expect("gradient"),
    );
    let bias_scale = head_bias.iter().fold(0f32, |m, x| m.max(x.abs())) as f64;
    assert!(
        bias_scale < 1e-5 * model_scale,
        "{bias_scale} vs {model_scale}"
    );

    // The running statistics: the global batch's, the same on both workers.
    assert!(single.running.len() > 40);
    for (id, v1) in &single.running {
        let v2 = &pair.running[id];
        let d = rel_diff(&floats(v1.clone()), &floats(v2.clone()));
        assert!(d < 1e-5, "running statistic {id} differs by {d}");
    }

    let after1 = sgd().step(m.clone(), &single.grads, 0.5, &|_| false);
    let after2 = sgd().step(m.clone(), &pair.grads, 0.5, &|_| false);
    // (Tensors initialised to zero, BatchNorm's beta, hold the step alone: the gradient's 1e-4.)
    for ((name, a), (_, b)) in params_of(&after1).iter().zip(&params_of(&after2)) {
        let d = rel_diff(a, b);
        assert!(d < 1e-4, "{name} differs after the step by {d}");
    }

    // Per-worker statistics: each half normalised by itself is another computation.
    let local = SwavConfig {
        sync_bn: false,
        ..cfg.clone()
    };
    let per_worker = WorkerGroup::new(vec![cpu.clone(), cpu.clone()], &local, b);
    let unsynced = per_worker
        .step_all_codes(&m, halves, &mut [None, None])
        .expect("per-worker statistics");
    let gap = (single.loss - unsynced.loss).abs() / single.loss.abs();
    let first = |s: &swav_train::ParallelStep| {
        floats(
            s.grads
                .get::<4>(m.backbone.conv1.weight.id)
                .expect("stem gradient"),
        )
    };
    let stem_gap = rel_diff(&first(&single), &first(&unsynced));
    assert!(
        gap > 1e-4 || stem_gap > 1e-3,
        "per-worker statistics should change the step (loss {gap}, stem gradient {stem_gap})"
    );
}

/// Synchronised BatchNorm reaches a backbone from another crate through the layer API: with
/// tinynet, 2 workers x B step as 1 worker x 2B (loss, codes, every gradient) and no layer is
/// reported unsynchronised; with per-worker statistics the step differs. A backbone with one
/// BatchNorm outside the layer API gets that layer named, by path.
#[test]
fn synchronised_batchnorm_reaches_tinynet_and_names_a_layer_that_bypasses_it() {
    let cfg = SwavConfig {
        hidden_mlp: 16,
        sync_bn: true,
        ..swav()
    };
    let cpu = Device::flex();
    let dev = cpu.clone().autodiff();
    let build = |d: &Device| -> Result<TinyNet, TrainError> { Ok(TinyNet::new(4, d)) };
    let m = normalize_heads(
        seeded_init(&dev, 9, |d| -> Result<SwavModel<TinyNet>, TrainError> {
            Ok(SwavModel::new(
                build(d)?,
                16,
                cfg.feat_dim,
                &cfg.nmb_prototypes,
                d,
            ))
        })
        .expect("model"),
    );
    let b = 5;
    let (single, pair, halves) = one_and_two(&cfg, &m, b, 31);
    assert!(
        pair.unsynchronised_batch_norms.is_empty(),
        "{:?}",
        pair.unsynchronised_batch_norms
    );
    let loss_diff = (single.loss - pair.loss).abs() / single.loss.abs();
    assert!(loss_diff <= 1e-5, "loss {} vs {}", single.loss, pair.loss);
    let joined: Vec<f32> = pair.codes.iter().flat_map(|c| floats(c.clone())).collect();
    assert!(rel_diff(&floats(single.codes[0].clone()), &joined) < 1e-4);
    // The bias of the head's Linear before its BatchNorm has a gradient of exactly zero in
    // exact arithmetic (the normalisation removes any shift): rounding noise on both sides.
    let head_bias = m
        .head
        .fc1
        .bias
        .as_ref()
        .expect("fc1 has a bias")
        .id
        .to_string();
    let without_bias = |g: Vec<(String, Vec<f32>)>| -> Vec<(String, Vec<f32>)> {
        g.into_iter().filter(|(id, _)| *id != head_bias).collect()
    };
    let g1 = without_bias(grads_of(&m, &single.grads));
    let g2 = without_bias(grads_of(&m, &pair.grads));
    assert!(g1.len() >= 12, "convolutions, BatchNorms, head, prototypes");
    grads_close(&g1, &g2, 1e-4);

    let local = SwavConfig {
        sync_bn: false,
        ..cfg.clone()
    };
    let per_worker = WorkerGroup::new(vec![cpu.clone(), cpu.clone()], &local, b);
    let unsynced = per_worker
        .step_all_codes(&m, halves.clone(), &mut [None, None])
        .expect("per-worker statistics");
    let stem = |s: &swav_train::ParallelStep| {
        floats(
            s.grads
                .get::<4>(m.backbone.block1.conv.weight.id)
                .expect("stem gradient"),
        )
    };
    assert!(
        rel_diff(&stem(&single), &stem(&unsynced)) > 1e-3,
        "per-worker statistics should change the step"
    );

    // The same network with block 1's BatchNorm outside the layer API.
    let bypass = SwavModel {
        backbone: Bypass {
            net: m.backbone.clone(),
        },
        head: m.head.clone(),
        prototypes: m.prototypes.clone(),
    };
    let two = WorkerGroup::new(vec![cpu.clone(), cpu], &cfg, b);
    let step = two
        .step_all_codes(&bypass, halves, &mut [None, None])
        .expect("two workers");
    assert_eq!(
        step.unsynchronised_batch_norms,
        vec!["backbone.net.block1.bn".to_string()]
    );
}

/// Mixed precision (the GPU path, run here on the CPU backend for its numbers): with the
/// convolutions and head in bf16 or f16, the loss and the gradient (all parameters together)
/// stay close to f32's, the codes are f32; f16's loss scale is divided out exactly (two scales
/// give the same gradients), and a scale that overflows f16 is reported instead of applied.
#[test]
fn mixed_precision_steps_close_to_f32() {
    use burn::tensor::DType;
    let cfg = SwavConfig {
        hidden_mlp: 16,
        ..swav()
    };
    let cpu = Device::flex();
    let m = resnet_model(&cfg, &cpu.clone().autodiff());
    let (halves, _) = batches(&cfg, 1, 6, 31);
    let batch = halves[0].clone();
    let mut group = WorkerGroup::new(vec![cpu.clone()], &cfg, 6);
    let mut step = |dtype: Option<DType>, scale: f64| {
        group.set_autocast(dtype);
        group.set_loss_scale(scale);
        group
            .step_all_codes(&m, vec![batch.clone()], &mut [None])
            .expect("step")
    };
    let reference = step(None, 1.0);
    let all = |s: &swav_train::ParallelStep| -> Vec<f32> {
        grads_of(&m, &s.grads)
            .into_iter()
            .flat_map(|(_, g)| g)
            .collect()
    };
    let g_ref = all(&reference);
    let norm = |v: &[f32]| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let cosine = |a: &[f32], b: &[f32]| {
        let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
        dot / (norm(a) * norm(b)).max(1e-30)
    };
    // (type, loss scale, loss tolerance, least cosine): bf16 keeps 8 bits of mantissa, f16 11.
    // Measured on this tiny net at initialisation (batch 6, 12-px crops, the Sinkhorn's 1/ε =
    // 20 sharpening the scores' rounding): bf16 loss 0.8 % off, cosine 0.81, norm ratio 0.90;
    // f16 0.16 %, 0.986, 1.01.
    let cases = [
        (DType::BF16, 1.0, 0.02, 0.7),
        (DType::F16, 1024.0, 0.005, 0.95),
    ];
    let mut f16_grads = Vec::new();
    for (dtype, scale, tolerance, least) in cases {
        let half = step(Some(dtype), scale);
        assert!(half.grads_finite, "{dtype:?}");
        let rel = (half.loss - reference.loss).abs() / reference.loss.abs();
        assert!(
            rel < tolerance,
            "{dtype:?}: loss {} vs {}",
            half.loss,
            reference.loss
        );
        assert_eq!(half.codes[0].dtype(), DType::F32, "codes in f32");
        let g = all(&half);
        assert_eq!(g.len(), g_ref.len());
        let c = cosine(&g, &g_ref);
        let ratio = norm(&g) / norm(&g_ref);
        assert!(c > least, "{dtype:?}: gradient cosine {c} with f32's");
        assert!(
            (ratio - 1.0).abs() < 0.2,
            "{dtype:?}: gradient norm ratio {ratio} (unscaled?)"
        );
        if dtype == DType::F16 {
            f16_grads = g;
        }
    }
    // Another power-of-two scale: the same gradients (scaling by 2^k is exact in f16 where
    // nothing underflows or overflows).
    let rescaled = all(&step(Some(DType::F16), 8192.0));
    let d = rel_diff(&rescaled, &f16_grads);
    assert!(d < 1e-3, "loss scale 8192 vs 1024: gradients differ by {d}");
    // A scale that overflows f16 (its largest value is 65504).
    let over = step(Some(DType::F16), 1e12);
    assert!(!over.grads_finite, "an f16 overflow must be reported");
}

#[test]
fn three_workers_step_as_one_worker_with_the_three_batches() {
    let cfg = SwavConfig {
        nmb_crops: vec![2],
        size_crops: vec![8],
        min_scale_crops: vec![0.3],
        max_scale_crops: vec![1.0],
        ..swav()
    };
    let cpu = Device::flex();
    let m = model(&cfg, &cpu.clone().autodiff());
    let b = 4;
    let (parts, whole) = batches(&cfg, 3, b, 9);
    let one = WorkerGroup::new(vec![cpu.clone()], &cfg, 3 * b);
    let three = WorkerGroup::new(vec![cpu.clone(); 3], &cfg, b);
    let single = one
        .step_all_codes(&m, vec![whole], &mut [None])
        .expect("one");
    let triple = three
        .step_all_codes(&m, parts, &mut [None, None, None])
        .expect("three");
    assert!((single.loss - triple.loss).abs() <= 1e-5 * single.loss.abs());
    let joined: Vec<f32> = triple
        .codes
        .iter()
        .flat_map(|c| floats(c.clone()))
        .collect();
    assert!(rel_diff(&floats(single.codes[0].clone()), &joined) < 1e-5);
    for ((id, a), (_, b)) in grads_of(&m, &single.grads)
        .iter()
        .zip(&grads_of(&m, &triple.grads))
    {
        assert!(rel_diff(a, b) < 1e-4, "gradient of {id}");
    }
}

#[test]
fn a_group_refuses_a_step_with_the_wrong_number_of_batches() {
    let cfg = swav();
    let cpu = Device::flex();
    let m = model(&cfg, &cpu.clone().autodiff());
    let (halves, _) = batches(&cfg, 2, 2, 1);
    let three = WorkerGroup::new(vec![cpu; 3], &cfg, 2);
    let err = three
        .step(&m, halves, &mut [None, None, None], false)
        .expect_err("2 batches for 3 workers");
    assert!(err.to_string().contains("3 workers"), "{err}");
}

/// A backbone that panics on images holding a value above 100.
#[derive(Module, Debug)]
struct Explosive {
    inner: NoBn,
}

impl Backbone for Explosive {
    fn feature_dim(&self) -> usize {
        self.inner.feature_dim()
    }

    fn forward_features(&self, images: Tensor<4>) -> Tensor<2> {
        let max = images.clone().max().into_scalar::<f32>();
        assert!(max <= 100.0, "exploded on a pixel of {max}");
        self.inner.forward_features(images)
    }
}

#[test]
fn a_worker_that_fails_stops_the_step_with_an_error_instead_of_a_hang() {
    let cfg = swav();
    let cpu = Device::flex();
    let device = cpu.clone().autodiff();
    let spec = SwavModelSpec {
        arch: "explosive".into(),
        base_width: 0,
        cifar_stem: false,
        hidden_mlp: cfg.hidden_mlp,
        feat_dim: cfg.feat_dim,
        prototypes: cfg.nmb_prototypes.clone(),
        backbone: serde_json::Value::Null,
    };
    // Through `seeded_init`, like every initialisation here: an unseeded draw from the shared
    // device generator would interleave with another test's seeded one.
    let m = seeded_init(&device, 5, |d| -> Result<_, TrainError> {
        Ok(spec.wrap(
            Explosive {
                inner: NoBn::new(d),
            },
            d,
        )?)
    })
    .map(normalize_heads)
    .expect("model");
    let (mut halves, _) = batches(&cfg, 2, 3, 5);
    halves[1][0].data[7] = 1000.0;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let group = WorkerGroup::new(vec![cpu.clone(), cpu], &cfg, 3);
        let first = group.step(&m, halves.clone(), &mut [None, None], false);
        // The group stays stopped: the next step fails too, at once.
        let second = group.step(&m, halves, &mut [None, None], false);
        drop(tx.send((first.map(|_| ()), second.map(|_| ()))));
    });
    let (first, second) = rx
        .recv_timeout(std::time::Duration::from_secs(120))
        .expect("the step returned instead of hanging");
    let e = first.expect_err("worker 1 panicked").to_string();
    assert!(e.contains("worker 1: exploded on a pixel of 1000"), "{e}");
    assert!(second.is_err());
}

/// The run of `tests/run.rs` on 2 workers of 8 images: 64 images, 32 per worker, 4 iterations
/// per epoch, 3 epochs, a queue from epoch 1 (each worker its own), a checkpoint every 3
/// iterations.
fn tiny_parallel(out: &Path) -> TrainConfig {
    let mut c = tiny(out);
    c.swav.world_size = 2;
    c.swav.batch_size = 8;
    c
}

fn run(config: &TrainConfig, stop_after: Option<usize>) -> swav_train::TrainOutcome<ResNet> {
    let (model, summary) = common::run(config, stop_after);
    swav_train::TrainOutcome { model, summary }
}

#[test]
fn a_two_worker_run_killed_and_resumed_ends_where_the_uninterrupted_run_does() {
    let dir = tempfile::tempdir().expect("tempdir");
    let full = run(&tiny_parallel(&dir.path().join("full")), None);
    assert!(full.summary.completed);
    assert_eq!(full.summary.iterations, 12, "32 images per worker / 8");
    assert!(
        full.summary.batchnorm.contains("2 workers"),
        "{}",
        full.summary.batchnorm
    );
    let metrics =
        std::fs::read_to_string(dir.path().join("full").join("metrics.jsonl")).expect("metrics");
    assert!(metrics.contains("\"workers\":2"));
    // Both workers' queues are in the checkpoint.
    let ckpt = swav_models::read_checkpoint(dir.path().join("full").join("checkpoint.bpk"))
        .expect("checkpoint");
    assert!(ckpt.arrays.contains_key("queue"));
    assert!(ckpt.arrays.contains_key("queue.rank1"));
    let reference = bits(&full.model);
    // The running statistics reached the coordinator's model (they start at 0 and 1).
    let (_, mean) = reference
        .iter()
        .find(|(n, _)| n == "backbone.bn1.running_mean")
        .expect("stem BatchNorm");
    assert!(mean.iter().any(|&b| b != 0), "running mean never updated");

    // Killed after 5 iterations (checkpoint at 3, in epoch 1 with both queues live from
    // epoch 1 on: killed after 6, checkpoint at 6).
    for kill in [5, 7] {
        let cfg = tiny_parallel(&dir.path().join(format!("killed{kill}")));
        assert!(!run(&cfg, Some(kill)).summary.completed);
        let resumed = run(&cfg, None);
        assert!(resumed.summary.completed);
        assert!(resumed.summary.resumed_from_iteration.is_some());
        let got = bits(&resumed.model);
        assert_eq!(got.len(), reference.len());
        for ((n1, b1), (n2, b2)) in got.iter().zip(&reference) {
            assert_eq!(n1, n2);
            assert!(
                b1 == b2,
                "killed after {kill}: tensor {n1} differs from the uninterrupted run"
            );
        }
    }

    // A checkpoint of 2 workers does not resume a run of 1.
    let mut one = tiny_parallel(&dir.path().join("killed5"));
    one.swav.world_size = 1;
    one.swav.batch_size = 16;
    let data = open_data(&one.data, one.swav.seed, (0, 0)).expect("data");
    let spec = spec_for(&one);
    let err = train(
        &one,
        &data,
        move |d: &Device| Ok(spec.resnet()?.init(d)?),
        &RunOptions::default(),
    )
    .err()
    .expect("refused");
    assert!(err.to_string().contains("world_size"), "{err}");
}
