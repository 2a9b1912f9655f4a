//! The SwAV training run: optimiser, schedules, checkpoints, metrics.
//!
//! Placeholder: the training loop arrives with issue 6.
