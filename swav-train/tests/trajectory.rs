//! Trajectory parity with the original training loop: `main_swav.py`'s loop transcribed in
//! PyTorch (`scripts/parity/torch_trajectory.py`) and ours train the same run (a narrow
//! ResNet-18 with BatchNorm, 2 x 16 px + 2 x 8 px crops, batches of 8, LARS at lr 0.6 with the
//! original's warmup + cosine, prototypes frozen for 70 iterations, a queue of 32 from epoch 5,
//! 300 iterations) from the same initial weights on the same crops (written by our loader:
//! `cargo run -p swav-train --example trajectory_fixture`). The fixture in `golden/trajectory`
//! holds PyTorch's losses and weights; this test runs without Python.
//!
//! What "the same" means was measured: PyTorch against itself with another summation order
//! (channels-last convolutions on one thread) drifts apart by a factor of about 10 every 3 to 5
//! iterations (1e-6 in the loss after 2 steps, 1e-3 after 12, 0.2 after 40: the run is chaotic,
//! as small-batch training is). So each event is compared over a short horizon from a common
//! state, PyTorch's, and the whole run only as a band:
//!
//! - segments from PyTorch's state (weights, BatchNorm statistics, momentum buffers): the
//!   warmup's first 12 steps from the initial weights; iterations 68-76 across the prototypes'
//!   unfreezing at 70; 98-108 across the queue's creation at 100 and its first use at 104. Per
//!   step k the loss must be within `10 x max(PyTorch-vs-PyTorch drift up to k) + 1e-4`, and
//!   every tensor at the segment's end within `10 x its PyTorch-vs-PyTorch drift + 1e-5`;
//! - the whole run, as a band: each epoch's mean loss within 3 x the spread of PyTorch's own
//!   epoch means over four summation orders (NCHW or channels-last, 1 or 2 threads; at least
//!   1e-3) of the reference run's.
//!
//! And the comparison must be able to fail: a warmup of 3 epochs instead of 2, LARC's `clip` on,
//! the prototypes unfrozen one iteration late, and the queue started one epoch late each break
//! it (checked below on the segment where each shows).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::store::ModuleSnapshot;
use burn::tensor::Device;
use swav_data::{Batch, CropGroupBatch};
use swav_models::{ResNet, SPEC_KEY, StateArray, SwavModel, write_checkpoint};
use swav_train::{
    BatchSource, METRICS_FILE, RunData, RunOptions, TrainConfig, TrainError, TrainState, Trainer,
    open_data, seeded_init, spec_for,
};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden/trajectory")
        .join(name)
}

type Arrays = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

/// The f32 arrays of a safetensors file.
fn read_safetensors(path: &Path) -> Arrays {
    let raw = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let n = u64::from_le_bytes(raw[..8].try_into().expect("8 bytes")) as usize;
    let header: serde_json::Value = serde_json::from_slice(&raw[8..8 + n]).expect("header");
    let data = &raw[8 + n..];
    let mut out = BTreeMap::new();
    for (name, h) in header.as_object().expect("object") {
        if name == "__metadata__" {
            continue;
        }
        assert_eq!(h["dtype"], "F32", "{name}");
        let shape: Vec<usize> = h["shape"]
            .as_array()
            .expect("shape")
            .iter()
            .map(|d| d.as_u64().expect("dim") as usize)
            .collect();
        let (a, b) = (
            h["data_offsets"][0].as_u64().expect("a") as usize,
            h["data_offsets"][1].as_u64().expect("b") as usize,
        );
        let values = data[a..b]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        out.insert(name.clone(), (shape, values));
    }
    out
}

fn config(out: &Path) -> TrainConfig {
    let text = std::fs::read_to_string(fixture("config.toml")).expect("config.toml");
    let mut c = TrainConfig::from_toml(&text, &[]).expect("config parses");
    c.run.out_dir = out.to_path_buf();
    c
}

/// The fixture's batches of one epoch, replayed every epoch.
struct Replay {
    batches: Vec<Vec<CropGroupBatch>>,
}

