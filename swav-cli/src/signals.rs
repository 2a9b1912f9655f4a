//! Preemption as clusters do it: the first SIGTERM or SIGINT asks the run to stop after the step
//! in progress (a checkpoint is written, the command to resume is printed, and the process
//! exits with [`PREEMPTED_EXIT`]); a second one exits at once, with the status a kill by that
//! signal gives (128 + its number), leaving the last checkpoint written.

use anyhow::{Context, Result};
use signal_hook::consts::{SIGINT, SIGTERM};
use swav_train::StopRequest;

/// Exit status of a run stopped by a signal after writing its checkpoint (EX_TEMPFAIL: try the
/// same command again; it resumes).
pub const PREEMPTED_EXIT: i32 = 75;

/// A stop request that SIGTERM and SIGINT set; a second signal exits the process at once.
pub fn stop_on_signals() -> Result<StopRequest> {
    let stop = StopRequest::new();
    for signal in [SIGTERM, SIGINT] {
        // Registered first, so it sees the flag as the previous signal left it: set means this
        // is the second signal.
        signal_hook::flag::register_conditional_shutdown(signal, 128 + signal, stop.flag())
            .with_context(|| format!("installing the handler of signal {signal}"))?;
        signal_hook::flag::register(signal, stop.flag())
            .with_context(|| format!("installing the handler of signal {signal}"))?;
    }
    Ok(stop)
}
