//! Evaluation of learned features: linear probe, kNN, semi-supervised fine-tuning.
//!
//! Placeholder: the evaluations arrive with issue 7.
