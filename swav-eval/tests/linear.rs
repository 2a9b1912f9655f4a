//! The linear probe: separable features are learned, random labels stay at chance, the
//! protocol's numbers are the defaults, the update is PyTorch's SGD.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use swav_eval::{
    Features, LinearClassifier, LinearProbeConfig, ProbeMode, cluster_purity, linear_probe_cached,
};

/// `n` samples of `classes` Gaussian blobs in `dim` dimensions around random unit centres
/// `separation` apart in scale; labels random instead when `random_labels`.
fn blobs(
    n: usize,
    classes: usize,
    dim: usize,
    separation: f32,
    random_labels: bool,
    rng: &mut ChaCha8Rng,
    centres: &[Vec<f32>],
) -> Features {
    let mut values = Vec::with_capacity(n * dim);
    let mut labels = Vec::with_capacity(n);
    for i in 0..n {
        let c = i % classes;
        for &v in &centres[c][..dim] {
            values.push(v * separation + rng.random_range(-1.0..1.0f32));
        }
        labels.push(Some(if random_labels {
            rng.random_range(0..classes)
        } else {
            c
        }));
    }
    Features {
        values,
        dim,
        labels,
        indices: (0..n).collect(),
        skipped: Vec::new(),
    }
}

fn centres(classes: usize, dim: usize, rng: &mut ChaCha8Rng) -> Vec<Vec<f32>> {
    (0..classes)
        .map(|_| {
            let v: Vec<f32> = (0..dim).map(|_| rng.random_range(-1.0..1.0f32)).collect();
            let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            v.iter().map(|x| x / n).collect()
        })
        .collect()
}

fn quick() -> LinearProbeConfig {
    LinearProbeConfig {
        epochs: 20,
        batch_size: 64,
        ..LinearProbeConfig::default()
    }
}

#[test]
fn defaults_are_the_original_protocol() {
    let c = LinearProbeConfig::default();
    assert_eq!(c.epochs, 100);
    assert_eq!(c.batch_size, 256);
    assert_eq!(c.lr, 0.3);
    assert_eq!(c.final_lr, 0.0);
    assert_eq!(c.momentum, 0.9);
    assert_eq!(c.weight_decay, 1e-6);
    assert_eq!(c.init_std, 0.01);
    // Cosine per epoch, as CosineAnnealingLR(T_max = epochs, eta_min = 0).
    assert_eq!(c.lr_at(0), 0.3);
    assert!((c.lr_at(50) - 0.15).abs() < 1e-12);
    assert!(c.lr_at(99) < 0.001 && c.lr_at(99) > 0.0);
}

#[test]
fn separable_features_are_learned_to_near_100_percent() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let c = centres(10, 32, &mut rng);
    let train = blobs(2000, 10, 32, 4.0, false, &mut rng, &c);
    let test = blobs(500, 10, 32, 4.0, false, &mut rng, &c);
    let r = linear_probe_cached(&train, &test, 10, &quick(), &burn::tensor::Device::flex())
        .expect("probe");
    assert_eq!(r.mode, ProbeMode::Cached);
    assert!(r.best_top1 > 99.0, "best top-1 {}", r.best_top1);
    assert!(r.last.top1 > 99.0, "last top-1 {}", r.last.top1);
    assert_eq!(r.last.top5, 100.0);
    assert_eq!(r.epochs.len(), 20);
    assert!(r.epochs[19].train_loss < r.epochs[0].train_loss);
    // The confusion matrix counts every test sample once, mostly on the diagonal.
    let total: usize = r.last.confusion.iter().flatten().sum();
    let diag: usize = (0..10).map(|i| r.last.confusion[i][i]).sum();
    assert_eq!(total, 500);
    assert!(diag >= 495);
}

#[test]
fn random_labels_stay_at_chance_on_the_test_set() {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let c = centres(10, 32, &mut rng);
    let train = blobs(2000, 10, 32, 4.0, true, &mut rng, &c);
    let test = blobs(2000, 10, 32, 4.0, true, &mut rng, &c);
    let r = linear_probe_cached(&train, &test, 10, &quick(), &burn::tensor::Device::flex())
        .expect("probe");
    // Chance is 10 %; 2,000 test samples give a standard deviation of about 0.7 %.
    assert!(
        r.last.top1 > 6.0 && r.last.top1 < 14.0,
        "last top-1 {}",
        r.last.top1
    );
    assert!(
        r.last.top5 > 42.0 && r.last.top5 < 58.0,
        "top-5 {}",
        r.last.top5
    );
}

