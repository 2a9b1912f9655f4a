//! The trainer's parts used from outside: a batch source of the user's own, an observer, every
//! metrics sink (JSON lines, PNG, CSV, TensorBoard) agreeing record for record, and the run
//! summary telling the truth about synchronised BatchNorm for a backbone that bypasses it.

mod common;

use common::Bypass;

use std::sync::Mutex;

use burn::tensor::Device;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use swav_data::{Batch, CropGroupBatch};
use swav_tinynet::TinyNet;
use swav_train::{
    BatchSource, StepProgress, TrainError, TrainObserver, Trainer, open_data,
    tensorboard::read_scalars,
};

/// Views made by the test itself: random crops, the same for the same (epoch, batch, rank).
struct OwnViews {
    batches: usize,
    batch: usize,
    calls: Mutex<Vec<(usize, usize, usize)>>,
}

impl BatchSource for OwnViews {
    fn batches_per_epoch(&self) -> usize {
        self.batches
    }

    fn epoch(
        &self,
        epoch: usize,
        start: usize,
        rank: usize,
    ) -> Result<Box<dyn Iterator<Item = Batch> + Send>, TrainError> {
        self.calls.lock().expect("calls").push((epoch, start, rank));
        let b = self.batch;
        let make = move |index: usize| {
            let mut rng = ChaCha8Rng::seed_from_u64((epoch * 1000 + index * 10 + rank) as u64);
            let group = |size: u32, count: usize, rng: &mut ChaCha8Rng| CropGroupBatch {
                size,
                count,
                batch: b,
                data: (0..count * b * 3 * (size * size) as usize)
                    .map(|_| rng.random_range(-1.0..1.0))
                    .collect(),
            };
            let large = group(16, 2, &mut rng);
            let small = group(8, 1, &mut rng);
            Batch {
                epoch: epoch as u64,
                index,
                indices: (0..b).collect(),
                labels: vec![None; b],
                groups: vec![large, small],
                skipped: 0,
            }
        };
        Ok(Box::new((start..self.batches).map(make)))
    }
}

#[derive(Default)]
struct Counting {
    started: Option<(usize, usize)>,
    steps: Vec<StepProgress>,
    epochs: Vec<usize>,
    finished: usize,
}

impl TrainObserver for Counting {
    fn started(&mut self, total: usize, done: usize) {
        self.started = Some((total, done));
    }
    fn step(&mut self, p: &StepProgress) {
        self.steps.push(*p);
    }
    fn epoch(&mut self, epoch: usize, _epochs: usize, _loss: f64, _knn: Option<f64>) {
        self.epochs.push(epoch);
    }
    fn finished(&mut self) {
        self.finished += 1;
    }
}

