//! Weighted k-nearest-neighbour classification on L2-normalised features (the peers' cheap
//! monitor of representation quality: cosine similarity, the k most similar training samples,
//! votes weighted by `exp(similarity / T)`).

use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::EvalError;
use crate::features::Features;

/// k and the temperature of the vote.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct KnnConfig {
    /// Neighbours that vote.
    pub k: usize,
    /// Temperature of the vote weights `exp(sim / T)`.
    pub temperature: f64,
    /// Test rows per similarity block (memory: `block x train` floats).
    pub block: usize,
}

impl KnnConfig {
    /// DINO's setting: k = 20, T = 0.07.
    pub fn k20() -> Self {
        Self {
            k: 20,
            temperature: 0.07,
            block: 256,
        }
    }

    /// lightly's setting: k = 200, T = 0.1.
    pub fn k200() -> Self {
        Self {
            k: 200,
            temperature: 0.1,
            block: 256,
        }
    }
}

impl Default for KnnConfig {
    fn default() -> Self {
        Self::k20()
    }
}

/// The outcome of a kNN evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KnnResult {
    /// The setting used.
    pub config: KnnConfig,
    /// Top-1 accuracy in percent.
    pub top1: f64,
    /// Top-5 accuracy in percent (top-k for k = number of classes when fewer than 5).
    pub top5: f64,
    /// Number of test samples.
    pub test_samples: usize,
    /// Number of training (memory) samples.
    pub train_samples: usize,
    /// Predicted class of each test row.
    pub predictions: Vec<usize>,
}

fn normalized(f: &Features) -> Vec<f32> {
    let mut v = f.values.clone();
    for row in v.chunks_mut(f.dim.max(1)) {
        let n = row.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
        row.iter_mut().for_each(|x| *x /= n);
    }
    v
}

/// Class scores of one test row from its neighbours' similarities and labels.
fn vote(sims: &[f32], labels: &[usize], classes: usize, temperature: f64) -> Vec<f64> {
    let mut scores = vec![0f64; classes];
    for (&s, &l) in sims.iter().zip(labels) {
        scores[l] += (s as f64 / temperature).exp();
    }
    scores
}

/// Classes ranked by score, highest first; ties go to the lower class index.
fn ranked(scores: &[f64]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    order
}

/// Classifies every row of `test` by a weighted vote of its `k` most cosine-similar rows of
/// `train` (both labelled). `classes` is the number of classes.
pub fn knn_classify(
    train: &Features,
    test: &Features,
    classes: usize,
    config: &KnnConfig,
    device: &Device,
) -> Result<KnnResult, EvalError> {
    if config.k == 0 {
        return Err(EvalError::invalid("k", "must be at least 1"));
    }
    if !(config.temperature.is_finite() && config.temperature > 0.0) {
        return Err(EvalError::invalid(
            "temperature",
            format!("must be positive, got {}", config.temperature),
        ));
    }
    if train.dim != test.dim {
        return Err(EvalError::invalid(
            "features",
            format!("train has {} dims, test {}", train.dim, test.dim),
        ));
    }
    if train.is_empty() || test.is_empty() {
        return Err(EvalError::invalid(
            "features",
            "train and test need samples",
        ));
    }
    let train_labels = train.labels_required("train labels")?;
    let test_labels = test.labels_required("test labels")?;
    if let Some(&l) = train_labels
        .iter()
        .chain(&test_labels)
        .find(|&&l| l >= classes)
    {
        return Err(EvalError::invalid(
            "classes",
            format!("label {l} is out of range for {classes} classes"),
        ));
    }
    let k = config.k.min(train.len());
    let dim = train.dim;
    let bank = Tensor::<2>::from_data(
        TensorData::new(normalized(train), [train.len(), dim]),
        device,
    )
    .transpose();
    let queries = normalized(test);
    let block = config.block.max(1);
    let mut predictions = Vec::with_capacity(test.len());
    let (mut hit1, mut hit5) = (0usize, 0usize);
    for (b, rows) in queries.chunks(block * dim).enumerate() {
        let n = rows.len() / dim;
        let q = Tensor::<2>::from_data(TensorData::new(rows.to_vec(), [n, dim]), device);
        let (sims, idx) = q.matmul(bank.clone()).topk_with_indices(k, 1);
        let sims = sims
            .into_data()
            .try_to_vec_as::<f32>()
            .map_err(|e| EvalError::invalid("features", format!("{e:?}")))?;
        let idx = idx
            .into_data()
            .try_to_vec_as::<i64>()
            .map_err(|e| EvalError::invalid("features", format!("{e:?}")))?;
        for r in 0..n {
            let labels: Vec<usize> = idx[r * k..(r + 1) * k]
                .iter()
                .map(|&i| train_labels[i as usize])
                .collect();
            let order = ranked(&vote(
                &sims[r * k..(r + 1) * k],
                &labels,
                classes,
                config.temperature,
            ));
            let truth = test_labels[b * block + r];
            hit1 += usize::from(order[0] == truth);
            hit5 += usize::from(order.iter().take(5).any(|&c| c == truth));
            predictions.push(order[0]);
        }
    }
    let t = test.len() as f64;
    Ok(KnnResult {
        config: *config,
        top1: 100.0 * hit1 as f64 / t,
        top5: 100.0 * hit5 as f64 / t,
        test_samples: test.len(),
        train_samples: train.len(),
        predictions,
    })
}
