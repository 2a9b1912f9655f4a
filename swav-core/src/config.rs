//! [`SwavConfig`]: every knob of the method, with the defaults of the original code and
//! presets for the published recipes (the paper's appendix and the original repository's
//! scripts; each preset's documentation says whose recipe it follows).

use serde::{Deserialize, Serialize};

use crate::CoreError;
use crate::queue::effective_queue_length;
use crate::sinkhorn::{SinkhornConfig, SinkhornPrecision};

/// The optimiser wrapped around the model's parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// LARS as the original applies it (apex's LARC around momentum SGD, clipping off).
    #[default]
    Lars,
    /// Momentum SGD with weight decay.
    Sgd,
    /// AdamW (decoupled weight decay).
    Adamw,
}

/// The half type of mixed precision (`use_fp16`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum HalfType {
    /// IEEE f16, with dynamic loss scaling (the original's apex O1).
    #[default]
    F16,
    /// bfloat16 (f32's range: no loss scaling).
    Bf16,
}

/// Every knob of SwAV pretraining. Field names follow the original `main_swav.py` arguments
/// where one exists, so a user of the original finds them; `Default` is the original's
/// argument defaults (2 x 224 crops, 100 epochs, batch 64 per worker, K = 3000).
///
/// Parsing fills missing fields with these defaults and refuses unknown ones; call
/// [`SwavConfig::validate`] before any work (the presets are valid).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SwavConfig {
    // -- multi-crop --
    /// Number of crops in each resolution group, e.g. `[2, 6]`.
    pub nmb_crops: Vec<usize>,
    /// Crop side in pixels of each group, e.g. `[224, 96]`.
    pub size_crops: Vec<usize>,
    /// Lower bound of RandomResizedCrop's area fraction for each group.
    pub min_scale_crops: Vec<f64>,
    /// Upper bound of RandomResizedCrop's area fraction for each group.
    pub max_scale_crops: Vec<f64>,

    // -- SwAV objective --
    /// Indices of the crops whose codes are predicted (the large crops, `[0, 1]`).
    pub crops_for_assign: Vec<usize>,
    /// Softmax temperature of the prediction (0.1).
    pub temperature: f64,
    /// Sinkhorn regularisation (0.05).
    pub epsilon: f64,
    /// Sinkhorn iterations (3).
    pub sinkhorn_iterations: usize,
    /// Float type of the Sinkhorn (f32; f64 for very small epsilon).
    pub sinkhorn_precision: SinkhornPrecision,
    /// Output size of the projection head (128).
    pub feat_dim: usize,
    /// Number of prototypes; several values give several heads (`[3000]`).
    pub nmb_prototypes: Vec<usize>,
    /// Global queue length, rounded down to a multiple of the global batch; 0 disables it.
    pub queue_length: usize,
    /// Epoch (0-based) from which the queue is created and filled (15).
    pub epoch_queue_starts: usize,
    /// Iterations during which the prototypes receive no update at all (313).
    pub freeze_prototypes_niters: usize,

    // -- model --
    /// Backbone name (`resnet18`, `resnet50`, `resnet50w2`, ...).
    pub arch: String,
    /// Hidden width of the projection MLP (2048); 0 gives a single Linear layer.
    pub hidden_mlp: usize,
    /// Use the CIFAR stem (3x3 stride-1 first convolution, no max-pool).
    pub cifar_stem: bool,
    /// Channels of the backbone's stem and first stage before the width multiplier (64 in
    /// every published ResNet; smaller values give the narrow nets of the CPU demo).
    pub base_width: usize,
    /// Synchronise BatchNorm statistics across workers.
    pub sync_bn: bool,

    // -- optimisation --
    /// Number of epochs.
    pub epochs: usize,
    /// Batch size per worker.
    pub batch_size: usize,
    /// Number of data-parallel workers (the global batch is `batch_size x world_size`).
    pub world_size: usize,
    /// Learning rate after warmup (4.8 at batch 4096).
    pub base_lr: f64,
    /// Learning rate at the end of the cosine decay.
    pub final_lr: f64,
    /// Epochs of linear warmup from `start_warmup` to `base_lr`.
    pub warmup_epochs: usize,
    /// Learning rate at the start of warmup.
    pub start_warmup: f64,
    /// Scale `base_lr`, `final_lr` and `start_warmup` by `global batch / 256` (the peers'
    /// rule; the original's values are already scaled, so it is off by default).
    pub scale_lr_by_batch: bool,
    /// Weight decay (1e-6).
    pub wd: f64,
    /// Momentum of SGD and LARS (0.9).
    pub momentum: f64,
    /// The optimiser.
    pub optimizer: OptimizerKind,
    /// LARS trust coefficient (0.001).
    pub lars_trust_coefficient: f64,
    /// Exclude BatchNorm and bias parameters from LARS adaptation and weight decay (the peers
    /// do; the original does not).
    pub lars_exclude_bn_bias: bool,
    /// apex LARC's `clip`: the adaptive rate divided by the scheduled one and capped at 1 (the
    /// original runs without it, the default).
    pub lars_clip: bool,
    /// Mixed precision on GPU devices: convolutions and the head's Linear layers in
    /// `half_type`, parameters, BatchNorm, embeddings, scores, Sinkhorn and loss in f32. The CPU
    /// backend trains in f32 (its half-precision kernels are slower).
    pub use_fp16: bool,
    /// The half type of `use_fp16`: `f16` (with dynamic loss scaling) or `bf16`.
    pub half_type: HalfType,
    /// Seed of every random choice of the run.
    pub seed: u64,
}

