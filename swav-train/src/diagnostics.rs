//! What the run watches and reports: the codes' use of the prototypes, non-finite weights, the
//! parts of a non-finite loss, and collapse.

use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::Tensor;
use swav_core::{SwavConfig, swapped_prediction_loss};

/// Paths of the module's float tensors that hold NaN or infinity.
pub(crate) fn non_finite<M: Module>(module: &M) -> Vec<String> {
    struct V {
        path: Vec<String>,
        bad: Vec<String>,
    }
    impl burn::module::ModuleVisitor for V {
        fn enter_module(&mut self, name: &str, _container_type: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<D>>) {
            let t = param.val();
            let has_bad = t.is_finite().bool_not().any().into_scalar::<bool>();
            if has_bad {
                self.bad.push(self.path.join("."));
            }
        }
    }
    let mut v = V {
        path: Vec::new(),
        bad: Vec::new(),
    };
    module.visit(&mut v);
    v.bad
}

/// Whether every gradient in `grads` of `model`'s parameters is finite, with one read-back for
/// the whole model (`g * 0` sums to 0 when finite, NaN otherwise; no overflow of large values).
pub(crate) fn grads_finite<M: Module>(model: &M, grads: &GradientsParams) -> bool {
    struct V<'a> {
        grads: &'a GradientsParams,
        probe: Option<Tensor<1>>,
    }
    impl burn::module::ModuleVisitor for V<'_> {
        fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<D>>) {
            if let Some(g) = self.grads.get::<D>(param.id) {
                let p = g.mul_scalar(0.0).sum();
                self.probe = Some(match self.probe.take() {
                    Some(s) => s.add(p),
                    None => p,
                });
            }
        }
    }
    let mut v = V { grads, probe: None };
    model.visit(&mut v);
    v.probe.is_none_or(|s| s.into_scalar::<f32>().is_finite())
}

/// The parameters of `model` whose gradient in `grads` holds NaN or infinite values, by path.
pub(crate) fn non_finite_grads<M: Module>(model: &M, grads: &GradientsParams) -> Vec<String> {
    struct V<'a> {
        grads: &'a GradientsParams,
        path: Vec<String>,
        bad: Vec<String>,
    }
    impl burn::module::ModuleVisitor for V<'_> {
        fn enter_module(&mut self, name: &str, _container_type: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<D>>) {
            let Some(g) = self.grads.get::<D>(param.id) else {
                return;
            };
            if g.is_finite().bool_not().any().into_scalar::<bool>() {
                self.bad.push(self.path.join("."));
            }
        }
    }
    let mut v = V {
        grads,
        path: Vec::new(),
        bad: Vec::new(),
    };
    model.visit(&mut v);
    v.bad
}

fn to_vec(t: Tensor<2>) -> Vec<f32> {
    t.into_data().try_to_vec_as::<f32>().unwrap_or_default()
}

/// Prototypes in use (distinct arg-max over the batch) and the mean entropy (nats) of the
/// samples' codes: ln K when every code is uniform (no sample is assigned to anything, the
/// collapsed state), near 0 when each sample is assigned to one prototype.
pub(crate) fn code_stats(codes: Tensor<2>) -> (usize, f64) {
    let [b, k] = codes.dims();
    let v = to_vec(codes);
    if v.len() != b * k || b == 0 {
        return (0, 0.0);
    }
    let mut used = vec![false; k];
    let mut entropy = 0f64;
    for row in v.chunks(k) {
        let mut best = 0;
        let total: f64 = row.iter().map(|&x| x as f64).sum::<f64>().max(1e-30);
        for (j, &x) in row.iter().enumerate() {
            let p = x as f64 / total;
            if p > 0.0 {
                entropy -= p * p.ln() / b as f64;
            }
            if x > row[best] {
                best = j;
            }
        }
        used[best] = true;
    }
    (used.iter().filter(|&&u| u).count(), entropy)
}

/// The score range and each loss part of every head, for the message of a non-finite loss.
pub(crate) fn diagnose(
    scores: &[Tensor<2>],
    lo: &swav_core::SwavLossOutput,
    batch: usize,
    swav: &SwavConfig,
) -> String {
    let mut parts = Vec::new();
    for (h, sc) in scores.iter().enumerate() {
        let v: Vec<f32> = sc
            .clone()
            .detach()
            .into_data()
            .try_to_vec_as::<f32>()
            .unwrap_or_default();
        parts.push(format!("head {h}: {}", describe_values("scores", &v)));
        for c in lo.codes.get(h).into_iter().flatten() {
            let l = swapped_prediction_loss(
                sc.clone().detach(),
                batch,
                std::slice::from_ref(c),
                swav.temperature,
            )
            .into_scalar::<f32>();
            parts.push(format!("head {h} crop {} part {l}", c.crop));
        }
    }
    parts.join("; ")
}

/// The range of `values`, saying how many are NaN or infinite: never a sentinel of an empty
/// fold presented as a range.
pub(crate) fn describe_values(what: &str, values: &[f32]) -> String {
    let finite: Vec<f32> = values.iter().copied().filter(|x| x.is_finite()).collect();
    let nan = values.iter().filter(|x| x.is_nan()).count();
    let inf = values.len() - finite.len() - nan;
    let mut text = match finite.iter().copied().reduce(f32::min) {
        Some(mn) => {
            let mx = finite.iter().copied().fold(mn, f32::max);
            format!("{what} in [{mn}, {mx}]")
        }
        None => format!("no finite {what}"),
    };
    if nan + inf > 0 {
        text.push_str(&format!(
            " ({nan} NaN and {inf} infinite of {} values)",
            values.len()
        ));
    }
    text
}

/// The code statistics of an epoch's batches: the fewest prototypes a batch's codes used and
/// their mean entropy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct CodeTally {
    used_min: usize,
    entropy_sum: f64,
    batches: usize,
}

