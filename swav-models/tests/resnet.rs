//! ResNet family: parameter counts equal to torchvision's (without its classifier), output
//! shapes for every depth, the CIFAR stem, zero-init, and the head and prototypes.

use burn::module::Module;
use burn::tensor::{Device, Tensor};
use swav_models::{Backbone, ProjectionHeadConfig, PrototypesConfig, ResNetConfig};

/// torchvision's counts (`sum(p.numel() for p in model.parameters())`) minus its 1000-class fc,
/// measured with torchvision 0.29: e.g. ResNet-50 25,557,032 - 2,049,000.
const TORCHVISION_NO_FC: [(usize, usize); 5] = [
    (18, 11_176_512),
    (34, 21_284_672),
    (50, 23_508_032),
    (101, 42_500_160),
    (152, 58_143_808),
];

/// Values of BatchNorm running statistics (mean and variance) in the network: burn's
/// `num_params` counts them, torchvision keeps them as buffers.
fn running_stats(net: &swav_models::ResNet) -> usize {
    let mut channels = net.bn1.gamma.dims()[0];
    for b in net
        .layer1
        .iter()
        .chain(&net.layer2)
        .chain(&net.layer3)
        .chain(&net.layer4)
    {
        channels += b.bn1.gamma.dims()[0] + b.bn2.gamma.dims()[0];
        channels += b.bn3.as_ref().map_or(0, |n| n.gamma.dims()[0]);
        channels += b.downsample.as_ref().map_or(0, |d| d.bn.gamma.dims()[0]);
    }
    2 * channels
}

#[test]
fn parameter_counts_equal_torchvision() {
    let device = Device::flex();
    for (depth, want) in TORCHVISION_NO_FC {
        let net = ResNetConfig::new(depth).init(&device).expect("valid");
        assert_eq!(
            net.num_params() - running_stats(&net),
            want,
            "resnet{depth}"
        );
    }
    // With a 1000-class Linear on top, ResNet-50 has torchvision's 25,557,032.
    assert_eq!(23_508_032 + 2048 * 1000 + 1000, 25_557_032);
}

#[test]
fn features_have_the_right_shape_for_every_depth() {
    let device = Device::flex();
    for depth in [18, 34, 50, 101, 152] {
        let cfg = ResNetConfig::new(depth);
        let net = cfg.init(&device).expect("valid");
        let f = net.forward_features(Tensor::zeros([2, 3, 64, 64], &device));
        let dim = if depth < 50 { 512 } else { 2048 };
        assert_eq!(f.dims(), [2, dim], "resnet{depth}");
        assert_eq!(net.feature_dim(), dim);
        assert_eq!(cfg.feature_dim().expect("dim"), dim);
    }
}

#[test]
fn width_multipliers_and_the_cifar_stem() {
    let device = Device::flex();
    let cfg = ResNetConfig::from_name("resnet50w2").expect("name");
    assert_eq!(cfg.feature_dim().expect("dim"), 4096);
    assert_eq!(
        ResNetConfig::from_name("resnet50w5")
            .expect("name")
            .feature_dim()
            .expect("dim"),
        10240
    );
    let mut small = ResNetConfig::new(18);
    small.cifar_stem = true;
    let net = small.init(&device).expect("valid");
    assert!(net.maxpool.is_none());
    assert_eq!(net.conv1.weight.dims(), [64, 3, 3, 3]);
    assert_eq!(
        net.forward_features(Tensor::ones([3, 3, 32, 32], &device))
            .dims(),
        [3, 512]
    );
    assert!(ResNetConfig::from_name("resnet42").is_err());
    assert!(
        ResNetConfig {
            width: 0,
            ..ResNetConfig::new(50)
        }
        .init(&device)
        .is_err()
    );
}

#[test]
fn zero_init_residual_zeroes_the_last_norm_of_each_block() {
    let device = Device::flex();
    let net = ResNetConfig {
        zero_init_residual: true,
        ..ResNetConfig::new(50)
    }
    .init(&device)
    .expect("valid");
    for block in net.layer1.iter().chain(&net.layer4) {
        let g = block.bn3.as_ref().expect("bottleneck").gamma.val();
        assert_eq!(g.abs().sum().into_scalar::<f32>(), 0.0);
        assert_eq!(
            block.bn1.gamma.val().sum().into_scalar::<f32>(),
            block.bn1.gamma.dims()[0] as f32
        );
    }
}

