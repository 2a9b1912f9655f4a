//! The optimisers, with PyTorch's semantics and state we can checkpoint by parameter path:
//!
//! - LARS as the original applies it: apex's `LARC` (clipping off) around momentum SGD. For each
//!   parameter with a gradient, `local_lr = trust * ||p|| / (||g|| + wd * ||p|| + 1e-8)` and
//!   `g = (g + wd * p) * local_lr` when both norms are non-zero (else `g` is left alone and no
//!   weight decay is added), then `buf = momentum * buf + g` (`buf = g` on the first step) and
//!   `p -= lr * buf`. With `clip` (apex's option, off in the original), `local_lr` becomes
//!   `min(local_lr / lr, 1)`. With `exclude_bn_bias`, one-dimensional parameters (BatchNorm weights and
//!   biases, Linear biases) skip both the adaptation and the weight decay, as the peers do.
//! - SGD: `g += wd * p`, the same momentum, `p -= lr * buf` (`torch.optim.SGD`, dampening 0).
//! - AdamW: `torch.optim.AdamW` (betas 0.9 / 0.999, eps 1e-8, decoupled decay `p *= 1 - lr wd`).
//!
//! A parameter without a gradient (or one the caller skips, e.g. frozen prototypes) gets no
//! update of any kind: no momentum step and no weight decay.

use std::collections::BTreeMap;

use burn::module::{Module, ModuleMapper, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Gradients, Tensor, TensorData};
use swav_core::OptimizerKind;
use swav_models::StateArray;

use crate::TrainError;

/// Where the optimiser finds a parameter's gradient: the [`Gradients`] of one backward pass,
/// or burn's [`GradientsParams`] (by parameter id), e.g. combined over data-parallel workers.
pub trait GradSource {
    /// The gradient of parameter `id` whose current value is `tensor`, if it has one.
    fn grad_of<const D: usize>(&self, id: ParamId, tensor: &Tensor<D>) -> Option<Tensor<D>>;
}

impl GradSource for Gradients {
    fn grad_of<const D: usize>(&self, _id: ParamId, tensor: &Tensor<D>) -> Option<Tensor<D>> {
        tensor.grad(self)
    }
}

impl GradSource for GradientsParams {
    fn grad_of<const D: usize>(&self, id: ParamId, _tensor: &Tensor<D>) -> Option<Tensor<D>> {
        self.get(id)
    }
}

/// Hyper-parameters of the optimiser (the learning rate comes per step).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OptimConfig {
    /// Which optimiser.
    pub kind: OptimizerKind,
    /// Momentum (SGD, LARS) or beta1 (AdamW).
    pub momentum: f64,
    /// Weight decay.
    pub weight_decay: f64,
    /// LARS trust coefficient.
    pub trust: f64,
    /// Exclude one-dimensional parameters from LARS adaptation and weight decay.
    pub exclude_bn_bias: bool,
    /// apex LARC's `clip`: the local rate becomes `min(local_lr / lr, 1)`.
    pub clip: bool,
}

/// State of one parameter.
#[derive(Debug, Clone)]
struct ParamState {
    /// Momentum buffer (SGD, LARS) or first moment (AdamW), flattened.
    m: Tensor<1>,
    /// Second moment (AdamW).
    v: Option<Tensor<1>>,
    /// Updates applied so far.
    steps: u64,
}

/// An optimiser with its state, keyed by parameter path (`backbone.layer1.0.conv1.weight`).
#[derive(Debug, Clone)]
pub struct Optimizer {
    config: OptimConfig,
    state: BTreeMap<String, ParamState>,
}

impl Optimizer {
    /// A fresh optimiser.
    pub fn new(config: OptimConfig) -> Self {
        Self {
            config,
            state: BTreeMap::new(),
        }
    }

    /// Its configuration.
    pub fn config(&self) -> &OptimConfig {
        &self.config
    }

    /// Number of parameters with state.
    pub fn len(&self) -> usize {
        self.state.len()
    }

    /// Whether no parameter has state yet.
    pub fn is_empty(&self) -> bool {
        self.state.is_empty()
    }

