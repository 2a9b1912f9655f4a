//! Cluster assignment: each image's prototype (the cluster SwAV put it in) and the confidence
//! of that code, written as CSV, with the clusters' purity when the dataset has labels.

use std::path::Path;

use burn::module::Module;
use burn::tensor::Device;
use burn::tensor::activation::softmax;
use serde::{Deserialize, Serialize};
use swav_data::ImageDataset;
use swav_models::{Backbone, SwavModel};

use crate::{EvalError, ExtractConfig};

/// One image's assignment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AssignmentRow {
    /// Dataset index.
    pub index: usize,
    /// The file (or the dataset's description of the sample).
    pub file: String,
    /// Its label, if any.
    pub label: Option<usize>,
    /// The prototype with the highest score.
    pub cluster: usize,
    /// `softmax(scores / temperature)` at that prototype.
    pub confidence: f64,
}

/// The assignments of a dataset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Assignments {
    /// Prototype head used.
    pub head: usize,
    /// Number of prototypes of that head.
    pub prototypes: usize,
    /// Temperature of the confidence.
    pub temperature: f64,
    /// One row per readable image, in dataset order.
    pub rows: Vec<AssignmentRow>,
    /// Prototypes that received at least one image.
    pub clusters_used: usize,
    /// Purity (percent): the share of labelled images whose cluster's most common label is
    /// their own. `None` without labels.
    pub purity: Option<f64>,
    /// Unreadable images: (index, file, reason).
    pub skipped: Vec<(usize, String, String)>,
}

/// Purity of `clusters` against `labels` (pairs with a label only), percent.
pub fn cluster_purity(pairs: &[(usize, usize)]) -> Option<f64> {
    if pairs.is_empty() {
        return None;
    }
    let mut counts: std::collections::BTreeMap<usize, std::collections::BTreeMap<usize, usize>> =
        Default::default();
    for &(cluster, label) in pairs {
        *counts.entry(cluster).or_default().entry(label).or_default() += 1;
    }
    let majority: usize = counts
        .values()
        .map(|m| m.values().copied().max().unwrap_or(0))
        .sum();
    Some(100.0 * majority as f64 / pairs.len() as f64)
}

/// Assigns every image of `dataset` to a prototype of head `head` of `model` (eval mode,
/// transform `config.transform`): the cluster is the highest score, the confidence its
/// softmax probability at `temperature` (0.1 in training).
pub fn assign_clusters<E, D>(
    model: &SwavModel<E>,
    dataset: &D,
    config: &ExtractConfig,
    head: usize,
    temperature: f64,
    device: &Device,
) -> Result<Assignments, EvalError>
where
    E: Backbone + Module + burn::module::ModuleDisplay + 'static,
    D: ImageDataset + Sync + ?Sized,
{
    config.transform.validate()?;
    if config.batch_size == 0 {
        return Err(EvalError::invalid("batch_size", "must be at least 1"));
    }
    if !(temperature.is_finite() && temperature > 0.0) {
        return Err(EvalError::invalid("temperature", "must be positive"));
    }
    let heads = model.prototypes.heads.len();
    if head >= heads {
        return Err(EvalError::invalid(
            "head",
            format!("{head} is out of range: the model has {heads} prototype head(s)"),
        ));
    }
    let net = model.valid();
    let side = config.transform.crop as usize;
    let write = crate::features::eval_writer(config.transform);
    let all: Vec<usize> = (0..dataset.len()).collect();
    let mut rows = Vec::with_capacity(all.len());
    let mut skipped = Vec::new();
    let mut k = 0;
    for chunk in all.chunks(config.batch_size) {
        let b =
            crate::features::prepare_batch(dataset, chunk, side, config.workers, &write, device);
        skipped.extend(b.skipped);
        let Some(x) = b.images else { continue };
        let scores = net.forward(&[x]).scores.swap_remove(head);
        k = scores.dims()[1];
        let p = crate::features::floats(softmax(scores.div_scalar(temperature), 1), "scores")?;
        for ((row, &index), label) in p.chunks(k).zip(&b.kept).zip(b.labels) {
            let (cluster, conf) = row
                .iter()
                .enumerate()
                .fold((0, f32::MIN), |b, (c, &v)| if v > b.1 { (c, v) } else { b });
            rows.push(AssignmentRow {
                index,
                file: dataset.describe(index),
                label,
                cluster,
                confidence: conf as f64,
            });
        }
    }
    let used: std::collections::BTreeSet<usize> = rows.iter().map(|r| r.cluster).collect();
    let pairs: Vec<(usize, usize)> = rows
        .iter()
        .filter_map(|r| r.label.map(|l| (r.cluster, l)))
        .collect();
    Ok(Assignments {
        head,
        prototypes: k,
        temperature,
        clusters_used: used.len(),
        purity: cluster_purity(&pairs),
        rows,
        skipped,
    })
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

impl Assignments {
    /// Writes `index,file,label,cluster,confidence` rows (label empty when unknown) to `path`,
    /// atomically.
    pub fn write_csv(&self, path: &Path) -> Result<(), EvalError> {
        let mut text = String::from("index,file,label,cluster,confidence\n");
        for r in &self.rows {
            text.push_str(&format!(
                "{},{},{},{},{:.6}\n",
                r.index,
                csv_field(&r.file),
                r.label.map(|l| l.to_string()).unwrap_or_default(),
                r.cluster,
                r.confidence
            ));
        }
        swav_models::atomic::write_atomically(path, text.as_bytes())
            .map_err(|e| EvalError::io(path, e))
    }
}

/// What a cluster grid shows: the largest clusters, each with its most confident images.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GridRow {
    /// The prototype.
    pub cluster: usize,
    /// Images assigned to it.
    pub size: usize,
    /// Dataset indices of the images shown, most confident first.
    pub shown: Vec<usize>,
    /// Images per label in the cluster (empty without labels).
    pub labels: Vec<usize>,
}

