//! The run folder's state: its files, the training state stored in the checkpoint, writing a
//! checkpoint (atomically, refusing non-finite weights) and resuming from one (refusing a
//! checkpoint of another configuration or dataset).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::tensor::Device;
use serde::{Deserialize, Serialize};
use swav_core::{EmbeddingQueue, QueueState};
use swav_models::{
    Checkpoint, SPEC_KEY, StateArray, SwavModel, SwavModelSpec, read_checkpoint, write_checkpoint,
};

use crate::TrainError;
use crate::config::TrainConfig;
use crate::diagnostics::non_finite;
use crate::fault::FaultHook;
use crate::optim::Optimizer;

/// File names inside a run folder.
pub const CHECKPOINT_FILE: &str = "checkpoint.bpk";
/// The checkpoint before the newest, kept so that a newest one that does not read (a machine
/// that died mid-write, a copy cut short) still leaves one to resume from.
pub const PREVIOUS_CHECKPOINT_FILE: &str = "checkpoint.prev.bpk";
/// Where a checkpoint is written before it replaces the newest (a leftover is ignored).
const NEXT_CHECKPOINT_FILE: &str = "checkpoint.next.bpk";
/// The resolved configuration of the run.
pub const CONFIG_FILE: &str = "config.toml";
/// The final summary.
pub const SUMMARY_FILE: &str = "summary.json";
const STATE_KEY: &str = "swav.train_state";

/// The training configuration stored in a checkpoint written by [`train`] (`None` for a
/// checkpoint from elsewhere, e.g. an exported or imported model).
pub fn checkpoint_config(
    ckpt: &swav_models::Checkpoint,
) -> Result<Option<TrainConfig>, TrainError> {
    let Some(text) = ckpt.metadata.get(STATE_KEY) else {
        return Ok(None);
    };
    let state: TrainState = serde_json::from_str(text).map_err(|e| {
        TrainError::Checkpoint(format!(
            "{}: bad training state: {e}",
            ckpt.path().display()
        ))
    })?;
    Ok(Some(state.config))
}

/// Where the run was when a checkpoint was written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Epoch to continue in.
    pub epoch: usize,
    /// First batch of that epoch still to train on.
    pub next_batch: usize,
    /// Iterations done.
    pub iteration: usize,
    /// Seconds of training so far (all sessions).
    pub elapsed_s: f64,
    /// The run's configuration (its `[swav]` and `[data]` must match on resume).
    pub config: TrainConfig,
    /// Optimiser step counts by parameter path.
    pub optim_steps: BTreeMap<String, u64>,
    /// Queue rows written per slot, when the queue exists (rank 0's queue).
    pub queue_filled: Option<Vec<usize>>,
    /// The same for the queues of ranks 1, 2, ... of a data-parallel run.
    #[serde(default)]
    pub queue_filled_ranks: Vec<Vec<usize>>,
    /// Iterations per epoch when written.
    pub iters_per_epoch: usize,
    /// f16 loss scaling state, when the run uses it.
    #[serde(default)]
    pub loss_scaler: Option<crate::LossScaler>,
}

/// Name of worker `rank`'s queue in a checkpoint.
fn queue_array_name(rank: usize) -> String {
    if rank == 0 {
        "queue".into()
    } else {
        format!("queue.rank{rank}")
    }
}

/// Describes what differs between two configs' sections, field by field.
fn differences(a: &impl Serialize, b: &impl Serialize) -> Vec<String> {
    let (Ok(a), Ok(b)) = (serde_json::to_value(a), serde_json::to_value(b)) else {
        return vec!["(cannot compare)".into()];
    };
    match (a.as_object(), b.as_object()) {
        (Some(a), Some(b)) => a
            .iter()
            .filter(|(k, v)| b.get(*k) != Some(v))
            .map(|(k, v)| {
                format!(
                    "{k}: {v} in the checkpoint, {} now",
                    b.get(k).cloned().unwrap_or_default()
                )
            })
            .collect(),
        _ => vec![],
    }
}

/// Where a resumed run continues.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Resumed {
    /// Epoch to continue in.
    pub epoch: usize,
    /// First batch of that epoch still to train on.
    pub next_batch: usize,
    /// Iterations done.
    pub iteration: usize,
    /// Seconds of training before this process.
    pub elapsed_s: f64,
    /// f16 loss scaling state, when the run uses it.
    pub loss_scaler: Option<crate::LossScaler>,
}