    /// Updates every parameter of `module` that has a gradient in `grads`, except those whose
    /// path `skip` accepts, at learning rate `lr`.
    pub fn step<M: Module, G: GradSource>(
        &mut self,
        module: M,
        grads: &G,
        lr: f64,
        skip: &dyn Fn(&str) -> bool,
    ) -> M {
        let mut mapper = StepMapper {
            optim: self,
            grads,
            lr,
            skip,
            path: Vec::new(),
        };
        module.map(&mut mapper)
    }

    /// The state as named arrays (`optim.<path>.m`, `optim.<path>.v`) and the step counts.
    pub fn export(&self) -> Result<(Vec<StateArray>, BTreeMap<String, u64>), TrainError> {
        let mut arrays = Vec::new();
        let mut steps = BTreeMap::new();
        for (path, s) in &self.state {
            arrays.push(to_array(format!("optim.{path}.m"), &s.m)?);
            if let Some(v) = &s.v {
                arrays.push(to_array(format!("optim.{path}.v"), v)?);
            }
            steps.insert(path.clone(), s.steps);
        }
        Ok((arrays, steps))
    }

    /// Restores the state written by [`Optimizer::export`].
    pub fn import(
        &mut self,
        arrays: &BTreeMap<String, StateArray>,
        steps: &BTreeMap<String, u64>,
        device: &Device,
    ) -> Result<(), TrainError> {
        self.state.clear();
        for (path, &n) in steps {
            let m = arrays.get(&format!("optim.{path}.m")).ok_or_else(|| {
                TrainError::Checkpoint(format!("optimiser state of `{path}` is missing"))
            })?;
            let v = arrays.get(&format!("optim.{path}.v"));
            if self.config.kind == OptimizerKind::Adamw && v.is_none() {
                return Err(TrainError::Checkpoint(format!(
                    "AdamW second moment of `{path}` is missing"
                )));
            }
            self.state.insert(
                path.clone(),
                ParamState {
                    m: from_array(m, device),
                    v: v.map(|v| from_array(v, device)),
                    steps: n,
                },
            );
        }
        Ok(())
    }
}

fn to_array(name: String, t: &Tensor<1>) -> Result<StateArray, TrainError> {
    let values = t
        .clone()
        .into_data()
        .try_to_vec_as::<f32>()
        .map_err(|e| TrainError::Checkpoint(format!("cannot read `{name}`: {e:?}")))?;
    Ok(StateArray {
        name,
        shape: vec![values.len()],
        values,
    })
}

fn from_array(a: &StateArray, device: &Device) -> Tensor<1> {
    Tensor::from_data(TensorData::new(a.values.clone(), [a.values.len()]), device)
}

fn norm(t: &Tensor<1>) -> Tensor<1> {
    t.clone().square().sum().sqrt()
}

struct StepMapper<'a, G> {
    optim: &'a mut Optimizer,
    grads: &'a G,
    lr: f64,
    skip: &'a dyn Fn(&str) -> bool,
    path: Vec<String>,
}

impl<G: GradSource> ModuleMapper for StepMapper<'_, G> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let (id, tensor, mapper) = param.consume();
        if !tensor.is_require_grad() {
            return Param::from_mapped_value(id, tensor, mapper);
        }
        let path = self.path.join(".");
        let grad = match self.grads.grad_of(id, &tensor) {
            Some(g) if !(self.skip)(&path) => g,
            _ => return Param::from_mapped_value(id, tensor, mapper),
        };
        let dims = tensor.dims();
        let n: usize = dims.iter().product();
        let p = tensor.inner().reshape([n]);
        let g = grad.reshape([n]);
        let updated = self.update(&path, p, g, D == 1).reshape(dims);
        let new = Tensor::from_inner(updated).require_grad();
        Param::from_mapped_value(id, new, mapper)
    }
}

