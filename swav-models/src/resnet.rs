//! ResNet (He et al., 2016, "Deep Residual Learning for Image Recognition") in torchvision's
//! layout, with SwAV's width multipliers (Caron et al., 2020, appendix: RN50-w2/w4/w5 widen
//! every stage) and the CIFAR stem the peers use for 32-pixel images.

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{AdaptiveAvgPool2d, AdaptiveAvgPool2dConfig, MaxPool2d, MaxPool2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Initializer, PaddingConfig2d};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::ModelError;
use crate::backbone::Backbone;
use crate::layers::{batch_norm, conv2d};

/// Which ResNet, and how it is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResNetConfig {
    /// 18, 34, 50, 101 or 152.
    pub depth: usize,
    /// Width multiplier of every stage (1, or SwAV's 2, 4, 5 for ResNet-50).
    pub width: usize,
    /// CIFAR stem: a 3x3 stride-1 first convolution and no max-pool.
    pub cifar_stem: bool,
    /// Initialise the last BatchNorm weight of every residual block to zero.
    pub zero_init_residual: bool,
    /// Channels of the stem and the first stage before the width multiplier (64 in every
    /// published ResNet; smaller values make narrow nets for tests and demos).
    #[serde(default = "default_base_width")]
    pub base_width: usize,
}

fn default_base_width() -> usize {
    64
}

impl ResNetConfig {
    /// A torchvision ResNet of the given depth, width 1, ImageNet stem.
    pub fn new(depth: usize) -> Self {
        Self {
            depth,
            width: 1,
            cifar_stem: false,
            zero_init_residual: false,
            base_width: 64,
        }
    }

    /// The backbone named as in SwAV's and torchvision's code: `resnet18`, `resnet34`,
    /// `resnet50`, `resnet101`, `resnet152`, `resnet50w2`, `resnet50w4`, `resnet50w5`.
    pub fn from_name(name: &str) -> Result<Self, ModelError> {
        let (depth, width) = match name {
            "resnet18" => (18, 1),
            "resnet34" => (34, 1),
            "resnet50" => (50, 1),
            "resnet101" => (101, 1),
            "resnet152" => (152, 1),
            "resnet50w2" => (50, 2),
            "resnet50w4" => (50, 4),
            "resnet50w5" => (50, 5),
            other => {
                return Err(ModelError::InvalidConfig {
                    field: "arch",
                    reason: format!(
                        "`{other}` is unknown; choose resnet18, resnet34, resnet50, resnet101, \
                         resnet152, resnet50w2, resnet50w4 or resnet50w5"
                    ),
                });
            }
        };
        Ok(Self {
            depth,
            width,
            ..Self::new(depth)
        })
    }

    /// Sets the base width (see [`ResNetConfig::base_width`]).
    pub fn with_base_width(mut self, base_width: usize) -> Self {
        self.base_width = base_width;
        self
    }

    /// Blocks per stage and whether blocks are bottlenecks.
    fn layout(&self) -> Result<([usize; 4], bool), ModelError> {
        Ok(match self.depth {
            18 => ([2, 2, 2, 2], false),
            34 => ([3, 4, 6, 3], false),
            50 => ([3, 4, 6, 3], true),
            101 => ([3, 4, 23, 3], true),
            152 => ([3, 8, 36, 3], true),
            d => {
                return Err(ModelError::InvalidConfig {
                    field: "depth",
                    reason: format!("{d} is not one of 18, 34, 50, 101, 152"),
                });
            }
        })
    }

    /// Size of the pooled feature vector: 512 x width (basic blocks) or 2048 x width
    /// (bottlenecks).
    pub fn feature_dim(&self) -> Result<usize, ModelError> {
        let (_, bottleneck) = self.layout()?;
        Ok(self.base_width * self.width * 8 * if bottleneck { 4 } else { 1 })
    }

    /// Builds the network on `device` with torchvision's initialisation.
    pub fn init(&self, device: &Device) -> Result<ResNet, ModelError> {
        if self.width == 0 || self.base_width == 0 {
            return Err(ModelError::InvalidConfig {
                field: "width",
                reason: "width and base_width must be at least 1".into(),
            });
        }
        let (blocks, bottleneck) = self.layout()?;
        let base = self.base_width * self.width;
        let expansion = if bottleneck { 4 } else { 1 };
        let (conv1, maxpool) = if self.cifar_stem {
            (conv(3, base, 3, 1, device), None)
        } else {
            let pool = MaxPool2dConfig::new([3, 3])
                .with_strides([2, 2])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init();
            (conv(3, base, 7, 2, device), Some(pool))
        };
        let mut in_ch = base;
        let mut stages: Vec<Vec<ResBlock>> = Vec::new();
        for (stage, &n) in blocks.iter().enumerate() {
            let planes = base << stage;
            let stride = if stage == 0 { 1 } else { 2 };
            let mut layer = Vec::with_capacity(n);
            for i in 0..n {
                let s = if i == 0 { stride } else { 1 };
                layer.push(ResBlock::new(
                    in_ch,
                    planes,
                    s,
                    bottleneck,
                    self.zero_init_residual,
                    device,
                ));
                in_ch = planes * expansion;
            }
            stages.push(layer);
        }
        let mut it = stages.into_iter();
        let mut next = || it.next().unwrap_or_default();
        Ok(ResNet {
            conv1,
            bn1: bn(base, false, device),
            maxpool,
            layer1: next(),
            layer2: next(),
            layer3: next(),
            layer4: next(),
            avgpool: AdaptiveAvgPool2dConfig::new([1, 1]).init(),
            feature_dim: in_ch,
        })
    }
}