/// The checkpoint to resume from: `requested` (a file, or a run folder), else the run folder's
/// own when `auto` is set. In a run folder, the newest checkpoint that reads: when the newest
/// does not (or is missing) and the one before it does, that one, with a message saying so.
/// An error names every file tried and why it failed.
pub(crate) fn choose_checkpoint(
    requested: Option<&Path>,
    run_dir: &Path,
    auto: bool,
) -> Result<Option<(Checkpoint, Option<String>)>, TrainError> {
    let (dir, newest) = match requested {
        Some(p) if !p.is_dir() => return Ok(Some((read_checkpoint(p)?, None))),
        Some(p) => (p.to_path_buf(), p.join(CHECKPOINT_FILE)),
        None if auto => (run_dir.to_path_buf(), run_dir.join(CHECKPOINT_FILE)),
        None => return Ok(None),
    };
    let previous = dir.join(PREVIOUS_CHECKPOINT_FILE);
    if !newest.is_file() && !previous.is_file() {
        return match requested {
            Some(_) => Err(TrainError::Checkpoint(format!(
                "{}: no checkpoint in this folder",
                dir.display()
            ))),
            None => Ok(None),
        };
    }
    let newest_error = match read_checkpoint(&newest) {
        Ok(c) => return Ok(Some((c, None))),
        Err(e) if newest.is_file() => e.to_string(),
        Err(_) => format!("{} is missing", newest.display()),
    };
    match read_checkpoint(&previous) {
        Ok(c) => {
            let note = format!(
                "the newest checkpoint could not be used ({newest_error}); resumed from the one \
                 before it, {}",
                previous.display()
            );
            Ok(Some((c, Some(note))))
        }
        Err(e) => Err(TrainError::Checkpoint(format!(
            "no checkpoint in {} reads: {newest_error}; {e}",
            dir.display()
        ))),
    }
}

/// Reads the checkpoint `ckpt` into `model`, `optim` and `queues` (one per worker, each on
/// its worker's device `bases[rank]`), after checking that it was written by a run of the same
/// `[swav]` and `[data]` configuration over the same number of iterations per epoch.
#[allow(clippy::too_many_arguments)]
pub(crate) fn resume<E: swav_models::TaskBackbone>(
    ckpt: &Checkpoint,
    config: &TrainConfig,
    iters_per_epoch: usize,
    model: SwavModel<E>,
    optim: &mut Optimizer,
    queues: &mut [Option<EmbeddingQueue>],
    bases: &[Device],
) -> Result<(SwavModel<E>, Resumed), TrainError> {
    let state = compatible_state(ckpt, config, iters_per_epoch)?;
    let model = ckpt.load_model(model)?;
    optim.import(&ckpt.arrays, &state.optim_steps, &bases[0])?;
    if let Some(filled) = &state.queue_filled {
        // Every worker's queue: rank 0's under `queue`, the others' under `queue.rank<r>`.
        let all_filled = std::iter::once(filled).chain(&state.queue_filled_ranks);
        for (rank, filled) in all_filled.enumerate() {
            let queue = stored_queue(ckpt, rank, filled)?;
            let slot = queues.get_mut(rank).ok_or_else(|| {
                TrainError::Checkpoint(format!(
                    "{}: holds a queue for worker {rank}, this run has {} workers",
                    ckpt.path().display(),
                    bases.len()
                ))
            })?;
            *slot = Some(EmbeddingQueue::from_state(
                &queue,
                &bases[rank].clone().autodiff(),
            )?);
        }
    }
    Ok((
        model,
        Resumed {
            epoch: state.epoch,
            next_batch: state.next_batch,
            iteration: state.iteration,
            elapsed_s: state.elapsed_s,
            loss_scaler: state.loss_scaler,
        },
    ))
}

