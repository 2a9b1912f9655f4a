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

impl InjectedFault {
    /// The iteration from which checkpoint writes fail, for a checkpoint fault.
    pub(crate) fn checkpoints_fail_from(&self) -> Option<usize> {
        (self.target == FaultTarget::CheckpointWrite).then_some(self.iteration)
    }

    /// Corrupts `loss` or `grads` if this step (completing `iteration`) is the fault's.
    pub(crate) fn apply<M: Module>(
        &self,
        iteration: usize,
        model: &M,
        loss: &mut f64,
        grads: &mut GradientsParams,
    ) {
        if iteration != self.iteration {
            return;
        }
        match self.target {
            FaultTarget::CheckpointWrite => {}
            FaultTarget::Loss => *loss = self.value,
            FaultTarget::Gradient => {
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
                    value: self.value,
                    done: false,
                });
            }
        }
    }
}
