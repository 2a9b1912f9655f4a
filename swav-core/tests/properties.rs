//! Property tests of the Sinkhorn codes and the swapped-prediction loss: the invariants the
//! method relies on, checked on random inputs.

mod common;

use burn::tensor::{Device, FloatDType, Tensor, TensorData};
use common::{device, max_abs_diff, tensor2, values};
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use swav_core::{
    AssignmentCodes, LocalGroup, SingleWorker, SinkhornConfig, sinkhorn, swapped_prediction_loss,
    swav_loss,
};

/// Cosine-like scores in [-1, 1] from a seed.
fn random_scores(b: usize, k: usize, seed: u64) -> Vec<f64> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..b * k).map(|_| rng.random_range(-1.0..1.0)).collect()
}

fn row_sums(v: &[f64], k: usize) -> Vec<f64> {
    v.chunks(k).map(|r| r.iter().sum()).collect()
}

fn col_sums(v: &[f64], k: usize) -> Vec<f64> {
    let mut s = vec![0.0; k];
    for r in v.chunks(k) {
        for (a, x) in s.iter_mut().zip(r) {
            *a += x;
        }
    }
    s
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 48,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn codes_are_non_negative_and_rows_sum_to_one(
        b in 1usize..40, k in 1usize..30, iters in 1usize..6, seed in any::<u64>()
    ) {
        let d = device();
        let cfg = SinkhornConfig { iterations: iters, ..SinkhornConfig::default() };
        let codes = values(sinkhorn(tensor2(&random_scores(b, k, seed), b, k, &d), &cfg, &SingleWorker));
        prop_assert!(codes.iter().all(|&x| x >= 0.0 && x.is_finite()));
        for s in row_sums(&codes, k) {
            prop_assert!((s - 1.0).abs() < 1e-5, "row sum {}", s);
        }
    }

    #[test]
    fn each_prototype_gets_b_over_k_after_enough_iterations(
        b in 2usize..40, k in 1usize..12, seed in any::<u64>()
    ) {
        let d = device();
        // A softer epsilon converges in fewer iterations; equipartition is the fixed point either way.
        let cfg = SinkhornConfig { epsilon: 0.5, iterations: 200, ..SinkhornConfig::default() };
        let codes = values(sinkhorn(tensor2(&random_scores(b, k, seed), b, k, &d), &cfg, &SingleWorker));
        let target = b as f64 / k as f64;
        for s in col_sums(&codes, k) {
            prop_assert!((s - target).abs() < 1e-3 * target.max(1.0), "prototype mass {} vs {}", s, target);
        }
    }

    #[test]
    fn adding_a_constant_changes_nothing(
        b in 1usize..30, k in 1usize..20, shift in -60.0f64..60.0, seed in any::<u64>()
    ) {
        let d = device();
        let cfg = SinkhornConfig::default();
        let s = random_scores(b, k, seed);
        let shifted: Vec<f64> = s.iter().map(|x| x + shift).collect();
        let a = values(sinkhorn(tensor2(&s, b, k, &d), &cfg, &SingleWorker));
        let c = values(sinkhorn(tensor2(&shifted, b, k, &d), &cfg, &SingleWorker));
        // f32 rounding of the shifted scores (|shift| up to 60, eps 0.05) bounds the agreement.
        prop_assert!(max_abs_diff(&a, &c) < 2e-4, "diff {}", max_abs_diff(&a, &c));
    }

    #[test]
    fn permuting_samples_permutes_codes(
        b in 2usize..30, k in 1usize..20, seed in any::<u64>()
    ) {
        let d = device();
        let cfg = SinkhornConfig::default();
        let s = random_scores(b, k, seed);
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed);
        let mut perm: Vec<usize> = (0..b).collect();
        for i in (1..b).rev() {
            perm.swap(i, rng.random_range(0..=i));
        }
        let permuted: Vec<f64> = perm.iter().flat_map(|&i| s[i * k..(i + 1) * k].to_vec()).collect();
        let a = values(sinkhorn(tensor2(&s, b, k, &d), &cfg, &SingleWorker));
        let p = values(sinkhorn(tensor2(&permuted, b, k, &d), &cfg, &SingleWorker));
        let a_perm: Vec<f64> = perm.iter().flat_map(|&i| a[i * k..(i + 1) * k].to_vec()).collect();
        prop_assert!(max_abs_diff(&a_perm, &p) < 1e-6);
    }

    #[test]
    fn n_workers_equal_one_worker_on_the_whole_batch(
        world in 2usize..=3, half in 1usize..20, k in 1usize..16, iters in 1usize..5, seed in any::<u64>()
    ) {
        let b = world * half;
        let s = random_scores(b, k, seed);
        let cfg = SinkhornConfig { iterations: iters, ..SinkhornConfig::default() };
        let whole = values(sinkhorn(tensor2(&s, b, k, &device()), &cfg, &SingleWorker));
        let workers = LocalGroup::workers(world);
        let halves: Vec<Vec<f64>> = std::thread::scope(|scope| {
            let handles: Vec<_> = workers.into_iter().enumerate().map(|(rank, w)| {
                let part = s[rank * half * k..(rank + 1) * half * k].to_vec();
                scope.spawn(move || {
                    let d = Device::flex();
                    values(sinkhorn(tensor2(&part, half, k, &d), &cfg, &w))
                })
            }).collect();
            handles.into_iter().map(|h| h.join().expect("worker")).collect()
        });
        let joined: Vec<f64> = halves.concat();
        prop_assert!(max_abs_diff(&whole, &joined) < 1e-6, "diff {}", max_abs_diff(&whole, &joined));
    }
}