impl<G> StepMapper<'_, G> {
    fn update(&mut self, path: &str, p: Tensor<1>, g: Tensor<1>, one_dim: bool) -> Tensor<1> {
        let c = self.optim.config;
        let lr = self.lr;
        let prev = self.optim.state.remove(path);
        let (new_p, state) = match c.kind {
            OptimizerKind::Lars => {
                let g = if c.exclude_bn_bias && one_dim {
                    g
                } else {
                    let pn = norm(&p);
                    let gn = norm(&g);
                    let adaptive = pn.clone().mul_scalar(c.trust).div(
                        gn.clone()
                            .add(pn.clone().mul_scalar(c.weight_decay))
                            .add_scalar(1e-8),
                    );
                    // With clipping the step is at most the scheduled one (lr 0: no cap).
                    let adaptive = if c.clip {
                        adaptive.div_scalar(lr).clamp_max(1.0)
                    } else {
                        adaptive
                    };
                    let active = pn.greater_elem(0.0).bool_and(gn.greater_elem(0.0));
                    let ones = Tensor::<1>::ones([1], &adaptive.device());
                    let factor = ones.clone().mask_where(active.clone(), adaptive);
                    let wd = Tensor::<1>::zeros([1], &factor.device())
                        .mask_where(active, ones.mul_scalar(c.weight_decay));
                    g.add(p.clone().mul(wd)).mul(factor)
                };
                momentum_sgd(p, g, prev, c.momentum, lr)
            }
            OptimizerKind::Sgd => {
                let g = if c.weight_decay > 0.0 {
                    g.add(p.clone().mul_scalar(c.weight_decay))
                } else {
                    g
                };
                momentum_sgd(p, g, prev, c.momentum, lr)
            }
            OptimizerKind::Adamw => adamw(p, g, prev, c.momentum, c.weight_decay, lr),
        };
        self.optim.state.insert(path.to_string(), state);
        new_p
    }
}

fn momentum_sgd(
    p: Tensor<1>,
    g: Tensor<1>,
    prev: Option<ParamState>,
    momentum: f64,
    lr: f64,
) -> (Tensor<1>, ParamState) {
    let (buf, steps) = match prev {
        Some(s) if momentum > 0.0 => (s.m.mul_scalar(momentum).add(g), s.steps + 1),
        Some(s) => (g, s.steps + 1),
        None => (g, 1),
    };
    let new_p = p.sub(buf.clone().mul_scalar(lr));
    (
        new_p,
        ParamState {
            m: buf,
            v: None,
            steps,
        },
    )
}

fn adamw(
    p: Tensor<1>,
    g: Tensor<1>,
    prev: Option<ParamState>,
    beta1: f64,
    wd: f64,
    lr: f64,
) -> (Tensor<1>, ParamState) {
    const BETA2: f64 = 0.999;
    const EPS: f64 = 1e-8;
    let p = if wd > 0.0 {
        p.mul_scalar(1.0 - lr * wd)
    } else {
        p
    };
    let (m, v, steps) = match prev {
        Some(s) => {
            let v = s.v.unwrap_or_else(|| s.m.zeros_like());
            (s.m, v, s.steps + 1)
        }
        None => (g.zeros_like(), g.zeros_like(), 1),
    };
    let m = m.mul_scalar(beta1).add(g.clone().mul_scalar(1.0 - beta1));
    let v = v.mul_scalar(BETA2).add(g.square().mul_scalar(1.0 - BETA2));
    let bc1 = 1.0 - beta1.powi(steps as i32);
    let bc2 = 1.0 - BETA2.powi(steps as i32);
    let denom = v.clone().div_scalar(bc2).sqrt().add_scalar(EPS);
    let new_p = p.sub(m.clone().div_scalar(bc1).div(denom).mul_scalar(lr));
    (
        new_p,
        ParamState {
            m,
            v: Some(v),
            steps,
        },
    )
}

#[cfg(test)]
mod tests {
    //! Two steps on `loss = sum(x . w) + b` with x = (1, 2), w = (3, 4), b = 2, lr 0.1,
    //! momentum 0.9, weight decay 0.1, against PyTorch 2.15 (`torch.optim.SGD`, `AdamW`, and
    //! apex's LARC logic written out over `SGD`, trust 0.001):
    //!
    //! ```python
    //! w = torch.tensor([3., 4.], requires_grad=True); b = torch.tensor([2.], requires_grad=True)
    //! opt = torch.optim.SGD([w, b], lr=0.1, momentum=0.9, weight_decay=0.1)   # or AdamW(...)
    //! for _ in range(2):
    //!     opt.zero_grad(); ((w * torch.tensor([1., 2.])).sum() + b.sum()).backward(); opt.step()
    //! # LARC: before opt.step() (SGD with weight_decay=0), for each p with non-zero norms:
    //! #   al = 0.001 * |p| / (|g| + 0.1 |p| + 1e-8); p.grad += 0.1 p; p.grad *= al
    //! ```
    use super::*;
    use burn::nn::{Linear, LinearConfig};
    use burn::tensor::Tensor;

