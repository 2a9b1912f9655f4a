//! Configuration files and overrides: the presets in `configs/` parse, validate and equal the
//! presets of swav-core; overrides reach any field; bad input is refused with its name.

use std::path::Path;

use swav_core::SwavConfig;
use swav_train::{DataKind, TrainConfig};

fn configs_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs")
}

#[test]
fn every_preset_file_parses_and_matches_its_swav_core_preset() {
    for (file, preset) in [
        ("imagenet-800ep.toml", "imagenet-800ep"),
        ("imagenet-bs256.toml", "imagenet-bs256"),
        ("cifar10.toml", "cifar10"),
        ("stl10.toml", "stl10"),
        ("demo.toml", "demo"),
    ] {
        let c = TrainConfig::load(configs_dir().join(file), &[]).expect(file);
        assert_eq!(
            c.swav,
            SwavConfig::preset(preset).expect("preset"),
            "{file}"
        );
        c.swav.validate().expect(file);
    }
    let demo = TrainConfig::load(configs_dir().join("demo.toml"), &[]).expect("demo");
    assert_eq!(
        demo,
        TrainConfig::demo(),
        "configs/demo.toml is what `cargo xtask pretrain` runs"
    );
    let cifar = TrainConfig::load(
        configs_dir().join("cifar10.toml"),
        &["data.path=\"/data/c\"".into()],
    )
    .expect("cifar");
    cifar.validate().expect("valid with a data path");
    let err = TrainConfig::load(configs_dir().join("cifar10.toml"), &[])
        .expect("parses")
        .validate()
        .expect_err("needs data.path");
    assert!(err.to_string().contains("data.path"), "{err}");
}

#[test]
fn overrides_reach_any_field_by_section_or_bare_name() {
    let base = TrainConfig::demo().to_toml().expect("toml");
    let c = TrainConfig::from_toml(
        &base,
        &[
            "swav.epochs=7".into(),
            "base_lr=0.25".into(),
            "nmb_crops=[2, 4]".into(),
            "kind=folder".into(),
            "data.path=/tmp/x".into(),
            "run.quiet=true".into(),
            "optimizer=adamw".into(),
        ],
    )
    .expect("overrides");
    assert_eq!(c.swav.epochs, 7);
    assert_eq!(c.swav.base_lr, 0.25);
    assert_eq!(c.swav.nmb_crops, vec![2, 4]);
    assert_eq!(c.data.kind, DataKind::Folder);
    assert_eq!(c.data.path.as_deref(), Some(Path::new("/tmp/x")));
    assert!(c.run.quiet);
    assert_eq!(c.swav.optimizer, swav_core::OptimizerKind::Adamw);
    // A partial file takes the defaults for the rest.
    let p = TrainConfig::from_toml("[swav]\nepochs = 3\n", &[]).expect("partial");
    assert_eq!(p.swav.epochs, 3);
    assert_eq!(p.swav.nmb_prototypes, SwavConfig::default().nmb_prototypes);
}

#[test]
fn unknown_and_invalid_settings_are_refused_with_their_names() {
    let e = TrainConfig::from_toml("[swav]\nepoch = 3\n", &[]).expect_err("typo");
    assert!(e.to_string().contains("epoch"), "{e}");
    let e = TrainConfig::from_toml("[model]\nx = 1\n", &[]).expect_err("section");
    assert!(e.to_string().contains("[model]"), "{e}");
    let e = TrainConfig::from_toml("", &["nonsense=1".into()]).expect_err("field");
    assert!(e.to_string().contains("nonsense"), "{e}");
    let e = TrainConfig::from_toml("", &["epochs".into()]).expect_err("no =");
    assert!(e.to_string().contains("key=value"), "{e}");
    let e = TrainConfig::from_toml("", &["swav.epochs=\"many\"".into()]).expect_err("type");
    assert!(e.to_string().contains("epochs"), "{e}");
    let c = TrainConfig::from_toml("", &["swav.temperature=0".into()]).expect("parses");
    let e = c.validate().expect_err("invalid");
    assert!(e.to_string().contains("temperature"), "{e}");
    let c = TrainConfig::from_toml("", &["run.device=tpu".into()]).expect("parses");
    assert!(
        c.validate()
            .expect_err("device")
            .to_string()
            .contains("run.device")
    );
    let c = TrainConfig::from_toml("", &["run.device=\"wgpu:x\"".into()]).expect("parses");
    assert!(c.validate().is_err(), "a GPU index must be a number");
    let c = TrainConfig::from_toml("", &["run.device=\"wgpu:1\"".into()]).expect("parses");
    c.validate().expect("wgpu:N is a device name");
    // Without the `wgpu` feature the GPU is named but not built in: a clear error, no panic.
    if !cfg!(feature = "wgpu-bare") {
        let e = swav_train::device_for(&c).expect_err("not built in");
        assert!(e.to_string().contains("--features wgpu"), "{e}");
    }
}

