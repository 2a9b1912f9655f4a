//! The step comparison that checks a GPU backend or a precision against the CPU
//! (`swav step-check`), on the CPU: it compares the loss, the codes and every gradient by name,
//! sees a fault in any one of them, and refuses records that do not line up.

use burn::tensor::{DType, Device};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use swav_core::SwavConfig;
use swav_data::CropGroupBatch;
use swav_models::SwavModelSpec;
use swav_train::compare::{CompareError, StepDiff, StepRecord, StepTolerance};
use swav_train::{WorkerGroup, normalize_heads, seeded_init};

fn swav() -> SwavConfig {
    SwavConfig {
        nmb_crops: vec![2, 1],
        size_crops: vec![16, 8],
        min_scale_crops: vec![0.3, 0.1],
        max_scale_crops: vec![1.0, 0.3],
        hidden_mlp: 16,
        feat_dim: 8,
        nmb_prototypes: vec![12],
        ..SwavConfig::default()
    }
}

/// One step of a narrow ResNet-18 with BatchNorm on a seeded batch of 6 images.
fn step(autocast: Option<DType>) -> StepRecord {
    let cfg = swav();
    let spec = SwavModelSpec {
        arch: "resnet18".into(),
        base_width: 4,
        cifar_stem: true,
        hidden_mlp: cfg.hidden_mlp,
        feat_dim: cfg.feat_dim,
        prototypes: cfg.nmb_prototypes.clone(),
        backbone: serde_json::Value::Null,
    };
    let cpu = Device::flex();
    let model =
        normalize_heads(seeded_init(&cpu.clone().autodiff(), 3, |d| spec.init(d)).expect("model"));
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let batch: Vec<CropGroupBatch> = cfg
        .nmb_crops
        .iter()
        .zip(&cfg.size_crops)
        .map(|(&count, &size)| CropGroupBatch {
            size: size as u32,
            count,
            batch: 6,
            data: (0..count * 6 * 3 * size * size)
                .map(|_| rng.random_range(-1.5f32..1.5))
                .collect(),
        })
        .collect();
    let mut group = WorkerGroup::new(vec![cpu], &cfg, 6);
    group.set_autocast(autocast);
    if autocast == Some(DType::F16) {
        group.set_loss_scale(1024.0);
    }
    let out = group
        .step_all_codes(&model, vec![batch], &mut [None])
        .expect("step");
    StepRecord::read(&model, &out)
}

const TIGHT: StepTolerance = StepTolerance {
    loss_rel: 1e-6,
    codes_max_abs: 1e-6,
    grads_rel: 1e-6,
    tensor_rel: 1e-6,
};

#[test]
fn the_same_step_twice_compares_equal_and_names_every_gradient() {
    let a = step(None);
    let b = step(None);
    assert!(a.grads.len() > 40, "{} gradients", a.grads.len());
    assert!(
        a.grads.iter().any(|g| g.path == "backbone.conv1.weight"),
        "paths: {:?}",
        a.grads.iter().map(|g| &g.path).take(5).collect::<Vec<_>>()
    );
    assert_eq!(a.codes.len(), 6 * 12);
    let d = StepDiff::between(&a, &b).expect("compare");
    assert_eq!((d.loss_rel, d.codes_max_abs, d.grads_rel), (0.0, 0.0, 0.0));
    assert!(d.exceeding(&TIGHT).is_empty());
}

#[test]
fn a_fault_in_the_loss_the_codes_or_one_gradient_is_seen_and_named() {
    let reference = step(None);
    let d = |r: &StepRecord| StepDiff::between(r, &reference).expect("compare");

    let mut loss = reference.clone();
    loss.loss *= 1.001;
    let e = d(&loss).exceeding(&TIGHT);
    assert!(e.len() == 1 && e[0].starts_with("loss"), "{e:?}");

    let mut codes = reference.clone();
    codes.codes[7] += 0.01;
    let e = d(&codes).exceeding(&TIGHT);
    assert!(e.len() == 1 && e[0].starts_with("codes"), "{e:?}");

    // One gradient doubled (what LARC's normalisation would hide in an update): its own
    // difference is 1, whatever its size, and it is named.
    let mut doubled = reference.clone();
    let i = doubled
        .grads
        .iter()
        .position(|g| g.path.ends_with("layer3.1.conv2.weight"))
        .expect("a layer3 gradient");
    doubled.grads[i].values.iter_mut().for_each(|v| *v *= 2.0);
    let diff = d(&doubled);
    let worst = diff.worst_gradient().expect("gradients");
    assert_eq!(worst.path, doubled.grads[i].path);
    assert!((worst.rel - 1.0).abs() < 1e-6, "{}", worst.rel);
    let e = diff.exceeding(&TIGHT);
    assert!(
        e.iter().any(|l| l.contains("layer3.1.conv2.weight")),
        "{e:?}"
    );
}

#[test]
fn records_that_do_not_line_up_are_refused() {
    let reference = step(None);
    let mut short = reference.clone();
    short.grads[3].values.pop();
    assert!(matches!(
        StepDiff::between(&short, &reference),
        Err(CompareError::Length { .. })
    ));
    let mut missing = reference.clone();
    missing.grads.remove(0);
    assert!(matches!(
        StepDiff::between(&missing, &reference),
        Err(CompareError::Parameters(_))
    ));
    let mut renamed = reference.clone();
    renamed.grads.swap(1, 2);
    assert!(matches!(
        StepDiff::between(&renamed, &reference),
        Err(CompareError::Parameters(_))
    ));
}

/// Half precision differs from f32 by its rounding: more than zero, and by more for bf16's
/// 8-bit mantissa than for f16's 11 bits.
#[test]
fn half_precision_steps_differ_from_f32_by_their_rounding() {
    let reference = step(None);
    let f16 = StepDiff::between(&step(Some(DType::F16)), &reference).expect("f16");
    let bf16 = StepDiff::between(&step(Some(DType::BF16)), &reference).expect("bf16");
    assert!(f16.loss_rel > 0.0 && f16.grads_rel > 1e-5, "{f16:?}");
    assert!(
        bf16.grads_rel > f16.grads_rel,
        "bf16 {} f16 {}",
        bf16.grads_rel,
        f16.grads_rel
    );
    assert!(f16.grads_rel < 0.5, "f16 gradients {}", f16.grads_rel);
}