#[test]
fn uniform_scores_give_loss_ln_k() {
    let d = device();
    for (bs, k, n_crops) in [(4, 10, 2), (8, 3000, 4), (3, 7, 8)] {
        let scores = Tensor::<2>::full([n_crops * bs, k], 0.37, &d);
        let unused = Tensor::<2>::zeros([1, 1], &d);
        let out = swav_loss(
            scores,
            unused.clone(),
            unused,
            bs,
            &[0, 1],
            0.1,
            &SinkhornConfig::default(),
            None,
            &SingleWorker,
        );
        let loss = values(out.loss)[0];
        let want = (k as f64).ln();
        assert!(
            (loss - want).abs() < 1e-4,
            "K={k}: loss {loss} vs ln K {want}"
        );
    }
}

#[test]
fn gradients_reach_the_predicting_crops_and_not_the_codes() {
    let d = device().autodiff();
    let (bs, k, t) = (5, 6, 0.1);
    let s = random_scores(2 * bs, k, 7);
    let scores = tensor2(&s, 2 * bs, k, &d).require_grad();
    let unused = Tensor::<2>::zeros([1, 1], &d);
    let out = swav_loss(
        scores.clone(),
        unused.clone(),
        unused,
        bs,
        &[0],
        t,
        &SinkhornConfig::default(),
        None,
        &SingleWorker,
    );
    let codes = values(out.codes[0][0].codes.clone());
    let grads = out.loss.backward();
    let g = values(scores.grad(&grads).expect("scores get a gradient"));

    // Crop 0 only supplies the codes: if gradient flowed through the Sinkhorn it would be
    // non-zero here.
    assert!(
        g[..bs * k].iter().all(|&x| x == 0.0),
        "no gradient through the codes"
    );
    // Crop 1 predicts the codes: d/ds = (softmax(s / T) - q) / (T B).
    let mut expected = Vec::with_capacity(bs * k);
    for b in 0..bs {
        let row = &s[(bs + b) * k..(bs + b + 1) * k];
        let m = row.iter().cloned().fold(f64::MIN, f64::max);
        let e: Vec<f64> = row.iter().map(|x| ((x - m) / t).exp()).collect();
        let z: f64 = e.iter().sum();
        for j in 0..k {
            expected.push((e[j] / z - codes[b * k + j]) / (t * bs as f64));
        }
    }
    let diff = max_abs_diff(&g[bs * k..], &expected);
    assert!(diff < 1e-5, "gradient of the predicting crop: {diff:e}");
}

