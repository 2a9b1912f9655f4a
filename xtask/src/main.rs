//! `cargo xtask`: the project's entry point for users and for CI.
//!
//! Commands: `pretrain` (SwAV pretraining, the built-in demo by default), the evaluations
//! `linear-eval`, `knn-eval`, `semisup` and `assign`, and `tidy` (the workspace's invariants).

mod bench;
mod eval;
mod export;
mod pretrain;
mod progress;
mod signals;
mod tidy;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Large freed blocks stay with the process for the next training step (see
/// `swav_engine::BlockCache`); `SWAV_BLOCK_CACHE_MB=0` turns it off.
#[global_allocator]
static ALLOC: swav_engine::BlockCache = swav_engine::BlockCache::new();
use clap::{Parser, Subcommand};

/// The backbones this binary builds by name (`swav.arch`, and the name a checkpoint stores):
/// the ResNets and tinynet.
pub type Registry = swav_models::registry![swav_models::ResNetFamily, swav_tinynet::TinyNetFamily];

/// Tasks of the swav-rs workspace.
#[derive(Parser)]
#[command(name = "cargo xtask", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// SwAV pretraining: the built-in demo on Shapes10 by default, or `--config FILE` with
    /// `--data PATH`; prints the kNN accuracy of the trained backbone next to a random one.
    Pretrain(pretrain::PretrainArgs),
    /// Linear probe of a checkpoint's frozen backbone (fast cached-feature mode by default,
    /// `--mode protocol` for the original); JSON report and confusion-matrix PNG.
    LinearEval(eval::LinearArgs),
    /// Weighted kNN of a checkpoint's features (k = 20, T = 0.07 and k = 200, T = 0.1).
    KnnEval(eval::KnnArgs),
    /// Each image's prototype and code confidence as CSV, with cluster purity.
    Assign(eval::AssignArgs),
    /// SwAV training-step throughput on random data, on the shapes of the PyTorch peer
    /// (`scripts/peers/torch_swav_step.py`); one JSON line.
    Bench(bench::BenchArgs),
    /// A checkpoint's weights for PyTorch: torchvision's key names (the original SwAV's for the
    /// head), as a `.pt` state dict and safetensors.
    Export(export::ExportArgs),
    /// Semi-supervised fine-tuning on a label subset (the original's 1 % / 10 % recipes).
    Semisup(eval::SemiSupArgs),
    /// Shell completions for this command (`cargo xtask completions bash > swav-xtask.bash`,
    /// then `source` it; bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Check the workspace's invariants: swav-augment has no burn in its dependency tree,
    /// workspace dependencies point the documented way, library crates use no global RNG and
    /// no anyhow, every Rust file starts with `//!`.
    Tidy,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Tidy => tidy::run(&workspace_root()?),
        Cmd::Pretrain(args) => pretrain::run(&args),
        Cmd::LinearEval(args) => eval::linear(&args),
        Cmd::KnnEval(args) => eval::knn(&args),
        Cmd::Assign(args) => eval::assign(&args),
        Cmd::Semisup(args) => eval::semisup(&args),
        Cmd::Bench(args) => bench::run(&args),
        Cmd::Export(args) => export::run(&args),
        Cmd::Completions { shell } => {
            use clap::CommandFactory;
            let mut cmd = Cli::command();
            clap_complete::generate(shell, &mut cmd, "cargo-xtask", &mut std::io::stdout());
            Ok(())
        }
    }
}

fn workspace_root() -> Result<PathBuf> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .map(Path::to_path_buf)
        .context("xtask lives one level below the workspace root")
}
