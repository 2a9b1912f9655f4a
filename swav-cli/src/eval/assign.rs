//! `assign`: the prototype each test image is assigned to, the clusters' purity against the
//! labels, and a picture of the largest clusters.

use anyhow::Result;
use clap::Args;
use swav_eval::assign_clusters;
use swav_models::TaskBackbone;
use swav_train::{device_for, open_data};

use super::{Loaded, ModelArgs, command_line, tag, write_json};

/// Options of `cargo xtask assign`.
#[derive(Args, Debug)]
pub struct AssignArgs {
    /// The weights, data and device.
    #[command(flatten)]
    pub model: ModelArgs,
    /// Prototype head.
    #[arg(long, default_value_t = 0)]
    pub head: usize,
    /// Temperature of the confidence (the training temperature by default).
    #[arg(long)]
    pub temperature: Option<f64>,
    /// Assign the training split instead of the test split.
    #[arg(long)]
    pub train_split: bool,
    /// Also draw the clusters: a PNG with the most confident images of each of the largest
    /// clusters, and a histogram of their labels when the images are labelled.
    #[arg(long)]
    pub grid: bool,
    /// Clusters in the grid (the largest).
    #[arg(long, default_value_t = 10)]
    pub grid_clusters: usize,
    /// Images per cluster in the grid (the most confident).
    #[arg(long, default_value_t = 12)]
    pub grid_images: usize,
}

/// `cargo xtask assign` with the loaded model.
pub(super) fn assign_with<E: TaskBackbone>(args: &AssignArgs, loaded: Loaded<E>) -> Result<()> {
    let m = &args.model;
    let data = open_data(
        &loaded.config.data,
        loaded.config.swav.seed,
        (m.train_limit, m.test_limit),
    )?;
    let (split, ds) = if args.train_split {
        ("train", data.knn_train.unwrap_or(data.train))
    } else {
        match data.knn_test {
            Some(t) => ("test", t),
            None => ("train", data.knn_train.unwrap_or(data.train)),
        }
    };
    let device = device_for(&loaded.config)?;
    let ex = crate::extract_config(&loaded.config, m.batch)?;
    let temperature = args.temperature.unwrap_or(loaded.config.swav.temperature);
    let a = assign_clusters(
        &loaded.model,
        ds.as_ref(),
        &ex,
        args.head,
        temperature,
        &device,
    )?;
    let t = tag(m);
    let csv = loaded.out_dir.join(format!("assign_{t}_{split}.csv"));
    a.write_csv(&csv)?;
    let report = loaded.out_dir.join(format!("assign_{t}_{split}.json"));
    let mean_conf = a.rows.iter().map(|r| r.confidence).sum::<f64>() / a.rows.len().max(1) as f64;
    write_json(
        &report,
        &serde_json::json!({
            "evaluation": "cluster assignment",
            "command": command_line(),
            "weights": loaded.source,
            "random_init": m.random_init,
            "split": split,
            "images": a.rows.len(),
            "head": a.head,
            "prototypes": a.prototypes,
            "clusters_used": a.clusters_used,
            "purity": a.purity,
            "mean_confidence": mean_conf,
            "temperature": a.temperature,
            "skipped_files": a.skipped.iter().map(|(_, f, why)| format!("{f}: {why}")).collect::<Vec<_>>(),
            "csv": csv,
            "config": loaded.config,
        }),
    )?;
    println!("== cluster assignment ({split} split)");
    println!("weights: {}", loaded.source);
    println!(
        "{} images into {} of {} prototypes (head {}), mean confidence {:.3} at T = {}",
        a.rows.len(),
        a.clusters_used,
        a.prototypes,
        a.head,
        mean_conf,
        a.temperature
    );
    match a.purity {
        Some(p) => println!("cluster purity {p:.2}%"),
        None => println!("cluster purity: no labels"),
    }
    println!("skipped files: {}", a.skipped.len());
    println!("assignments: {}", csv.display());
    println!("report: {}", report.display());
    if args.grid {
        let png = loaded.out_dir.join(format!("assign_{t}_{split}_grid.png"));
        let rows =
            swav_eval::cluster_grid(&a, ds.as_ref(), &png, args.grid_clusters, args.grid_images)?;
        println!(
            "cluster grid ({} largest clusters, up to {} images each): {}",
            rows.len(),
            args.grid_images,
            png.display()
        );
    }
    Ok(())
}
