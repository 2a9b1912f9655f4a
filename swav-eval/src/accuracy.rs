//! How a classifier's logits score against labels: top-1, top-5 and the confusion matrix.

use serde::{Deserialize, Serialize};

/// Accuracy figures of one evaluation of the classifier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Accuracy {
    /// Top-1, percent.
    pub top1: f64,
    /// Top-5 (top-k with k = number of classes when fewer than 5), percent.
    pub top5: f64,
    /// `confusion[true][predicted]` counts.
    pub confusion: Vec<Vec<usize>>,
}

/// Top-1, top-5 and the confusion matrix of `logits` (`n x k`) against `labels`.
pub(crate) fn accuracy_of(logits: &[f32], k: usize, labels: &[usize]) -> Accuracy {
    let top = k.min(5);
    let mut confusion = vec![vec![0usize; k]; k];
    let (mut c1, mut c5) = (0usize, 0usize);
    for (row, &y) in logits.chunks(k).zip(labels) {
        let mut order: Vec<usize> = (0..k).collect();
        order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
        confusion[y][order[0]] += 1;
        c1 += usize::from(order[0] == y);
        c5 += usize::from(order[..top].contains(&y));
    }
    let n = labels.len().max(1) as f64;
    Accuracy {
        top1: 100.0 * c1 as f64 / n,
        top5: 100.0 * c5 as f64 / n,
        confusion,
    }
}
