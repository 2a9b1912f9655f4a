//! The backbone registry: a spec's name finds its family, the family describes its full
//! configuration, a described spec rebuilds the same network, and an unknown name is refused
//! with the names the registry knows.

use burn::tensor::Device;
use swav_models::{
    BackboneRegistry, BuildBackbone, ModelError, ModelTask, ResNetFamily, SwavModelSpec,
    TaskBackbone,
};

type Registry = swav_models::registry![ResNetFamily];

fn spec(arch: &str) -> SwavModelSpec {
    SwavModelSpec {
        arch: arch.into(),
        base_width: 4,
        cifar_stem: true,
        hidden_mlp: 0,
        feat_dim: 8,
        prototypes: vec![5],
        backbone: serde_json::Value::Null,
    }
}

/// The feature size of the backbone the task is given.
struct Dim;

impl ModelTask for Dim {
    type Output = Result<usize, ModelError>;

    fn run<E: TaskBackbone>(self, _spec: &SwavModelSpec, build: &BuildBackbone<E>) -> Self::Output {
        Ok(build(&Device::flex())?.feature_dim())
    }
}

#[test]
fn a_spec_is_described_and_rebuilt_by_its_family() {
    let described = Registry::describe(&spec("resnet50")).expect("described");
    assert_eq!(described.backbone["depth"], 50);
    assert_eq!(described.backbone["base_width"], 4);
    assert_eq!(described.backbone["cifar_stem"], true);
    // The stored configuration wins over the spec's own fields when they differ.
    let mut stored = described.clone();
    stored.backbone["width"] = serde_json::json!(2);
    let plain = Registry::run(&described, Dim)
        .expect("found")
        .expect("built");
    let wide = Registry::run(&stored, Dim).expect("found").expect("built");
    assert_eq!(plain, 4 * 8 * 4);
    assert_eq!(wide, 2 * plain);
}

#[test]
fn an_unknown_name_is_refused_with_the_known_ones() {
    let err = Registry::run(&spec("vgg16"), Dim).expect_err("unknown");
    let text = err.to_string();
    assert!(text.contains("vgg16") && text.contains("resnet18") && text.contains("resnet50w5"));
    let err = Registry::describe(&spec("vgg16")).expect_err("unknown");
    assert!(err.to_string().contains("resnet152"), "{err}");
}
