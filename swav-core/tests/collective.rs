//! The one collective: a group of threads reduces host values and tensors in rank order (the
//! same bits on every worker, in the tensor's own float type), a group of one returns its input,
//! and an aborted group fails the others' waits instead of hanging.

use burn::tensor::{DType, Device, Tensor, TensorData};
use swav_core::{AllReduce, Collective, LocalGroup, ReduceOp, SingleWorker, reduce_data};

/// Runs `f` on every worker of a group of `n` threads, returning their results by rank.
fn on_threads<T: Send>(n: usize, f: impl Fn(&swav_core::LocalWorker) -> T + Sync) -> Vec<T> {
    let workers = LocalGroup::workers(n);
    std::thread::scope(|s| {
        let handles: Vec<_> = workers.iter().map(|w| s.spawn(|| f(w))).collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("worker"))
            .collect()
    })
}

#[test]
fn host_values_are_summed_and_maximised_in_rank_order_on_every_worker() {
    let out = on_threads(3, |w| {
        let r = Collective::rank(w) as f64;
        let mut sum = vec![r, 0.1 * r, 1e16];
        w.sum_f64(&mut sum);
        let mut max = vec![r, -r];
        w.max_f64(&mut max);
        let mut narrow = vec![0.5f32 + r as f32];
        w.sum_f32(&mut narrow);
        (sum, max, narrow)
    });
    for (sum, max, narrow) in &out {
        // ((0 + 0.1) + 0.2) in f64, as the ranks are combined.
        assert_eq!(sum, &vec![3.0, 0.1 + 0.2, 3e16]);
        assert_eq!(max, &vec![2.0, 0.0]);
        assert_eq!(narrow, &vec![4.5f32]);
    }
}

#[test]
fn tensors_are_reduced_in_their_own_float_type_through_the_one_round_trip() {
    let device = Device::flex();
    let out = on_threads(2, |w| {
        let r = Collective::rank(w) as f32;
        let t = Tensor::<2>::from_data(
            TensorData::new(vec![1.0 + r, 2.0 * r, -r, 0.25], [2, 2]),
            (&device, DType::F32),
        );
        let summed = AllReduce::sum(w, t.clone());
        let max = AllReduce::max(w, t);
        (summed.dtype(), summed.into_data(), max.into_data())
    });
    for (dtype, summed, max) in out {
        assert_eq!(dtype, DType::F32);
        assert_eq!(
            summed.try_to_vec::<f32>().expect("f32"),
            vec![3.0, 2.0, -1.0, 0.5]
        );
        assert_eq!(
            max.try_to_vec::<f32>().expect("f32"),
            vec![2.0, 2.0, 0.0, 0.25]
        );
    }
    // A group of one returns the data as it is.
    let data = TensorData::new(vec![1.5f32, -2.0], [2]);
    assert_eq!(
        reduce_data(&SingleWorker, data.clone(), ReduceOp::Sum),
        data
    );
}

#[test]
fn an_aborted_group_fails_the_other_workers_waits() {
    let out = on_threads(2, |w| {
        if Collective::rank(w) == 1 {
            Collective::abort(w, "worker 1 failed");
            return None;
        }
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut v = [1.0];
            w.sum_f64(&mut v);
        }));
        Some(caught.is_err())
    });
    assert_eq!(
        out[0],
        Some(true),
        "rank 0's reduction fails instead of waiting"
    );
}
