//! What the binary's integration tests share: the tiny run they start and how they compare
//! checkpoints.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use burn::store::ModuleSnapshot;

/// The run every case uses: a narrow ResNet-18, 16 px and 8 px crops, 64 Shapes10 images in
/// batches of 16 (4 iterations per epoch), 3 epochs, a queue from epoch 1, prototypes frozen for
/// 2 iterations, a checkpoint every 3 iterations, a metrics line every iteration.
pub const TINY: &[&str] = &[
    "--quiet",
    "--no-baseline",
    "--set",
    "swav.base_width=4",
    "--set",
    "swav.hidden_mlp=16",
    "--set",
    "swav.feat_dim=8",
    "--set",
    "swav.nmb_prototypes=[10]",
    "--set",
    "swav.nmb_crops=[2, 1]",
    "--set",
    "swav.size_crops=[16, 8]",
    "--set",
    "swav.min_scale_crops=[0.3, 0.1]",
    "--set",
    "swav.max_scale_crops=[1.0, 0.3]",
    "--set",
    "swav.batch_size=16",
    "--set",
    "swav.epochs=3",
    "--set",
    "swav.warmup_epochs=1",
    "--set",
    "swav.queue_length=32",
    "--set",
    "swav.epoch_queue_starts=1",
    "--set",
    "swav.freeze_prototypes_niters=2",
    "--set",
    "data.shapes10_train=64",
    "--set",
    "data.shapes10_test=32",
    "--set",
    "data.workers=2",
    "--set",
    "run.checkpoint_every=3",
    "--set",
    "run.log_every=1",
    "--set",
    "run.knn_every=0",
];
/// The xtask binary under test.
pub fn xtask() -> &'static str {
    env!("CARGO_BIN_EXE_xtask")
}

/// Adds `pretrain --out out`, the tiny settings and `extra` to a command that runs the xtask
/// binary (directly, or under a launcher).
pub fn with_pretrain_args<'c>(c: &'c mut Command, out: &Path, extra: &[&str]) -> &'c mut Command {
    c.arg("pretrain")
        .arg("--out")
        .arg(out)
        .args(TINY)
        .args(extra)
        .stdin(Stdio::null())
}

/// `xtask pretrain --out out` with the tiny settings and `extra`.
pub fn pretrain(out: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(xtask());
    with_pretrain_args(&mut c, out, extra);
    c
}

pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Every tensor of a checkpoint as raw bits, by name: the model's (parameters and BatchNorm
/// statistics, loaded into the model its spec describes) and the stored arrays (optimiser
/// state, queues).
pub fn tensors(ckpt: &Path) -> Vec<(String, Vec<u8>)> {
    let c = swav_models::read_checkpoint(ckpt).expect("the checkpoint reads");
    let spec = c.spec().expect("spec").expect("a spec");
    let model = spec.init(&burn::tensor::Device::flex()).expect("model");
    let model = c.load_model(model).expect("weights load");
    let mut v: Vec<(String, Vec<u8>)> = model
        .collect(None, None, false)
        .into_iter()
        .map(|t| {
            let name = t.name.clone();
            (name, t.into_bytes().expect("bytes").to_vec())
        })
        .collect();
    for (name, a) in &c.arrays {
        let bytes = a.values.iter().flat_map(|x| x.to_le_bytes()).collect();
        v.push((format!("array {name}"), bytes));
    }
    v.sort();
    v
}

/// The training state a checkpoint holds (epoch, next batch, iteration, optimiser step counts,
/// queue fill, loss scale, configuration), without what legitimately differs between two runs
/// of one configuration: the wall time and the run folder.
pub fn training_state(ckpt: &Path) -> serde_json::Value {
    let c = swav_models::read_checkpoint(ckpt).expect("the checkpoint reads");
    let text = c
        .metadata
        .get("swav.train_state")
        .expect("a checkpoint of a training run");
    let mut state: serde_json::Value = serde_json::from_str(text).expect("the state parses");
    let map = state.as_object_mut().expect("the state is an object");
    assert!(map.remove("elapsed_s").is_some(), "the state has its time");
    let run = map["config"]["run"]
        .as_object_mut()
        .expect("the run section");
    assert!(
        run.remove("out_dir").is_some(),
        "the config has its run folder"
    );
    state
}

/// The checkpoint `got` holds the same tensors, bit for bit, and the same training state as
/// `reference`.
pub fn assert_same_tensors(got: &Path, reference: &Path, case: &str) {
    assert_eq!(
        training_state(got),
        training_state(reference),
        "{case}: the training state (epoch, iteration, optimiser steps, queue fill, config)"
    );
    let (a, b) = (tensors(got), tensors(reference));
    assert_eq!(a.len(), b.len(), "{case}: tensor count");
    for ((n1, b1), (n2, b2)) in a.iter().zip(&b) {
        assert_eq!(n1, n2, "{case}");
        assert!(
            b1 == b2,
            "{case}: tensor {n1} differs from the reference run"
        );
    }
}