impl Default for SwavConfig {
    fn default() -> Self {
        Self {
            nmb_crops: vec![2],
            size_crops: vec![224],
            min_scale_crops: vec![0.14],
            max_scale_crops: vec![1.0],
            crops_for_assign: vec![0, 1],
            temperature: 0.1,
            epsilon: 0.05,
            sinkhorn_iterations: 3,
            sinkhorn_precision: SinkhornPrecision::F32,
            feat_dim: 128,
            nmb_prototypes: vec![3000],
            queue_length: 0,
            epoch_queue_starts: 15,
            freeze_prototypes_niters: 313,
            arch: "resnet50".into(),
            hidden_mlp: 2048,
            cifar_stem: false,
            base_width: 64,
            sync_bn: false,
            epochs: 100,
            batch_size: 64,
            world_size: 1,
            base_lr: 4.8,
            final_lr: 0.0,
            warmup_epochs: 10,
            start_warmup: 0.0,
            scale_lr_by_batch: false,
            wd: 1e-6,
            momentum: 0.9,
            optimizer: OptimizerKind::Lars,
            lars_trust_coefficient: 0.001,
            lars_exclude_bn_bias: false,
            lars_clip: false,
            use_fp16: true,
            half_type: HalfType::F16,
            seed: 31,
        }
    }
}

impl burn::config::Config for SwavConfig {}

/// Names of the presets accepted by [`SwavConfig::preset`].
pub const PRESETS: [&str; 6] = [
    "default",
    "imagenet-800ep",
    "imagenet-bs256",
    "cifar10",
    "stl10",
    "demo",
];

impl SwavConfig {
    /// The paper's headline run: ResNet-50, 2 x 224 + 6 x 96 crops, 800 epochs at batch 4096
    /// (64 workers x 64), LARS lr 4.8 with 10 warmup epochs from 0.3, cosine to 0.0048,
    /// prototypes frozen 313 iterations, synchronised BatchNorm, no queue (75.3% linear top-1).
    pub fn imagenet_800ep() -> Self {
        Self {
            nmb_crops: vec![2, 6],
            size_crops: vec![224, 96],
            min_scale_crops: vec![0.14, 0.05],
            max_scale_crops: vec![1.0, 0.14],
            epochs: 800,
            batch_size: 64,
            world_size: 64,
            base_lr: 4.8,
            final_lr: 0.0048,
            warmup_epochs: 10,
            start_warmup: 0.3,
            freeze_prototypes_niters: 313,
            sync_bn: true,
            ..Self::default()
        }
    }