/// A convolution without bias, Kaiming-normal with fan-out (torchvision's ResNet init).
fn conv(cin: usize, cout: usize, k: usize, stride: usize, device: &Device) -> Conv2d {
    let p = k / 2;
    Conv2dConfig::new([cin, cout], [k, k])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(p, p, p, p))
        .with_bias(false)
        .with_initializer(Initializer::KaimingNormal {
            gain: std::f64::consts::SQRT_2,
            fan_out_only: true,
        })
        .init(device)
}

/// BatchNorm with weight 1 (or 0 for a zero-init residual) and bias 0.
fn bn(channels: usize, zero: bool, device: &Device) -> BatchNorm {
    let mut b = BatchNormConfig::new(channels).init(device);
    if zero {
        b.gamma = b.gamma.map(|g| g.zeros_like());
    }
    b
}

/// The 1x1 convolution and BatchNorm that match a block's shortcut to its output.
#[derive(Module, Debug)]
pub struct Downsample {
    /// 1x1 convolution with the block's stride.
    pub conv: Conv2d,
    /// Its BatchNorm.
    pub bn: BatchNorm,
}

/// A residual block: basic (two 3x3 convolutions) or bottleneck (1x1, 3x3, 1x1; the stride on
/// the 3x3, as torchvision's "ResNet v1.5"). Field names follow torchvision's.
#[derive(Module, Debug)]
pub struct ResBlock {
    /// First convolution.
    pub conv1: Conv2d,
    /// First BatchNorm.
    pub bn1: BatchNorm,
    /// Second convolution.
    pub conv2: Conv2d,
    /// Second BatchNorm.
    pub bn2: BatchNorm,
    /// Third convolution (bottleneck only).
    pub conv3: Option<Conv2d>,
    /// Third BatchNorm (bottleneck only).
    pub bn3: Option<BatchNorm>,
    /// Shortcut projection when the shape changes.
    pub downsample: Option<Downsample>,
}

impl ResBlock {
    fn new(
        in_ch: usize,
        planes: usize,
        stride: usize,
        bottleneck: bool,
        zero_init: bool,
        device: &Device,
    ) -> Self {
        let expansion = if bottleneck { 4 } else { 1 };
        let out = planes * expansion;
        let downsample = (stride != 1 || in_ch != out).then(|| Downsample {
            conv: conv(in_ch, out, 1, stride, device),
            bn: bn(out, false, device),
        });
        if bottleneck {
            Self {
                conv1: conv(in_ch, planes, 1, 1, device),
                bn1: bn(planes, false, device),
                conv2: conv(planes, planes, 3, stride, device),
                bn2: bn(planes, false, device),
                conv3: Some(conv(planes, out, 1, 1, device)),
                bn3: Some(bn(out, zero_init, device)),
                downsample,
            }
        } else {
            Self {
                conv1: conv(in_ch, planes, 3, stride, device),
                bn1: bn(planes, false, device),
                conv2: conv(planes, planes, 3, 1, device),
                bn2: bn(planes, zero_init, device),
                conv3: None,
                bn3: None,
                downsample,
            }
        }
    }

    /// The block's output for `x`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let identity = match &self.downsample {
            Some(d) => batch_norm(&d.bn, conv2d(&d.conv, x.clone())),
            None => x.clone(),
        };
        let mut y = relu(batch_norm(&self.bn1, conv2d(&self.conv1, x)));
        y = batch_norm(&self.bn2, conv2d(&self.conv2, y));
        if let (Some(c3), Some(b3)) = (&self.conv3, &self.bn3) {
            y = batch_norm(b3, conv2d(c3, relu(y)));
        }
        relu(y.add(identity))
    }
}

/// A ResNet without its classifier: the stem, four stages and global average pooling.
#[derive(Module, Debug)]
pub struct ResNet {
    /// Stem convolution (7x7 stride 2, or 3x3 stride 1 with the CIFAR stem).
    pub conv1: Conv2d,
    /// Stem BatchNorm.
    pub bn1: BatchNorm,
    /// Stem max-pool (absent with the CIFAR stem).
    pub maxpool: Option<MaxPool2d>,
    /// Stage 1 (stride 1).
    pub layer1: Vec<ResBlock>,
    /// Stage 2 (stride 2).
    pub layer2: Vec<ResBlock>,
    /// Stage 3 (stride 2).
    pub layer3: Vec<ResBlock>,
    /// Stage 4 (stride 2).
    pub layer4: Vec<ResBlock>,
    /// Global average pooling.
    pub avgpool: AdaptiveAvgPool2d,
    /// Size of the pooled features.
    pub feature_dim: usize,
}

impl Backbone for ResNet {
    fn feature_dim(&self) -> usize {
        self.feature_dim
    }

    fn forward_features(&self, images: Tensor<4>) -> Tensor<2> {
        let mut x = relu(batch_norm(&self.bn1, conv2d(&self.conv1, images)));
        if let Some(pool) = &self.maxpool {
            x = pool.forward(x);
        }
        for block in self
            .layer1
            .iter()
            .chain(&self.layer2)
            .chain(&self.layer3)
            .chain(&self.layer4)
        {
            x = block.forward(x);
        }
        let [b, c, _, _] = x.dims();
        self.avgpool.forward(x).reshape([b, c])
    }
}
