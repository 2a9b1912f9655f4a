//! A backbone from another crate (tinynet) from the command line: `cargo xtask pretrain` trains
//! it by name, its checkpoint names it and its configuration, and the evaluation commands
//! rebuild it from the checkpoint alone; an unknown name is refused before any work, with the
//! names the binary knows.

use std::path::Path;
use std::process::{Command, Output};

fn xtask(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(args)
        .output()
        .expect("the xtask binary runs")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

const SMALL: [&str; 16] = [
    "--set",
    "swav.arch=\"tinynet\"",
    "--set",
    "swav.base_width=6",
    "--set",
    "epochs=1",
    "--set",
    "data.shapes10_train=64",
    "--set",
    "data.shapes10_test=32",
    "--set",
    "batch_size=16",
    "--set",
    "run.knn_train_samples=64",
    "--set",
    "run.knn_test_samples=32",
];

#[test]
fn a_tinynet_checkpoint_is_trained_and_evaluated_from_the_command_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("run");
    let out_s = out.display().to_string();
    let mut args = vec!["pretrain", "--out", &out_s, "--fresh", "--quiet"];
    args.extend(SMALL);
    let o = xtask(&args);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("kNN same backbone at random initialisation"));

    // The checkpoint names its backbone and the backbone's configuration.
    let ckpt = swav_models::read_checkpoint(out.join("checkpoint.bpk")).expect("checkpoint");
    let spec = ckpt.spec().expect("spec").expect("a spec");
    assert_eq!(spec.arch, "tinynet");
    assert_eq!(spec.backbone, serde_json::json!({ "width": 6 }));

    // The evaluations rebuild it from the checkpoint: no --set, no config.
    for (command, report) in [
        (vec!["knn-eval", "--checkpoint", &out_s], "knn_trained.json"),
        (
            vec!["linear-eval", "--checkpoint", &out_s, "--epochs", "2"],
            "linear_trained.json",
        ),
        (
            vec!["assign", "--checkpoint", &out_s],
            "assign_trained_test.json",
        ),
    ] {
        let o = xtask(&command);
        assert!(o.status.success(), "{command:?}: {}", text(&o));
        let report_path = out.join("eval").join(report);
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&report_path).expect("report"))
                .expect("json");
        assert_eq!(v["config"]["swav"]["arch"], "tinynet", "{report}");
        assert!(
            Path::new(v["weights"].as_str().expect("weights")).ends_with("checkpoint.bpk"),
            "{report}"
        );
    }

    // Every evaluation takes `--device`; a device this build lacks is refused by name.
    let o = xtask(&["knn-eval", "--checkpoint", &out_s, "--device", "cpu"]);
    assert!(o.status.success(), "{}", text(&o));
    if !cfg!(feature = "wgpu") {
        for command in ["knn-eval", "linear-eval", "assign", "semisup"] {
            let o = xtask(&[command, "--checkpoint", &out_s, "--device", "wgpu"]);
            assert!(!o.status.success(), "{command}");
            assert!(
                text(&o).contains("not built into this binary"),
                "{command}: {}",
                text(&o)
            );
        }
    }
}

#[test]
fn an_unknown_backbone_is_refused_before_any_work_with_the_known_names() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("run");
    let out_s = out.display().to_string();
    let o = xtask(&[
        "pretrain",
        "--out",
        &out_s,
        "--quiet",
        "--set",
        "swav.arch=\"vgg16\"",
    ]);
    assert!(!o.status.success());
    let t = text(&o);
    assert!(
        t.contains("vgg16") && t.contains("resnet50") && t.contains("tinynet"),
        "{t}"
    );
    assert!(!out.exists(), "nothing written");
}