    /// The batch-256 recipe (4 workers x 64): 200 epochs, lr 0.6 to 0.0006 without warmup,
    /// prototypes frozen one epoch (5005 iterations), a queue of 3840 from epoch 15 (72.7%).
    pub fn imagenet_bs256() -> Self {
        Self {
            nmb_crops: vec![2, 6],
            size_crops: vec![224, 96],
            min_scale_crops: vec![0.14, 0.05],
            max_scale_crops: vec![1.0, 0.14],
            epochs: 200,
            batch_size: 64,
            world_size: 4,
            base_lr: 0.6,
            final_lr: 0.0006,
            warmup_epochs: 0,
            start_warmup: 0.0,
            freeze_prototypes_niters: 5005,
            queue_length: 3840,
            epoch_queue_starts: 15,
            ..Self::default()
        }
    }

    /// CIFAR-10 on one device, after the peers (solo-learn's recipe): ResNet-18 with the CIFAR
    /// stem, 2 x 32 crops, batch 256, LARS lr 0.6 excluding BatchNorm and biases, 10 warmup
    /// epochs, 1000 epochs, a queue of 3840 from epoch 50, prototypes frozen one epoch (195
    /// iterations).
    pub fn cifar10() -> Self {
        Self {
            nmb_crops: vec![2],
            size_crops: vec![32],
            min_scale_crops: vec![0.14],
            max_scale_crops: vec![1.0],
            arch: "resnet18".into(),
            cifar_stem: true,
            epochs: 1000,
            batch_size: 256,
            world_size: 1,
            base_lr: 0.6,
            final_lr: 0.0006,
            warmup_epochs: 10,
            start_warmup: 0.0,
            freeze_prototypes_niters: 195,
            queue_length: 3840,
            epoch_queue_starts: 50,
            lars_exclude_bn_bias: true,
            ..Self::default()
        }
    }

    /// STL-10 (96-pixel images, pretraining on the 100,000-image unlabeled split) on one
    /// device: ResNet-18 with the ImageNet stem, 2 x 96 + 6 x 48 crops, batch 256, LARS lr 0.6
    /// excluding BatchNorm and biases, 10 warmup epochs, 400 epochs, a queue of 3840 from epoch
    /// 30, prototypes frozen one epoch (390 iterations). Not a published recipe: the original's
    /// ImageNet choices scaled to STL-10 by the peers' batch-size rule.
    pub fn stl10() -> Self {
        Self {
            nmb_crops: vec![2, 6],
            size_crops: vec![96, 48],
            min_scale_crops: vec![0.14, 0.05],
            max_scale_crops: vec![1.0, 0.14],
            arch: "resnet18".into(),
            epochs: 400,
            batch_size: 256,
            world_size: 1,
            base_lr: 0.6,
            final_lr: 0.0006,
            warmup_epochs: 10,
            start_warmup: 0.0,
            freeze_prototypes_niters: 390,
            queue_length: 3840,
            epoch_queue_starts: 30,
            lars_exclude_bn_bias: true,
            ..Self::default()
        }
    }