impl Default for CodeTally {
    fn default() -> Self {
        Self {
            used_min: usize::MAX,
            entropy_sum: 0.0,
            batches: 0,
        }
    }
}

impl CodeTally {
    /// One batch's codes: the prototypes they use and their entropy.
    pub fn add(&mut self, used: usize, entropy: f64) {
        self.used_min = self.used_min.min(used);
        self.entropy_sum += entropy;
        self.batches += 1;
    }

    /// The mean entropy of the batches' codes (none measured: `None`).
    pub fn mean_entropy(&self) -> Option<f64> {
        (self.batches > 0).then(|| self.entropy_sum / self.batches as f64)
    }

    /// The fewest prototypes a batch's codes used (none measured: `None`).
    pub fn fewest_used(&self) -> Option<usize> {
        (self.batches > 0).then_some(self.used_min)
    }
}

/// The collapse warning after `epoch` (1-based), if the run looks collapsed: the epoch's mean
/// loss stays at ln K and the codes are near uniform or use a handful of prototypes.
pub(crate) fn collapse_warning(
    epoch: usize,
    mean_loss: f64,
    collapse_loss: f64,
    k0: usize,
    batch: usize,
    global_batch: usize,
    codes: &CodeTally,
) -> Option<String> {
    let (used_min, entropy_sum, stat_n) = (codes.used_min, codes.entropy_sum, codes.batches);
    // With more prototypes than samples, equipartition alone spreads each code over at
    // least K / B prototypes: "uniform" is judged within the entropy range that leaves.
    let floor = (k0 as f64 / global_batch as f64).max(1.0).ln();
    let ln_k = (k0 as f64).ln();
    let uniform_codes = stat_n > 0 && entropy_sum / stat_n as f64 >= ln_k - 0.05 * (ln_k - floor);
    let few = stat_n > 0 && used_min <= (k0.min(batch) / 10).max(1);
    let at_ln_k = (mean_loss - collapse_loss).abs() <= 0.02 * collapse_loss;
    (epoch >= 2 && at_ln_k && (few || uniform_codes)).then(|| {
        format!(
            "epoch {epoch}: the loss ({mean_loss:.4}) stays at ln K = {collapse_loss:.4}, the \
             codes are {} and use as few as {used_min} prototypes in a batch: the model may \
             have collapsed. Usual remedies: freeze the prototypes longer \
             (freeze_prototypes_niters), a smaller epsilon (0.03), a smaller or later queue, \
             fewer crops, a lower lr (or, for short runs with LARS, a higher one or AdamW)",
            if uniform_codes {
                "near uniform"
            } else {
                "confident"
            }
        )
    })
}

/// Watches the kNN monitor against the same network at random initialisation: a run whose
/// trained kNN stays at or below that baseline for `patience` evaluations in a row has learned
/// nothing useful so far, and is told so once, with the usual remedies.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct NoLearningWatch {
    baseline: f64,
    patience: usize,
    at_or_below: usize,
    warned: bool,
}

impl NoLearningWatch {
    /// A watch against a baseline top-1 (%) that warns after `patience` evaluations (0: never).
    pub fn new(baseline: f64, patience: usize) -> Self {
        Self {
            baseline,
            patience,
            at_or_below: 0,
            warned: false,
        }
    }

    /// One evaluation after `epoch` (1-based): the warning, the first time the trained top-1
    /// has stayed at or below the baseline for `patience` evaluations in a row.
    pub fn observe(&mut self, epoch: usize, top1: f64) -> Option<String> {
        if top1 > self.baseline {
            self.at_or_below = 0;
            return None;
        }
        self.at_or_below += 1;
        if self.patience == 0 || self.warned || self.at_or_below < self.patience {
            return None;
        }
        self.warned = true;
        Some(format!(
            "epoch {epoch}: the kNN top-1 ({top1:.2} %) has stayed at or below the same network \
             at random initialisation ({:.2} %) for {} evaluations: the run has learned nothing \
             useful yet. Usual remedies: more epochs, weaker colour jitter (colour is a cue both \
             crops share), learnable prototypes (a shorter freeze_prototypes_niters), more \
             prototypes (nmb_prototypes), a higher learning rate",
            self.baseline, self.at_or_below
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_ranges_name_nan_and_infinity_instead_of_sentinels() {
        assert_eq!(
            describe_values("scores", &[0.5, -1.0]),
            "scores in [-1, 0.5]"
        );
        assert_eq!(
            describe_values("scores", &[f32::NAN, 2.0, f32::INFINITY]),
            "scores in [2, 2] (1 NaN and 1 infinite of 3 values)"
        );
        assert_eq!(
            describe_values("scores", &[f32::NAN, f32::NAN]),
            "no finite scores (2 NaN and 0 infinite of 2 values)"
        );
    }

    #[test]
    fn the_watch_warns_once_after_its_patience_and_resets_on_progress() {
        let mut w = NoLearningWatch::new(34.0, 3);
        assert_eq!(w.observe(1, 30.0), None);
        assert_eq!(w.observe(2, 34.0), None);
        // Above the baseline: the count starts again.
        assert_eq!(w.observe(3, 34.5), None);
        assert_eq!(w.observe(4, 33.0), None);
        assert_eq!(w.observe(5, 31.0), None);
        let warning = w.observe(6, 32.0).expect("third evaluation in a row");
        assert!(
            warning.contains("34.00 %") && warning.contains("epoch 6"),
            "{warning}"
        );
        assert_eq!(w.observe(7, 30.0), None, "once");
        let mut off = NoLearningWatch::new(34.0, 0);
        assert!((1..10).all(|e| off.observe(e, 10.0).is_none()));
    }
}
