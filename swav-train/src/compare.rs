//! One training step on two backends, side by side: the loss, the codes and every parameter's
//! gradient of a [`ParallelStep`] read back to the host ([`StepRecord`]) and compared
//! ([`StepDiff`]), for checking a GPU backend or a precision against the CPU in f32.

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::Tensor;

use crate::ParallelStep;

/// A host copy of a parameter's gradient, named by its path in the model.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedValues {
    /// The parameter's path (`backbone.layer1.0.conv1.weight`).
    pub path: String,
    /// Its values, row-major.
    pub values: Vec<f32>,
}

/// What one step produced, on the host: enough to compare two backends.
#[derive(Debug, Clone, PartialEq)]
pub struct StepRecord {
    /// The loss averaged over the workers.
    pub loss: f64,
    /// The first worker's codes of the first assignment crop, `B x K` row-major.
    pub codes: Vec<f32>,
    /// Every parameter's gradient, in the model's visiting order.
    pub grads: Vec<NamedValues>,
}

impl StepRecord {
    /// Reads back `step`'s loss, codes and the gradients of `model`'s parameters.
    pub fn read<M: Module>(model: &M, step: &ParallelStep) -> Self {
        let codes = step
            .codes
            .first()
            .map(|c| host_values(c.clone()))
            .unwrap_or_default();
        StepRecord {
            loss: step.loss,
            codes,
            grads: named_gradients(model, &step.grads),
        }
    }
}

/// The gradients in `grads` of `model`'s parameters, by path, read back to the host in f32.
pub fn named_gradients<M: Module>(model: &M, grads: &GradientsParams) -> Vec<NamedValues> {
    struct V<'a> {
        grads: &'a GradientsParams,
        path: Vec<String>,
        out: Vec<NamedValues>,
    }
    impl ModuleVisitor for V<'_> {
        fn enter_module(&mut self, name: &str, _container_type: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(g) = self.grads.get::<D>(param.id) {
                self.out.push(NamedValues {
                    path: self.path.join("."),
                    values: host_values(g),
                });
            }
        }
    }
    let mut v = V {
        grads,
        path: Vec::new(),
        out: Vec::new(),
    };
    model.visit(&mut v);
    v.out
}

fn host_values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.cast(burn::tensor::DType::F32)
        .into_data()
        .try_to_vec_as::<f32>()
        .unwrap_or_default()
}

/// How far one gradient is from the reference's.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorDiff {
    /// The parameter's path.
    pub path: String,
    /// `|a - b| / max(|b|, floor)` in the L2 norm, where the floor is 1e-3 of the largest
    /// reference gradient norm of the model: a gradient that is zero in exact arithmetic (the
    /// bias of a Linear before a BatchNorm) is held to the model's scale, not to its own noise.
    pub rel: f64,
    /// The reference gradient's L2 norm.
    pub norm: f64,
}

/// How far a step is from a reference step.
#[derive(Debug, Clone, PartialEq)]
pub struct StepDiff {
    /// `|loss - reference| / |reference|`.
    pub loss_rel: f64,
    /// The largest absolute difference of a code (codes lie in [0, 1]).
    pub codes_max_abs: f64,
    /// The codes' relative L2 difference.
    pub codes_rel: f64,
    /// All gradients together: `|A - B| / |B|` in the L2 norm over every value.
    pub grads_rel: f64,
    /// Each gradient's difference, in the model's order.
    pub grads: Vec<TensorDiff>,
}

/// Why two records cannot be compared.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CompareError {
    /// The two steps have other parameters (another model, or a missing gradient).
    #[error("the gradients differ in number or names: {0}")]
    Parameters(String),
    /// A quantity has another number of values on each side.
    #[error("{what}: {left} values against {right}")]
    Length {
        /// What was compared.
        what: String,
        /// Values on the compared side.
        left: usize,
        /// Values on the reference side.
        right: usize,
    },
}

fn l2(v: impl Iterator<Item = f64>) -> f64 {
    v.map(|x| x * x).sum::<f64>().sqrt()
}

