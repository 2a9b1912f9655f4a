//! What the run tests share: a tiny run configuration, a run of it with a ResNet, and a
//! model's tensors as raw bits.
#![allow(dead_code)] // each test binary uses its own part

use std::path::Path;

use burn::module::Module;
use burn::store::ModuleSnapshot;
use burn::tensor::Device;
use burn::tensor::Tensor;
use burn::tensor::activation::relu;
use swav_models::{Backbone, ResNet, SwavModel};
use swav_tinynet::TinyNet;
use swav_train::{RunOptions, TrainConfig, TrainError, open_data, spec_for, train};

/// A tiny run: narrow ResNet-18, 16 px and 8 px crops, 64 Shapes10 images in batches of 16
/// (4 iterations per epoch), 3 epochs, a queue from epoch 1, prototypes frozen 2 iterations,
/// a checkpoint every 3 iterations.
pub fn tiny(out: &Path) -> TrainConfig {
    let mut c = TrainConfig::demo();
    c.swav.nmb_crops = vec![2, 1];
    c.swav.size_crops = vec![16, 8];
    c.swav.min_scale_crops = vec![0.3, 0.1];
    c.swav.max_scale_crops = vec![1.0, 0.3];
    c.swav.base_width = 4;
    c.swav.hidden_mlp = 16;
    c.swav.feat_dim = 8;
    c.swav.nmb_prototypes = vec![10];
    c.swav.batch_size = 16;
    c.swav.epochs = 3;
    c.swav.warmup_epochs = 1;
    c.swav.queue_length = 32;
    c.swav.epoch_queue_starts = 1;
    c.swav.freeze_prototypes_niters = 2;
    c.data.shapes10_train = 64;
    c.data.shapes10_test = 32;
    c.data.workers = 2;
    c.run.out_dir = out.to_path_buf();
    c.run.checkpoint_every = 3;
    c.run.log_every = 1;
    c.run.knn_every = 0;
    c.run.quiet = true;
    c
}

pub fn resnet(config: &TrainConfig) -> impl FnOnce(&Device) -> Result<ResNet, TrainError> {
    let spec = spec_for(config);
    move |d: &Device| Ok(spec.resnet()?.init(d)?)
}

pub fn run(
    config: &TrainConfig,
    stop_after: Option<usize>,
) -> (SwavModel<ResNet>, swav_train::RunSummary) {
    let data = open_data(&config.data, config.swav.seed, (0, 0)).expect("data");
    let options = RunOptions {
        stop_after,
        ..RunOptions::default()
    };
    let out = train(config, &data, resnet(config), &options).expect("train");
    (out.model, out.summary)
}

/// Every tensor of the model (parameters and BatchNorm running statistics) as raw bits.
pub fn bits<M: ModuleSnapshot + Module>(m: &M) -> Vec<(String, Vec<u8>)> {
    drop(m.valid());
    let mut v: Vec<(String, Vec<u8>)> = m
        .collect(None, None, false)
        .into_iter()
        .map(|t| {
            let name = t.name.clone();
            let b = t.into_bytes().expect("bytes");
            (name, b.to_vec())
        })
        .collect();
    v.sort();
    v
}

/// tinynet with block 1's BatchNorm called through burn's own `BatchNorm::forward` instead of
/// `swav_models::layers::batch_norm`: a backbone that bypasses synchronised BatchNorm.
#[derive(Module, Debug)]
pub struct Bypass {
    /// The network whose blocks 2 and 3 go through the layer API.
    pub net: TinyNet,
}

impl Backbone for Bypass {
    fn feature_dim(&self) -> usize {
        self.net.dim
    }

    fn forward_features(&self, images: Tensor<4>) -> Tensor<2> {
        let b1 = &self.net.block1;
        let x = relu(b1.bn.forward(b1.conv.forward(images)));
        let x = self.net.block3.forward(self.net.block2.forward(x));
        let [b, c, _, _] = x.dims();
        self.net.pool.forward(x).reshape([b, c])
    }
}
