//! The `Backbone` trait, the ResNet family, the SwAV projection head and prototypes.
//!
//! - [`Backbone`]: a headless feature extractor (features of a batch and their dimension), the
//!   narrow interface training and evaluation use, so another crate can supply a backbone.
//! - [`ResNet`]: ResNet-18/34/50/101/152 in torchvision's layout, with SwAV's width
//!   multipliers (RN50-w2, w4, w5), the CIFAR stem option and zero-init of the last BatchNorm of
//!   each block; Kaiming-normal (fan-out) convolutions, BatchNorm weight 1 and bias 0.
//! - [`ProjectionHead`] and [`Prototypes`]: SwAV's MLP head and its prototype layers.
//! - [`SwavModel`]: the three over any backbone, with the multi-crop forward.
//! - [`load_torchvision_resnet`] and [`load_swav_checkpoint`]: PyTorch weights through burn's
//!   store, refused with the offending keys listed when they do not fit.
//!
//! - [`BackboneRegistry`]: backbones rebuilt by the name and configuration a checkpoint stores
//!   ([`BackboneFamily`], [`ModelTask`], the [`registry!`] list type).
//! - [`write_checkpoint`] / [`read_checkpoint`]: our checkpoint container (burnpack: the model's
//!   tensors, further named arrays and metadata, written atomically), and [`load_swav_model`]
//!   to rebuild a model from its stored [`SwavModelSpec`].
//! - [`layers`]: the one layer API (convolution, BatchNorm, Linear over burn's modules) that
//!   applies mixed precision ([`precision`]), synchronised BatchNorm ([`syncbn`]) and the
//!   engine's fast CPU kernels; every backbone here goes through it, and so should one from
//!   another crate.
//!
//! The fast CPU path is the `swav-engine` crate, behind the `engine` feature (on by default);
//! without it the layers use burn's own kernels and there is no synchronised BatchNorm.

pub mod atomic;
mod backbone;
mod bn_stats;
mod checkpoint;
mod error;
mod export;
mod head;
mod import;
pub mod layers;
pub mod precision;
mod registry;
mod resnet;
mod swav;
#[cfg(feature = "engine")]
pub mod syncbn;

pub use backbone::Backbone;
pub use checkpoint::{
    Checkpoint, MODEL_PREFIX, SPEC_KEY, StateArray, SwavModelSpec, load_swav_model,
    read_checkpoint, write_checkpoint,
};
pub use error::ModelError;
pub use export::{
    ExportHead, ExportTensor, ExportValues, torchvision_tensors, write_safetensors_export,
    write_torch_state_dict,
};
pub use head::{ProjectionHead, ProjectionHeadConfig, Prototypes, PrototypesConfig};
pub use import::{
    load_safetensors, load_swav_checkpoint, load_torchvision_resnet, save_safetensors,
};
pub use registry::{
    BackboneFamily, BackboneRegistry, Backbones, BuildBackbone, ModelTask, ResNetFamily,
    TaskBackbone,
};
pub use resnet::{Downsample, ResBlock, ResNet, ResNetConfig};
pub use swav::{SwavModel, SwavOutput};
