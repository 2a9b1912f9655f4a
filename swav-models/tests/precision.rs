//! Autocast: a ResNet and the SwAV head compute in f16 / bf16 under `with_autocast`, with
//! BatchNorm, features, embeddings and scores in f32, close to the f32 forward.

use burn::tensor::{DType, Device, Distribution, Tensor};
use swav_models::precision::{autocast_dtype, with_autocast};
use swav_models::{Backbone, ResNetConfig, SwavModel};

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .expect("f32")
}

fn worst_relative(a: &[f32], reference: &[f32]) -> f32 {
    let scale = reference.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
    a.iter()
        .zip(reference)
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()))
        / scale
}

#[test]
fn autocast_forward_is_close_to_f32_and_returns_f32() {
    let device = Device::flex().autodiff();
    device.seed(7);
    let config = ResNetConfig {
        cifar_stem: true,
        ..ResNetConfig::new(18).with_base_width(8)
    };
    let model = SwavModel::new(config.init(&device).expect("net"), 32, 16, &[10], &device);
    let images = Tensor::<4>::random([8, 3, 16, 16], Distribution::Normal(0.0, 1.0), &device);
    let reference = model.forward(std::slice::from_ref(&images));
    let features = values(model.backbone.forward_features(images.clone()));
    assert_eq!(autocast_dtype(), None);
    // (type, tolerance on the features and scores, relative to their largest magnitude)
    for (dtype, tolerance) in [(DType::F16, 0.01), (DType::BF16, 0.08)] {
        let (out, half_features, head) = with_autocast(dtype, || {
            assert_eq!(autocast_dtype(), Some(dtype));
            let f = model.backbone.forward_features(images.clone());
            let head = model.head.forward(f.clone());
            (model.forward(std::slice::from_ref(&images)), f, head)
        });
        assert_eq!(autocast_dtype(), None, "restored");
        // The head's Linear layers computed in the half type; what leaves the model is f32.
        assert_eq!(head.dtype(), dtype);
        assert_eq!(half_features.dtype(), DType::F32);
        assert_eq!(out.embeddings.dtype(), DType::F32);
        assert_eq!(out.scores[0].dtype(), DType::F32);
        let w = worst_relative(&values(half_features), &features);
        assert!(w < tolerance, "{dtype:?} features differ by {w}");
        assert!(
            w > 1e-6,
            "{dtype:?}: the features are f32's bit for bit (no half compute?)"
        );
        let w = worst_relative(
            &values(out.scores[0].clone()),
            &values(reference.scores[0].clone()),
        );
        assert!(w < tolerance, "{dtype:?} scores differ by {w}");
    }
}