    fn layer(device: &Device) -> Linear {
        let mut l = LinearConfig::new(2, 1).init(device);
        l.weight = Param::from_tensor(Tensor::from_floats([[3.0], [4.0]], device));
        l.bias = Some(Param::from_tensor(Tensor::from_floats([2.0], device)));
        l
    }

    fn two_steps(
        config: OptimConfig,
        skip: &dyn Fn(&str) -> bool,
    ) -> (Vec<f32>, Vec<f32>, Optimizer) {
        let device = Device::flex().autodiff();
        let mut l = layer(&device);
        let mut opt = Optimizer::new(config);
        for _ in 0..2 {
            let x = Tensor::<2>::from_floats([[1.0, 2.0]], &device);
            let loss = l.forward(x).sum();
            let grads = loss.backward();
            l = opt.step(l, &grads, 0.1, skip);
        }
        let w = l
            .weight
            .val()
            .into_data()
            .try_to_vec_as::<f32>()
            .expect("w");
        let b = l
            .bias
            .as_ref()
            .map(|b| b.val().into_data().try_to_vec_as::<f32>().expect("b"))
            .unwrap_or_default();
        (w, b, opt)
    }

    fn config(kind: OptimizerKind, exclude_bn_bias: bool) -> OptimConfig {
        OptimConfig {
            clip: false,
            kind,
            momentum: 0.9,
            weight_decay: 0.1,
            trust: 0.001,
            exclude_bn_bias,
        }
    }

    fn close(got: &[f32], want: &[f32]) {
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-5, "got {got:?}, want {want:?}");
        }
    }

    #[test]
    fn sgd_matches_pytorch() {
        let (w, b, _) = two_steps(config(OptimizerKind::Sgd, false), &|_| false);
        close(&w, &[2.6243, 3.3064]);
        close(&b, &[1.6532]);
    }

    #[test]
    fn adamw_matches_pytorch() {
        let (w, b, _) = two_steps(config(OptimizerKind::Adamw, false), &|_| false);
        close(&w, &[2.7413003, 3.7214003]);
        close(&b, &[1.7612]);
    }

    #[test]
    fn lars_matches_apex_larc_over_sgd() {
        let (w, b, _) = two_steps(config(OptimizerKind::Lars, false), &|_| false);
        close(&w, &[2.9993112, 3.998728]);
        close(&b, &[1.99942]);
        // Excluding one-dimensional parameters: the bias takes plain momentum SGD without decay.
        let (w, b, _) = two_steps(config(OptimizerKind::Lars, true), &|_| false);
        close(&w, &[2.9993112, 3.998728]);
        close(&b, &[1.71]);
    }

    #[test]
    fn skipped_parameters_get_no_update_and_no_state() {
        let (w, b, opt) = two_steps(config(OptimizerKind::Sgd, false), &|p| p == "weight");
        close(&w, &[3.0, 4.0]);
        close(&b, &[1.6532]);
        assert_eq!(opt.len(), 1);
    }

    #[test]
    fn state_round_trips_through_arrays() {
        let (_, _, opt) = two_steps(config(OptimizerKind::Adamw, false), &|_| false);
        let (arrays, steps) = opt.export().expect("export");
        assert_eq!(steps.values().copied().collect::<Vec<_>>(), vec![2, 2]);
        let map: BTreeMap<String, StateArray> =
            arrays.into_iter().map(|a| (a.name.clone(), a)).collect();
        assert!(map.contains_key("optim.weight.v"));
        let mut back = Optimizer::new(*opt.config());
        back.import(&map, &steps, &Device::flex()).expect("import");
        let (a2, s2) = back.export().expect("export");
        assert_eq!(s2, steps);
        assert_eq!(a2.len(), map.len());
        for a in a2 {
            assert_eq!(map[&a.name].values, a.values);
        }
        // A missing array is refused.
        let mut partial = map.clone();
        partial.remove("optim.bias.m");
        assert!(
            Optimizer::new(*opt.config())
                .import(&partial, &steps, &Device::flex())
                .is_err()
        );
    }
}
