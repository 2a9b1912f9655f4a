//! Parity with PyTorch: weights written by `tests/golden/gen_parity.py` are loaded through
//! burn's PyTorch store and the outputs on the same input match PyTorch's to 1e-4 (eval mode:
//! BatchNorm uses its running statistics, randomised in the fixtures).

use std::path::PathBuf;

use burn::tensor::{Device, Tensor, TensorData};
use serde_json::Value;
use swav_models::{
    Backbone, ModelError, ResNetConfig, SwavModel, load_swav_checkpoint, load_torchvision_resnet,
};

fn golden() -> Value {
    serde_json::from_str(include_str!("golden/parity.json")).expect("parity.json")
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name)
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number") as f32)
        .collect()
}

fn input(case: &Value, device: &Device) -> Tensor<4> {
    let shape: Vec<usize> = case["input_shape"]
        .as_array()
        .expect("shape")
        .iter()
        .map(|d| d.as_u64().expect("dim") as usize)
        .collect();
    Tensor::from_data(
        TensorData::new(
            floats(&case["input"]),
            [shape[0], shape[1], shape[2], shape[3]],
        ),
        device,
    )
}

fn max_diff(t: Tensor<2>, want: &[f32]) -> f32 {
    let got: Vec<f32> = t.into_data().try_to_vec().expect("floats");
    assert_eq!(got.len(), want.len(), "output size");
    got.iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max)
}

#[test]
fn torchvision_resnet18_layouts_match_pytorch() {
    let g = golden();
    let device = Device::flex();
    for (name, cifar) in [("resnet18_w8", false), ("resnet18_w8_cifar", true)] {
        let cfg = ResNetConfig {
            cifar_stem: cifar,
            ..ResNetConfig::new(18).with_base_width(8)
        };
        let net = cfg.init(&device).expect("config");
        let net = load_torchvision_resnet(net, fixture(&format!("{name}.pt"))).expect("load");
        let f = net.forward_features(input(&g[name], &device));
        let d = max_diff(f, &floats(&g[name]["features"]));
        assert!(d < 1e-4, "{name}: features differ by {d}");
    }
}

#[test]
fn swav_checkpoint_with_bottlenecks_head_and_prototypes_matches_pytorch() {
    let g = golden();
    let case = &g["swav_rn50_w4"];
    let device = Device::flex();
    let backbone = ResNetConfig::new(50)
        .with_base_width(4)
        .init(&device)
        .expect("config");
    let model = SwavModel::new(backbone, 16, 8, &[10], &device);
    let model = load_swav_checkpoint(model, fixture("swav_rn50_w4.pt"), None).expect("load");
    let x = input(case, &device);
    let f = model.backbone.forward_features(x.clone());
    assert!(max_diff(f, &floats(&case["features"])) < 1e-4, "features");
    let out = model.forward(&[x]);
    let dz = max_diff(out.embeddings, &floats(&case["embeddings"]));
    let ds = max_diff(out.scores[0].clone(), &floats(&case["scores"]));
    assert!(dz < 1e-4 && ds < 1e-4, "embeddings {dz}, scores {ds}");
}

#[test]
fn mismatched_files_are_refused_with_the_keys() {
    let device = Device::flex();
    // A ResNet-18 file into a ResNet-34: the extra blocks' keys are missing from the file.
    let net = ResNetConfig::new(34)
        .with_base_width(8)
        .init(&device)
        .expect("config");
    match load_torchvision_resnet(net, fixture("resnet18_w8.pt")) {
        Err(ModelError::Weights { path, reason }) => {
            assert!(path.ends_with("resnet18_w8.pt"));
            assert!(
                reason.contains("missing") && reason.contains("layer1.2"),
                "{reason}"
            );
        }
        other => panic!("expected a refusal, got {:?}", other.map(|_| ())),
    }
    // Same keys, wrong widths: shapes mismatch.
    let wide = ResNetConfig::new(18)
        .with_base_width(16)
        .init(&device)
        .expect("config");
    let err = load_torchvision_resnet(wide, fixture("resnet18_w8.pt")).expect_err("shapes");
    let msg = err.to_string();
    assert!(matches!(err, ModelError::Weights { .. }), "{msg}");
    assert!(
        msg.contains("resnet18_w8.pt") && msg.contains("Shape mismatch for 'conv1.weight'"),
        "the keys are listed: {msg}"
    );
    let missing = ResNetConfig::new(18).init(&device).expect("config");
    assert!(load_torchvision_resnet(missing, fixture("nope.pt")).is_err());
}

#[test]
fn safetensors_export_round_trips() {
    let g = golden();
    let device = Device::flex();
    let cfg = ResNetConfig {
        cifar_stem: true,
        ..ResNetConfig::new(18).with_base_width(8)
    };
    let net = load_torchvision_resnet(
        cfg.init(&device).expect("config"),
        fixture("resnet18_w8_cifar.pt"),
    )
    .expect("load");
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("rn18.safetensors");
    swav_models::save_safetensors(&net, &path).expect("save");
    let files: Vec<_> = std::fs::read_dir(dir.path()).expect("list").collect();
    assert_eq!(files.len(), 1, "the temporary file is gone: {files:?}");
    // A freshly initialised net takes the saved weights and gives PyTorch's outputs again.
    let back = swav_models::load_safetensors(cfg.init(&device).expect("config"), &path)
        .expect("load back");
    let x = input(&g["resnet18_w8_cifar"], &device);
    assert!(
        max_diff(
            back.forward_features(x),
            &floats(&g["resnet18_w8_cifar"]["features"])
        ) < 1e-4
    );
    let other = ResNetConfig::new(34)
        .with_base_width(8)
        .init(&device)
        .expect("config");
    assert!(
        swav_models::load_safetensors(other, &path).is_err(),
        "a different architecture is refused"
    );
}
