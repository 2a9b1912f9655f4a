//! Cluster assignment: each image's prototype (the cluster SwAV put it in) and the confidence
//! of that code, written as CSV, with the clusters' purity when the dataset has labels.

use std::io::Write;
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
        let tmp = path.with_extension("csv.tmp");
        let mut out = std::io::BufWriter::new(
            std::fs::File::create(&tmp).map_err(|e| EvalError::io(&tmp, e))?,
        );
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
        out.write_all(text.as_bytes())
            .and_then(|_| out.flush())
            .map_err(|e| EvalError::io(&tmp, e))?;
        drop(out);
        std::fs::rename(&tmp, path).map_err(|e| EvalError::io(path, e))
    }
}
