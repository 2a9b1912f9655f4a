//! The components a config describes: the multi-crop, the evaluation transform, the model spec
//! stored in checkpoints, and the kNN monitor.

use burn::module::Module;
use burn::tensor::Device;
use swav_augment::{CropGroup, MultiCropConfig};
use swav_eval::{
    EvalTransform, ExtractConfig, KnnConfig, KnnResult, extract_features, knn_classify,
};
use swav_models::{Backbone, SwavModelSpec};

use crate::TrainError;
use crate::config::TrainConfig;
use crate::data::RunData;

/// The multi-crop of a config: the `[data] augment` pipeline with the `[swav]` crops.
pub fn multicrop_for(config: &TrainConfig) -> Result<MultiCropConfig, TrainError> {
    let mut mc = MultiCropConfig::preset(&config.data.augment)?;
    let s = &config.swav;
    mc.groups = (0..s.nmb_crops.len())
        .map(|i| CropGroup {
            count: s.nmb_crops[i],
            size: s.size_crops[i] as u32,
            min_scale: s.min_scale_crops[i],
            max_scale: s.max_scale_crops[i],
        })
        .collect();
    Ok(mc)
}

/// The evaluation transform matching a config's crops: small images whole, large ones
/// resized to 256 and center-cropped to 224.
pub fn eval_transform_for(config: &TrainConfig) -> Result<EvalTransform, TrainError> {
    let mc = MultiCropConfig::preset(&config.data.augment)?;
    let side = config.swav.size_crops.first().copied().unwrap_or(224) as u32;
    Ok(if side <= 96 {
        EvalTransform {
            resize: side,
            crop: side,
            normalize: mc.normalize,
        }
    } else {
        EvalTransform {
            normalize: mc.normalize,
            ..EvalTransform::imagenet()
        }
    })
}

/// The model spec a config describes (stored in checkpoints). Its `backbone` configuration is
/// left empty: a registry fills it ([`swav_models::BackboneRegistry::describe`]).
pub fn spec_for(config: &TrainConfig) -> SwavModelSpec {
    SwavModelSpec {
        arch: config.swav.arch.clone(),
        base_width: config.swav.base_width,
        cifar_stem: config.swav.cifar_stem,
        hidden_mlp: config.swav.hidden_mlp,
        feat_dim: config.swav.feat_dim,
        prototypes: config.swav.nmb_prototypes.clone(),
        backbone: serde_json::Value::Null,
    }
}

/// kNN accuracy of `backbone` on the monitor splits of `data` (None when it has none).
pub fn knn_monitor<E: Backbone + Module>(
    backbone: &E,
    config: &TrainConfig,
    data: &RunData,
    device: &Device,
) -> Result<Option<KnnResult>, TrainError> {
    let (Some(train), Some(test), Some(classes)) = (&data.knn_train, &data.knn_test, data.classes)
    else {
        return Ok(None);
    };
    let extract = ExtractConfig {
        batch_size: 256,
        workers: workers(config),
        transform: eval_transform_for(config)?,
    };
    let bank = extract_features(backbone, train.as_ref(), &extract, device)?;
    let queries = extract_features(backbone, test.as_ref(), &extract, device)?;
    let knn = KnnConfig {
        k: config.run.knn_k,
        temperature: config.run.knn_temperature,
        block: 256,
    };
    Ok(Some(knn_classify(&bank, &queries, classes, &knn, device)?))
}

/// Threads that decode images: `data.workers`, or every core when 0.
pub(crate) fn workers(config: &TrainConfig) -> usize {
    if config.data.workers > 0 {
        config.data.workers
    } else {
        std::thread::available_parallelism().map_or(2, |n| n.get())
    }
}