/// The training state of `ckpt`, refused unless it was written by a run of the same `[swav]`
/// and `[data]` configuration over `iters_per_epoch` iterations an epoch.
fn compatible_state(
    ckpt: &Checkpoint,
    config: &TrainConfig,
    iters_per_epoch: usize,
) -> Result<TrainState, TrainError> {
    let path = ckpt.path();
    let state: TrainState = ckpt
        .metadata
        .get(STATE_KEY)
        .ok_or_else(|| {
            TrainError::Checkpoint(format!("{}: no training state in it", path.display()))
        })
        .and_then(|t| {
            serde_json::from_str(t).map_err(|e| {
                TrainError::Checkpoint(format!("{}: bad training state: {e}", path.display()))
            })
        })?;
    let mut diff = differences(&state.config.swav, &config.swav);
    diff.extend(differences(&state.config.data, &config.data));
    if !diff.is_empty() {
        return Err(TrainError::Checkpoint(format!(
            "{} was written by a run with another configuration ({}); start a new run folder \
             or use the same config",
            path.display(),
            diff.join("; ")
        )));
    }
    if state.iters_per_epoch != iters_per_epoch {
        return Err(TrainError::Checkpoint(format!(
            "{}: {} iterations per epoch then, {iters_per_epoch} now (the dataset changed)",
            path.display(),
            state.iters_per_epoch
        )));
    }
    Ok(state)
}

/// Worker `rank`'s queue as `ckpt` stores it, with its fill counts `filled`.
fn stored_queue(
    ckpt: &Checkpoint,
    rank: usize,
    filled: &[usize],
) -> Result<QueueState, TrainError> {
    let name = queue_array_name(rank);
    let a = ckpt.arrays.get(&name).ok_or_else(|| {
        TrainError::Checkpoint(format!(
            "{}: the queue of worker {rank} (`{name}`) is missing",
            ckpt.path().display()
        ))
    })?;
    Ok(QueueState {
        slots: a.shape.first().copied().unwrap_or(0),
        len: a.shape.get(1).copied().unwrap_or(0),
        dim: a.shape.get(2).copied().unwrap_or(0),
        filled: filled.to_vec(),
        values: a.values.clone(),
    })
}

/// Writes a run's checkpoints.
pub(crate) struct Saver<'a> {
    /// The checkpoint file.
    pub file: PathBuf,
    /// The run's configuration.
    pub config: &'a TrainConfig,
    /// The model spec (with its backbone configuration).
    pub spec: SwavModelSpec,
    /// Iterations per epoch.
    pub iters_per_epoch: usize,
    /// A test's faults (a checkpoint write that fails as on a full disk).
    pub faults: Option<&'a dyn FaultHook>,
    /// In a group of processes: every process's queue is gathered at rank 0, which alone
    /// writes.
    pub processes: Option<crate::process::SharedProcessGroup>,
}

/// Where the run is when a checkpoint is written.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Position {
    pub epoch: usize,
    pub next_batch: usize,
    pub iteration: usize,
    pub elapsed_s: f64,
}

