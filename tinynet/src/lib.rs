//! A small convolutional backbone that lives outside `swav-models`, to show (and test) that the
//! [`Backbone`] trait is all SwAV training and evaluation need of a backbone: three 3x3
//! convolutions with BatchNorm and ReLU, strides 1, 2, 2, then global average pooling.
//!
//! Its layers are burn's modules, run through [`swav_models::layers`], so mixed precision,
//! synchronised BatchNorm and the fast CPU kernels reach them as they reach the ResNet.

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{AdaptiveAvgPool2d, AdaptiveAvgPool2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, PaddingConfig2d};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor};
use swav_models::{Backbone, BackboneFamily, ModelError, SwavModelSpec, layers};

/// One convolution, its BatchNorm and a ReLU.
#[derive(Module, Debug)]
pub struct ConvBnRelu {
    /// The 3x3 convolution.
    pub conv: Conv2d,
    /// Its BatchNorm.
    pub bn: BatchNorm,
}

impl ConvBnRelu {
    fn new(cin: usize, cout: usize, stride: usize, device: &Device) -> Self {
        Self {
            conv: Conv2dConfig::new([cin, cout], [3, 3])
                .with_stride([stride, stride])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .with_bias(false)
                .init(device),
            bn: BatchNormConfig::new(cout).init(device),
        }
    }

    /// The block's output: convolution, BatchNorm and ReLU through [`swav_models::layers`].
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        relu(layers::batch_norm(&self.bn, layers::conv2d(&self.conv, x)))
    }
}

/// The tiny backbone: `width`, `2 width`, `4 width` channels; features of size `4 width`.
#[derive(Module, Debug)]
pub struct TinyNet {
    /// First block (stride 1).
    pub block1: ConvBnRelu,
    /// Second block (stride 2).
    pub block2: ConvBnRelu,
    /// Third block (stride 2).
    pub block3: ConvBnRelu,
    /// Global average pooling.
    pub pool: AdaptiveAvgPool2d,
    /// Feature size.
    pub dim: usize,
}

impl TinyNet {
    /// A TinyNet of base `width` on `device`.
    pub fn new(width: usize, device: &Device) -> Self {
        Self {
            block1: ConvBnRelu::new(3, width, 1, device),
            block2: ConvBnRelu::new(width, 2 * width, 2, device),
            block3: ConvBnRelu::new(2 * width, 4 * width, 2, device),
            pool: AdaptiveAvgPool2dConfig::new([1, 1]).init(),
            dim: 4 * width,
        }
    }
}

impl Backbone for TinyNet {
    fn feature_dim(&self) -> usize {
        self.dim
    }

    fn forward_features(&self, images: Tensor<4>) -> Tensor<2> {
        let x = self
            .block3
            .forward(self.block2.forward(self.block1.forward(images)));
        let [b, c, _, _] = x.dims();
        self.pool.forward(x).reshape([b, c])
    }
}

/// TinyNet in a backbone registry: `swav.arch = "tinynet"`, its width from `swav.base_width`
/// (stored in checkpoints as `{"width": N}`), so a TinyNet checkpoint is rebuilt and evaluated
/// like a ResNet's by a program whose registry lists this family.
pub struct TinyNetFamily;

impl BackboneFamily for TinyNetFamily {
    type Backbone = TinyNet;

    fn names() -> &'static [&'static str] {
        &["tinynet"]
    }

    fn build(spec: &SwavModelSpec, device: &Device) -> Result<TinyNet, ModelError> {
        let width = match spec.backbone.get("width") {
            Some(w) => w.as_u64().ok_or_else(|| ModelError::InvalidConfig {
                field: "backbone",
                reason: format!("tinynet's `width` must be a positive integer, not {w}"),
            })? as usize,
            None => spec.base_width,
        };
        if width == 0 {
            return Err(ModelError::InvalidConfig {
                field: "base_width",
                reason: "tinynet needs a width of at least 1".into(),
            });
        }
        Ok(TinyNet::new(width, device))
    }

    fn describe(spec: &SwavModelSpec) -> Result<serde_json::Value, ModelError> {
        Ok(serde_json::json!({ "width": spec.base_width }))
    }
}