#[test]
fn one_step_is_pytorch_sgd_on_cross_entropy() {
    // Two samples, two features, two classes, weights set by hand; the expected values follow
    // torch.optim.SGD(lr=0.5, momentum=0.9, weight_decay=0.1) on F.cross_entropy, done by hand:
    // logits all 0 -> p = 0.5; dL/dlogits = (p - onehot) / 2.
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let mut clf = LinearClassifier::new(2, 2, 0.0, &mut rng);
    assert!(clf.weight.iter().all(|&w| w == 0.0));
    let x = [1.0f32, 2.0, 3.0, 4.0];
    let loss = clf.step(&x, &[0, 1], 0.5, 0.9, 0.1);
    assert!((loss - std::f64::consts::LN_2).abs() < 1e-6);
    // g_logits = [[-0.25, 0.25], [0.25, -0.25]]; gW[0] = -0.25*[1,2] + 0.25*[3,4] = [0.5, 0.5];
    // gW[1] = [-0.5, -0.5]; gb = [0, 0]. First momentum step: buf = g; w = -lr * g.
    let expect = [-0.25f32, -0.25, 0.25, 0.25];
    for (a, b) in clf.weight.iter().zip(expect) {
        assert!((a - b).abs() < 1e-6, "{:?}", clf.weight);
    }
    assert_eq!(clf.bias, vec![0.0, 0.0]);
    // Second step on the same batch: logits now [[0.75,-0.75]... ] -> check momentum and decay.
    let w_before = clf.weight.clone();
    clf.step(&x, &[0, 1], 0.5, 0.9, 0.1);
    let logits = |w: &[f32], r: usize| {
        let row = &x[r * 2..r * 2 + 2];
        [w[0] * row[0] + w[1] * row[1], w[2] * row[0] + w[3] * row[1]]
    };
    let mut g = [0f32; 4];
    for (r, y) in [(0usize, 0usize), (1, 1)] {
        let l = logits(&w_before, r);
        let m = l[0].max(l[1]);
        let e = [(l[0] - m).exp(), (l[1] - m).exp()];
        let s = e[0] + e[1];
        for c in 0..2 {
            let d = (e[c] / s - if c == y { 1.0 } else { 0.0 }) / 2.0;
            g[c * 2] += d * x[r * 2];
            g[c * 2 + 1] += d * x[r * 2 + 1];
        }
    }
    for i in 0..4 {
        let grad = g[i] + 0.1 * w_before[i];
        let buf = 0.9 * [0.5f32, 0.5, -0.5, -0.5][i] + grad;
        let want = w_before[i] - 0.5 * buf;
        assert!((clf.weight[i] - want).abs() < 1e-5, "weight {i}");
    }
}

#[test]
fn bad_inputs_are_refused_by_name() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let c = centres(3, 4, &mut rng);
    let train = blobs(30, 3, 4, 2.0, false, &mut rng, &c);
    let mut test = blobs(30, 3, 4, 2.0, false, &mut rng, &c);
    let zero = LinearProbeConfig {
        epochs: 0,
        ..quick()
    };
    let e = linear_probe_cached(&train, &test, 3, &zero, &burn::tensor::Device::flex())
        .expect_err("0 epochs");
    assert!(e.to_string().contains("epochs"), "{e}");
    let e = linear_probe_cached(&train, &test, 2, &quick(), &burn::tensor::Device::flex())
        .expect_err("label 2 of 2 classes");
    assert!(e.to_string().contains("label 2"), "{e}");
    test.labels[4] = None;
    let e = linear_probe_cached(&train, &test, 3, &quick(), &burn::tensor::Device::flex())
        .expect_err("unlabeled");
    assert!(e.to_string().contains("no label"), "{e}");
}

#[test]
fn purity_counts_each_clusters_majority() {
    // Cluster 0: labels 1,1,2 -> 2; cluster 5: labels 0 -> 1; cluster 7: 3,4 -> 1. 4 of 6.
    let pairs = [(0, 1), (0, 1), (0, 2), (5, 0), (7, 3), (7, 4)];
    let p = cluster_purity(&pairs).expect("labelled");
    assert!((p - 400.0 / 6.0).abs() < 1e-9);
    assert_eq!(cluster_purity(&[]), None);
}

/// Features written to disk and streamed back in mini-batches train the same probe as the same
/// features in memory (same shuffles, same batches, same steps); a damaged file is refused.
#[test]
fn the_streamed_probe_equals_the_in_memory_one() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let c = centres(10, 32, &mut rng);
    let train = blobs(1000, 10, 32, 4.0, false, &mut rng, &c);
    let test = blobs(300, 10, 32, 4.0, false, &mut rng, &c);
    let dir = tempfile::tempdir().expect("temp dir");
    let file = train
        .write_file(dir.path().join("train.features"))
        .expect("feature file");
    assert_eq!((file.len(), file.dim()), (1000, 32));
    let device = burn::tensor::Device::flex();
    let a = linear_probe_cached(&train, &test, 10, &quick(), &device).expect("in memory");
    let b =
        swav_eval::linear_probe_streamed(&file, &test, 10, &quick(), &device).expect("streamed");
    assert_eq!(a, b);
    assert!(a.best_top1 > 95.0, "{}", a.best_top1);
    // A file cut short is refused with its name and sizes.
    let cut = dir.path().join("cut.features");
    let bytes = std::fs::read(file.path()).expect("read");
    std::fs::write(&cut, &bytes[..bytes.len() - 8]).expect("write");
    let e = swav_eval::FeatureFile::open(&cut)
        .err()
        .expect("refused")
        .to_string();
    assert!(e.contains("cut.features") && e.contains("rows"), "{e}");
}