impl Saver<'_> {
    /// Writes the model, the optimiser state, every worker's queue and the training state.
    pub fn save<E: swav_models::TaskBackbone>(
        &self,
        model: &SwavModel<E>,
        optim: &Optimizer,
        queues: &mut [Option<EmbeddingQueue>],
        at: Position,
        loss_scaler: Option<crate::LossScaler>,
    ) -> Result<(), TrainError> {
        if let Some(p) = &self.processes {
            crate::process::gather_queues(queues, p.as_ref())?;
            if p.rank() != 0 {
                return Ok(());
            }
        }
        // BatchNorm running statistics hold their latest update aside until synchronised;
        // `valid` synchronises them in place (the state is shared), so the file has it.
        drop(model.valid());
        self.refuse_non_finite(model, at)?;
        let (arrays, meta) = self.contents(optim, queues, at, loss_scaler)?;
        self.write_rotating(model, arrays, &meta, at.iteration)
    }

    /// An error saying what is on disk if `model`'s weights are not all finite.
    fn refuse_non_finite<M: Module>(&self, model: &M, at: Position) -> Result<(), TrainError> {
        let bad = non_finite(model);
        if bad.is_empty() {
            return Ok(());
        }
        let ckpt_file = &self.file;
        // Say what is on disk: the previous checkpoint, kept, or none at all.
        let kept = if ckpt_file.is_file() {
            format!(
                "the previous checkpoint {} was kept (not overwritten)",
                ckpt_file.display()
            )
        } else {
            format!(
                "no checkpoint was written (none existed yet; {} would have been the first)",
                ckpt_file.display()
            )
        };
        Err(TrainError::NonFinite(format!(
            "epoch {}, iteration {}: the weights of {} are NaN or infinite; {kept}. Lower the \
             learning rate",
            at.epoch,
            at.iteration,
            bad.join(", "),
        )))
    }

    /// The arrays beside the model (optimiser state, queues) and the metadata (training state,
    /// model spec) of a checkpoint at `at`.
    fn contents(
        &self,
        optim: &Optimizer,
        queues: &[Option<EmbeddingQueue>],
        at: Position,
        loss_scaler: Option<crate::LossScaler>,
    ) -> Result<(Vec<StateArray>, BTreeMap<String, String>), TrainError> {
        let (mut arrays, steps) = optim.export()?;
        let mut queue_filled = None;
        let mut queue_filled_ranks = Vec::new();
        for (rank, q) in queues.iter().enumerate() {
            let Some(q) = q else { continue };
            let st = q.state();
            arrays.push(StateArray {
                name: queue_array_name(rank),
                shape: vec![st.slots, st.len, st.dim],
                values: st.values,
            });
            if rank == 0 {
                queue_filled = Some(st.filled);
            } else {
                queue_filled_ranks.push(st.filled);
            }
        }
        let state = TrainState {
            epoch: at.epoch,
            next_batch: at.next_batch,
            iteration: at.iteration,
            elapsed_s: at.elapsed_s,
            config: self.config.clone(),
            optim_steps: steps,
            queue_filled,
            queue_filled_ranks,
            iters_per_epoch: self.iters_per_epoch,
            loss_scaler,
        };
        let json = |v: serde_json::Result<String>| {
            v.map_err(|e| TrainError::Checkpoint(format!("{}: {e}", self.file.display())))
        };
        let mut meta = BTreeMap::new();
        meta.insert(STATE_KEY.to_string(), json(serde_json::to_string(&state))?);
        meta.insert(
            SPEC_KEY.to_string(),
            json(serde_json::to_string(&self.spec))?,
        );
        Ok((arrays, meta))
    }

    /// Writes the new checkpoint whole (atomically) beside the others first; only then does the
    /// newest become the previous one and the new one the newest. A write that fails (a full
    /// disk) leaves both untouched; a machine dying between the two renames leaves the previous
    /// one, which resume falls back to.
    fn write_rotating<E: swav_models::TaskBackbone>(
        &self,
        model: &SwavModel<E>,
        arrays: Vec<StateArray>,
        meta: &BTreeMap<String, String>,
        iteration: usize,
    ) -> Result<(), TrainError> {
        let ckpt_file = &self.file;
        let previous = ckpt_file.with_file_name(PREVIOUS_CHECKPOINT_FILE);
        let fresh = ckpt_file.with_file_name(NEXT_CHECKPOINT_FILE);
        let fails = self.faults.is_some_and(|f| f.checkpoint_fails(iteration));
        let written = write_checkpoint(&fresh, model, arrays, meta).map_err(|e| e.to_string());
        let written = match written {
            // ENOSPC part-way through the write, as a full disk reports it: half the file is on
            // disk when the error comes.
            Ok(()) if fails => Err(cut_short(&fresh)),
            other => other,
        };
        if let Err(e) = written {
            let _ = std::fs::remove_file(&fresh);
            let kept = if ckpt_file.is_file() {
                format!(
                    "{} and the one before it are untouched",
                    ckpt_file.display()
                )
            } else {
                "no earlier checkpoint exists".to_string()
            };
            return Err(TrainError::Checkpoint(format!(
                "the checkpoint of iteration {iteration} could not be written ({e}); {kept}. \
                 Free space (or fix the folder) and run the same command: it resumes from the \
                 last checkpoint"
            )));
        }
        if ckpt_file.is_file() {
            std::fs::rename(ckpt_file, &previous).map_err(|e| TrainError::io(&previous, e))?;
        }
        std::fs::rename(&fresh, ckpt_file).map_err(|e| TrainError::io(ckpt_file, e))?;
        Ok(())
    }
}

/// Cuts `file` to half its length and says so as the operating system reports a full disk
/// (the injected fault of a checkpoint write that fails part-way).
fn cut_short(file: &Path) -> String {
    let enospc = std::io::Error::from_raw_os_error(28);
    let cut = std::fs::OpenOptions::new()
        .write(true)
        .open(file)
        .and_then(|f| {
            let len = f.metadata()?.len();
            f.set_len(len / 2)
        });
    match cut {
        Ok(()) => format!("{}: {enospc} (injected)", file.display()),
        Err(e) => format!(
            "{}: {enospc} (injected; cutting the file: {e})",
            file.display()
        ),
    }
}
