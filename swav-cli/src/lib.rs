//! The commands of the `swav` binary, shared with `cargo xtask` (which adds the developer
//! tasks): `pretrain` (SwAV pretraining, the built-in demo by default), the evaluations
//! `linear-eval`, `knn-eval`, `semisup` and `assign`, `bench`, `export`, and `step-check` (one
//! training step on a device against the same step on the CPU).
//!
//! An application crate: its library exists so that both binaries run the same code, and it
//! reports errors with `anyhow` as binaries do.

pub mod bench;
pub mod eval;
pub mod export;
pub mod pretrain;
mod progress;
mod signals;
pub mod step_check;

use std::sync::OnceLock;

use anyhow::Result;
use clap::Subcommand;

pub use pretrain::PretrainArgs;

/// The backbones the binaries build by name (`swav.arch`, and the name a checkpoint stores):
/// the ResNets and tinynet.
pub type Registry = swav_models::registry![swav_models::ResNetFamily, swav_tinynet::TinyNetFamily];

/// The binary's block-caching allocator, for `bench` to report on.
static ALLOC: OnceLock<&'static swav_engine::BlockCache> = OnceLock::new();

/// The commands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// SwAV pretraining: the built-in demo on Shapes10 by default, or `--config FILE` with
    /// `--data PATH`; prints the kNN accuracy of the trained backbone next to a random one.
    Pretrain(pretrain::PretrainArgs),
    /// Linear probe of a checkpoint's frozen backbone (fast cached-feature mode by default,
    /// `--mode protocol` for the original); JSON report and confusion-matrix PNG.
    LinearEval(eval::LinearArgs),
    /// Weighted kNN of a checkpoint's features (k = 20, T = 0.07 and k = 200, T = 0.1).
    KnnEval(eval::KnnArgs),
    /// Each image's prototype and code confidence as CSV, with cluster purity; `--grid` draws
    /// the clusters.
    Assign(eval::AssignArgs),
    /// SwAV training-step throughput on random data, on the shapes of the PyTorch peer
    /// (`scripts/peers/torch_swav_step.py`), or the loader's (`--loader DIR`); one JSON line.
    Bench(bench::BenchArgs),
    /// A checkpoint's weights for PyTorch: torchvision's key names (the original SwAV's for the
    /// head), as a `.pt` state dict and safetensors.
    Export(export::ExportArgs),
    /// Semi-supervised fine-tuning on a label subset (the original's 1 % / 10 % recipes).
    Semisup(eval::SemiSupArgs),
    /// One training step on `--device` (and `--amp`) against the same step on the CPU in f32:
    /// loss, codes and every gradient compared; one JSON line, exit status 1 past tolerance.
    StepCheck(step_check::StepCheckArgs),
}

/// How the commands extract features for `config`'s data: its evaluation transform, `batch`
/// images a pass, all cores decoding.
fn extract_config(
    config: &swav_train::TrainConfig,
    batch: usize,
) -> Result<swav_eval::ExtractConfig> {
    Ok(swav_eval::ExtractConfig {
        batch_size: batch,
        workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
        transform: swav_train::eval_transform_for(config)?,
    })
}

/// This process's group when an MPI launcher started it as one of several (`mpirun -np N
/// swav pretrain ...`): MPI initialised, one worker per process. A build without the `mpi`
/// feature refuses such a start rather than run N independent runs into one folder.
pub fn processes() -> Result<Option<swav_train::process::SharedProcessGroup>> {
    let Some(n) = swav_train::process::launcher_job_size() else {
        return Ok(None);
    };
    #[cfg(feature = "mpi")]
    {
        let _ = n;
        let group = swav_train::mpi::MpiProcesses::init()?;
        Ok(Some(std::sync::Arc::new(group)))
    }
    #[cfg(not(feature = "mpi"))]
    {
        if n > 1 {
            anyhow::bail!(
                "started by an MPI launcher as one of {n} processes, but this swav was built \
                 without the `mpi` feature: rebuild with `--features mpi` (see docs/guide.md, \
                 \"Several workers\"), or run one process with --devices N for threads"
            );
        }
        Ok(None)
    }
}

/// Runs `command`; `alloc` is the binary's global allocator (reported by `bench`).
pub fn run(command: Command, alloc: Option<&'static swav_engine::BlockCache>) -> Result<()> {
    if let Some(a) = alloc {
        let _ = ALLOC.set(a);
    }
    match command {
        Command::Pretrain(args) => pretrain::run(&args),
        Command::LinearEval(args) => eval::linear(&args),
        Command::KnnEval(args) => eval::knn(&args),
        Command::Assign(args) => eval::assign(&args),
        Command::Semisup(args) => eval::semisup(&args),
        Command::Bench(args) => bench::run(&args),
        Command::Export(args) => export::run(&args),
        Command::StepCheck(args) => step_check::run(&args),
    }
}
