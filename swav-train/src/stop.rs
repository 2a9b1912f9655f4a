//! Stopping a run cleanly from outside: a request that the trainer honours at the next step
//! boundary (the current step is finished, a checkpoint is written, the summary says where the
//! run stopped), as a cluster's preemption signal (SLURM and Kubernetes send SIGTERM before
//! they kill) needs. The library installs no signal handler; a binary connects its handler to
//! [`StopRequest::flag`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// A shared "stop at the next step boundary" flag.
#[derive(Debug, Clone, Default)]
pub struct StopRequest(Arc<AtomicBool>);

impl StopRequest {
    /// A request not yet made.
    pub fn new() -> Self {
        Self::default()
    }

    /// The flag itself, for a signal handler to set (for example with
    /// `signal_hook::flag::register`).
    pub fn flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.0)
    }

    /// Asks the run to stop after the step in progress.
    pub fn request(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Whether a stop was asked for.
    pub fn is_requested(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Where a run stopped on request, and the checkpoint it resumes from.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Preempted {
    /// Iterations done when it stopped (the checkpoint's iteration).
    pub iteration: usize,
    /// The epoch the run continues in.
    pub epoch: usize,
    /// The checkpoint written on stopping.
    pub checkpoint: std::path::PathBuf,
}
