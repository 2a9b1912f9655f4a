//! The layer API's BatchNorm (`swav_models::layers::batch_norm`), on the engine's fused flex
//! kernels and on plain tensor operations, against burn's own BatchNorm: output, gradients and
//! running mean as burn's, running variance as PyTorch's (from the unbiased batch variance).

use burn::tensor::{Device, Tensor};

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .expect("f32 data")
}

/// Training-mode BatchNorm through the fused flex kernels and through tensor operations equals
/// burn's own in output, gradients of input, weight and bias, and running mean; the running
/// variance is PyTorch's: burn's with the batch variance scaled by n / (n - 1).
#[test]
fn batch_norm_matches_burns() {
    for (b, c, h, w) in [(4, 3, 5, 7), (2, 8, 1, 1), (1, 5, 4, 4)] {
        check_batch_norm([b, c, h, w]);
    }
    // BatchNorm1d, as in the projection head.
    check_batch_norm([6, 16]);
    check_batch_norm([2, 3]);
}

fn check_batch_norm<const D: usize>(shape: [usize; D]) {
    use burn::nn::BatchNormConfig;
    use swav_models::layers::{batch_norm, with_burn_kernels};

    let device = Device::flex().autodiff();
    let c = shape[1];
    // Fixed inputs (not the device RNG, which tests running in parallel share): a batch of 2
    // whose two values nearly coincide would make the comparison ill-conditioned.
    let n: usize = shape.iter().product();
    let fixed = |len: usize, seed: u64, mean: f32, spread: f32| {
        let mut state = seed;
        let v: Vec<f32> = (0..len)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                mean + spread * ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5)
            })
            .collect();
        v
    };
    let tensor = |v: Vec<f32>, dims: [usize; D]| {
        Tensor::<D>::from_data(burn::tensor::TensorData::new(v, dims), &device)
    };
    let x0 = tensor(fixed(n, 1, 0.5, 6.0), shape);
    let r = tensor(fixed(n, 2, 0.0, 3.0), shape);
    let gamma = Tensor::<1>::from_floats(fixed(c, 3, 1.0, 1.5).as_slice(), &device);
    let beta = Tensor::<1>::from_floats(fixed(c, 4, 0.0, 1.5).as_slice(), &device);
    let run = |through_layer: bool| {
        let mut bn = BatchNormConfig::new(c).init(&device);
        bn.gamma = burn::module::Param::from_tensor(gamma.clone());
        bn.beta = burn::module::Param::from_tensor(beta.clone());
        let x = x0.clone().detach().require_grad();
        let y = if through_layer {
            batch_norm(&bn, x.clone())
        } else {
            bn.forward(x.clone())
        };
        let grads = (y.clone() * r.clone()).sum().backward();
        let out = vec![
            values(y),
            values(x.grad(&grads).expect("x gradient")),
            values(bn.gamma.val().grad(&grads).expect("gamma gradient")),
            values(bn.beta.val().grad(&grads).expect("beta gradient")),
            values(bn.running_mean.value_sync()),
            values(bn.running_var.value_sync()),
        ];
        out
    };
    let fast = run(true);
    let generic = with_burn_kernels(|| run(true));
    let mut reference = run(false);
    // PyTorch's running variance: 0.9 * 1 + 0.1 * (n / (n - 1)) * the biased batch variance,
    // where burn's takes the biased one.
    let count = (n / c) as f32;
    if count > 1.0 {
        for v in &mut reference[5] {
            *v = 0.9 + (*v - 0.9) * count / (count - 1.0);
        }
    }
    let names = [
        "output",
        "x grad",
        "gamma grad",
        "beta grad",
        "running mean",
        "running var",
    ];
    for (path, got) in [("fused", &fast), ("tensor operations", &generic)] {
        for ((name, a), r) in names.iter().zip(got).zip(&reference) {
            assert_eq!(a.len(), r.len(), "{name}");
            let scale = r.iter().fold(1.0f32, |m, v| m.max(v.abs()));
            for (u, v) in a.iter().zip(r) {
                assert!(
                    (u - v).abs() <= 1e-5 * scale,
                    "{shape:?} {path} {name}: {u} vs {v}"
                );
            }
        }
    }
}
