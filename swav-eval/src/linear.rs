//! The linear probe: a Linear classifier trained on the features of a frozen backbone.
//!
//! Two modes, named in every report:
//! - [`ProbeMode::Protocol`], the original `eval_linear.py`: every epoch, each training image
//!   is freshly augmented (RandomResizedCrop + horizontal flip), passed through the frozen
//!   backbone in eval mode, and the classifier takes an SGD step per batch.
//! - [`ProbeMode::Cached`], for CPU users: the features of the training set are extracted once,
//!   without augmentation, and the classifier trains on them (seconds instead of hours).
//!
//! In both, the classifier is `Linear(dim, classes)` initialised N(0, 0.01) with zero bias,
//! trained by SGD (PyTorch semantics: weight decay added to the gradient, momentum without
//! dampening) with the learning rate following a cosine from `lr` to `final_lr` over the epochs
//! (stepped per epoch, as the original's `CosineAnnealingLR`), and evaluated on the test
//! features after every epoch: top-1 and top-5, best and last.

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::EvalError;
pub use crate::accuracy::Accuracy;
use crate::accuracy::accuracy_of;
use crate::features::Features;

/// How the training features are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProbeMode {
    /// Features extracted once, without augmentation (fast).
    Cached,
    /// The original protocol: augmented images through the backbone every epoch.
    Protocol,
}

impl std::fmt::Display for ProbeMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Cached => "cached",
            Self::Protocol => "protocol",
        })
    }
}

impl std::str::FromStr for ProbeMode {
    type Err = EvalError;
    fn from_str(s: &str) -> Result<Self, EvalError> {
        match s {
            "cached" | "fast" => Ok(Self::Cached),
            "protocol" | "original" => Ok(Self::Protocol),
            other => Err(EvalError::invalid(
                "mode",
                format!("`{other}` is unknown; choose cached or protocol"),
            )),
        }
    }
}

/// The probe's hyper-parameters. [`Default`] is the original protocol's.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LinearProbeConfig {
    /// Epochs (100).
    pub epochs: usize,
    /// Batch size (256).
    pub batch_size: usize,
    /// Initial learning rate (0.3).
    pub lr: f64,
    /// Learning rate at the end of the cosine (0).
    pub final_lr: f64,
    /// SGD momentum (0.9).
    pub momentum: f64,
    /// Weight decay (1e-6).
    pub weight_decay: f64,
    /// Standard deviation of the weight initialisation (0.01).
    pub init_std: f64,
    /// Seed of the initialisation and the shuffling.
    pub seed: u64,
}

impl Default for LinearProbeConfig {
    fn default() -> Self {
        Self {
            epochs: 100,
            batch_size: 256,
            lr: 0.3,
            final_lr: 0.0,
            momentum: 0.9,
            weight_decay: 1e-6,
            init_std: 0.01,
            seed: 31,
        }
    }
}

impl LinearProbeConfig {
    /// Refuses settings that cannot train.
    pub fn validate(&self) -> Result<(), EvalError> {
        if self.epochs == 0 {
            return Err(EvalError::invalid("epochs", "must be at least 1"));
        }
        if self.batch_size == 0 {
            return Err(EvalError::invalid("batch_size", "must be at least 1"));
        }
        for (field, v) in [
            ("lr", self.lr),
            ("final_lr", self.final_lr),
            ("momentum", self.momentum),
            ("weight_decay", self.weight_decay),
            ("init_std", self.init_std),
        ] {
            if !v.is_finite() || v < 0.0 {
                return Err(EvalError::invalid(
                    field,
                    format!("must be finite and not negative, got {v}"),
                ));
            }
        }
        if self.momentum >= 1.0 {
            return Err(EvalError::invalid("momentum", "must be below 1"));
        }
        Ok(())
    }

    /// The learning rate of epoch `epoch` (0-based): cosine from `lr` to `final_lr`.
    pub fn lr_at(&self, epoch: usize) -> f64 {
        let t = epoch as f64 / self.epochs as f64;
        self.final_lr + 0.5 * (self.lr - self.final_lr) * (1.0 + (std::f64::consts::PI * t).cos())
    }
}

/// One epoch of the probe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeEpoch {
    /// Epoch (0-based).
    pub epoch: usize,
    /// Learning rate of the epoch.
    pub lr: f64,
    /// Mean training cross-entropy.
    pub train_loss: f64,
    /// Test top-1, percent.
    pub top1: f64,
    /// Test top-5, percent.
    pub top5: f64,
}

