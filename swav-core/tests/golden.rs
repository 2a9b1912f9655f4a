//! Golden tests: swav-core against the NumPy reference in `tests/golden/gen_swav_core.py`
//! (the original `distributed_sinkhorn`, loss and queue handling, world size 1, in float64).
//! Tolerance: 1e-5 absolute in f32 for codes, 1e-5 relative for losses.

mod common;

use burn::tensor::Tensor;
use common::{device, max_abs_diff, tensor2, values};
use serde_json::Value;
use swav_core::{
    EmbeddingQueue, SingleWorker, SinkhornConfig, SinkhornPrecision, sinkhorn, swav_loss,
};

fn golden() -> Value {
    let text = include_str!("golden/swav_core.json");
    serde_json::from_str(text).expect("golden JSON parses")
}

fn f64s(v: &Value) -> Vec<f64> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number"))
        .collect()
}

fn usize_of(v: &Value, key: &str) -> usize {
    v[key].as_u64().expect("integer") as usize
}

fn usizes(v: &Value) -> Vec<usize> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_u64().expect("integer") as usize)
        .collect()
}

#[test]
fn sinkhorn_matches_reference_in_f32() {
    let g = golden();
    let cases = g["sinkhorn"].as_array().expect("cases");
    let d = device();
    let mut overflow_cases = 0;
    for case in cases {
        let (b, k) = (usize_of(case, "b"), usize_of(case, "k"));
        let cfg = SinkhornConfig {
            epsilon: case["epsilon"].as_f64().expect("eps"),
            iterations: usize_of(case, "iterations"),
            precision: SinkhornPrecision::F32,
        };
        if case["max_score_over_epsilon"].as_f64().expect("max") > 89.0 {
            overflow_cases += 1;
        }
        let scores = tensor2(&f64s(&case["scores"]), b, k, &d);
        let codes = values(sinkhorn(scores, &cfg, &SingleWorker));
        let diff = max_abs_diff(&codes, &f64s(&case["codes"]));
        assert!(
            diff < 1e-5,
            "B={b} K={k} eps={} iters={}: max |diff| = {diff:e}",
            cfg.epsilon,
            cfg.iterations
        );
    }
    assert!(
        overflow_cases >= 2,
        "the golden file covers scores / eps > 89"
    );
}

#[test]
fn sinkhorn_matches_reference_in_f64() {
    let g = golden();
    let d = device();
    for case in g["sinkhorn"].as_array().expect("cases") {
        let (b, k) = (usize_of(case, "b"), usize_of(case, "k"));
        let cfg = SinkhornConfig {
            epsilon: case["epsilon"].as_f64().expect("eps"),
            iterations: usize_of(case, "iterations"),
            precision: SinkhornPrecision::F64,
        };
        // Scores in f64 too, so that only the algorithm is compared.
        let scores = Tensor::<2>::from_data(
            burn::tensor::TensorData::new(f64s(&case["scores"]), [b, k]),
            (&d, burn::tensor::DType::F64),
        );
        assert_eq!(scores.dtype(), burn::tensor::DType::F64);
        let codes = values(sinkhorn(scores, &cfg, &SingleWorker));
        let diff = max_abs_diff(&codes, &f64s(&case["codes"]));
        assert!(diff < 1e-10, "B={b} K={k}: f64 max |diff| = {diff:e}");
    }
}

#[test]
fn loss_matches_reference() {
    let g = golden();
    let d = device();
    for case in g["loss"].as_array().expect("cases") {
        let (bs, k, n) = (
            usize_of(case, "batch"),
            usize_of(case, "k"),
            usize_of(case, "n_crops"),
        );
        let cfa = usizes(&case["crops_for_assign"]);
        let cfg = SinkhornConfig {
            epsilon: case["epsilon"].as_f64().expect("eps"),
            iterations: usize_of(case, "iterations"),
            precision: SinkhornPrecision::F32,
        };
        let temperature = case["temperature"].as_f64().expect("t");
        let scores = tensor2(&f64s(&case["scores"]), n * bs, k, &d);
        // Without a queue the embeddings and prototypes are not read.
        let unused = Tensor::<2>::zeros([1, 1], &d);
        let out = swav_loss(
            scores,
            unused.clone(),
            unused,
            bs,
            &cfa,
            temperature,
            &cfg,
            None,
            &SingleWorker,
        );
        assert!(!out.queue_used);
        for (i, expected) in case["codes"].as_array().expect("codes").iter().enumerate() {
            let got = values(out.codes[0][i].codes.clone());
            let diff = max_abs_diff(&got, &f64s(expected));
            assert!(diff < 1e-5, "codes of crop {}: {diff:e}", cfa[i]);
        }
        let loss = values(out.loss)[0];
        let want = case["loss"].as_f64().expect("loss");
        assert!(
            (loss - want).abs() < 1e-5 * want.abs().max(1.0),
            "loss {loss} vs reference {want} (B={bs} K={k} crops={n} assign={cfa:?})"
        );
    }
}

#[test]
fn queue_path_matches_reference() {
    let g = golden();
    let d = device();
    let steps = g["queue"].as_array().expect("steps");
    let first = &steps[0];
    let (bs, dim, k, n) = (
        usize_of(first, "batch"),
        usize_of(first, "dim"),
        usize_of(first, "k"),
        usize_of(first, "n_crops"),
    );
    let cfa = usizes(&first["crops_for_assign"]);
    let mut queue = EmbeddingQueue::new(cfa.len(), usize_of(first, "queue_length"), dim, &d);
    let cfg = SinkhornConfig::default();
    let mut used_once = false;
    for step in steps {
        // The reference stores PyTorch's [K, D]; burn's Linear layout is [D, K].
        let prototypes = tensor2(&f64s(&step["prototypes"]), k, dim, &d).transpose();
        let embeddings = tensor2(&f64s(&step["embeddings"]), n * bs, dim, &d);
        let scores = embeddings.clone().matmul(prototypes.clone());
        let out = swav_loss(
            scores,
            embeddings,
            prototypes,
            bs,
            &cfa,
            step["temperature"].as_f64().expect("t"),
            &cfg,
            Some(&mut queue),
            &SingleWorker,
        );
        let used: Vec<bool> = step["queue_used"]
            .as_array()
            .expect("flags")
            .iter()
            .map(|b| b.as_bool().expect("bool"))
            .collect();
        assert!(
            used.iter().all(|&u| u == out.queue_used),
            "step {}",
            step["step"]
        );
        used_once |= out.queue_used;
        for (i, expected) in step["codes"].as_array().expect("codes").iter().enumerate() {
            let diff = max_abs_diff(&values(out.codes[0][i].codes.clone()), &f64s(expected));
            assert!(
                diff < 1e-5,
                "step {} crop {}: {diff:e}",
                step["step"],
                cfa[i]
            );
        }
        let loss = values(out.loss)[0];
        let want = step["loss"].as_f64().expect("loss");
        assert!(
            (loss - want).abs() < 1e-5 * want.abs().max(1.0),
            "step {}: {loss} vs {want}",
            step["step"]
        );
    }
    assert!(used_once, "the golden steps reach a full queue");
}
