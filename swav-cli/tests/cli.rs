//! The installable `swav` binary: the same commands as `cargo xtask`, values listed in `--help`,
//! shell completions, a run from pretraining to an export that PyTorch's layout names, and the
//! recipe `pretrain --data DIR` takes without a config.

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
        "step-check",
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

#[test]
fn pretrain_on_a_folder_without_a_config_takes_the_cifar10_cpu_recipe_and_says_so() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    for split in ["train", "test"] {
        for (c, class) in ["a", "b"].iter().enumerate() {
            let folder = data.join(split).join(class);
            std::fs::create_dir_all(&folder).expect("folder");
            for i in 0..8u8 {
                let img = image::RgbImage::from_fn(40, 36, |x, y| {
                    image::Rgb([(x as u8).wrapping_mul(i + 1), (y as u8) * 3, 100 * c as u8])
                });
                img.save(folder.join(format!("{i}.png"))).expect("png");
            }
        }
    }
    let run = dir.path().join("run");
    let o = swav(&[
        "pretrain",
        "--data",
        &data.display().to_string(),
        "--out",
        &run.display().to_string(),
        "--quiet",
        "--no-baseline",
        "--stop-after",
        "1",
        "--set",
        "batch_size=8",
        "--set",
        "run.knn_every=0",
    ]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(
        t.contains("recipe: the CPU recipe measured on CIFAR-10 (configs/cifar10-cpu.toml"),
        "says which recipe and why: {t}"
    );
    // The run folder's resolved config is that recipe (with the command line's overrides).
    let written = std::fs::read_to_string(run.join("config.toml")).expect("config.toml");
    let recipe: toml::Table = toml::from_str(swav_train::CIFAR10_CPU_RECIPE).expect("recipe");
    let got: toml::Table = toml::from_str(&written).expect("config");
    for key in [
        "base_width",
        "nmb_prototypes",
        "size_crops",
        "epochs",
        "base_lr",
        "optimizer",
    ] {
        assert_eq!(got["swav"][key], recipe["swav"][key], "swav.{key}");
    }
    assert_eq!(got["data"]["kind"].as_str(), Some("folder"));
    assert_eq!(got["swav"]["batch_size"].as_integer(), Some(8));
}

/// `swav step-check` on the CPU with f16 autocast against the CPU in f32: one JSON line with the
/// differences, within the half-precision tolerance; held to zero tolerance, the same step fails
/// with exit status 1 and names what exceeded it; an unknown half type is refused.
#[test]
fn step_check_compares_a_precision_with_the_cpu_and_fails_past_its_tolerance() {
    // The step the tolerances were measured on (the defaults), with another seed.
    let small = ["step-check", "--device", "cpu", "--seed", "3"];
    let o = swav(&[&small[..], &["--amp", "f16"][..]].concat());
    assert!(o.status.success(), "{}", text(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    let line = stdout.lines().last().expect("a JSON line");
    let r: serde_json::Value = serde_json::from_str(line).expect("JSON");
    assert_eq!(r["within_tolerance"], true, "{line}");
    assert_eq!(r["amp"], "f16");
    assert!(r["gradients"].as_u64().expect("count") > 40, "{line}");
    let loss_rel = r["loss_rel"].as_f64().expect("loss_rel");
    let grads_rel = r["grads_rel"].as_f64().expect("grads_rel");
    assert!(loss_rel > 0.0 && grads_rel > 0.0, "f16 rounds: {line}");

    let o = swav(&[&small[..], &["--amp", "f16", "--tolerance", "0,0,0,0"][..]].concat());
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("differs from the CPU's: loss (relative)"),
        "{}",
        text(&o)
    );

    let o = swav(&[&small[..], &["--amp", "f8"][..]].concat());
    assert!(!o.status.success());
    assert!(text(&o).contains("--amp takes f16 or bf16"), "{}", text(&o));
}