#[test]
fn a_run_takes_its_own_views_reports_to_an_observer_and_every_sink_agrees() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = common::tiny(dir.path());
    config.swav.epochs = 2;
    config.run.metrics = vec![
        "jsonl".into(),
        "png".into(),
        "csv".into(),
        "tensorboard".into(),
    ];
    let data = open_data(&config.data, config.swav.seed, (0, 0)).expect("data");
    let source = OwnViews {
        batches: 3,
        batch: config.swav.batch_size,
        calls: Mutex::new(Vec::new()),
    };
    let mut observer = Counting::default();
    let outcome = Trainer::new(&config, &data)
        .source(&source)
        .observer(&mut observer)
        .run(common::resnet(&config))
        .expect("run");
    assert_eq!(outcome.summary.iterations, 6);
    assert_eq!(
        *source.calls.lock().expect("calls"),
        vec![(0, 0, 0), (1, 0, 0)]
    );
    assert_eq!(observer.started, Some((6, 0)));
    assert_eq!(
        observer
            .steps
            .iter()
            .map(|p| p.iteration)
            .collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5, 6]
    );
    assert_eq!(observer.epochs, vec![1, 2]);
    assert_eq!(observer.finished, 1);

    // metrics.jsonl, the record the other sinks must agree with.
    let text = std::fs::read_to_string(dir.path().join("metrics.jsonl")).expect("jsonl");
    let steps: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .filter(|v: &serde_json::Value| v["type"] == "step")
        .collect();
    assert_eq!(steps.len(), 6);
    let losses: Vec<(u64, f64)> = steps
        .iter()
        .map(|v| {
            (
                v["iteration"].as_u64().expect("it"),
                v["loss"].as_f64().expect("loss"),
            )
        })
        .collect();
    for (it, p) in observer.steps.iter().enumerate() {
        assert_eq!(p.loss, losses[it].1);
    }

    // CSV: a row per step, the loss column equal to the JSON lines'.
    let csv = std::fs::read_to_string(dir.path().join("metrics_step.csv")).expect("csv");
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().expect("header").split(',').collect();
    let (it_col, loss_col) = (
        header
            .iter()
            .position(|c| *c == "iteration")
            .expect("iteration"),
        header.iter().position(|c| *c == "loss").expect("loss"),
    );
    let rows: Vec<(u64, f64)> = lines
        .map(|l| {
            let cells: Vec<&str> = l.split(',').collect();
            (
                cells[it_col].parse().expect("iteration"),
                cells[loss_col].parse().expect("loss"),
            )
        })
        .collect();
    assert_eq!(rows, losses);
    let epochs_csv =
        std::fs::read_to_string(dir.path().join("metrics_epoch.csv")).expect("epoch csv");
    assert_eq!(epochs_csv.lines().count(), 3, "a header and two epochs");

    // TensorBoard: step/loss at each iteration, as f32.
    let tb_dir = dir.path().join("tensorboard");
    let files: Vec<_> = std::fs::read_dir(&tb_dir)
        .expect("tensorboard dir")
        .map(|e| e.expect("entry").path())
        .collect();
    assert_eq!(files.len(), 1);
    let scalars = read_scalars(&files[0]).expect("event file");
    let tb_losses: Vec<(u64, f32)> = scalars
        .iter()
        .filter(|(_, tag, _)| tag == "step/loss")
        .map(|(step, _, v)| (*step as u64, *v))
        .collect();
    let expected: Vec<(u64, f32)> = losses.iter().map(|(i, l)| (*i, *l as f32)).collect();
    assert_eq!(tb_losses, expected);
    assert!(
        scalars
            .iter()
            .any(|(s, tag, _)| *s == 6 && tag == "epoch/loss")
    );

    // The files each sink wrote are listed in the summary.
    for name in ["loss.png", "lr.png", "knn.png", "metrics_step.csv"] {
        assert!(
            outcome.summary.plots.iter().any(|p| p.ends_with(name)),
            "{name} in {:?}",
            outcome.summary.plots
        );
    }
}

#[test]
fn an_unknown_metrics_sink_is_refused_before_any_work() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = common::tiny(dir.path());
    config.run.metrics = vec!["wandb".into()];
    let err = config.validate().expect_err("refused");
    assert!(err.to_string().contains("run.metrics"), "{err}");
    assert!(err.to_string().contains("wandb"), "{err}");
}

/// A two-worker run with `swav.sync_bn`: tinynet's summary says synchronised; the same network
/// with a BatchNorm outside the layer API says which layer is not, and warns.
#[test]
fn the_run_summary_says_which_batchnorms_are_synchronised() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = common::tiny(dir.path());
    config.swav.world_size = 2;
    config.swav.sync_bn = true;
    config.swav.batch_size = 8;
    config.swav.epochs = 1;
    let data = open_data(&config.data, config.swav.seed, (0, 0)).expect("data");

    let outcome = Trainer::new(&config, &data)
        .options(swav_train::RunOptions {
            stop_after: Some(1),
            ..swav_train::RunOptions::default()
        })
        .run(|d: &Device| -> Result<TinyNet, TrainError> { Ok(TinyNet::new(4, d)) })
        .expect("tinynet run");
    assert!(
        outcome.summary.batchnorm.starts_with("synchronised"),
        "{}",
        outcome.summary.batchnorm
    );
    assert!(outcome.summary.warnings.is_empty());

    let dir2 = tempfile::tempdir().expect("temp dir");
    config.run.out_dir = dir2.path().to_path_buf();
    let outcome = Trainer::new(&config, &data)
        .options(swav_train::RunOptions {
            stop_after: Some(1),
            ..swav_train::RunOptions::default()
        })
        .run(|d: &Device| -> Result<Bypass, TrainError> {
            Ok(Bypass {
                net: TinyNet::new(4, d),
            })
        })
        .expect("bypass run");
    assert!(
        outcome.summary.batchnorm.starts_with("partly synchronised")
            && outcome.summary.batchnorm.contains("backbone.net.block1.bn"),
        "{}",
        outcome.summary.batchnorm
    );
    assert!(
        outcome
            .summary
            .warnings
            .iter()
            .any(|w| w.contains("backbone.net.block1.bn")),
        "{:?}",
        outcome.summary.warnings
    );
}

