//! Evaluation of learned features: features of a frozen backbone, kNN classification (also
//! the training run's monitor), linear probe, semi-supervised fine-tuning and cluster
//! assignment.
//!
//! - [`extract_features`] with an [`EvalTransform`]: eval-mode features of a dataset.
//! - [`knn_classify`]: weighted kNN on L2-normalised features ([`KnnConfig::k20`],
//!   [`KnnConfig::k200`]).

mod error;
mod features;
mod knn;

pub use error::EvalError;
pub use features::{EvalTransform, ExtractConfig, Features, extract_features};
pub use knn::{KnnConfig, KnnResult, knn_classify};