fn checked_len(what: &str, a: &[f32], b: &[f32]) -> Result<(), CompareError> {
    if a.len() == b.len() {
        Ok(())
    } else {
        Err(CompareError::Length {
            what: what.to_string(),
            left: a.len(),
            right: b.len(),
        })
    }
}

impl StepDiff {
    /// Compares `step` with `reference` (lengths and names checked, nothing zipped blindly).
    pub fn between(step: &StepRecord, reference: &StepRecord) -> Result<Self, CompareError> {
        checked_len("codes", &step.codes, &reference.codes)?;
        if step.grads.len() != reference.grads.len() {
            return Err(CompareError::Parameters(format!(
                "{} gradients against {}",
                step.grads.len(),
                reference.grads.len()
            )));
        }
        let diff = |a: &[f32], b: &[f32]| l2(a.iter().zip(b).map(|(x, y)| *x as f64 - *y as f64));
        let norm = |b: &[f32]| l2(b.iter().map(|x| *x as f64));
        let largest = reference
            .grads
            .iter()
            .map(|g| norm(&g.values))
            .fold(0f64, f64::max);
        let floor = (1e-3 * largest).max(1e-30);
        let mut grads = Vec::with_capacity(step.grads.len());
        let (mut total_diff, mut total_norm) = (0f64, 0f64);
        for (a, b) in step.grads.iter().zip(&reference.grads) {
            if a.path != b.path {
                return Err(CompareError::Parameters(format!(
                    "{} against {}",
                    a.path, b.path
                )));
            }
            checked_len(&a.path, &a.values, &b.values)?;
            let (d, n) = (diff(&a.values, &b.values), norm(&b.values));
            total_diff += d * d;
            total_norm += n * n;
            grads.push(TensorDiff {
                path: a.path.clone(),
                rel: d / n.max(floor),
                norm: n,
            });
        }
        let codes_max_abs = step
            .codes
            .iter()
            .zip(&reference.codes)
            .map(|(x, y)| (*x as f64 - *y as f64).abs())
            .fold(0f64, f64::max);
        Ok(StepDiff {
            loss_rel: (step.loss - reference.loss).abs() / reference.loss.abs().max(1e-30),
            codes_max_abs,
            codes_rel: diff(&step.codes, &reference.codes) / norm(&reference.codes).max(1e-30),
            grads_rel: total_diff.sqrt() / total_norm.sqrt().max(1e-30),
            grads,
        })
    }

    /// The gradient farthest from the reference's (relative to its size).
    pub fn worst_gradient(&self) -> Option<&TensorDiff> {
        self.grads.iter().max_by(|a, b| a.rel.total_cmp(&b.rel))
    }

    /// What exceeds `tolerance`, one line each; empty when the step is within it.
    pub fn exceeding(&self, tolerance: &StepTolerance) -> Vec<String> {
        let mut out = Vec::new();
        let mut check = |what: &str, value: f64, limit: f64| {
            if value.is_nan() || value > limit {
                out.push(format!("{what} {value:.3e} > {limit:.1e}"));
            }
        };
        check("loss (relative)", self.loss_rel, tolerance.loss_rel);
        check(
            "codes (largest difference)",
            self.codes_max_abs,
            tolerance.codes_max_abs,
        );
        check(
            "gradients (relative, all)",
            self.grads_rel,
            tolerance.grads_rel,
        );
        for g in &self.grads {
            check(
                &format!("gradient of {}", g.path),
                g.rel,
                tolerance.tensor_rel,
            );
        }
        out
    }
}

/// The largest differences a step may have from the reference.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepTolerance {
    /// Relative loss difference.
    pub loss_rel: f64,
    /// Largest absolute code difference.
    pub codes_max_abs: f64,
    /// Relative L2 difference of all gradients together.
    pub grads_rel: f64,
    /// Relative L2 difference of any one gradient ([`TensorDiff::rel`]).
    pub tensor_rel: f64,
}
