//! `knn-eval`: weighted kNN classification with the frozen backbone's features, at each `--k`.

use anyhow::{Result, bail};
use clap::Args;
use swav_eval::{KnnConfig, extract_features, knn_classify};
use swav_models::TaskBackbone;
use swav_train::device_for;

use super::{Loaded, ModelArgs, command_line, splits, tag, write_json};

/// Options of `cargo xtask knn-eval`.
#[derive(Args, Debug)]
pub struct KnnArgs {
    /// The weights, data and device.
    #[command(flatten)]
    pub model: ModelArgs,
    /// Neighbours (several: `--k 20 --k 200`).
    #[arg(long, default_values_t = [20usize, 200])]
    pub k: Vec<usize>,
    /// Temperatures, one per `--k` (default 0.07 for k = 20, 0.1 for k = 200, as the peers).
    #[arg(long)]
    pub temperature: Vec<f64>,
}

/// `cargo xtask knn-eval` with the loaded model.
pub(super) fn knn_with<E: TaskBackbone>(args: &KnnArgs, loaded: Loaded<E>) -> Result<()> {
    let m = &args.model;
    let super::Splits {
        train,
        test,
        classes,
        description: desc,
    } = splits(&loaded.config, m)?;
    let device = device_for(&loaded.config)?;
    let ex = crate::extract_config(&loaded.config, m.batch)?;
    if !args.temperature.is_empty() && args.temperature.len() != args.k.len() {
        bail!(
            "{} --temperature values for {} --k values: give one per k, or none",
            args.temperature.len(),
            args.k.len()
        );
    }
    eprintln!("kNN of {} on {desc}", loaded.source);
    let started = std::time::Instant::now();
    let train_f = extract_features(&loaded.model.backbone, train.as_ref(), &ex, &device)?;
    let test_f = extract_features(&loaded.model.backbone, test.as_ref(), &ex, &device)?;
    let mut results = Vec::new();
    println!("== kNN");
    println!("weights: {}", loaded.source);
    println!("data: {desc}");
    for (i, &k) in args.k.iter().enumerate() {
        let temperature = match args.temperature.get(i) {
            Some(&t) => t,
            None if k == 200 => KnnConfig::k200().temperature,
            None => KnnConfig::k20().temperature,
        };
        let cfg = KnnConfig {
            k,
            temperature,
            ..KnnConfig::default()
        };
        let mut r = knn_classify(&train_f, &test_f, classes, &cfg, &device)?;
        println!(
            "k = {k}, T = {temperature}: top-1 {:.2}%, top-5 {:.2}%",
            r.top1, r.top5
        );
        r.predictions.clear();
        results.push(r);
    }
    let secs = started.elapsed().as_secs_f64();
    let t = tag(m);
    let report = loaded.out_dir.join(format!("knn_{t}.json"));
    write_json(
        &report,
        &serde_json::json!({
            "evaluation": "kNN",
            "command": command_line(),
            "weights": loaded.source,
            "random_init": m.random_init,
            "data": desc,
            "time_s": secs,
            "skipped_files": train_f.skipped.iter().chain(&test_f.skipped)
                .map(|(_, f, why)| format!("{f}: {why}")).collect::<Vec<_>>(),
            "results": results,
            "config": loaded.config,
        }),
    )?;
    println!(
        "skipped files: {}",
        train_f.skipped.len() + test_f.skipped.len()
    );
    println!("time {secs:.1} s");
    println!("report: {}", report.display());
    Ok(())
}
