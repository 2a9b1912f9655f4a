//! `cargo xtask`: the project's entry point for users and for CI.
//!
//! Commands: `pretrain` (SwAV pretraining, the built-in demo by default), the evaluations
//! `linear-eval`, `knn-eval`, `semisup` and `assign`, and `tidy` (the workspace's invariants).

mod bench;
mod eval;
mod pretrain;
mod progress;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

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
    /// (`../shared/refs/torch_swav_step.py`); one JSON line.
    Bench(bench::BenchArgs),
    /// Semi-supervised fine-tuning on a label subset (the original's 1 % / 10 % recipes).
    Semisup(eval::SemiSupArgs),
    /// Check the workspace's invariants: swav-augment has no burn in its dependency tree,
    /// workspace dependencies point the documented way, library crates use no global RNG and
    /// no anyhow, every Rust file starts with `//!`.
    Tidy,
}

/// The library crates: everything but xtask.
const LIBRARY_CRATES: [&str; 6] = [
    "swav-core",
    "swav-augment",
    "swav-data",
    "swav-models",
    "swav-train",
    "swav-eval",
];

/// Calls that draw from a process-global or OS-seeded generator. Library code takes a seeded
/// generator as an argument instead, so runs are reproducible.
const GLOBAL_RNG_PATTERNS: [&str; 6] = [
    "rand::rng(",
    "thread_rng(",
    "rand::random",
    "from_entropy(",
    "from_os_rng(",
    "OsRng",
];

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Tidy => tidy(&workspace_root()?),
        Cmd::Pretrain(args) => pretrain::run(&args),
        Cmd::LinearEval(args) => eval::linear(&args),
        Cmd::KnnEval(args) => eval::knn(&args),
        Cmd::Assign(args) => eval::assign(&args),
        Cmd::Semisup(args) => eval::semisup(&args),
        Cmd::Bench(args) => bench::run(&args),
    }
}

fn workspace_root() -> Result<PathBuf> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .map(Path::to_path_buf)
        .context("xtask lives one level below the workspace root")
}

fn tidy(root: &Path) -> Result<()> {
    let mut problems = Vec::new();
    problems.extend(check_no_burn_in_augment(root)?);
    problems.extend(check_library_sources(root)?);
    problems.extend(check_file_headers(root)?);
    problems.extend(check_no_anyhow_in_libraries(root)?);
    problems.extend(check_dependency_direction(root)?);
    if problems.is_empty() {
        println!("tidy: all invariants hold");
        Ok(())
    } else {
        for p in &problems {
            eprintln!("tidy: {p}");
        }
        bail!("{} invariant violation(s)", problems.len())
    }
}

