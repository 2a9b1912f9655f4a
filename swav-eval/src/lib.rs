//! Evaluation of learned features: features of a frozen backbone, kNN classification (also
//! the training run's monitor), linear probe and cluster assignment. (Semi-supervised
//! fine-tuning trains the whole network, so it lives with training: `swav_train::finetune`.)
//!
//! - [`extract_features`] with an [`EvalTransform`]: eval-mode features of a dataset.
//! - [`knn_classify`]: weighted kNN on L2-normalised features ([`KnnConfig::k20`],
//!   [`KnnConfig::k200`]).
//! - [`linear_probe_cached`] and [`linear_probe_protocol`]: the linear probe, fast on cached
//!   features or by the original protocol.
//! - [`assign_clusters`]: each image's prototype and code confidence, and cluster purity.
//! - [`plot`]: PNG line charts and confusion matrices.

mod accuracy;
mod assign;
mod error;
mod feature_file;
mod features;
mod knn;
mod linear;
pub mod plot;
mod probe_tensor;

pub use assign::{
    AssignmentRow, Assignments, GridRow, assign_clusters, cluster_grid, cluster_purity,
};
pub use error::EvalError;
pub use feature_file::{FeatureFile, FeatureWriter};
pub use features::{
    EvalTransform, ExtractConfig, Features, extract_features, extract_features_to_file,
};
pub use knn::{KnnConfig, KnnResult, knn_classify};
pub use linear::{
    Accuracy, LinearClassifier, LinearProbeConfig, LinearProbeResult, ProbeAugment, ProbeEpoch,
    ProbeMode, linear_probe_cached, linear_probe_protocol, linear_probe_streamed,
};
