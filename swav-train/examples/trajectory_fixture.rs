//! Writes the inputs of the trajectory parity check with PyTorch into a folder (by default
//! `swav-train/tests/golden/trajectory`):
//!
//! - `config.toml`: the run (a narrow ResNet-18 with BatchNorm, 2 x 16 px + 2 x 8 px crops,
//!   batches of 8 over 160 built-in images, 15 epochs = 300 iterations crossing the warmup, the
//!   prototypes' unfreezing and the queue's start; LARS, the original's schedule and Sinkhorn);
//! - `init.safetensors`: the model as the trainer initialises it from the config's seed, under
//!   our parameter names;
//! - `crops.safetensors`: the 20 batches of one epoch as our loader makes them
//!   (`b{batch}.g{group}`, `[count x batch, 3, size, size]`), replayed every epoch by both sides.
//!
//! `scripts/parity/torch_trajectory.py` then trains the same run in PyTorch and writes the
//! reference trajectory; `tests/trajectory.rs` trains ours and compares.
//!
//! `cargo run -p swav-train --example trajectory_fixture [-- DIR]`

use std::collections::BTreeMap;
use std::path::PathBuf;

use burn::tensor::Device;
use swav_models::SwavModel;
use swav_train::{BatchSource, MultiCropSource, TrainConfig, open_data, seeded_init, spec_for};

/// The run of the parity check.
pub fn config() -> TrainConfig {
    let mut c = TrainConfig::demo();
    c.swav = swav_core::SwavConfig {
        nmb_crops: vec![2, 2],
        size_crops: vec![16, 8],
        min_scale_crops: vec![0.3, 0.1],
        max_scale_crops: vec![1.0, 0.4],
        arch: "resnet18".into(),
        cifar_stem: true,
        base_width: 4,
        hidden_mlp: 32,
        feat_dim: 16,
        nmb_prototypes: vec![24],
        epochs: 15,
        batch_size: 8,
        base_lr: 0.6,
        final_lr: 0.0006,
        warmup_epochs: 2,
        start_warmup: 0.0,
        scale_lr_by_batch: false,
        freeze_prototypes_niters: 70,
        queue_length: 32,
        epoch_queue_starts: 5,
        use_fp16: false,
        seed: 3,
        ..swav_core::SwavConfig::default()
    };
    c.data.shapes10_train = 160;
    c.data.shapes10_test = 16;
    c.run.knn_every = 0;
    c.run.checkpoint_every = 0;
    c.run.log_every = 1;
    c.run.quiet = true;
    c.run.metrics = vec!["jsonl".into()];
    c
}

/// A minimal safetensors file of named f32 arrays.
fn write_safetensors(
    path: &std::path::Path,
    arrays: &BTreeMap<String, (Vec<usize>, Vec<f32>)>,
) -> std::io::Result<()> {
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for (name, (shape, values)) in arrays {
        let end = offset + values.len() * 4;
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [offset, end]}),
        );
        offset = end;
    }
    let mut text = serde_json::Value::Object(header).to_string();
    while !text.len().is_multiple_of(8) {
        text.push(' ');
    }
    let mut bytes = (text.len() as u64).to_le_bytes().to_vec();
    bytes.extend(text.as_bytes());
    for (_, values) in arrays.values() {
        bytes.extend(values.iter().flat_map(|v| v.to_le_bytes()));
    }
    std::fs::write(path, bytes)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args().nth(1).map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/trajectory"),
        PathBuf::from,
    );
    std::fs::create_dir_all(&dir)?;
    let config = config();
    config.validate()?;
    std::fs::write(dir.join("config.toml"), config.to_toml()?)?;

    // The weights exactly as the trainer draws them: the same seeded initialisation on the
    // autodiff device.
    let spec = spec_for(&config);
    let device = Device::flex().autodiff();
    let model: SwavModel<swav_models::ResNet> =
        seeded_init(&device, config.swav.seed, |d| spec.init(d))?;
    swav_models::save_safetensors(&model, dir.join("init.safetensors"))?;

    let data = open_data(&config.data, config.swav.seed, (0, 0))?;
    let source = MultiCropSource::new(&config, &data, 1)?;
    let mut arrays = BTreeMap::new();
    for batch in source.epoch(0, 0, 0)? {
        for (g, group) in batch.groups.into_iter().enumerate() {
            let shape = group.shape().to_vec();
            arrays.insert(format!("b{:02}.g{g}", batch.index), (shape, group.data));
        }
    }
    write_safetensors(&dir.join("crops.safetensors"), &arrays)?;
    println!(
        "wrote {} ({} batches of one epoch)",
        dir.display(),
        source.batches_per_epoch()
    );
    Ok(())
}