/// `cargo tree -p swav-augment` (all edge kinds) must not mention burn.
fn check_no_burn_in_augment(root: &Path) -> Result<Vec<String>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(root)
        .args([
            "tree",
            "-p",
            "swav-augment",
            "-e",
            "normal,build,dev",
            "--prefix",
            "none",
            "--offline",
        ])
        .output()
        .context("running cargo tree")?;
    if !out.status.success() {
        bail!(
            "cargo tree -p swav-augment failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let tree = String::from_utf8_lossy(&out.stdout);
    let mut burn: Vec<&str> = tree
        .lines()
        .filter(|l| l.starts_with("burn"))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    burn.sort_unstable();
    burn.dedup();
    Ok(if burn.is_empty() {
        Vec::new()
    } else {
        vec![format!(
            "swav-augment must not depend on burn, but its dependency tree has {}",
            burn.join(", ")
        )]
    })
}

/// Library crates must not draw from a global or OS-seeded RNG.
fn check_library_sources(root: &Path) -> Result<Vec<String>> {
    let mut problems = Vec::new();
    for krate in LIBRARY_CRATES {
        for file in rust_files(&root.join(krate))? {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            for (n, line) in text.lines().enumerate() {
                let code = line.split("//").next().unwrap_or("");
                for pat in GLOBAL_RNG_PATTERNS {
                    if code.contains(pat) {
                        problems.push(format!(
                            "{}:{}: library code uses a global RNG (`{pat}`); pass a seeded RNG",
                            rel(root, &file),
                            n + 1
                        ));
                    }
                }
            }
        }
    }
    Ok(problems)
}

/// Every Rust file of the workspace opens with a `//!` line saying what it holds.
fn check_file_headers(root: &Path) -> Result<Vec<String>> {
    let mut problems = Vec::new();
    for krate in LIBRARY_CRATES.iter().chain(&["xtask", "tinynet"]) {
        for file in rust_files(&root.join(krate))? {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            if !text.trim_start().starts_with("//!") {
                problems.push(format!(
                    "{}: does not start with a `//!` line saying what it holds",
                    rel(root, &file)
                ));
            }
        }
    }
    Ok(problems)
}

/// Which workspace crates each library crate may depend on (normal and build dependencies):
/// the direction written in the README's architecture section.
const ALLOWED_INTERNAL: [(&str, &[&str]); 6] = [
    ("swav-core", &[]),
    ("swav-augment", &[]),
    ("swav-models", &[]),
    ("swav-data", &["swav-augment"]),
    (
        "swav-train",
        &[
            "swav-core",
            "swav-augment",
            "swav-data",
            "swav-models",
            "swav-eval",
        ],
    ),
    ("swav-eval", &["swav-augment", "swav-data", "swav-models"]),
];

/// Library crates depend on the workspace crates the architecture allows, and no others.
fn check_dependency_direction(root: &Path) -> Result<Vec<String>> {
    let mut problems = Vec::new();
    for (krate, allowed) in ALLOWED_INTERNAL {
        let manifest = root.join(krate).join("Cargo.toml");
        for name in manifest_dependencies(&manifest, &["[dependencies]", "[build-dependencies]"])? {
            if name.starts_with("swav-") && !allowed.contains(&name.as_str()) {
                problems.push(format!(
                    "{}: {krate} must not depend on {name} (allowed: {})",
                    rel(root, &manifest),
                    if allowed.is_empty() {
                        "no workspace crate".to_string()
                    } else {
                        allowed.join(", ")
                    }
                ));
            }
        }
    }
    Ok(problems)
}

/// `anyhow` belongs to binaries and xtask; library crates return `thiserror` errors.
fn check_no_anyhow_in_libraries(root: &Path) -> Result<Vec<String>> {
    let mut problems = Vec::new();
    for krate in LIBRARY_CRATES {
        let manifest = root.join(krate).join("Cargo.toml");
        if manifest_dependencies(&manifest, &["[dependencies]"])?
            .iter()
            .any(|n| n == "anyhow")
        {
            problems.push(format!(
                "{}: library crate depends on anyhow; use a thiserror enum",
                rel(root, &manifest)
            ));
        }
    }
    Ok(problems)
}

/// Names of the dependencies listed in `sections` of a crate's manifest.
fn manifest_dependencies(manifest: &Path, sections: &[&str]) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(manifest)
        .with_context(|| format!("reading {}", manifest.display()))?;
    let mut section = String::new();
    let mut names = Vec::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('[') {
            section = t.to_string();
        } else if sections.contains(&section.as_str()) {
            let name = t.split(['=', ' ', '.']).next().unwrap_or("");
            if !name.is_empty() && !name.starts_with('#') {
                names.push(name.to_string());
            }
        }
    }
    Ok(names)
}

fn rust_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = match std::fs::read_dir(&d) {
            Ok(e) => e,
            Err(_) => continue,
        };
        for entry in entries {
            let path = entry?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if path.is_dir() {
                if name != "target" && !name.starts_with('.') {
                    stack.push(path);
                }
            } else if name.ends_with(".rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

fn rel(root: &Path, p: &Path) -> String {
    p.strip_prefix(root).unwrap_or(p).display().to_string()
}
