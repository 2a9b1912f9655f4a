//! `linear-eval`: the linear probe of a checkpoint's frozen backbone (cached features or the
//! protocol's augmented training), its curves, confusion matrix and JSON report.

use anyhow::{Context, Result};
use clap::Args;
use swav_eval::{
    LinearProbeConfig, LinearProbeResult, ProbeAugment, ProbeMode, extract_features,
    linear_probe_cached, linear_probe_protocol, plot::confusion_chart,
};
use swav_models::TaskBackbone;
use swav_train::device_for;

use super::{Loaded, ModelArgs, Splits, command_line, splits, tag, write_json};

/// Options of `cargo xtask linear-eval`.
#[derive(Args, Debug)]
pub struct LinearArgs {
    /// The weights, data and device.
    #[command(flatten)]
    pub model: ModelArgs,
    /// `cached` (features once, no augmentation: fast) or `protocol` (the original: augmented
    /// images through the frozen backbone every epoch).
    #[arg(long, default_value = "cached", value_parser = ["cached", "protocol"])]
    pub mode: String,
    /// Epochs (the protocol's 100 by default).
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Learning rate (the protocol's 0.3 by default).
    #[arg(long)]
    pub lr: Option<f64>,
    /// Batch size of the classifier (the protocol's 256 by default).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Cached mode: keep the training features in a file on disk (`<out>/train.features`)
    /// and stream mini-batches from it, for feature sets larger than memory (ImageNet's 1.28 M
    /// x 2048 floats are 10.5 GB). Chosen by itself when they would take over 4 GiB.
    #[arg(long)]
    pub features_on_disk: bool,
}

/// `cargo xtask linear-eval` with the loaded model.
pub(super) fn linear_with<E: TaskBackbone>(args: &LinearArgs, loaded: Loaded<E>) -> Result<()> {
    let mode: ProbeMode = args.mode.parse()?;
    let probe = probe_config(args)?;
    let m = &args.model;
    let splits = splits(&loaded.config, m)?;
    let device = device_for(&loaded.config)?;
    let ex = crate::extract_config(&loaded.config, m.batch)?;
    eprintln!(
        "linear probe ({mode} mode) of {} on {}",
        loaded.source, splits.description
    );
    let started = std::time::Instant::now();
    let test_f = extract_features(&loaded.model.backbone, splits.test.as_ref(), &ex, &device)?;
    let run = ProbeRun {
        loaded: &loaded,
        splits: &splits,
        test: &test_f,
        probe: &probe,
        extract: &ex,
        device: &device,
    };
    let (result, skipped_train) = match mode {
        ProbeMode::Cached => run.cached(args.features_on_disk)?,
        ProbeMode::Protocol => run.protocol()?,
    };
    let secs = started.elapsed().as_secs_f64();
    let t = tag(m);
    let png = loaded.out_dir.join(format!("linear_{t}_confusion.png"));
    let title = format!(
        "LINEAR PROBE {} TOP-1 {:.1}",
        t.to_uppercase(),
        result.last.top1
    );
    confusion_chart(&png, &title, &result.last.confusion)?;
    let report = loaded.out_dir.join(format!("linear_{t}.json"));
    write_json(
        &report,
        &serde_json::json!({
            "evaluation": "linear probe",
            "command": command_line(),
            "weights": loaded.source,
            "random_init": m.random_init,
            "data": splits.description,
            "time_s": secs,
            "skipped_files": skipped_train.iter().chain(&test_f.skipped)
                .map(|(_, f, why)| format!("{f}: {why}")).collect::<Vec<_>>(),
            "result": result,
            "config": loaded.config,
        }),
    )?;
    print_summary(&result, &run, skipped_train.len() + test_f.skipped.len());
    println!("time {secs:.1} s");
    println!("report: {}", report.display());
    println!("confusion matrix: {}", png.display());
    Ok(())
}

/// The probe's settings: the protocol's, with the command line's epochs, lr and batch size.
fn probe_config(args: &LinearArgs) -> Result<LinearProbeConfig> {
    let mut probe = LinearProbeConfig::default();
    if let Some(e) = args.epochs {
        probe.epochs = e;
    }
    if let Some(l) = args.lr {
        probe.lr = l;
    }
    if let Some(b) = args.batch_size {
        probe.batch_size = b;
    }
    probe.validate()?;
    Ok(probe)
}

/// Files skipped as unreadable: index, file, reason.
type Skipped = Vec<(usize, String, String)>;

/// What a probe trains on: the model, its splits, the test features, the settings.
struct ProbeRun<'a, E> {
    loaded: &'a Loaded<E>,
    splits: &'a Splits,
    test: &'a swav_eval::Features,
    probe: &'a LinearProbeConfig,
    extract: &'a swav_eval::ExtractConfig,
    device: &'a burn::tensor::Device,
}