    /// The built-in CPU demo (`cargo xtask pretrain` with no arguments, a few minutes on two
    /// cores): a narrow ResNet-18 (base width 8, CIFAR stem) on 32-pixel images, 2 x 32 + 2 x 16
    /// crops, momentum SGD (LARS with trust 0.001 moves the weights too little in a run this
    /// short), 256 prototypes over 32-dimensional embeddings, no queue, and the prototypes
    /// frozen at their random initialisation for the whole run. Each of these was measured
    /// (`docs/results.md`): with fewer prototypes than embedding dimensions the embeddings can
    /// escape into the prototypes' null space and the loss sits at ln K; once the prototypes
    /// start learning at this scale (2,000 images, batch 64) the run collapses within an epoch.
    pub fn demo() -> Self {
        Self {
            nmb_crops: vec![2, 2],
            size_crops: vec![32, 16],
            min_scale_crops: vec![0.25, 0.15],
            max_scale_crops: vec![1.0, 0.4],
            arch: "resnet18".into(),
            cifar_stem: true,
            base_width: 8,
            hidden_mlp: 256,
            feat_dim: 32,
            nmb_prototypes: vec![256],
            epochs: 20,
            batch_size: 64,
            world_size: 1,
            optimizer: OptimizerKind::Sgd,
            base_lr: 0.1,
            final_lr: 0.001,
            warmup_epochs: 1,
            start_warmup: 0.0,
            wd: 5e-4,
            freeze_prototypes_niters: 1_000_000,
            queue_length: 0,
            epoch_queue_starts: 0,
            lars_exclude_bn_bias: true,
            use_fp16: false,
            ..Self::default()
        }
    }

    /// A preset by name (one of [`PRESETS`]).
    pub fn preset(name: &str) -> Result<Self, CoreError> {
        match name {
            "default" => Ok(Self::default()),
            "imagenet-800ep" => Ok(Self::imagenet_800ep()),
            "imagenet-bs256" => Ok(Self::imagenet_bs256()),
            "cifar10" => Ok(Self::cifar10()),
            "stl10" => Ok(Self::stl10()),
            "demo" => Ok(Self::demo()),
            other => Err(CoreError::config(
                "preset",
                format!("`{other}` is unknown; choose one of {}", PRESETS.join(", ")),
            )),
        }
    }

    /// Total number of crops per image.
    pub fn total_crops(&self) -> usize {
        self.nmb_crops.iter().sum()
    }

    /// The Sinkhorn parameters of this config.
    pub fn sinkhorn(&self) -> SinkhornConfig {
        SinkhornConfig {
            epsilon: self.epsilon,
            iterations: self.sinkhorn_iterations,
            precision: self.sinkhorn_precision,
        }
    }

    /// Global batch size.
    pub fn global_batch(&self) -> usize {
        self.batch_size * self.world_size
    }

    /// The queue length actually used, rounded down to a multiple of the global batch.
    pub fn effective_queue_length(&self) -> usize {
        effective_queue_length(self.queue_length, self.batch_size, self.world_size)
    }

    /// Whether the queue exists during `epoch` (0-based): a queue length is set and the epoch
    /// has reached `epoch_queue_starts`. (It is *used* only once also full.)
    pub fn queue_active(&self, epoch: usize) -> bool {
        self.queue_length > 0 && epoch >= self.epoch_queue_starts
    }

    /// `(base_lr, final_lr, start_warmup)` after the optional batch-size scaling rule.
    pub fn learning_rates(&self) -> (f64, f64, f64) {
        let s = if self.scale_lr_by_batch {
            self.global_batch() as f64 / 256.0
        } else {
            1.0
        };
        (self.base_lr * s, self.final_lr * s, self.start_warmup * s)
    }