/// What a linear probe reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinearProbeResult {
    /// Which mode ran.
    pub mode: ProbeMode,
    /// The settings.
    pub config: LinearProbeConfig,
    /// Number of classes.
    pub classes: usize,
    /// Feature size.
    pub dim: usize,
    /// Training samples.
    pub train_samples: usize,
    /// Test samples.
    pub test_samples: usize,
    /// Best test top-1 over the epochs, percent, and its epoch.
    pub best_top1: f64,
    /// Top-5 at the best top-1 epoch.
    pub best_top5: f64,
    /// Epoch of the best top-1.
    pub best_epoch: usize,
    /// Last epoch's top-1 and top-5 and confusion matrix.
    pub last: Accuracy,
    /// Every epoch.
    pub epochs: Vec<ProbeEpoch>,
}

/// A Linear layer `classes x dim` with its SGD momentum buffers.
#[derive(Debug, Clone, PartialEq)]
pub struct LinearClassifier {
    /// Input size.
    pub dim: usize,
    /// Output size.
    pub classes: usize,
    /// Weights, row-major `classes x dim`.
    pub weight: Vec<f32>,
    /// Bias, `classes`.
    pub bias: Vec<f32>,
    momentum_w: Option<Vec<f32>>,
    momentum_b: Option<Vec<f32>>,
}