impl<E: TaskBackbone> ProbeRun<'_, E> {
    /// The cached mode: the training features extracted once (in memory, or into a file on disk
    /// when asked or when they would take over 4 GiB, streamed in mini-batches).
    fn cached(&self, on_disk: bool) -> Result<(LinearProbeResult, Skipped)> {
        let (backbone, train) = (&self.loaded.model.backbone, self.splits.train.as_ref());
        let (classes, device) = (self.splits.classes, self.device);
        let bytes = train.len() as u64 * self.test.dim as u64 * 4;
        if !(on_disk || bytes > 4 << 30) {
            let train_f = extract_features(backbone, train, self.extract, device)?;
            let r = linear_probe_cached(&train_f, self.test, classes, self.probe, device)?;
            return Ok((r, train_f.skipped));
        }
        let out_dir = &self.loaded.out_dir;
        std::fs::create_dir_all(out_dir)
            .with_context(|| format!("creating {}", out_dir.display()))?;
        let path = out_dir.join("train.features");
        eprintln!(
            "training features on disk: {} ({:.1} GB), streamed in mini-batches",
            path.display(),
            bytes as f64 / 1e9
        );
        let (file, skipped) =
            swav_eval::extract_features_to_file(backbone, train, self.extract, device, &path)?;
        let r = swav_eval::linear_probe_streamed(&file, self.test, classes, self.probe, device)?;
        Ok((r, skipped))
    }

    /// The original protocol: augmented training images through the frozen backbone each epoch.
    fn protocol(&self) -> Result<(LinearProbeResult, Skipped)> {
        let ex = self.extract;
        let aug = ProbeAugment::original(ex.transform.crop, ex.transform.normalize);
        Ok(linear_probe_protocol(
            &self.loaded.model.backbone,
            self.splits.train.as_ref(),
            self.test,
            self.splits.classes,
            self.probe,
            &aug,
            ex,
            self.device,
        )?)
    }
}

/// The probe's readable summary.
fn print_summary<E>(result: &LinearProbeResult, run: &ProbeRun<'_, E>, skipped: usize) {
    let probe = run.probe;
    println!(
        "== linear probe ({} mode{})",
        result.mode,
        if result.mode == ProbeMode::Cached {
            ": features extracted once without augmentation; the original protocol is --mode protocol"
        } else {
            ": the original protocol"
        }
    );
    println!("weights: {}", run.loaded.source);
    println!("data: {}", run.splits.description);
    println!(
        "{} epochs, lr {} cosine to {}, batch {}, momentum {}, wd {}",
        probe.epochs,
        probe.lr,
        probe.final_lr,
        probe.batch_size,
        probe.momentum,
        probe.weight_decay
    );
    println!(
        "top-1 best {:.2}% (epoch {}), last {:.2}%; top-5 best-epoch {:.2}%, last {:.2}%",
        result.best_top1,
        result.best_epoch + 1,
        result.last.top1,
        result.best_top5,
        result.last.top5
    );
    println!("skipped files: {skipped}");
}