#[test]
fn several_workers_are_accepted_with_or_without_synchronised_batchnorm() {
    let c = TrainConfig::from_toml("", &["swav.world_size=3".into()]).expect("parses");
    c.validate().expect("3 CPU workers");
    let devices = swav_train::devices_for(&c).expect("devices");
    assert_eq!(devices.len(), 3);
    let c = TrainConfig::from_toml(
        "",
        &["swav.world_size=2".into(), "swav.sync_bn=true".into()],
    )
    .expect("parses");
    c.validate()
        .expect("synchronised BatchNorm on 2 CPU workers");
    let c = TrainConfig::from_toml("", &["swav.world_size=0".into()]).expect("parses");
    assert!(c.validate().is_err(), "no worker");
    // One device per worker, by name; the WebSocket workers of earlier versions are refused
    // with the way to train across machines now.
    let c = TrainConfig::from_toml(
        "",
        &[
            "swav.world_size=2".into(),
            "run.devices=[\"cpu\", \"ws://127.0.0.1:1\"]".into(),
        ],
    )
    .expect("parses");
    let e = c.validate().expect_err("a ws:// worker");
    assert!(e.to_string().contains("ws://127.0.0.1:1"), "{e}");
    assert!(e.to_string().contains("mpirun"), "{e}");
    let c = TrainConfig::from_toml("", &["run.devices=[\"cpu\"]".into(), "world_size=2".into()])
        .expect("parses");
    let e = c.validate().expect_err("1 device for 2 workers");
    assert!(e.to_string().contains("run.devices"), "{e}");
    let c = TrainConfig::from_toml(
        "",
        &[
            "run.devices=[\"cpu\", \"tpu\"]".into(),
            "world_size=2".into(),
        ],
    )
    .expect("parses");
    let e = c.validate().expect_err("tpu");
    assert!(e.to_string().contains("tpu"), "{e}");
}

#[test]
fn the_saved_config_reads_back_equal() {
    let mut c = TrainConfig::demo();
    c.swav.base_lr = 0.123;
    c.data.path = Some("/some/where".into());
    let back = TrainConfig::from_toml(&c.to_toml().expect("toml"), &[]).expect("parse");
    assert_eq!(back, c);
}

/// GPU device names: the default adapter, the N-th discrete GPU, Vulkan pinned; a malformed
/// index or an unknown API is refused by name; a CPU build says it has no GPU.
#[test]
fn gpu_device_names_are_checked_and_a_cpu_build_says_so() {
    for good in [
        "cpu", "wgpu", "gpu", "wgpu:1", "vulkan", "vulkan:0", "cuda", "cuda:1",
    ] {
        let c = TrainConfig::from_toml("", &[format!("run.device=\"{good}\"")]).expect("parsed");
        c.validate()
            .unwrap_or_else(|e| panic!("{good} refused: {e}"));
    }
    for bad in ["rocm", "wgpu:x", "vulkan:-1", "cuda:one", "metal"] {
        let c = TrainConfig::from_toml("", &[format!("run.device=\"{bad}\"")]).expect("parsed");
        let err = c.validate().expect_err(bad).to_string();
        assert!(err.contains("run.device"), "{bad}: {err}");
    }
    if !cfg!(feature = "wgpu-bare") {
        let err = swav_train::device_named("vulkan:1", "run.device")
            .expect_err("no GPU in this build")
            .to_string();
        assert!(err.contains("not built into this binary"), "{err}");
        assert!(err.contains("--features wgpu"), "{err}");
    }
    if !cfg!(feature = "cuda") {
        let err = swav_train::device_named("cuda:0", "run.device")
            .expect_err("no CUDA in this build")
            .to_string();
        assert!(err.contains("not built into this binary"), "{err}");
        assert!(err.contains("--features cuda"), "{err}");
    }
}