/// A standard normal draw (Box-Muller), from `rng`.
fn normal(rng: &mut ChaCha8Rng) -> f64 {
    let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

impl LinearClassifier {
    /// Weights N(0, std²), zero bias.
    pub fn new(dim: usize, classes: usize, std: f64, rng: &mut ChaCha8Rng) -> Self {
        let weight = (0..dim * classes)
            .map(|_| (normal(rng) * std) as f32)
            .collect();
        Self {
            dim,
            classes,
            weight,
            bias: vec![0.0; classes],
            momentum_w: None,
            momentum_b: None,
        }
    }

    /// A classifier with the given weights (row-major `classes x dim`) and bias.
    ///
    /// # Panics
    /// If the lengths do not match `dim` and `classes`.
    pub fn from_weights(dim: usize, classes: usize, weight: Vec<f32>, bias: Vec<f32>) -> Self {
        assert_eq!(weight.len(), dim * classes, "weight length");
        assert_eq!(bias.len(), classes, "bias length");
        Self {
            dim,
            classes,
            weight,
            bias,
            momentum_w: None,
            momentum_b: None,
        }
    }

    /// Logits of the rows of `x` (`n x dim`), `n x classes`.
    pub fn logits(&self, x: &[f32]) -> Vec<f32> {
        let n = x.len() / self.dim.max(1);
        let mut out = vec![0f32; n * self.classes];
        for (row, o) in x.chunks(self.dim).zip(out.chunks_mut(self.classes)) {
            for (c, oc) in o.iter_mut().enumerate() {
                let w = &self.weight[c * self.dim..(c + 1) * self.dim];
                *oc = self.bias[c] + w.iter().zip(row).map(|(a, b)| a * b).sum::<f32>();
            }
        }
        out
    }

    /// One SGD step on a batch (`x`: `n x dim`, `labels`: `n`) of mean cross-entropy; returns
    /// the batch's loss before the step.
    pub fn step(&mut self, x: &[f32], labels: &[usize], lr: f64, momentum: f64, wd: f64) -> f64 {
        let n = labels.len();
        let (d, k) = (self.dim, self.classes);
        let mut g = self.logits(x);
        let mut loss = 0f64;
        for (row, &y) in g.chunks_mut(k).zip(labels) {
            let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let sum: f32 = row.iter().map(|v| (v - m).exp()).sum();
            loss += (sum.ln() + m - row[y]) as f64;
            for (c, v) in row.iter_mut().enumerate() {
                *v = ((*v - m).exp() / sum - if c == y { 1.0 } else { 0.0 }) / n as f32;
            }
        }
        let mut gw = vec![0f32; k * d];
        let mut gb = vec![0f32; k];
        for (row, gr) in x.chunks(d).zip(g.chunks(k)) {
            for c in 0..k {
                let s = gr[c];
                gb[c] += s;
                for (a, &xv) in gw[c * d..(c + 1) * d].iter_mut().zip(row) {
                    *a += s * xv;
                }
            }
        }
        sgd(&mut self.weight, gw, &mut self.momentum_w, lr, momentum, wd);
        sgd(&mut self.bias, gb, &mut self.momentum_b, lr, momentum, wd);
        loss / n.max(1) as f64
    }

    /// Top-1, top-5 and confusion matrix on `x` (`n x dim`) with `labels`.
    pub fn evaluate(&self, x: &[f32], labels: &[usize]) -> Accuracy {
        accuracy_of(&self.logits(x), self.classes, labels)
    }
}

/// PyTorch's SGD update of one tensor.
fn sgd(
    param: &mut [f32],
    mut grad: Vec<f32>,
    buf: &mut Option<Vec<f32>>,
    lr: f64,
    momentum: f64,
    wd: f64,
) {
    let (lr, momentum, wd) = (lr as f32, momentum as f32, wd as f32);
    for (g, &p) in grad.iter_mut().zip(param.iter()) {
        *g += wd * p;
    }
    let step = if momentum > 0.0 {
        match buf {
            Some(b) => {
                for (bv, &g) in b.iter_mut().zip(&grad) {
                    *bv = momentum * *bv + g;
                }
            }
            None => *buf = Some(grad.clone()),
        }
        buf.as_ref().map_or(&grad, |b| b)
    } else {
        &grad
    };
    for (p, &s) in param.iter_mut().zip(step.iter()) {
        *p -= lr * s;
    }
}

/// Checks the labels of `f` against `classes` and returns them.
pub(crate) fn checked_labels(
    f: &Features,
    classes: usize,
    what: &'static str,
) -> Result<Vec<usize>, EvalError> {
    let labels = f.labels_required(what)?;
    if let Some((i, &l)) = labels.iter().enumerate().find(|(_, l)| **l >= classes) {
        return Err(EvalError::invalid(
            what,
            format!(
                "sample {} has label {l}, but there are {classes} classes",
                f.indices[i]
            ),
        ));
    }
    Ok(labels)
}

/// The probe's training loop over a source of training batches: `batches(epoch, order)` must
/// return the features of the samples `order` (dataset positions) in that order. Shared by
/// both modes; the cached mode slices stored features, the protocol mode extracts augmented
/// ones.
#[allow(clippy::too_many_arguments)]
pub(crate) fn run_probe<F>(
    mode: ProbeMode,
    device: &burn::tensor::Device,
    config: &LinearProbeConfig,
    dim: usize,
    classes: usize,
    train_labels: &[usize],
    test: (&[f32], &[usize]),
    mut batch_features: F,
) -> Result<LinearProbeResult, EvalError>
where
    F: FnMut(usize, &[usize]) -> Result<(Vec<f32>, Vec<usize>), EvalError>,
{
    config.validate()?;
    if classes < 2 {
        return Err(EvalError::invalid(
            "classes",
            "a classifier needs at least 2",
        ));
    }
    if train_labels.is_empty() || test.1.is_empty() {
        return Err(EvalError::invalid(
            "data",
            "the training and test sets must not be empty",
        ));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
    let init = LinearClassifier::new(dim, classes, config.init_std, &mut rng);
    let mut clf =
        crate::probe_tensor::TensorLinear::new((dim, classes), &init.weight, &init.bias, device);
    // The test rows go to the device once, and are scored there after every epoch.
    let test_rows = clf.upload_rows(test.0)?;
    let mut order: Vec<usize> = (0..train_labels.len()).collect();
    let mut epochs = Vec::with_capacity(config.epochs);
    let mut best = (f64::MIN, 0.0, 0usize);
    let mut last = None;
    for epoch in 0..config.epochs {
        let lr = config.lr_at(epoch);
        order.shuffle(&mut rng);
        let (mut loss, mut steps) = (0f64, 0usize);
        for chunk in order.chunks(config.batch_size) {
            // A batch is a set: its rows in ascending order read a feature file front to back.
            let mut chunk = chunk.to_vec();
            chunk.sort_unstable();
            let (x, kept) = batch_features(epoch, &chunk)?;
            if kept.is_empty() {
                continue;
            }
            let y: Vec<usize> = kept.iter().map(|&i| train_labels[i]).collect();
            clf.step(&x, &y, lr, config.momentum, config.weight_decay)?;
            steps += 1;
        }
        loss += clf.take_loss()?;
        let acc = clf.evaluate_uploaded(&test_rows, test.1)?;
        if acc.top1 > best.0 {
            best = (acc.top1, acc.top5, epoch);
        }
        epochs.push(ProbeEpoch {
            epoch,
            lr,
            train_loss: loss / steps.max(1) as f64,
            top1: acc.top1,
            top5: acc.top5,
        });
        last = Some(acc);
    }
    let last = last.ok_or_else(|| EvalError::invalid("epochs", "must be at least 1"))?;
    Ok(LinearProbeResult {
        mode,
        config: *config,
        classes,
        dim,
        train_samples: train_labels.len(),
        test_samples: test.1.len(),
        best_top1: best.0,
        best_top5: best.1,
        best_epoch: best.2,
        last,
        epochs,
    })
}

/// The fast mode: trains the probe on cached training features (`train`, extracted once
/// without augmentation) on `device`, in mini-batches, and evaluates on `test` after every
/// epoch.
pub fn linear_probe_cached(
    train: &Features,
    test: &Features,
    classes: usize,
    config: &LinearProbeConfig,
    device: &burn::tensor::Device,
) -> Result<LinearProbeResult, EvalError> {
    let ytr = checked_labels(train, classes, "train labels")?;
    cached_probe(
        train.dim,
        &ytr,
        test,
        classes,
        config,
        device,
        |order, x| {
            for &i in order {
                x.extend_from_slice(train.row(i));
            }
            Ok(())
        },
    )
}

/// The fast mode over features on disk: as [`linear_probe_cached`], with the training rows
/// read from `train` in mini-batches (shuffled every epoch), so the features need not fit in
/// memory; the classifier trains on `device`.
pub fn linear_probe_streamed(
    train: &crate::FeatureFile,
    test: &Features,
    classes: usize,
    config: &LinearProbeConfig,
    device: &burn::tensor::Device,
) -> Result<LinearProbeResult, EvalError> {
    let mut ytr = Vec::with_capacity(train.len());
    for (i, l) in train.labels().iter().enumerate() {
        match l {
            Some(l) if *l < classes => ytr.push(*l),
            Some(l) => {
                return Err(EvalError::invalid(
                    "train labels",
                    format!("row {i} has label {l}, but there are {classes} classes"),
                ));
            }
            None => {
                return Err(EvalError::invalid(
                    "train labels",
                    format!("row {i} of {} has no label", train.path().display()),
                ));
            }
        }
    }
    cached_probe(
        train.dim(),
        &ytr,
        test,
        classes,
        config,
        device,
        |order, x| train.read_rows(order, x),
    )
}

/// The cached mode over any store of training rows of `dim` floats labelled `ytr`:
/// `read(rows, out)` appends the rows of a mini-batch to `out`.
fn cached_probe(
    dim: usize,
    ytr: &[usize],
    test: &Features,
    classes: usize,
    config: &LinearProbeConfig,
    device: &burn::tensor::Device,
    mut read: impl FnMut(&[usize], &mut Vec<f32>) -> Result<(), EvalError>,
) -> Result<LinearProbeResult, EvalError> {
    if dim != test.dim {
        return Err(EvalError::invalid(
            "features",
            format!(
                "training features have {dim} dimensions, test features {}",
                test.dim
            ),
        ));
    }
    let yte = checked_labels(test, classes, "test labels")?;
    run_probe(
        ProbeMode::Cached,
        device,
        config,
        dim,
        classes,
        ytr,
        (&test.values, &yte),
        |_, order| {
            let mut x = Vec::with_capacity(order.len() * dim);
            read(order, &mut x)?;
            Ok((x, order.to_vec()))
        },
    )
}

/// The training augmentation of the original protocol: RandomResizedCrop to `size` (scale
/// `scale`, aspect 3/4-4/3) and a horizontal flip with p 0.5, then `normalize`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProbeAugment {
    /// Output side (224 for ImageNet, 32 for CIFAR).
    pub size: u32,
    /// Scale range of the crop ((0.08, 1) in the original).
    pub scale: (f64, f64),
    /// Normalisation.
    pub normalize: swav_augment::Normalize,
}

impl ProbeAugment {
    /// The original's, at side `size`.
    pub fn original(size: u32, normalize: swav_augment::Normalize) -> Self {
        Self {
            size,
            scale: (0.08, 1.0),
            normalize,
        }
    }
}

/// The original protocol: every epoch, each training image of `train` is augmented
/// ([`ProbeAugment`], seeded per (seed, epoch, index), so the run is the same whatever the
/// threads), passed through the frozen `backbone` in eval mode, and the classifier steps per
/// batch; `test` is extracted once with `extract.transform`. Unreadable images are skipped (the
/// training ones are listed in the returned `skipped`, once).
#[allow(clippy::type_complexity, clippy::too_many_arguments)]
pub fn linear_probe_protocol<B, D>(
    backbone: &B,
    train: &D,
    test: &Features,
    classes: usize,
    config: &LinearProbeConfig,
    augment: &ProbeAugment,
    extract: &crate::ExtractConfig,
    device: &burn::tensor::Device,
) -> Result<(LinearProbeResult, Vec<(usize, String, String)>), EvalError>
where
    B: swav_models::Backbone + burn::module::Module,
    D: swav_data::ImageDataset + Sync + ?Sized,
{
    let crop = swav_augment::RandomResizedCrop::new(augment.size, augment.scale)?;
    augment.normalize.validate()?;
    let yte = checked_labels(test, classes, "test labels")?;
    let mut ytr = Vec::with_capacity(train.len());
    for i in 0..train.len() {
        let l = train.label(i).ok_or_else(|| {
            EvalError::invalid(
                "train labels",
                format!("{} has no label", train.describe(i)),
            )
        })?;
        if l >= classes {
            return Err(EvalError::invalid(
                "train labels",
                format!(
                    "{} has label {l}, but there are {classes} classes",
                    train.describe(i)
                ),
            ));
        }
        ytr.push(l);
    }
    let net = backbone.valid();
    let dim = net.feature_dim();
    if dim != test.dim {
        return Err(EvalError::invalid(
            "features",
            format!(
                "the backbone gives {dim} dimensions, the test features {}",
                test.dim
            ),
        ));
    }
    let side = augment.size as usize;
    let seed = config.seed;
    let mut skipped: std::collections::BTreeMap<usize, (String, String)> = Default::default();
    let result = run_probe(
        ProbeMode::Protocol,
        device,
        config,
        dim,
        classes,
        &ytr,
        (&test.values, &yte),
        |epoch, order| {
            let write = |i: usize, image: &swav_augment::RgbImage, out: &mut [f32]| {
                let mut rng = swav_augment::sample_rng(seed, epoch as u64, i as u64);
                let mut img = crop.try_apply(image, &mut rng).map_err(|e| e.to_string())?;
                if rng.random::<f64>() < 0.5 {
                    swav_augment::hflip(&mut img);
                }
                augment
                    .normalize
                    .write_chw(&img, out)
                    .map_err(|e| e.to_string())
            };
            let b =
                crate::features::prepare_batch(train, order, side, extract.workers, &write, device);
            for (i, file, why) in b.skipped {
                skipped.entry(i).or_insert((file, why));
            }
            let Some(x) = b.images else {
                return Ok((Vec::new(), Vec::new()));
            };
            Ok((
                crate::features::floats(net.forward_features(x), "features")?,
                b.kept,
            ))
        },
    )?;
    let skipped = skipped.into_iter().map(|(i, (f, w))| (i, f, w)).collect();
    Ok((result, skipped))
}

#[cfg(test)]
mod tensor_tests {
    use super::*;
    use crate::probe_tensor::TensorLinear;
    use burn::tensor::Device;

    /// The tensor classifier takes the same SGD steps as the scalar reference (PyTorch's SGD
    /// with momentum and weight decay on mean cross-entropy).
    #[test]
    fn tensor_steps_equal_the_scalar_reference() {
        let (dim, classes, n) = (12, 5, 16);
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mut host = LinearClassifier::new(dim, classes, 0.1, &mut rng);
        let device = Device::flex();
        let mut t = TensorLinear::new((dim, classes), &host.weight, &host.bias, &device);
        for step in 0..6 {
            let x: Vec<f32> = (0..n * dim)
                .map(|_| rng.random_range(-1.0f32..1.0))
                .collect();
            let y: Vec<usize> = (0..n).map(|i| (i + step) % classes).collect();
            let loss = host.step(&x, &y, 0.3, 0.9, 1e-3);
            t.step(&x, &y, 0.3, 0.9, 1e-3).expect("step");
            let tl = t.take_loss().expect("loss");
            assert!((loss - tl).abs() < 1e-5, "step {step}: loss {loss} vs {tl}");
        }
        // Weights `[dim, classes]` on the device, `classes x dim` on the host.
        let (w, b) = t.weights().expect("weights");
        for (a, b) in w.iter().zip(&host.weight) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
        for (a, c) in b.iter().zip(&host.bias) {
            assert!((a - c).abs() < 1e-5, "{a} vs {c}");
        }
        let x: Vec<f32> = (0..n * dim)
            .map(|_| rng.random_range(-1.0f32..1.0))
            .collect();
        let y: Vec<usize> = (0..n).map(|i| i % classes).collect();
        assert_eq!(t.evaluate(&x, &y).expect("eval"), host.evaluate(&x, &y));
    }
}
