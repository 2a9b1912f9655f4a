//! The installable `swav` binary: the same commands as `cargo xtask`, values listed in `--help`,
//! shell completions, and a run from pretraining to an export that PyTorch's layout names.

use std::process::{Command, Output};

fn swav(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_swav"))
        .args(args)
        .output()
        .expect("the swav binary runs")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn help_lists_the_commands_and_the_values_of_each_option() {
    let o = swav(&["--help"]);
    assert!(o.status.success(), "{}", text(&o));
    for c in [
        "pretrain",
        "linear-eval",
        "knn-eval",
        "semisup",
        "assign",
        "bench",
        "export",
        "completions",
    ] {
        assert!(text(&o).contains(c), "`{c}` missing from: {}", text(&o));
    }
    let o = swav(&["linear-eval", "--help"]);
    assert!(
        text(&o).contains("[possible values: cached, protocol]"),
        "{}",
        text(&o)
    );
    assert!(
        text(&o).contains("[possible values: shapes10, folder"),
        "{}",
        text(&o)
    );
    // A value outside the list is refused before any work.
    let o = swav(&["linear-eval", "--random-init", "--mode", "fast"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("invalid value 'fast'"), "{}", text(&o));
    let o = swav(&["completions", "bash"]);
    assert!(
        o.status.success() && text(&o).contains("_swav()"),
        "{}",
        text(&o)
    );
}

#[test]
fn pretrain_then_export_from_the_installed_binary() {
    let dir = tempfile::tempdir().expect("temp dir");
    let run = dir.path().join("run");
    let run_s = run.display().to_string();
    let o = swav(&[
        "pretrain",
        "--out",
        &run_s,
        "--quiet",
        "--no-baseline",
        "--set",
        "swav.base_width=4",
        "--set",
        "epochs=1",
        "--set",
        "data.shapes10_train=32",
        "--set",
        "data.shapes10_test=32",
        "--set",
        "batch_size=16",
        "--set",
        "run.knn_every=0",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(run.join("checkpoint.bpk").is_file());
    let out = dir.path().join("export");
    let o = swav(&[
        "export",
        "--checkpoint",
        &run_s,
        "--out",
        &out.display().to_string(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(out.join("resnet18.pt").is_file() && out.join("resnet18.safetensors").is_file());
}