    /// Checks every field, returning the first problem with the field's name.
    pub fn validate(&self) -> Result<(), CoreError> {
        let groups = self.nmb_crops.len();
        if groups == 0 {
            return Err(CoreError::config(
                "nmb_crops",
                "needs at least one crop group",
            ));
        }
        for (field, len) in [
            ("size_crops", self.size_crops.len()),
            ("min_scale_crops", self.min_scale_crops.len()),
            ("max_scale_crops", self.max_scale_crops.len()),
        ] {
            if len != groups {
                return Err(CoreError::config(
                    field,
                    format!("has {len} entries but nmb_crops has {groups} groups"),
                ));
            }
        }
        if self.nmb_crops.contains(&0) {
            return Err(CoreError::config(
                "nmb_crops",
                "every group needs at least one crop",
            ));
        }
        if self.size_crops.contains(&0) {
            return Err(CoreError::config(
                "size_crops",
                "crop sizes must be positive",
            ));
        }
        for (i, (&lo, &hi)) in self
            .min_scale_crops
            .iter()
            .zip(&self.max_scale_crops)
            .enumerate()
        {
            if !(lo > 0.0 && lo <= 1.0) {
                return Err(CoreError::config(
                    "min_scale_crops",
                    format!("entry {i} is {lo}, must be in (0, 1]"),
                ));
            }
            if !(hi >= lo && hi <= 1.0) {
                return Err(CoreError::config(
                    "max_scale_crops",
                    format!("entry {i} is {hi}, must be in [min_scale_crops[{i}] = {lo}, 1]"),
                ));
            }
        }
        let total = self.total_crops();
        if total < 2 {
            return Err(CoreError::config(
                "nmb_crops",
                format!("gives {total} crop per image; the swapped prediction needs at least 2"),
            ));
        }
        if self.crops_for_assign.is_empty() {
            return Err(CoreError::config(
                "crops_for_assign",
                "needs at least one crop to assign",
            ));
        }
        for (i, &c) in self.crops_for_assign.iter().enumerate() {
            if c >= total {
                return Err(CoreError::config(
                    "crops_for_assign",
                    format!("crop {c} does not exist (there are {total} crops, numbered from 0)"),
                ));
            }
            if self.crops_for_assign[..i].contains(&c) {
                return Err(CoreError::config(
                    "crops_for_assign",
                    format!("crop {c} is listed twice"),
                ));
            }
        }
        positive("temperature", self.temperature)?;
        self.sinkhorn().validate()?;
        if self.feat_dim == 0 {
            return Err(CoreError::config("feat_dim", "must be positive"));
        }
        if self.nmb_prototypes.is_empty() || self.nmb_prototypes.contains(&0) {
            return Err(CoreError::config(
                "nmb_prototypes",
                "needs at least one head, each with at least one prototype",
            ));
        }
        if self.base_width == 0 {
            return Err(CoreError::config("base_width", "must be at least 1"));
        }
        if self.arch.trim().is_empty() {
            return Err(CoreError::config("arch", "must name a backbone"));
        }
        if self.epochs == 0 {
            return Err(CoreError::config("epochs", "must be at least 1"));
        }
        if self.batch_size == 0 {
            return Err(CoreError::config("batch_size", "must be at least 1"));
        }
        if self.world_size == 0 {
            return Err(CoreError::config("world_size", "must be at least 1"));
        }
        if self.queue_length > 0 && self.effective_queue_length() == 0 {
            return Err(CoreError::config(
                "queue_length",
                format!(
                    "is {}, shorter than one global batch ({} = batch_size {} x world_size {}); \
                     use 0 for no queue",
                    self.queue_length,
                    self.global_batch(),
                    self.batch_size,
                    self.world_size
                ),
            ));
        }
        non_negative("base_lr", self.base_lr)?;
        non_negative("final_lr", self.final_lr)?;
        non_negative("start_warmup", self.start_warmup)?;
        non_negative("wd", self.wd)?;
        non_negative("lars_trust_coefficient", self.lars_trust_coefficient)?;
        if !(0.0..1.0).contains(&self.momentum) {
            return Err(CoreError::config(
                "momentum",
                format!("is {}, must be in [0, 1)", self.momentum),
            ));
        }
        if self.warmup_epochs > self.epochs {
            return Err(CoreError::config(
                "warmup_epochs",
                format!(
                    "is {}, longer than the run ({} epochs)",
                    self.warmup_epochs, self.epochs
                ),
            ));
        }
        Ok(())
    }
}

fn positive(field: &'static str, v: f64) -> Result<(), CoreError> {
    if v.is_finite() && v > 0.0 {
        Ok(())
    } else {
        Err(CoreError::config(
            field,
            format!("must be a positive number, got {v}"),
        ))
    }
}

fn non_negative(field: &'static str, v: f64) -> Result<(), CoreError> {
    if v.is_finite() && v >= 0.0 {
        Ok(())
    } else {
        Err(CoreError::config(
            field,
            format!("must be a finite number >= 0, got {v}"),
        ))
    }
}
