//! Synchronised BatchNorm over worker threads equals BatchNorm over the workers' batches put
//! together: output, every gradient, running statistics.

use std::sync::Arc;

use burn::module::Param;
use burn::nn::{BatchNorm, BatchNormConfig};
use burn::tensor::{Device, Distribution, Tensor};
use swav_core::LocalGroup;
use swav_models::layers::batch_norm;
use swav_models::syncbn::{SharedCollective, with_synchronised_batch_norm};

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .expect("f32")
}

fn layer(c: usize, device: &Device) -> BatchNorm {
    let mut bn = BatchNormConfig::new(c).init(device);
    let gamma = Tensor::<1>::from_floats(
        (0..c)
            .map(|i| 0.5 + 0.1 * i as f32)
            .collect::<Vec<_>>()
            .as_slice(),
        device,
    );
    let beta = Tensor::<1>::from_floats(
        (0..c)
            .map(|i| 0.2 * i as f32 - 0.3)
            .collect::<Vec<_>>()
            .as_slice(),
        device,
    );
    bn.gamma = Param::from_tensor(gamma);
    bn.beta = Param::from_tensor(beta);
    bn
}

/// (output, x gradient, gamma gradient, beta gradient, running mean, running var) of
/// `sum(bn(x) * r)` over the part `x`, `r` (a worker's) of the batch.
fn step<const D: usize>(x: Tensor<D>, r: Tensor<D>, c: usize) -> Vec<Vec<f32>> {
    let device = x.device();
    let bn = layer(c, &device);
    let x = x.detach().require_grad();
    let y = batch_norm(&bn, x.clone());
    // A non-linear loss, so that the gradient through the statistics matters.
    let grads = (y.clone() * r)
        .sum()
        .add(y.clone().square().sum().mul_scalar(0.1))
        .backward();
    vec![
        values(y),
        values(x.grad(&grads).expect("x")),
        values(bn.gamma.val().grad(&grads).expect("gamma")),
        values(bn.beta.val().grad(&grads).expect("beta")),
        values(bn.running_mean.value_sync()),
        values(bn.running_var.value_sync()),
    ]
}

fn check<const D: usize>(shape: [usize; D], workers: usize) {
    let device = Device::flex().autodiff();
    let c = shape[1];
    let mut whole_shape = shape;
    whole_shape[0] *= workers;
    let x = Tensor::<D>::random(whole_shape, Distribution::Normal(0.7, 1.5), &device);
    let r = Tensor::<D>::random(whole_shape, Distribution::Normal(0.0, 1.0), &device);
    let whole = step(x.clone(), r.clone(), c);

    let mut group_of = LocalGroup::workers(workers).into_iter();
    let b = shape[0];
    let parts: Vec<Vec<Vec<f32>>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|rank| {
                let group: SharedCollective = Arc::new(group_of.next().expect("a worker per rank"));
                let xs = x.clone().narrow(0, rank * b, b);
                let rs = r.clone().narrow(0, rank * b, b);
                s.spawn(move || with_synchronised_batch_norm(group, || step(xs, rs, c)))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("worker"))
            .collect()
    });

    let per_sample = whole[0].len() / workers;
    for (index, name) in ["output", "x gradient"].into_iter().enumerate() {
        let joined: Vec<f32> = parts.iter().flat_map(|p| p[index].clone()).collect();
        // The batch axis is the outer one, so the workers' parts concatenate to the whole.
        assert_eq!(joined.len(), per_sample * workers);
        close(
            &joined,
            &whole[index],
            &format!("{shape:?} x{workers} {name}"),
        );
    }
    for (index, name) in [(2, "gamma gradient"), (3, "beta gradient")] {
        // Local on each worker; the sum over workers is the whole batch's.
        let mut summed = vec![0.0f32; c];
        for p in &parts {
            for (s, v) in summed.iter_mut().zip(&p[index]) {
                *s += v;
            }
        }
        close(
            &summed,
            &whole[index],
            &format!("{shape:?} x{workers} {name}"),
        );
    }
    for (index, name) in [(4, "running mean"), (5, "running var")] {
        for p in &parts {
            close(
                &p[index],
                &whole[index],
                &format!("{shape:?} x{workers} {name}"),
            );
        }
    }
}

fn close(a: &[f32], reference: &[f32], what: &str) {
    assert_eq!(a.len(), reference.len(), "{what}");
    let scale = reference.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
    for (u, v) in a.iter().zip(reference) {
        assert!((u - v).abs() <= 2e-5 * scale, "{what}: {u} vs {v}");
    }
}

#[test]
fn synchronised_batch_norm_over_threads_is_batch_norm_over_the_whole_batch() {
    check([3, 4, 5, 5], 2);
    check([2, 3, 4, 6], 3);
    check([5, 16], 2);
}