/// The kNN monitor's baseline is the network before training, measured once when the run
/// starts: equal to the monitor on a fresh seeded network, and recorded beside every trained
/// figure in the epoch records.
#[test]
fn the_knn_baseline_is_the_untrained_network_measured_at_the_start() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = common::tiny(dir.path());
    config.swav.epochs = 1;
    config.run.knn_every = 1;
    config.run.knn_train_samples = 64;
    config.run.knn_test_samples = 32;
    let data = open_data(
        &config.data,
        config.swav.seed,
        (config.run.knn_train_samples, config.run.knn_test_samples),
    )
    .expect("data");
    let outcome = Trainer::new(&config, &data)
        .run(common::resnet(&config))
        .expect("run");
    let baseline = outcome.summary.knn_baseline.expect("a baseline");
    let device = Device::flex().autodiff();
    let spec = swav_train::spec_for(&config);
    let fresh = swav_train::seeded_init(&device, config.swav.seed, |d| {
        spec.wrap(spec.resnet()?.init(d)?, d)
    })
    .expect("fresh network");
    let again = swav_train::knn_monitor(&fresh.backbone, &config, &data, &Device::flex())
        .expect("monitor")
        .expect("labelled splits");
    assert_eq!(baseline.top1, again.top1);
    assert_eq!(baseline.top5, again.top5);
    let text = std::fs::read_to_string(dir.path().join("metrics.jsonl")).expect("jsonl");
    let epoch: serde_json::Value = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .find(|v: &serde_json::Value| v["type"] == "epoch")
        .expect("an epoch record");
    assert_eq!(epoch["knn_baseline_top1"].as_f64(), Some(baseline.top1));
}

/// A run that blows up says only true things: it names the checkpoint only when one exists
/// (with the iteration it was written at), says so when none was written yet, and reports the
/// score range without the sentinels of an empty min / max.
#[test]
fn a_non_finite_loss_is_reported_truthfully() {
    for (checkpoint_every, epochs) in [(1000, 1), (2, 6)] {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = common::tiny(dir.path());
        config.swav.base_lr = 1e9;
        config.swav.final_lr = 1e9;
        config.swav.warmup_epochs = 0;
        config.swav.epochs = epochs;
        config.run.checkpoint_every = checkpoint_every;
        let data = open_data(&config.data, config.swav.seed, (0, 0)).expect("data");
        let err = match Trainer::new(&config, &data).run(common::resnet(&config)) {
            Err(e) => e.to_string(),
            Ok(o) => panic!("lr 1e9 trained {} iterations", o.summary.iterations),
        };
        // Either the loss is not finite, or the weights were found so at a checkpoint.
        assert!(
            err.contains("loss NaN") || err.contains("loss inf") || err.contains("NaN or infinite"),
            "{err}"
        );
        assert!(
            !err.contains("340282350000000000000000000000000000000"),
            "{err}"
        );
        let ckpt = dir.path().join("checkpoint.bpk");
        let says_none = err.contains("No checkpoint was written yet")
            || err.contains("no checkpoint was written (none existed yet");
        let says_kept =
            err.contains("The last good checkpoint is") || err.contains("the previous checkpoint");
        assert!(says_none != says_kept, "{err}");
        if says_none {
            assert!(!ckpt.exists(), "{err}");
        } else {
            let state = swav_models::read_checkpoint(&ckpt).expect("the named checkpoint reads");
            assert!(
                swav_train::checkpoint_config(&state)
                    .expect("state")
                    .is_some()
            );
        }
    }
}

