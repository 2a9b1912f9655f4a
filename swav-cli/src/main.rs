//! `swav`: SwAV pretraining and evaluation from the command line (`cargo install --path
//! swav-cli`). The same commands as `cargo xtask` in a clone of the repository.

use anyhow::Result;
use clap::{CommandFactory, Parser, Subcommand};

/// Large freed blocks stay with the process for the next training step (see
/// `swav_engine::BlockCache`); `SWAV_BLOCK_CACHE_MB=0` turns it off.
#[global_allocator]
static ALLOC: swav_engine::BlockCache = swav_engine::BlockCache::new();

/// SwAV (Caron et al., 2020) in Rust: self-supervised pretraining of image backbones and the
/// evaluation of what they learned.
#[derive(Parser)]
#[command(name = "swav", version, about)]
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
    /// Shell completions (`swav completions bash > swav.bash`, then `source` it; bash, zsh,
    /// fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Cmd::Swav(command) => swav_cli::run(command, Some(&ALLOC)),
        Cmd::Completions { shell } => {
            let mut cmd = Cli::command();
            clap_complete::generate(shell, &mut cmd, "swav", &mut std::io::stdout());
            Ok(())
        }
    }
}
