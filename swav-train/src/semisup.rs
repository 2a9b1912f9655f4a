//! Semi-supervised fine-tuning (the original `eval_semisup.py`): the whole pretrained backbone
//! plus a new Linear head, trained on a labelled subset (the ImageNet 1 % / 10 % lists, or a
//! seeded class-balanced fraction) with momentum SGD, no weight decay, separate learning rates
//! for the backbone and the head, both multiplied by 0.2 at epochs 12 and 16 of 20.
//!
//! It lives beside the training run rather than in `swav-eval` because it trains the backbone
//! with the run's optimiser (PyTorch-exact momentum SGD, per-parameter skip); the evaluation of
//! each epoch uses `swav-eval`.
//!
//! Only the subset's labels are ever read: the loader iterates a [`Subset`] of the training
//! data, so a label outside the subset cannot reach the loss.

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Tensor, TensorData};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use swav_augment::{CropGroup, MultiCrop, MultiCropConfig, Normalize};
use swav_core::OptimizerKind;
use swav_data::{ImageDataset, Loader, LoaderConfig, Subset};
use swav_eval::{ExtractConfig, LinearClassifier, extract_features};
use swav_models::Backbone;

use crate::{DynDataset, OptimConfig, Optimizer, TrainError};

/// The fine-tuning recipe. [`SemiSupConfig::imagenet_10pct`] and
/// [`SemiSupConfig::imagenet_1pct`] are the original's two.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SemiSupConfig {
    /// Epochs (20).
    pub epochs: usize,
    /// Batch size (256).
    pub batch_size: usize,
    /// Learning rate of the backbone.
    pub lr_backbone: f64,
    /// Learning rate of the new head.
    pub lr_head: f64,
    /// Epochs at whose start both rates are multiplied by `decay_factor` ([12, 16]).
    pub decay_epochs: Vec<usize>,
    /// The decay factor (0.2).
    pub decay_factor: f64,
    /// SGD momentum (0.9).
    pub momentum: f64,
    /// Weight decay (0).
    pub weight_decay: f64,
    /// Training crop side and the RandomResizedCrop scale range ((0.08, 1)).
    pub crop: u32,
    /// Smallest crop scale.
    pub min_scale: f64,
    /// Normalisation.
    pub normalize: Normalize,
    /// Seed of the head's initialisation, the shuffling and the augmentation.
    pub seed: u64,
    /// Threads that decode and augment.
    pub workers: usize,
}

impl SemiSupConfig {
    /// The original's 10 % recipe: backbone lr 0.01, head lr 0.2, at crop side `crop`.
    pub fn imagenet_10pct(crop: u32, normalize: Normalize) -> Self {
        Self {
            epochs: 20,
            batch_size: 256,
            lr_backbone: 0.01,
            lr_head: 0.2,
            decay_epochs: vec![12, 16],
            decay_factor: 0.2,
            momentum: 0.9,
            weight_decay: 0.0,
            crop,
            min_scale: 0.08,
            normalize,
            seed: 31,
            workers: 2,
        }
    }

    /// The original's 1 % recipe: backbone lr 0.02, head lr 5.
    pub fn imagenet_1pct(crop: u32, normalize: Normalize) -> Self {
        Self {
            lr_backbone: 0.02,
            lr_head: 5.0,
            ..Self::imagenet_10pct(crop, normalize)
        }
    }

    /// The rates of epoch `epoch`: (backbone, head).
    pub fn rates(&self, epoch: usize) -> (f64, f64) {
        let decays = self.decay_epochs.iter().filter(|&&e| epoch >= e).count();
        let f = self.decay_factor.powi(decays as i32);
        (self.lr_backbone * f, self.lr_head * f)
    }

    /// Refuses settings that cannot train.
    pub fn validate(&self) -> Result<(), TrainError> {
        let bad =
            |field: &str, reason: &str| Err(TrainError::FineTune(format!("`{field}` {reason}")));
        if self.epochs == 0 {
            return bad("epochs", "must be at least 1");
        }
        if self.batch_size == 0 {
            return bad("batch_size", "must be at least 1");
        }
        if self.crop == 0 {
            return bad("crop", "must be positive");
        }
        for (f, v) in [
            ("lr_backbone", self.lr_backbone),
            ("lr_head", self.lr_head),
            ("decay_factor", self.decay_factor),
            ("weight_decay", self.weight_decay),
        ] {
            if !v.is_finite() || v < 0.0 {
                return bad(f, "must be finite and not negative");
            }
        }
        if !(0.0..1.0).contains(&self.momentum) {
            return bad("momentum", "must be in [0, 1)");
        }
        if !(self.min_scale > 0.0 && self.min_scale <= 1.0) {
            return bad("min_scale", "must be in (0, 1]");
        }
        Ok(())
    }
}

/// A backbone with a Linear classifier on its pooled features.
#[derive(Module, Debug)]
pub struct Classifier<E> {
    /// The backbone (fine-tuned).
    pub backbone: E,
    /// The new head.
    pub fc: Linear,
}

