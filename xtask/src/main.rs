//! `cargo xtask`: the project's entry point for users and for CI.
//!
//! Commands: those of the `swav` binary (`swav-cli`: `pretrain`, the built-in demo by default,
//! the evaluations `linear-eval`, `knn-eval`, `semisup` and `assign`, `bench`, `export`), and
//! the developer tasks: `tidy` (the workspace's invariants) and `completions`.

mod tidy;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Large freed blocks stay with the process for the next training step (see
/// `swav_engine::BlockCache`); `SWAV_BLOCK_CACHE_MB=0` turns it off.
#[global_allocator]
static ALLOC: swav_engine::BlockCache = swav_engine::BlockCache::new();
use clap::{Parser, Subcommand};

/// Tasks of the swav-rs workspace.
#[derive(Parser)]
#[command(name = "cargo xtask", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

// Parsed once at start: the size of the arguments' variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Cmd {
    #[command(flatten)]
    Swav(swav_cli::Command),
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
        Cmd::Swav(command) => swav_cli::run(command, Some(&ALLOC)),
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