/// Views that turn to NaN from the second epoch on: the loss goes NaN after a checkpoint
/// exists (the first epoch's end), and the message names that checkpoint and its iteration.
struct PoisonedViews(OwnViews);

impl BatchSource for PoisonedViews {
    fn batches_per_epoch(&self) -> usize {
        self.0.batches_per_epoch()
    }

    fn epoch(
        &self,
        epoch: usize,
        start: usize,
        rank: usize,
    ) -> Result<Box<dyn Iterator<Item = Batch> + Send>, TrainError> {
        let batches = self.0.epoch(epoch, start, rank)?;
        Ok(Box::new(batches.map(move |mut b| {
            if epoch >= 1 {
                for g in &mut b.groups {
                    g.data.iter_mut().for_each(|x| *x = f32::NAN);
                }
            }
            b
        })))
    }
}

#[test]
fn a_non_finite_loss_after_a_checkpoint_names_it_and_its_iteration() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = common::tiny(dir.path());
    config.run.checkpoint_every = 1000;
    let data = open_data(&config.data, config.swav.seed, (0, 0)).expect("data");
    let source = PoisonedViews(OwnViews {
        batches: 3,
        batch: config.swav.batch_size,
        calls: Mutex::new(Vec::new()),
    });
    let err = match Trainer::new(&config, &data)
        .source(source)
        .run(common::resnet(&config))
    {
        Err(e) => e.to_string(),
        Ok(_) => panic!("NaN images trained"),
    };
    assert!(err.contains("loss NaN"), "{err}");
    assert!(
        err.contains("The last good checkpoint is")
            && err.contains("(iteration 3, before this step)"),
        "{err}"
    );
    let state = swav_models::read_checkpoint(dir.path().join("checkpoint.bpk")).expect("reads");
    assert!(
        swav_train::checkpoint_config(&state)
            .expect("state")
            .is_some()
    );
}

/// The last two checkpoints are kept. A newest one that does not read (a copy cut short) is
/// passed over for the one before it, the run says so, and it still ends bit-identical to a
/// run that was never interrupted.
#[test]
fn a_truncated_newest_checkpoint_falls_back_to_the_one_before() {
    let whole_dir = tempfile::tempdir().expect("temp dir");
    let (whole, _) = common::run(&common::tiny(whole_dir.path()), None);

    let dir = tempfile::tempdir().expect("temp dir");
    let config = common::tiny(dir.path());
    // Checkpoints at iterations 3 (mid-epoch), 4 (epoch end) and 6; stopped after 7.
    let (_, stopped) = common::run(&config, Some(7));
    assert_eq!(stopped.iterations, 7);
    let newest = dir.path().join(swav_train::CHECKPOINT_FILE);
    let previous = dir.path().join(swav_train::PREVIOUS_CHECKPOINT_FILE);
    let iteration_of = |p: &std::path::Path| {
        let c = swav_models::read_checkpoint(p).expect("reads");
        let state: serde_json::Value =
            serde_json::from_str(&c.metadata["swav.train_state"]).expect("state");
        state["iteration"].as_u64().expect("iteration")
    };
    assert_eq!(iteration_of(&newest), 6);
    assert_eq!(iteration_of(&previous), 4);
    let bytes = std::fs::read(&newest).expect("bytes");
    std::fs::write(&newest, &bytes[..bytes.len() / 2]).expect("truncate");

    let (resumed, summary) = common::run(&config, None);
    assert_eq!(summary.resumed_from_iteration, Some(4));
    assert!(
        summary
            .warnings
            .iter()
            .any(|w| w.contains("resumed from the one before it")),
        "{:?}",
        summary.warnings
    );
    assert_eq!(common::bits(&resumed), common::bits(&whole));
}