impl<E: Backbone + Module> Classifier<E> {
    /// Logits of a batch.
    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        self.fc.forward(self.backbone.forward_features(images))
    }
}

/// One epoch of fine-tuning.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SemiSupEpoch {
    /// Epoch (0-based).
    pub epoch: usize,
    /// Backbone learning rate.
    pub lr_backbone: f64,
    /// Head learning rate.
    pub lr_head: f64,
    /// Mean training cross-entropy.
    pub train_loss: f64,
    /// Test top-1, percent.
    pub top1: f64,
    /// Test top-5, percent.
    pub top5: f64,
}

/// What fine-tuning reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SemiSupResult {
    /// The recipe.
    pub config: SemiSupConfig,
    /// Labelled images used (the subset's size).
    pub labelled_images: usize,
    /// Size of the training set the subset was taken from.
    pub train_images: usize,
    /// Test images.
    pub test_images: usize,
    /// Every epoch.
    pub epochs: Vec<SemiSupEpoch>,
    /// Best test top-1 and its epoch.
    pub best_top1: f64,
    /// Epoch of the best top-1.
    pub best_epoch: usize,
    /// Last epoch's top-1 and top-5.
    pub last_top1: f64,
    /// Last epoch's top-5.
    pub last_top5: f64,
    /// Training images that could not be read (file: reason).
    pub skipped_files: Vec<String>,
}

fn accuracy<E: Backbone + Module>(
    model: &Classifier<E>,
    test: &DynDataset,
    classes: usize,
    extract: &ExtractConfig,
    device: &Device,
) -> Result<(f64, f64), TrainError> {
    let f = extract_features(&model.backbone, test.as_ref(), extract, device)?;
    let labels = f.labels_required("test labels")?;
    let [d, k] = model.fc.weight.val().dims();
    let w = model
        .fc
        .weight
        .val()
        .transpose()
        .into_data()
        .try_to_vec_as::<f32>()
        .map_err(|e| TrainError::TensorRead {
            what: "the classifier's weights".into(),
            reason: format!("{e:?}"),
        })?;
    let b = match &model.fc.bias {
        Some(b) => {
            b.val()
                .into_data()
                .try_to_vec_as::<f32>()
                .map_err(|e| TrainError::TensorRead {
                    what: "the classifier's bias".into(),
                    reason: format!("{e:?}"),
                })?
        }
        None => vec![0.0; k],
    };
    if k != classes || d != f.dim {
        return Err(TrainError::FineTune(format!(
            "the classifier is {d} -> {k}, for features of {} and {classes} classes",
            f.dim
        )));
    }
    let acc = LinearClassifier::from_weights(d, k, w, b).evaluate(&f.values, &labels);
    Ok((acc.top1, acc.top5))
}

/// Fine-tunes `backbone` with a new head on the samples `subset` of `train` (their labels
/// only), evaluating on `test` after every epoch (eval transform `extract.transform`).
/// `device` is the base device (the autodiff wrapper is added here). Returns the fine-tuned
/// classifier and the report.
#[allow(clippy::too_many_arguments)]
pub fn finetune<E>(
    backbone: E,
    train: &DynDataset,
    subset: &[usize],
    test: &DynDataset,
    classes: usize,
    config: &SemiSupConfig,
    extract: &ExtractConfig,
    device: &Device,
) -> Result<(Classifier<E>, SemiSupResult), TrainError>
where
    E: Backbone + Module + burn::module::ModuleDisplay + 'static,
{
    let base = device.clone();
    let device = &base.clone().autodiff();
    config.validate()?;
    if subset.is_empty() {
        return Err(TrainError::FineTune("the labelled subset is empty".into()));
    }
    let labelled: DynDataset = std::sync::Arc::new(Subset::new(train.clone(), subset.to_vec())?);
    check_labels(&labelled, classes)?;
    let loader = labelled_loader(labelled, config)?;
    let fc = new_head(backbone.feature_dim(), classes, config.seed, device);
    let mut model = Classifier { backbone, fc };
    let mut optim = Optimizer::new(OptimConfig {
        kind: OptimizerKind::Sgd,
        momentum: config.momentum,
        weight_decay: config.weight_decay,
        trust: 0.0,
        exclude_bn_bias: false,
        clip: false,
    });
    let mut epochs = Vec::with_capacity(config.epochs);
    let mut best = (f64::MIN, 0usize);
    for epoch in 0..config.epochs {
        let (lr_b, lr_h) = config.rates(epoch);
        let (mut loss_sum, mut steps) = (0f64, 0usize);
        for b in loader.epoch(epoch as u64, 0) {
            let (m, value) = train_batch(model, &mut optim, b, classes, (lr_b, lr_h), device)
                .map_err(|e| match e {
                    TrainError::NonFinite(at) => {
                        TrainError::NonFinite(format!("semi-supervised epoch {epoch}, {at}"))
                    }
                    other => other,
                })?;
            model = m;
            loss_sum += value;
            steps += 1;
        }
        let (top1, top5) = accuracy(&model, test, classes, extract, &base)?;
        if top1 > best.0 {
            best = (top1, epoch);
        }
        epochs.push(SemiSupEpoch {
            epoch,
            lr_backbone: lr_b,
            lr_head: lr_h,
            train_loss: loss_sum / steps.max(1) as f64,
            top1,
            top5,
        });
    }
    let last = epochs
        .last()
        .cloned()
        .ok_or_else(|| TrainError::FineTune("no epoch ran".into()))?;
    let skipped_files = loader
        .skipped()
        .iter()
        .map(|s| format!("{}: {}", s.source, s.reason))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    Ok((
        model,
        SemiSupResult {
            config: config.clone(),
            labelled_images: subset.len(),
            train_images: train.len(),
            test_images: test.len(),
            epochs,
            best_top1: best.0,
            best_epoch: best.1,
            last_top1: last.top1,
            last_top5: last.top5,
            skipped_files,
        },
    ))
}

