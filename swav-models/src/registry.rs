//! Backbones chosen by name at run time: a checkpoint names its backbone (the spec's `arch` and
//! `backbone` configuration), and a command rebuilds whatever it names through a registry.
//!
//! A backbone crate adds itself by implementing [`BackboneFamily`] for a marker type: the names
//! it answers to, how to build the backbone from a [`SwavModelSpec`], and the configuration to
//! store in the spec. A registry is a list of families ([`Backbones`], built with
//! [`registry!`](crate::registry)); [`BackboneRegistry::run`] finds the family of a spec and
//! hands its builder to a [`ModelTask`]: code that is generic over the backbone type (train it,
//! evaluate it, fine-tune it) and so runs unchanged for any family in the list. A binary's
//! registry is the list of the families it links (`cargo xtask` knows the ResNets and tinynet).
//!
//! ```
//! use swav_models::{BackboneRegistry, ModelTask, ResNetFamily, SwavModel, SwavModelSpec};
//!
//! struct FeatureDim;
//! impl ModelTask for FeatureDim {
//!     type Output = usize;
//!     fn run<E: swav_models::TaskBackbone>(
//!         self,
//!         spec: &SwavModelSpec,
//!         build: &swav_models::BuildBackbone<E>,
//!     ) -> usize {
//!         let device = burn::tensor::Device::flex();
//!         let model: SwavModel<E> = spec.wrap(build(&device).unwrap(), &device).unwrap();
//!         use swav_models::Backbone;
//!         model.backbone.feature_dim()
//!     }
//! }
//!
//! type Registry = swav_models::registry![ResNetFamily];
//! let spec = SwavModelSpec {
//!     arch: "resnet18".into(),
//!     base_width: 8,
//!     cifar_stem: true,
//!     hidden_mlp: 0,
//!     feat_dim: 16,
//!     prototypes: vec![10],
//!     backbone: serde_json::Value::Null,
//! };
//! assert_eq!(Registry::run(&spec, FeatureDim).unwrap(), 64);
//! ```

use std::marker::PhantomData;

use burn::module::{Module, ModuleDisplay};
use burn::tensor::Device;

use crate::checkpoint::SwavModelSpec;
use crate::{Backbone, ModelError, ResNet, ResNetConfig};

/// What a task needs of a backbone type: the [`Backbone`] interface, a burn module, and
/// shareable between the worker threads of a data-parallel run.
pub trait TaskBackbone: Backbone + Module + ModuleDisplay + Send + 'static {}

impl<E: Backbone + Module + ModuleDisplay + Send + 'static> TaskBackbone for E {}

/// A family of backbones a registry can build by name.
pub trait BackboneFamily {
    /// The backbone type.
    type Backbone: TaskBackbone;

    /// The names this family answers to, as a config's `swav.arch` spells them.
    fn names() -> &'static [&'static str];

    /// Whether `arch` names a member of this family (by default: one of [`Self::names`]).
    fn accepts(arch: &str) -> bool {
        Self::names().contains(&arch)
    }

    /// A backbone with fresh weights on `device`, as `spec` describes it (its `arch`,
    /// `base_width`, `cifar_stem` and the family's own `backbone` configuration).
    fn build(spec: &SwavModelSpec, device: &Device) -> Result<Self::Backbone, ModelError>;

    /// The family's full configuration for `spec`, stored in checkpoints beside the name, so a
    /// checkpoint says exactly which network it holds.
    fn describe(spec: &SwavModelSpec) -> Result<serde_json::Value, ModelError>;
}

/// Builds a backbone with fresh weights on a device.
pub type BuildBackbone<E> = dyn Fn(&Device) -> Result<E, ModelError>;

/// Code that runs whatever the backbone type.
pub trait ModelTask {
    /// What the task returns.
    type Output;

    /// Runs with the backbone `spec` names: `build` makes it on any device (seed the device
    /// first for reproducible weights), [`SwavModelSpec::wrap`] puts the head and prototypes
    /// over it, a checkpoint's weights load into the result.
    fn run<E: TaskBackbone>(self, spec: &SwavModelSpec, build: &BuildBackbone<E>) -> Self::Output;
}