#[test]
fn loss_of_precomputed_codes_averages_over_assignment_crops() {
    // Two assignment crops with the same codes on identical scores give the same loss as one.
    let d = device();
    let (bs, k) = (3, 4);
    let s = random_scores(bs, k, 3);
    let block = tensor2(&s, bs, k, &d);
    let scores = Tensor::cat(vec![block.clone(), block.clone(), block.clone()], 0);
    let q = sinkhorn(block, &SinkhornConfig::default(), &SingleWorker);
    let one = swapped_prediction_loss(
        scores.clone(),
        bs,
        &[AssignmentCodes {
            crop: 0,
            codes: q.clone(),
        }],
        0.1,
    );
    let two = swapped_prediction_loss(
        scores,
        bs,
        &[
            AssignmentCodes {
                crop: 0,
                codes: q.clone(),
            },
            AssignmentCodes { crop: 1, codes: q },
        ],
        0.1,
    );
    assert!((values(one)[0] - values(two)[0]).abs() < 1e-6);
}

#[test]
fn half_precision_scores_are_computed_in_f32_without_overflow() {
    let d = device();
    let (b, k) = (16, 8);
    let s = random_scores(b, k, 11);
    let cfg = SinkhornConfig::default();
    let full = values(sinkhorn(tensor2(&s, b, k, &d), &cfg, &SingleWorker));
    for dtype in [FloatDType::F16, FloatDType::BF16] {
        // exp(1 / 0.05) = 4.9e8 overflows f16 (max 65504): computed in f16 this would be inf/NaN.
        let half = tensor2(&s, b, k, &d).cast(dtype);
        let codes = sinkhorn(half, &cfg, &SingleWorker);
        assert_eq!(
            codes.dtype(),
            burn::tensor::DType::from(dtype),
            "codes come back in the scores' type"
        );
        let got = values(codes);
        assert!(got.iter().all(|x| x.is_finite()), "{dtype:?}: finite codes");
        // The only error left is the rounding of the inputs and outputs to 16 bits.
        assert!(
            max_abs_diff(&full, &got) < 0.05,
            "{dtype:?}: {}",
            max_abs_diff(&full, &got)
        );
    }
}

#[test]
fn zero_mass_prototypes_stay_zero_instead_of_nan() {
    let d = device();
    let (b, k) = (6, 4);
    let mut s = random_scores(b, k, 5);
    // Prototype 3 is so far below every other score that exp underflows to exactly 0.
    for r in 0..b {
        s[r * k + 3] = -1.0e4;
    }
    let codes = values(sinkhorn(
        tensor2(&s, b, k, &d),
        &SinkhornConfig::default(),
        &SingleWorker,
    ));
    assert!(codes.iter().all(|x| x.is_finite()));
    for r in 0..b {
        assert_eq!(codes[r * k + 3], 0.0);
    }
    for sum in row_sums(&codes, k) {
        assert!((sum - 1.0).abs() < 1e-5);
    }
}

#[test]
fn codes_carry_no_autodiff_graph() {
    let d = device().autodiff();
    let scores = Tensor::<2>::from_data(TensorData::new(vec![0.1f32, 0.2, 0.3, 0.4], [2, 2]), &d)
        .require_grad();
    let codes = sinkhorn(scores, &SinkhornConfig::default(), &SingleWorker);
    assert!(!codes.is_tracked());
}

#[test]
fn codes_stay_accurate_in_f32_at_the_paper_size() {
    // K = 3000 prototypes: a running f32 sum would leave the rows ~1e-4 away from 1.
    let d = device();
    let (b, k) = (64, 3000);
    let codes = values(sinkhorn(
        tensor2(&random_scores(b, k, 99), b, k, &d),
        &SinkhornConfig::default(),
        &SingleWorker,
    ));
    for s in row_sums(&codes, k) {
        assert!((s - 1.0).abs() < 1e-5, "row sum {s}");
    }
    let uniform = values(sinkhorn(
        Tensor::<2>::full([b, k], 0.5, &d),
        &SinkhornConfig::default(),
        &SingleWorker,
    ));
    let want = 1.0 / k as f64;
    assert!(
        uniform.iter().all(|&x| (x - want).abs() < 1e-5 * want),
        "uniform codes are 1/K"
    );
}
