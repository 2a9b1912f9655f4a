//! The [`Backbone`] trait.

use burn::tensor::Tensor;

/// A headless image feature extractor: what SwAV training and the evaluations need of a
/// backbone, and nothing more, so a backbone from another crate can be plugged in.
pub trait Backbone {
    /// Size of the feature vector of one image.
    fn feature_dim(&self) -> usize;

    /// Features of a batch `[B, 3, H, W]`, pooled to `[B, feature_dim]`.
    fn forward_features(&self, images: Tensor<4>) -> Tensor<2>;
}