#[test]
fn convolutions_follow_kaiming_normal_fan_out() {
    // std = sqrt(2 / fan_out) with fan_out = out_channels x k x k: for layer4's 3x3 512 -> 512
    // convolution of ResNet-18, sqrt(2 / 4608) = 0.0208.
    let device = Device::flex();
    let net = ResNetConfig::new(18).init(&device).expect("valid");
    let w = net.layer4[1].conv1.weight.val();
    let n = w.dims().iter().product::<usize>() as f32;
    let mean = w.clone().sum().into_scalar::<f32>() / n;
    let var = w.sub_scalar(mean).square().sum().into_scalar::<f32>() / n;
    let want = (2.0f32 / 4608.0).sqrt();
    assert!(
        (var.sqrt() - want).abs() < 0.03 * want,
        "std {} vs {want}",
        var.sqrt()
    );
}

#[test]
fn head_and_prototypes_shapes() {
    let device = Device::flex();
    let head = ProjectionHeadConfig {
        input: 512,
        hidden: 256,
        output: 128,
    }
    .init(&device);
    let z = head.forward(Tensor::ones([4, 512], &device));
    assert_eq!(z.dims(), [4, 128]);
    let single = ProjectionHeadConfig {
        input: 512,
        hidden: 0,
        output: 64,
    }
    .init(&device);
    assert!(single.bn.is_none());
    assert_eq!(
        single.forward(Tensor::ones([2, 512], &device)).dims(),
        [2, 64]
    );
    let protos = PrototypesConfig {
        dim: 128,
        heads: vec![3000, 300],
    }
    .init(&device);
    let scores = protos.forward(z);
    assert_eq!(scores[0].dims(), [4, 3000]);
    assert_eq!(scores[1].dims(), [4, 300]);
    assert!(protos.heads.iter().all(|h| h.bias.is_none()));
}

#[test]
fn swav_model_forward_groups_crops_and_normalises() {
    use swav_models::SwavModel;
    let device = Device::flex();
    let backbone = ResNetConfig {
        cifar_stem: true,
        ..ResNetConfig::new(18)
    }
    .init(&device)
    .expect("valid");
    let model = SwavModel::new(backbone, 64, 32, &[10, 7], &device);
    // Two 32-px crops and three 16-px crops of a batch of 2.
    let large = Tensor::<4>::random(
        [4, 3, 32, 32],
        burn::tensor::Distribution::Normal(0.0, 1.0),
        &device,
    );
    let small = Tensor::<4>::random(
        [6, 3, 16, 16],
        burn::tensor::Distribution::Normal(0.0, 1.0),
        &device,
    );
    let out = model.forward(&[large.clone(), small.clone()]);
    assert_eq!(out.embeddings.dims(), [10, 32]);
    assert_eq!(out.scores[0].dims(), [10, 10]);
    assert_eq!(out.scores[1].dims(), [10, 7]);
    let norms: Vec<f32> = out
        .embeddings
        .clone()
        .square()
        .sum_dim(1)
        .sqrt()
        .into_data()
        .try_to_vec()
        .expect("floats");
    assert!(norms.iter().all(|n| (n - 1.0).abs() < 1e-5), "{norms:?}");
    // Without autodiff BatchNorm uses its running statistics, so the grouped forward equals
    // the head over the per-group features, concatenated in crop order.
    let features = Tensor::cat(
        vec![
            model.backbone.forward_features(large),
            model.backbone.forward_features(small),
        ],
        0,
    );
    let z = model.head.forward(features);
    let z = z.clone().div(z.square().sum_dim(1).sqrt());
    let diff: f32 = z.sub(out.embeddings).abs().max().into_scalar();
    assert!(diff < 1e-5, "grouped forward differs by {diff}");
}

#[test]
fn a_wide_resnet50_runs() {
    // RN50-w2 (94M parameters) end to end on one small image; w4 and w5 differ only in the
    // multiplier, checked through their feature dimensions above.
    let device = Device::flex();
    let cfg = ResNetConfig {
        cifar_stem: true,
        ..ResNetConfig::from_name("resnet50w2").expect("name")
    };
    let net = cfg.init(&device).expect("valid");
    assert_eq!(
        net.forward_features(Tensor::ones([1, 3, 32, 32], &device))
            .dims(),
        [1, 4096]
    );
    assert_eq!(net.conv1.weight.dims()[0], 128);
}
