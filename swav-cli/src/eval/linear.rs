//! `linear-eval`: the linear probe of a checkpoint's frozen backbone (cached features or the
//! protocol's augmented training), its curves, confusion matrix and JSON report.

use anyhow::{Context, Result};
use clap::Args;
use swav_eval::{
    LinearProbeConfig, ProbeAugment, ProbeMode, extract_features, linear_probe_cached,
    linear_probe_protocol, plot::confusion_chart,
};
use swav_models::TaskBackbone;
use swav_train::device_for;

use super::{Loaded, ModelArgs, command_line, splits, tag, write_json};

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
    let m = &args.model;
    let (train, test, classes, desc) = splits(&loaded.config, m)?;
    let device = device_for(&loaded.config)?;
    let ex = crate::extract_config(&loaded.config, m.batch)?;
    eprintln!("linear probe ({mode} mode) of {} on {desc}", loaded.source);
    let started = std::time::Instant::now();
    let test_f = extract_features(&loaded.model.backbone, test.as_ref(), &ex, &device)?;
    let (result, skipped_train) = match mode {
        ProbeMode::Cached => {
            let bytes = train.len() as u64 * test_f.dim as u64 * 4;
            if args.features_on_disk || bytes > 4 << 30 {
                std::fs::create_dir_all(&loaded.out_dir)
                    .with_context(|| format!("creating {}", loaded.out_dir.display()))?;
                let path = loaded.out_dir.join("train.features");
                eprintln!(
                    "training features on disk: {} ({:.1} GB), streamed in mini-batches",
                    path.display(),
                    bytes as f64 / 1e9
                );
                let (file, skipped) = swav_eval::extract_features_to_file(
                    &loaded.model.backbone,
                    train.as_ref(),
                    &ex,
                    &device,
                    &path,
                )?;
                let r = swav_eval::linear_probe_streamed(&file, &test_f, classes, &probe, &device)?;
                (r, skipped)
            } else {
                let train_f =
                    extract_features(&loaded.model.backbone, train.as_ref(), &ex, &device)?;
                let r = linear_probe_cached(&train_f, &test_f, classes, &probe, &device)?;
                (r, train_f.skipped)
            }
        }
        ProbeMode::Protocol => {
            let aug = ProbeAugment::original(ex.transform.crop, ex.transform.normalize);
            linear_probe_protocol(
                &loaded.model.backbone,
                train.as_ref(),
                &test_f,
                classes,
                &probe,
                &aug,
                &ex,
                &device,
            )?
        }
    };
    let secs = started.elapsed().as_secs_f64();
    let t = tag(m);
    let png = loaded.out_dir.join(format!("linear_{t}_confusion.png"));
    confusion_chart(
        &png,
        &format!(
            "LINEAR PROBE {} TOP-1 {:.1}",
            t.to_uppercase(),
            result.last.top1
        ),
        &result.last.confusion,
    )?;
    let report = loaded.out_dir.join(format!("linear_{t}.json"));
    write_json(
        &report,
        &serde_json::json!({
            "evaluation": "linear probe",
            "command": command_line(),
            "weights": loaded.source,
            "random_init": m.random_init,
            "data": desc,
            "time_s": secs,
            "skipped_files": skipped_train.iter().chain(&test_f.skipped)
                .map(|(_, f, why)| format!("{f}: {why}")).collect::<Vec<_>>(),
            "result": result,
            "config": loaded.config,
        }),
    )?;
    println!(
        "== linear probe ({} mode{})",
        result.mode,
        if result.mode == ProbeMode::Cached {
            ": features extracted once without augmentation; the original protocol is --mode protocol"
        } else {
            ": the original protocol"
        }
    );
    println!("weights: {}", loaded.source);
    println!("data: {desc}");
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
    println!(
        "skipped files: {}",
        skipped_train.len() + test_f.skipped.len()
    );
    println!("time {secs:.1} s");
    println!("report: {}", report.display());
    println!("confusion matrix: {}", png.display());
    Ok(())
}