/// Refuses a labelled subset with a sample that has no label or one outside `classes`.
fn check_labels(labelled: &DynDataset, classes: usize) -> Result<(), TrainError> {
    for i in 0..labelled.len() {
        let reason = match labelled.label(i) {
            Some(l) if l < classes => continue,
            Some(l) => format!("label {l}, but there are {classes} classes"),
            None => "no label (fine-tuning needs one per image)".into(),
        };
        return Err(TrainError::Label {
            sample: labelled.describe(i),
            reason,
        });
    }
    Ok(())
}

/// The loader of the labelled images: one random resized crop (and a flip) per image.
fn labelled_loader(
    labelled: DynDataset,
    config: &SemiSupConfig,
) -> Result<Loader<DynDataset>, TrainError> {
    let multicrop = MultiCrop::new(MultiCropConfig {
        groups: vec![CropGroup {
            count: 1,
            size: config.crop,
            min_scale: config.min_scale,
            max_scale: 1.0,
        }],
        flip_p: 0.5,
        jitter: None,
        grayscale_p: 0.0,
        blur: None,
        solarize: None,
        normalize: config.normalize,
        ..MultiCropConfig::cifar()
    })?;
    let batch = config.batch_size.min(labelled.len());
    Ok(Loader::new(
        labelled,
        multicrop,
        LoaderConfig {
            batch_size: batch,
            seed: config.seed,
            workers: config.workers.max(1),
            prefetch: 4,
            shuffle: true,
            drop_last: false,
            rank: 0,
            world_size: 1,
            warn: true,
        },
    )?)
}

/// A new classifier head: N(0, 0.01) weights and zero bias, drawn as the linear probe draws
/// them; burn's Linear stores the weight as `[in, out]`.
fn new_head(dim: usize, classes: usize, seed: u64, device: &Device) -> Linear {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5345_4d49);
    let init = LinearClassifier::new(dim, classes, 0.01, &mut rng);
    Linear {
        weight: Param::from_tensor(
            Tensor::<2>::from_data(TensorData::new(init.weight, [classes, dim]), device)
                .transpose(),
        ),
        bias: Some(Param::from_tensor(Tensor::zeros([classes], device))),
    }
}

/// One step on batch `b`: the cross-entropy, then the backbone's update at `rates.0` and the
/// head's at `rates.1`. Returns the model and the batch's loss.
fn train_batch<E>(
    model: Classifier<E>,
    optim: &mut Optimizer,
    b: swav_data::Batch,
    classes: usize,
    (lr_b, lr_h): (f64, f64),
    device: &Device,
) -> Result<(Classifier<E>, f64), TrainError>
where
    E: Backbone + Module + burn::module::ModuleDisplay + 'static,
{
    let is_head = |p: &str| p.starts_with("fc.");
    let labels: Vec<usize> = b
        .labels
        .iter()
        .map(|l| l.ok_or_else(|| TrainError::FineTune("a labelled sample lost its label".into())))
        .collect::<Result<_, _>>()?;
    let n = labels.len();
    let mut onehot = vec![0f32; n * classes];
    for (r, &l) in labels.iter().enumerate() {
        onehot[r * classes + l] = 1.0;
    }
    let x = b
        .groups
        .into_iter()
        .next()
        .ok_or_else(|| TrainError::FineTune("a batch without images".into()))?;
    let x = crate::source::group_tensor(x, device);
    let target = Tensor::<2>::from_data(TensorData::new(onehot, [n, classes]), device);
    let loss = log_softmax(model.forward(x), 1)
        .mul(target)
        .sum()
        .neg()
        .div_scalar(n as f64);
    let value = loss.clone().into_scalar::<f32>() as f64;
    if !value.is_finite() {
        return Err(TrainError::NonFinite(format!(
            "batch {}: loss {value} (lr backbone {lr_b}, head {lr_h})",
            b.index
        )));
    }
    let grads = loss.backward();
    let model = optim.step(model, &grads, lr_b, &|p| is_head(p));
    let model = optim.step(model, &grads, lr_h, &|p| !is_head(p));
    Ok((model, value))
}
