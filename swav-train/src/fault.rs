//! Faults injected into a run on purpose, so that a test (the fault suite, driving the real
//! binary) can check what the run does about them: a NaN or infinite loss, or a NaN or infinite
//! gradient with a finite loss.

use std::str::FromStr;

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::Tensor;

/// Where an injected fault lands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultTarget {
    /// The step's loss value (as a diverged or overflowing loss would be).
    Loss,
    /// Every element of the gradient of the model's first parameter (the loss stays finite).
    Gradient,
    /// Writing the first checkpoint due at or after the iteration fails as on a full disk
    /// (ENOSPC), where a small filesystem to fill cannot be mounted.
    CheckpointWrite,
}

/// A fault injected at one step: `value` (NaN or an infinity) replaces the target's values at
/// the step that completes iteration `iteration` (1-based, as the metrics count them); or the
/// checkpoints from that iteration on cannot be written.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InjectedFault {
    /// What is corrupted.
    pub target: FaultTarget,
    /// The value written (NaN, +inf or -inf).
    pub value: f64,
    /// The iteration whose step is corrupted.
    pub iteration: usize,
}

impl FromStr for InjectedFault {
    type Err = String;

    /// `nan-loss@N`, `inf-loss@N`, `nan-grad@N`, `inf-grad@N` or `enospc-checkpoint@N`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let usage = || {
            format!(
                "`{s}`: expected nan-loss@N, inf-loss@N, nan-grad@N, inf-grad@N or \
                 enospc-checkpoint@N"
            )
        };
        let (what, at) = s.split_once('@').ok_or_else(usage)?;
        let iteration = at.parse::<usize>().map_err(|_| usage())?;
        let (value, target) = match what {
            "nan-loss" => (f64::NAN, FaultTarget::Loss),
            "inf-loss" => (f64::INFINITY, FaultTarget::Loss),
            "nan-grad" => (f64::NAN, FaultTarget::Gradient),
            "inf-grad" => (f64::INFINITY, FaultTarget::Gradient),
            "enospc-checkpoint" => (0.0, FaultTarget::CheckpointWrite),
            _ => return Err(usage()),
        };
        Ok(Self {
            target,
            value,
            iteration,
        })
    }
}

/// A test's hook into a run: the faults to inject at each step and checkpoint, installed with
/// [`crate::Trainer::faults`]. Runs without one inject nothing; the fault suite installs an
/// [`InjectedFault`] through the binary's hidden `--inject-fault` flag.
pub trait FaultHook: std::fmt::Debug + Send + Sync {
    /// The value that replaces the loss of the step completing `iteration` (1-based), if any.
    fn loss(&self, iteration: usize) -> Option<f64> {
        let _ = iteration;
        None
    }

    /// The value that replaces every element of the model's first parameter's gradient in the
    /// step completing `iteration`, if any.
    fn gradient(&self, iteration: usize) -> Option<f64> {
        let _ = iteration;
        None
    }

    /// Whether writing the checkpoint of `iteration` fails as on a full disk.
    fn checkpoint_fails(&self, iteration: usize) -> bool {
        let _ = iteration;
        false
    }
}

impl FaultHook for InjectedFault {
    fn loss(&self, iteration: usize) -> Option<f64> {
        (self.target == FaultTarget::Loss && iteration == self.iteration).then_some(self.value)
    }

    fn gradient(&self, iteration: usize) -> Option<f64> {
        (self.target == FaultTarget::Gradient && iteration == self.iteration).then_some(self.value)
    }

    fn checkpoint_fails(&self, iteration: usize) -> bool {
        self.target == FaultTarget::CheckpointWrite && iteration >= self.iteration
    }
}

/// Applies `hook`'s faults for the step completing `iteration` to its loss and gradients.
pub(crate) fn inject<M: Module>(
    hook: &dyn FaultHook,
    iteration: usize,
    model: &M,
    loss: &mut f64,
    grads: &mut GradientsParams,
) {
    if let Some(value) = hook.loss(iteration) {
        *loss = value;
    }
    if let Some(value) = hook.gradient(iteration) {
        fill_first_gradient(model, grads, value);
    }
}

/// Sets every element of the gradient of `model`'s first parameter (that has one) to `value`.
fn fill_first_gradient<M: Module>(model: &M, grads: &mut GradientsParams, value: f64) {
    struct First<'a> {
        grads: &'a mut GradientsParams,
        value: f64,
        done: bool,
    }
    impl ModuleVisitor for First<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if self.done {
                return;
            }
            if let Some(g) = self.grads.remove::<D>(param.id) {
                let g = g.mul_scalar(0.0).add_scalar(self.value);
                self.grads.register::<D>(param.id, g);
                self.done = true;
            }
        }
    }
    model.visit(&mut First {
        grads,
        value,
        done: false,
    });
}
