//! Synchronised BatchNorm for data-parallel training: every worker normalises with the
//! statistics of the global batch (all workers' samples), as PyTorch's `SyncBatchNorm`, which
//! the original SwAV uses (`--sync_bn pytorch`).
//!
//! The statistics are built from ordinary differentiable tensor operations around one collective
//! operation, the engine's `all_reduce_sum`, whose backward is itself a sum over the workers:
//!
//! - `mean = Σ_workers Σ_local x / N` and `var = Σ_workers Σ_local (x − mean)² / N`, with `N` the
//!   global number of values per channel (two reductions, the second centred for precision);
//! - `y = (x − mean) · γ / √(var + ε) + β`.
//!
//! Every worker's output depends on every worker's samples through the reduced sums, so the
//! gradient of the total loss with respect to a worker's input has a term from each worker's
//! loss; autodiff delivers, at each reduced sum, the gradient of this worker's loss only, and the
//! backward of the all-reduce adds the others' (it sums the incoming gradients over the
//! workers). The result is the gradient one worker holding the whole global batch would compute.
//! The gradients of γ and β stay local (the gradient combination after backward sums them).
//!
//! The group is a parameter of the computation ([`Collective`]), installed for the forward of a
//! worker's step with [`with_synchronised_batch_norm`]: every BatchNorm that goes through
//! [`crate::layers::batch_norm`] takes it from there, so a [`crate::Backbone`] needs no extra
//! argument. A BatchNorm whose own `forward` is called is not synchronised:
//! [`with_synchronised_batch_norm_checked`] names such layers of a model.
//!
//! Every worker must run the same layers in the same order (the same model and crop layout):
//! each reduction waits for all workers.

use std::cell::RefCell;
use std::collections::HashSet;

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::nn::BatchNorm;
use burn::tensor::Tensor;
use swav_engine::all_reduce_sum;
pub use swav_engine::{Collective, SharedCollective};

std::thread_local! {
    static GROUP: RefCell<Option<SharedCollective>> = const { RefCell::new(None) };
    /// The BatchNorms (by the id of their weight) synchronised on this thread since the last
    /// [`with_synchronised_batch_norm_checked`] began.
    static SYNCHRONISED: RefCell<HashSet<ParamId>> = RefCell::new(HashSet::new());
}

/// Runs `f` (a worker's forward pass) with every training-mode BatchNorm that goes through
/// [`crate::layers::batch_norm`] on this thread synchronised over `group`. A group of one
/// worker changes nothing. The previous setting is restored afterwards, also on a panic.
pub fn with_synchronised_batch_norm<T>(group: SharedCollective, f: impl FnOnce() -> T) -> T {
    struct Restore(Option<SharedCollective>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let previous = self.0.take();
            GROUP.with(|g| *g.borrow_mut() = previous);
        }
    }
    let _restore = Restore(GROUP.with(|g| g.borrow_mut().replace(group)));
    f()
}

/// The group installed on this thread by [`with_synchronised_batch_norm`], if it has several
/// workers.
pub(crate) fn current_group() -> Option<SharedCollective> {
    GROUP
        .with(|g| g.borrow().clone())
        .filter(|g| g.world_size() > 1)
}

/// Training-mode BatchNorm of `x` (`[B, C, ...]`) with the statistics of the global batch of
/// `group`, and burn's running-statistics update from them (the same on every worker).
pub fn synchronised_batch_norm<const D: usize>(
    bn: &BatchNorm,
    x: Tensor<D>,
    group: &SharedCollective,
) -> Tensor<D> {
    let dims = x.dims();
    let channels = dims[1];
    let local = (x.shape().num_elements() / channels.max(1)) as f64;
    let mut count = [local];
    group.sum_f64(&mut count);
    let count = count[0].max(1.0);
    let mut broadcast = [1usize; D];
    broadcast[1] = channels;
    let per_channel = crate::bn_stats::per_channel::<D>;
    let mean = all_reduce_sum(per_channel(x.clone()), group).div_scalar(count);
    let centred = x.sub(mean.clone().reshape(broadcast));
    let variance = all_reduce_sum(per_channel(centred.clone().square()), group).div_scalar(count);
    let scale = bn
        .gamma
        .val()
        .div(variance.clone().add_scalar(bn.epsilon).sqrt());
    let out = centred
        .mul(scale.reshape(broadcast))
        .add(bn.beta.val().reshape(broadcast));
    SYNCHRONISED.with(|s| s.borrow_mut().insert(bn.gamma.id));
    crate::bn_stats::update_running_stats(bn, mean, variance, count);
    out
}

/// [`with_synchronised_batch_norm`], and the paths of `model`'s BatchNorm layers that did not
/// take the synchronised path during `f` (a backbone that calls `BatchNorm::forward` itself
/// instead of [`crate::layers::batch_norm`]): those normalised with per-worker statistics.
/// Empty when the group has one worker.
pub fn with_synchronised_batch_norm_checked<M: Module, T>(
    group: SharedCollective,
    model: &M,
    f: impl FnOnce() -> T,
) -> (T, Vec<String>) {
    let several = group.world_size() > 1;
    SYNCHRONISED.with(|s| s.borrow_mut().clear());
    let out = with_synchronised_batch_norm(group, f);
    if !several {
        return (out, Vec::new());
    }
    let synchronised = SYNCHRONISED.with(|s| std::mem::take(&mut *s.borrow_mut()));
    let missed = batch_norm_layers(model)
        .into_iter()
        .filter(|(id, _)| !synchronised.contains(id))
        .map(|(_, path)| path)
        .collect();
    (out, missed)
}

/// Every BatchNorm of `model`: the id of its weight and its path.
pub fn batch_norm_layers<M: Module>(model: &M) -> Vec<(ParamId, String)> {
    struct Find {
        path: Vec<(String, String)>,
        found: Vec<(ParamId, String)>,
    }
    impl ModuleVisitor for Find {
        fn enter_module(&mut self, name: &str, container_type: &str) {
            self.path
                .push((name.to_string(), container_type.to_string()));
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            // burn's derive names the parent's type: `gamma` inside `Struct:BatchNorm`.
            if let Some((name, container)) = self.path.last()
                && name == "gamma"
                && container == "Struct:BatchNorm"
            {
                let n = self.path.len() - 1;
                let path: Vec<&str> = self.path[..n].iter().map(|(p, _)| p.as_str()).collect();
                self.found.push((param.id, path.join(".")));
            }
        }
    }
    let mut find = Find {
        path: Vec::new(),
        found: Vec::new(),
    };
    model.visit(&mut find);
    find.found
}