/// Tile side in the grid, pixels.
const TILE: u32 = 48;
/// Width of the label column on the left of each row.
const LABEL_W: u32 = 96;
/// Width of a histogram bar.
const BAR_W: u32 = 6;

/// Draws the `clusters` largest clusters of `assignments` as rows of their `per_cluster` most
/// confident images (read again from `dataset`), each row labelled with the prototype and its
/// size and, when the images are labelled, a histogram of the labels in the cluster (its most
/// common label in orange, with the share it has); writes the PNG atomically at `path`. The
/// pictures of the SwAV paper and of VISSL's and lightly's tutorials are drawn this way.
pub fn cluster_grid<D: ImageDataset + ?Sized>(
    assignments: &Assignments,
    dataset: &D,
    path: &Path,
    clusters: usize,
    per_cluster: usize,
) -> Result<Vec<GridRow>, EvalError> {
    use image::{Rgb, RgbImage, imageops};
    if clusters == 0 || per_cluster == 0 {
        return Err(EvalError::invalid(
            "grid",
            "needs at least one cluster and one image per cluster",
        ));
    }
    let mut by_cluster: std::collections::BTreeMap<usize, Vec<&AssignmentRow>> =
        std::collections::BTreeMap::new();
    for r in &assignments.rows {
        by_cluster.entry(r.cluster).or_default().push(r);
    }
    let mut order: Vec<(usize, Vec<&AssignmentRow>)> = by_cluster.into_iter().collect();
    order.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then(a.0.cmp(&b.0)));
    order.truncate(clusters);
    let classes = dataset.num_classes().unwrap_or_else(|| {
        assignments
            .rows
            .iter()
            .filter_map(|r| r.label)
            .max()
            .map_or(0, |m| m + 1)
    });
    let labelled = assignments.rows.iter().any(|r| r.label.is_some());
    let hist_w = if labelled {
        classes as u32 * BAR_W + 8
    } else {
        0
    };
    let width = LABEL_W + per_cluster as u32 * (TILE + 2) + hist_w + 8;
    let height = 24 + order.len().max(1) as u32 * (TILE + 6);
    let mut img = RgbImage::from_pixel(width, height, Rgb([255, 255, 255]));
    let black = Rgb([0, 0, 0]);
    let blue = Rgb([31, 119, 180]);
    let orange = Rgb([230, 120, 20]);
    crate::plot::text(
        &mut img,
        4,
        8,
        &format!(
            "LARGEST {} OF {} CLUSTERS, MOST CONFIDENT IMAGES FIRST",
            order.len(),
            assignments.clusters_used
        ),
        black,
    );
    let mut rows = Vec::new();
    for (i, (cluster, mut members)) in order.into_iter().enumerate() {
        let y = 24 + i as u32 * (TILE + 6);
        members.sort_by(|a, b| b.confidence.total_cmp(&a.confidence));
        crate::plot::text(&mut img, 4, y + 8, &format!("C{cluster}"), black);
        crate::plot::text(&mut img, 4, y + 20, &format!("N={}", members.len()), black);
        let mut shown = Vec::new();
        for (j, r) in members.iter().take(per_cluster).enumerate() {
            let sample = dataset.get(r.index).map_err(EvalError::from)?;
            let tile = imageops::resize(&sample.image, TILE, TILE, imageops::FilterType::Triangle);
            imageops::overlay(
                &mut img,
                &tile,
                i64::from(LABEL_W + j as u32 * (TILE + 2)),
                i64::from(y),
            );
            shown.push(r.index);
        }
        let mut labels = vec![0usize; if labelled { classes } else { 0 }];
        for r in &members {
            if let Some(l) = r.label.filter(|&l| l < labels.len()) {
                labels[l] += 1;
            }
        }
        if labelled {
            let x0 = LABEL_W + per_cluster as u32 * (TILE + 2) + 8;
            let top = labels.iter().copied().max().unwrap_or(0).max(1);
            let majority = labels
                .iter()
                .enumerate()
                .max_by_key(|&(_, c)| *c)
                .map_or(0, |(l, _)| l);
            for (l, &c) in labels.iter().enumerate() {
                let h = (c as u32 * (TILE - 12)).div_ceil(top as u32);
                let colour = if l == majority { orange } else { blue };
                for yy in (y + TILE - 12 - h)..(y + TILE - 12) {
                    for xx in 0..BAR_W - 1 {
                        img.put_pixel(x0 + l as u32 * BAR_W + xx, yy, colour);
                    }
                }
            }
            let share = 100.0 * labels[majority] as f64 / members.len().max(1) as f64;
            crate::plot::text(
                &mut img,
                x0,
                y + TILE - 9,
                &format!("L{majority} {share:.0}%"),
                black,
            );
        }
        rows.push(GridRow {
            cluster,
            size: members.len(),
            shown,
            labels,
        });
    }
    crate::plot::save_png(&img, path)?;
    Ok(rows)
}