impl Replay {
    fn new(config: &TrainConfig) -> Self {
        let crops = read_safetensors(&fixture("crops.safetensors"));
        let s = &config.swav;
        let n = crops.keys().filter(|k| k.ends_with(".g0")).count();
        let batches = (0..n)
            .map(|b| {
                (0..s.nmb_crops.len())
                    .map(|g| {
                        let (shape, data) = crops[&format!("b{b:02}.g{g}")].clone();
                        CropGroupBatch {
                            size: shape[2] as u32,
                            count: s.nmb_crops[g],
                            batch: s.batch_size,
                            data,
                        }
                    })
                    .collect()
            })
            .collect();
        Self { batches }
    }
}

impl BatchSource for Replay {
    fn batches_per_epoch(&self) -> usize {
        self.batches.len()
    }

    fn epoch(
        &self,
        epoch: usize,
        start: usize,
        _rank: usize,
    ) -> Result<Box<dyn Iterator<Item = Batch> + Send>, TrainError> {
        let batches: Vec<Batch> = self.batches[start..]
            .iter()
            .enumerate()
            .map(|(i, groups)| Batch {
                epoch: epoch as u64,
                index: start + i,
                indices: Vec::new(),
                labels: Vec::new(),
                groups: groups.clone(),
                skipped: 0,
            })
            .collect();
        Ok(Box::new(batches.into_iter()))
    }
}

fn resnet(config: &TrainConfig) -> impl FnOnce(&Device) -> Result<ResNet, TrainError> {
    let spec = spec_for(config);
    move |d: &Device| Ok(spec.resnet()?.init(d)?)
}

/// A run of `config` on the replayed crops, from `resume` (a checkpoint) or the initial
/// weights, for `steps` iterations: its losses by iteration and its final tensors.
fn train(
    config: &TrainConfig,
    data: &RunData,
    resume: Option<PathBuf>,
    steps: Option<usize>,
) -> (Vec<f64>, Arrays) {
    let options = RunOptions {
        resume_from: resume,
        stop_after: steps,
        ..RunOptions::default()
    };
    let out = Trainer::new(config, data)
        .options(options)
        .source(Replay::new(config))
        .run(resnet(config))
        .expect("the run trains");
    let text = std::fs::read_to_string(config.run.out_dir.join(METRICS_FILE)).expect("metrics");
    let losses = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("a JSON line"))
        .filter(|r| r["type"] == "step")
        .map(|r| r["loss"].as_f64().expect("loss"))
        .collect();
    (losses, tensors(&out.model))
}

fn tensors(model: &SwavModel<ResNet>) -> Arrays {
    model
        .collect(None, None, false)
        .into_iter()
        .map(|t| {
            let name = t.name.clone();
            let bytes = t.into_bytes().expect("bytes");
            let values = bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            (name, (Vec::new(), values))
        })
        .collect()
}

/// A training checkpoint at iteration `start` holding PyTorch's state there (weights, BatchNorm
/// statistics, momentum buffers; no queue yet), written by `config`'s run.
fn checkpoint_from_pytorch(config: &TrainConfig, start: usize) -> PathBuf {
    let s = &config.swav;
    let spec = spec_for(config);
    let model = spec.init(&Device::flex()).expect("model");
    let model =
        swav_models::load_safetensors(model, fixture(&format!("state_{start}.safetensors")))
            .expect("PyTorch's weights load under our names");
    let momentum = read_safetensors(&fixture(&format!("momentum_{start}.safetensors")));
    let mut arrays = Vec::new();
    let mut steps = BTreeMap::new();
    for (name, (_, values)) in momentum {
        let updates = if name.starts_with("prototypes.") {
            start.saturating_sub(s.freeze_prototypes_niters)
        } else {
            start
        };
        steps.insert(name.clone(), updates as u64);
        arrays.push(StateArray {
            name: format!("optim.{name}.m"),
            shape: vec![values.len()],
            values,
        });
    }
    let ipe = 20;
    let state = TrainState {
        epoch: start / ipe,
        next_batch: start % ipe,
        iteration: start,
        elapsed_s: 0.0,
        config: config.clone(),
        optim_steps: steps,
        queue_filled: None,
        queue_filled_ranks: Vec::new(),
        iters_per_epoch: ipe,
        loss_scaler: None,
    };
    let mut meta = BTreeMap::new();
    meta.insert(
        "swav.train_state".to_string(),
        serde_json::to_string(&state).expect("state"),
    );
    meta.insert(
        SPEC_KEY.to_string(),
        serde_json::to_string(&spec).expect("spec"),
    );
    let path = config.run.out_dir.join(format!("pytorch_{start}.bpk"));
    write_checkpoint(&path, &model, arrays, &meta).expect("checkpoint written");
    path
}

