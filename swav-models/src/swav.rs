//! [`SwavModel`]: a backbone, the projection head and the prototypes, with SwAV's multi-crop
//! forward (one backbone pass per group of equal-resolution crops, one head pass over all).

use burn::module::Module;
use burn::tensor::{Device, Tensor};

use crate::backbone::Backbone;
use crate::head::{ProjectionHead, ProjectionHeadConfig, Prototypes, PrototypesConfig};

/// Embeddings and scores of every crop of a batch.
#[derive(Debug, Clone)]
pub struct SwavOutput {
    /// L2-normalised embeddings `[crops x B, dim]`, crop after crop.
    pub embeddings: Tensor<2>,
    /// Scores against each head's prototypes, `[crops x B, K_h]`.
    pub scores: Vec<Tensor<2>>,
}

/// The SwAV network over any [`Backbone`].
#[derive(Module, Debug)]
pub struct SwavModel<E> {
    /// The feature extractor.
    pub backbone: E,
    /// The projection head.
    pub head: ProjectionHead,
    /// The prototypes.
    pub prototypes: Prototypes,
}

/// `x / max(||x||, 1e-12)` along dimension 1.
fn l2_normalize_rows(x: Tensor<2>) -> Tensor<2> {
    let norm = x.clone().square().sum_dim(1).sqrt().clamp_min(1e-12);
    x.div(norm)
}

impl<E: Backbone + Module> SwavModel<E> {
    /// A head of `hidden` (0 for one Linear) and `output` sizes and prototype heads of the given
    /// sizes over `backbone`.
    pub fn new(
        backbone: E,
        hidden: usize,
        output: usize,
        prototypes: &[usize],
        device: &Device,
    ) -> Self {
        let head = ProjectionHeadConfig {
            input: backbone.feature_dim(),
            hidden,
            output,
        }
        .init(device);
        let prototypes = PrototypesConfig {
            dim: output,
            heads: prototypes.to_vec(),
        }
        .init(device);
        Self {
            backbone,
            head,
            prototypes,
        }
    }

    /// The multi-crop forward. `groups` holds one tensor per resolution group, each
    /// `[count x B, 3, S, S]` crop-major (as the loader makes them), in crop order. The backbone
    /// runs once per group; the head runs once over all crops, so its BatchNorm sees every crop,
    /// as in the original.
    ///
    /// # Panics
    /// If `groups` is empty.
    pub fn forward(&self, groups: &[Tensor<4>]) -> SwavOutput {
        assert!(
            !groups.is_empty(),
            "the forward needs at least one group of crops"
        );
        let features: Vec<Tensor<2>> = groups
            .iter()
            .map(|g| self.backbone.forward_features(g.clone()))
            .collect();
        // Embeddings and scores in f32 also under autocast: the Sinkhorn exponentiates them.
        let projected = crate::precision::to_f32(self.head.forward(Tensor::cat(features, 0)));
        let z = l2_normalize_rows(projected);
        let scores = self.prototypes.forward(z.clone());
        SwavOutput {
            embeddings: z,
            scores,
        }
    }
}