/// A list of backbone families, searched in order.
pub trait BackboneRegistry {
    /// Every name the registry's families answer to.
    fn names() -> Vec<&'static str>;

    /// The spec with its `backbone` field set to the configuration its family describes.
    fn describe(spec: &SwavModelSpec) -> Result<SwavModelSpec, ModelError>;

    /// Runs `task` with the builder of the family that accepts `spec.arch`; an error naming
    /// the known backbones when none does.
    fn run<T: ModelTask>(spec: &SwavModelSpec, task: T) -> Result<T::Output, ModelError>;
}

/// The empty end of a registry list, and a registry of one family followed by others
/// (`Backbones<F, Backbones<G, ()>>`; [`registry!`](crate::registry) writes it).
pub struct Backbones<F, R = ()>(PhantomData<(F, R)>);

fn unknown(arch: &str, names: &[&str]) -> ModelError {
    ModelError::InvalidConfig {
        field: "arch",
        reason: format!(
            "`{arch}` names no backbone this program knows; it knows {}",
            names.join(", ")
        ),
    }
}

impl BackboneRegistry for () {
    fn names() -> Vec<&'static str> {
        Vec::new()
    }

    fn describe(spec: &SwavModelSpec) -> Result<SwavModelSpec, ModelError> {
        Err(unknown(&spec.arch, &[]))
    }

    fn run<T: ModelTask>(spec: &SwavModelSpec, _task: T) -> Result<T::Output, ModelError> {
        Err(unknown(&spec.arch, &[]))
    }
}

impl<F: BackboneFamily, R: BackboneRegistry> BackboneRegistry for Backbones<F, R> {
    fn names() -> Vec<&'static str> {
        let mut names = F::names().to_vec();
        names.extend(R::names());
        names
    }

    fn describe(spec: &SwavModelSpec) -> Result<SwavModelSpec, ModelError> {
        if F::accepts(&spec.arch) {
            let mut spec = spec.clone();
            if spec.backbone.is_null() {
                spec.backbone = F::describe(&spec)?;
            }
            Ok(spec)
        } else {
            R::describe(spec).map_err(|_| unknown(&spec.arch, &Self::names()))
        }
    }

    fn run<T: ModelTask>(spec: &SwavModelSpec, task: T) -> Result<T::Output, ModelError> {
        if F::accepts(&spec.arch) {
            let described = Self::describe(spec)?;
            let build = move |device: &Device| F::build(&described, device);
            Ok(task.run(spec, &build))
        } else {
            R::run(spec, task).map_err(|e| match e {
                ModelError::InvalidConfig { field: "arch", .. } => {
                    unknown(&spec.arch, &Self::names())
                }
                other => other,
            })
        }
    }
}

/// The registry type of a list of families: `registry![ResNetFamily, my_crate::MyFamily]`.
#[macro_export]
macro_rules! registry {
    () => { () };
    ($first:ty $(, $rest:ty)* $(,)?) => {
        $crate::Backbones<$first, $crate::registry![$($rest),*]>
    };
}

/// The ResNets of this crate: `resnet18` ... `resnet152`, `resnet50w2` / `w4` / `w5`.
pub struct ResNetFamily;

impl BackboneFamily for ResNetFamily {
    type Backbone = ResNet;

    fn names() -> &'static [&'static str] {
        &[
            "resnet18",
            "resnet34",
            "resnet50",
            "resnet101",
            "resnet152",
            "resnet50w2",
            "resnet50w4",
            "resnet50w5",
        ]
    }

    fn build(spec: &SwavModelSpec, device: &Device) -> Result<ResNet, ModelError> {
        let config = if spec.backbone.is_null() {
            spec.resnet()?
        } else {
            serde_json::from_value(spec.backbone.clone()).map_err(|e| {
                ModelError::InvalidConfig {
                    field: "backbone",
                    reason: format!("is not a ResNet configuration: {e}"),
                }
            })?
        };
        config.init(device)
    }

    fn describe(spec: &SwavModelSpec) -> Result<serde_json::Value, ModelError> {
        let config: ResNetConfig = spec.resnet()?;
        serde_json::to_value(config).map_err(|e| ModelError::InvalidConfig {
            field: "arch",
            reason: format!("cannot describe {}: {e}", spec.arch),
        })
    }
}