struct Reference {
    loss: Vec<f64>,
    loss_variants: Vec<Vec<f64>>,
    segments: Vec<serde_json::Value>,
}

fn reference() -> Reference {
    let t: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("trajectory.json")).expect("trajectory.json"),
    )
    .expect("json");
    let floats = |v: &serde_json::Value| -> Vec<f64> {
        v.as_array()
            .expect("array")
            .iter()
            .map(|x| x.as_f64().expect("number"))
            .collect()
    };
    Reference {
        loss: floats(&t["loss"]),
        loss_variants: t["loss_variants"]
            .as_array()
            .expect("variants")
            .iter()
            .map(floats)
            .collect(),
        segments: t["segments"].as_array().expect("segments").clone(),
    }
}

/// How far a segment is from PyTorch's, as the largest ratio of a difference to its tolerance
/// (above 1: outside), with where.
fn segment_ratio(
    r: &Reference,
    seg: &serde_json::Value,
    losses: &[f64],
    end: Option<&Arrays>,
) -> (f64, String) {
    let start = seg["start"].as_u64().expect("start") as usize;
    let other: Vec<f64> = seg["loss_other"]
        .as_array()
        .expect("loss_other")
        .iter()
        .map(|x| x.as_f64().expect("n"))
        .collect();
    assert_eq!(losses.len(), other.len(), "segment {start}: steps");
    let mut worst = (0.0, String::new());
    let mut envelope = 0f64;
    for (k, (&ours, &theirs_b)) in losses.iter().zip(&other).enumerate() {
        let theirs = r.loss[start + k];
        envelope = envelope.max((theirs - theirs_b).abs());
        let tol = 10.0 * envelope + 1e-4;
        let ratio = (ours - theirs).abs() / tol;
        if ratio > worst.0 {
            worst = (
                ratio,
                format!(
                    "iteration {}: loss {ours:.6} vs PyTorch {theirs:.6} (tolerance {tol:.2e})",
                    start + k
                ),
            );
        }
    }
    if let Some(ours) = end {
        let theirs = read_safetensors(&fixture(&format!("end_{start}.safetensors")));
        for (name, (_, want)) in &theirs {
            let drift = seg["weights_drift"][name].as_f64().expect("drift");
            let tol = 10.0 * drift + 1e-5;
            let got = &ours.get(name).unwrap_or_else(|| panic!("{name} missing")).1;
            let diff = got
                .iter()
                .zip(want)
                .map(|(a, b)| (a - b).abs() as f64)
                .fold(0.0, f64::max);
            if diff / tol > worst.0 {
                worst = (
                    diff / tol,
                    format!(
                        "{name} at iteration {}: max difference {diff:.2e} (tolerance {tol:.2e})",
                        start + losses.len()
                    ),
                );
            }
        }
    }
    worst
}

/// Our run of segment `seg` under `config`: losses of its steps and the tensors at its end.
fn run_segment(
    config: &TrainConfig,
    data: &RunData,
    seg: &serde_json::Value,
) -> (Vec<f64>, Arrays) {
    let start = seg["start"].as_u64().expect("start") as usize;
    let length = seg["length"].as_u64().expect("length") as usize;
    let resume = (start > 0).then(|| checkpoint_from_pytorch(config, start));
    let (losses, end) = train(config, data, resume, Some(length));
    (losses[losses.len() - length..].to_vec(), end)
}