/// The kernel cache: the config's folder first, then `$SWAV_KERNEL_CACHE`, then the user's
/// cache folder; nothing is configured or created for a CPU run.
#[test]
fn the_kernel_cache_folder_follows_config_then_environment() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut c = TrainConfig::default();
    c.run.kernel_cache = Some(dir.path().join("k"));
    assert_eq!(swav_train::kernel_cache_dir(&c), dir.path().join("k"));
    c.run.kernel_cache = None;
    let default = swav_train::kernel_cache_dir(&c);
    assert!(
        default.ends_with("swav-rs/kernels") || std::env::var_os("SWAV_KERNEL_CACHE").is_some(),
        "{}",
        default.display()
    );
    c.run.kernel_cache = Some(dir.path().join("cpu-run"));
    assert_eq!(swav_train::configure_kernel_cache(&c).expect("cpu"), None);
    assert!(!dir.path().join("cpu-run").exists());
    let parsed = TrainConfig::from_toml("", &["run.kernel_cache=\"/data/k\"".into()])
        .expect("the field is settable");
    assert_eq!(parsed.run.kernel_cache, Some("/data/k".into()));
}

#[test]
fn the_cifar10_cpu_recipe_is_the_default_for_a_folder_with_a_bounded_monitor() {
    let path = "data.path=\"/data/cifar10-jpeg\"".to_string();
    let file = TrainConfig::load(configs_dir().join("cifar10-cpu.toml"), &[path]).expect("parses");
    file.validate().expect("valid");
    let mut folder = TrainConfig::folder_default().expect("the default");
    assert_eq!(folder.data.path, None, "the path comes from --data");
    folder.data.path = file.data.path.clone();
    folder.validate().expect("valid");
    assert_eq!(folder.swav, file.swav, "the same method");
    assert_eq!(folder.data, file.data, "the same data settings");
    assert_eq!(
        (folder.run.knn_train_samples, folder.run.knn_test_samples),
        (10_000, 2_000),
        "a folder of any size gets a bounded monitor"
    );
    assert_eq!(
        (file.run.knn_train_samples, file.run.knn_test_samples),
        (0, 0),
        "the recipe's figures use the whole splits"
    );
    assert_ne!(
        folder.swav,
        TrainConfig::demo().swav,
        "not the demo's recipe"
    );
}

/// Each kind of configuration failure is its own error, with its cause: a file that cannot be
/// read (the operating system's error and the file), a file that is not a config (the parser's
/// error, inside an error naming the file), a refused value (its key), a refused override.
#[test]
fn configuration_errors_are_typed_with_their_cause() {
    use std::error::Error;
    use swav_train::TrainError;
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("missing.toml");
    match TrainConfig::load(&missing, &[]) {
        Err(TrainError::ConfigRead { path, source }) => {
            assert_eq!(path, missing);
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("a missing file: {other:?}"),
    }
    let broken = dir.path().join("broken.toml");
    std::fs::write(&broken, "[swav\nepochs = ").expect("write");
    let e = TrainConfig::load(&broken, &[]).expect_err("not TOML");
    assert!(e.to_string().contains("broken.toml"), "{e}");
    match &e {
        TrainError::InConfigFile { path, source } => {
            assert_eq!(path, &broken);
            assert!(
                matches!(**source, TrainError::ConfigSyntax { .. }),
                "{source:?}"
            );
        }
        other => panic!("a broken file: {other:?}"),
    }
    assert!(e.source().is_some(), "the cause is kept");
    let c = TrainConfig::from_toml("", &["run.log_every=0".into()]).expect("parses");
    match c.validate() {
        Err(TrainError::ConfigValue { key, .. }) => assert_eq!(key, "run.log_every"),
        other => panic!("a refused value: {other:?}"),
    }
    match TrainConfig::from_toml("", &["epochs".into()]) {
        Err(TrainError::Override { text, .. }) => assert_eq!(text, "epochs"),
        other => panic!("a refused override: {other:?}"),
    }
}

/// `[swav] preset = NAME` takes swav-core's preset, under the section's other fields and the
/// overrides; an unknown name is refused by its key.
#[test]
fn a_preset_named_in_a_file_is_the_base_of_its_section() {
    use swav_train::TrainError;
    let c = TrainConfig::from_toml(
        "[swav]\npreset = \"imagenet-bs256\"\nepochs = 7\n",
        &["swav.batch_size=32".into()],
    )
    .expect("parses");
    let mut want = SwavConfig::imagenet_bs256();
    want.epochs = 7;
    want.batch_size = 32;
    assert_eq!(c.swav, want);
    match TrainConfig::from_toml("[swav]\npreset = \"imagenet-9000ep\"\n", &[]) {
        Err(TrainError::ConfigValue { key, reason }) => {
            assert_eq!(key, "swav.preset");
            assert!(
                reason.contains("imagenet-800ep"),
                "the known names: {reason}"
            );
        }
        other => panic!("an unknown preset: {other:?}"),
    }
}
