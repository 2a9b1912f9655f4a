//! The tiny backbone goes through SwAV's step: the grouped forward of `SwavModel`, the codes and
//! swapped-prediction loss of `swav-core`, backward, and a gradient step that lowers the loss
//! against the same codes (new codes after the step are new targets, so the full SwAV loss of
//! one step need not fall).

use burn::tensor::{Device, Distribution, Tensor};
use swav_core::{
    AssignmentCodes, SingleWorker, SinkhornConfig, SwavLossOutput, normalize_prototypes,
    swapped_prediction_loss, swav_loss,
};
use swav_models::SwavModel;
use swav_tinynet::TinyNet;

fn loss_of(model: &SwavModel<TinyNet>, groups: &[Tensor<4>], batch: usize) -> SwavLossOutput {
    let out = model.forward(groups);
    let prototypes = model.prototypes.heads[0].weight.val();
    swav_loss(
        out.scores[0].clone(),
        out.embeddings,
        prototypes,
        batch,
        &[0, 1],
        0.1,
        &SinkhornConfig::default(),
        None,
        &SingleWorker,
    )
}

#[test]
fn a_backbone_from_another_crate_trains_through_the_swav_step() {
    for seed in 0..5 {
        step_lowers_the_loss(seed);
    }
}

fn step_lowers_the_loss(seed: u64) {
    let device = Device::flex().autodiff();
    device.seed(seed);
    let batch = 8;
    let mut model = SwavModel::new(TinyNet::new(8, &device), 32, 16, &[12], &device);
    model.prototypes.heads[0] = normalize_prototypes(model.prototypes.heads[0].clone());
    let large = Tensor::<4>::random(
        [2 * batch, 3, 16, 16],
        Distribution::Normal(0.0, 1.0),
        &device,
    );
    let small = Tensor::<4>::random(
        [2 * batch, 3, 8, 8],
        Distribution::Normal(0.0, 1.0),
        &device,
    );
    let groups = [large, small];

    let first = loss_of(&model, &groups, batch);
    let codes: Vec<AssignmentCodes> = first.codes[0].clone();
    let start: f32 = first.loss.clone().into_scalar();
    let grads = first.loss.backward();
    let g1 = model
        .backbone
        .block1
        .conv
        .weight
        .val()
        .grad(&grads)
        .expect("the backbone gets a gradient");
    assert!(g1.abs().sum().into_scalar::<f32>() > 0.0);
    assert!(
        model.head.fc1.weight.val().grad(&grads).is_some(),
        "the head too"
    );

    // One plain gradient step on the backbone's convolutions and the head's first layer.
    let lr = 0.02;
    let step = |p: burn::module::Param<Tensor<4>>| {
        let g = p.val().grad(&grads).expect("gradient");
        p.map(|w| w.sub(g.mul_scalar(lr)).detach().require_grad())
    };
    model.backbone.block1.conv.weight = step(model.backbone.block1.conv.weight.clone());
    model.backbone.block2.conv.weight = step(model.backbone.block2.conv.weight.clone());
    model.backbone.block3.conv.weight = step(model.backbone.block3.conv.weight.clone());
    let scores = model.forward(&groups).scores[0].clone();
    let after: f32 = swapped_prediction_loss(scores, batch, &codes, 0.1).into_scalar();
    assert!(
        after < start,
        "seed {seed}: the loss went from {start} to {after}"
    );
}
