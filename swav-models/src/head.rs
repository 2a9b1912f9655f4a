//! SwAV's projection head and prototypes (Caron et al., 2020, section 4 and the original
//! `resnet50.py`: Linear -> BatchNorm1d -> ReLU -> Linear, and bias-free prototype layers).

use burn::module::Module;
use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor};

/// The projection head's sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProjectionHeadConfig {
    /// Input size (the backbone's feature dimension).
    pub input: usize,
    /// Hidden size; 0 gives a single Linear layer.
    pub hidden: usize,
    /// Output size (128 in SwAV).
    pub output: usize,
}

impl ProjectionHeadConfig {
    /// Builds the head on `device`.
    pub fn init(&self, device: &Device) -> ProjectionHead {
        if self.hidden == 0 {
            ProjectionHead {
                fc1: LinearConfig::new(self.input, self.output).init(device),
                bn: None,
                fc2: None,
            }
        } else {
            ProjectionHead {
                fc1: LinearConfig::new(self.input, self.hidden).init(device),
                bn: Some(BatchNormConfig::new(self.hidden).init(device)),
                fc2: Some(LinearConfig::new(self.hidden, self.output).init(device)),
            }
        }
    }
}

/// Linear -> BatchNorm1d -> ReLU -> Linear, or one Linear when the hidden size is 0.
#[derive(Module, Debug)]
pub struct ProjectionHead {
    /// First (or only) Linear layer.
    pub fc1: Linear,
    /// BatchNorm of the hidden layer.
    pub bn: Option<BatchNorm>,
    /// Output Linear layer.
    pub fc2: Option<Linear>,
}

impl ProjectionHead {
    /// Projects `[N, input]` features to `[N, output]` (not yet normalised; in the autocast type
    /// under [`crate::precision::with_autocast`]).
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let h = crate::layers::linear(&self.fc1, x);
        match (&self.bn, &self.fc2) {
            (Some(bn), Some(fc2)) => {
                crate::layers::linear(fc2, relu(crate::layers::batch_norm(bn, h)))
            }
            _ => h,
        }
    }
}

/// Prototype layers: one bias-free Linear per head, of the given numbers of prototypes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrototypesConfig {
    /// Embedding size.
    pub dim: usize,
    /// Prototypes per head (one entry for the usual single head).
    pub heads: Vec<usize>,
}

impl PrototypesConfig {
    /// Builds the layers on `device`.
    pub fn init(&self, device: &Device) -> Prototypes {
        Prototypes {
            heads: self
                .heads
                .iter()
                .map(|&k| LinearConfig::new(self.dim, k).with_bias(false).init(device))
                .collect(),
        }
    }
}

/// The prototypes of every head; weights in burn's `[dim, K]` layout.
#[derive(Module, Debug)]
pub struct Prototypes {
    /// One layer per head.
    pub heads: Vec<Linear>,
}

impl Prototypes {
    /// Scores `[N, K_h]` of normalised embeddings `[N, dim]` for every head.
    pub fn forward(&self, z: Tensor<2>) -> Vec<Tensor<2>> {
        self.heads.iter().map(|h| h.forward(z.clone())).collect()
    }
}