#[test]
fn our_training_loop_follows_pytorchs_over_a_whole_schedule() {
    let dir = tempfile::tempdir().expect("temp dir");
    let r = reference();
    let base = config(&dir.path().join("full"));
    let data = open_data(&base.data, base.swav.seed, (0, 0)).expect("data");

    // The fixture starts from the weights our trainer draws for this config.
    let spec = spec_for(&base);
    let model: SwavModel<ResNet> =
        seeded_init(&Device::flex().autodiff(), base.swav.seed, |d| spec.init(d)).expect("init");
    let ours = tensors(&model);
    for (name, (_, want)) in read_safetensors(&fixture("init.safetensors")) {
        assert!(
            ours[&name].1 == want,
            "{name}: the initial weights changed; regenerate the fixture (trajectory_fixture, \
             then scripts/parity/torch_trajectory.py)"
        );
    }

    // Segments from a common state.
    for seg in &r.segments {
        let start = seg["start"].as_u64().expect("start");
        let mut c = base.clone();
        c.run.out_dir = dir.path().join(format!("segment_{start}"));
        let (losses, end) = run_segment(&c, &data, seg);
        let (ratio, at) = segment_ratio(&r, seg, &losses, Some(&end));
        eprintln!("segment from {start}: worst {ratio:.3} of the tolerance ({at})");
        assert!(ratio <= 1.0, "segment from {start}: {at}");
    }

    // The whole run, as a band: each epoch's mean loss within 3 x the spread of PyTorch's own
    // runs with four summation orders (at least 1e-3) of the reference run's.
    let (losses, _) = train(&base, &data, None, None);
    assert_eq!(losses.len(), r.loss.len());
    let mean = |v: &[f64], e: usize| v[e * 20..(e + 1) * 20].iter().sum::<f64>() / 20.0;
    let mut outside = Vec::new();
    for e in 0..r.loss.len() / 20 {
        let runs: Vec<f64> = std::iter::once(&r.loss)
            .chain(&r.loss_variants)
            .map(|v| mean(v, e))
            .collect();
        let lo = runs.iter().copied().fold(f64::MAX, f64::min);
        let hi = runs.iter().copied().fold(f64::MIN, f64::max);
        let band = 3.0 * (hi - lo).max(1e-3);
        let ours = mean(&losses, e);
        eprintln!(
            "epoch {e}: mean loss {ours:.4}, PyTorch {:.4} (its four runs {lo:.4} to {hi:.4}; \
             band {band:.4})",
            runs[0]
        );
        if (ours - runs[0]).abs() > band {
            outside.push(e);
        }
    }
    assert!(
        outside.is_empty(),
        "epochs outside PyTorch's band: {outside:?}"
    );
}

#[test]
fn a_wrong_warmup_clip_freeze_or_queue_start_breaks_the_parity() {
    let dir = tempfile::tempdir().expect("temp dir");
    let r = reference();
    let base = config(&dir.path().join("base"));
    let data = open_data(&base.data, base.swav.seed, (0, 0)).expect("data");
    let segment = |start: u64| {
        r.segments
            .iter()
            .find(|s| s["start"] == start)
            .expect("segment")
            .clone()
    };
    /// A wrong setting: its name, the segment where it shows, the change.
    type Case = (&'static str, u64, fn(&mut TrainConfig));
    let cases: [Case; 4] = [
        ("warmup of 3 epochs", 0, |c| c.swav.warmup_epochs = 3),
        ("LARC clip on", 0, |c| c.swav.lars_clip = true),
        ("prototypes unfrozen at 71", 68, |c| {
            c.swav.freeze_prototypes_niters = 71
        }),
        ("queue from epoch 6", 98, |c| c.swav.epoch_queue_starts = 6),
    ];
    for (name, start, change) in cases {
        let mut c = base.clone();
        change(&mut c);
        c.run.out_dir = dir.path().join(name.replace(' ', "_"));
        let seg = segment(start);
        let (losses, _) = run_segment(&c, &data, &seg);
        let (ratio, at) = segment_ratio(&r, &seg, &losses, None);
        eprintln!("{name}: {ratio:.1} x the tolerance ({at})");
        assert!(
            ratio > 1.0,
            "{name} went unnoticed: worst {ratio:.3} of the tolerance"
        );
    }
}
