//! Synchronised BatchNorm for data-parallel training: every worker normalises with the
//! statistics of the global batch (all workers' samples), as PyTorch's `SyncBatchNorm`, which
//! the original SwAV uses (`--sync_bn pytorch`).
//!
//! The statistics are built from ordinary differentiable tensor operations around one collective
//! operation, [`all_reduce_sum`], whose backward is itself a sum over the workers:
//!
//! - `mean = Σ_workers Σ_local x / N` and `var = Σ_workers Σ_local (x − mean)² / N`, with `N` the
//!   global number of values per channel (two reductions, the second centred for precision);
//! - `y = (x − mean) · γ / √(var + ε) + β`.
//!
//! Every worker's output depends on every worker's samples through the reduced sums, so the
//! gradient of the total loss with respect to a worker's input has a term from each worker's
//! loss; autodiff delivers, at each reduced sum, the gradient of this worker's loss only, and the
//! backward of [`all_reduce_sum`] adds the others' (it sums the incoming gradients over the
//! workers). The result is the gradient one worker holding the whole global batch would compute.
//! The gradients of γ and β stay local (the gradient combination after backward sums them).
//!
//! The group is a parameter of the computation ([`StatsReduce`]), installed for the forward of a
//! worker's step with [`with_synchronised_batch_norm`]: the backbone's and head's BatchNorms
//! (through [`crate::flexconv::batch_norm`]) take it from there, so a [`crate::Backbone`] needs
//! no extra argument. The backward holds the group itself and runs wherever autodiff runs it.
//!
//! Every worker must run the same layers in the same order (the same model and crop layout):
//! each reduction waits for all workers. Backends: flex, and the wgpu (cubecl) backend with the
//! `wgpu` feature; the reduced values travel through the host in f64.

use std::cell::RefCell;
use std::fmt::Debug;
use std::sync::Arc;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, Flex, TensorMetadata, backend_extension};
use burn::nn::BatchNorm;
use burn::tensor::{Tensor, TensorData};

/// Sums host values over the workers of a data-parallel group.
///
/// Every worker calls [`StatsReduce::sum`] the same number of times, in the same order, with
/// vectors of the same length; each receives the element-wise sum over the workers, the same
/// bits on every worker.
pub trait StatsReduce: Send + Sync + Debug {
    /// Number of workers in the group.
    fn world_size(&self) -> usize;
    /// The element-wise sum of `values` over the workers.
    fn sum(&self, values: Vec<f64>) -> Vec<f64>;
}

/// A group handle as the BatchNorms and their backward passes hold it.
pub type SharedStatsReduce = Arc<dyn StatsReduce>;

/// The collective sum as a differentiable tensor operation.
#[backend_extension(Flex, Cube: cfg(feature = "wgpu"), Autodiff)]
pub trait AllReduceBackend: Backend {
    /// The element-wise sum of `tensor` over the workers of `group`; its gradient is the sum of
    /// the workers' gradients.
    fn all_reduce_sum(tensor: FloatTensor<Self>, group: SharedStatsReduce) -> FloatTensor<Self>;
}

/// The sum over the workers through the host, in the tensor's own float type.
fn host_all_reduce<B: Backend>(tensor: FloatTensor<B>, group: &dyn StatsReduce) -> FloatTensor<B> {
    let device = tensor.device();
    let dtype = tensor.dtype();
    let data = burn::tensor::try_read_sync(B::float_into_data(tensor))
        .and_then(Result::ok)
        .expect("synchronised BatchNorm: the device returns its statistics to the host");
    let shape = data.shape().clone();
    let values = data
        .convert::<f64>()
        .try_into_vec::<f64>()
        .expect("float statistics convert to f64");
    let summed = group.sum(values);
    B::float_from_data(TensorData::new(summed, shape).convert_dtype(dtype), &device)
}

impl AllReduceBackend for Flex {
    fn all_reduce_sum(tensor: FloatTensor<Self>, group: SharedStatsReduce) -> FloatTensor<Self> {
        host_all_reduce::<Self>(tensor, group.as_ref())
    }
}

#[cfg(feature = "wgpu")]
impl AllReduceBackend for burn::backend::Cube {
    fn all_reduce_sum(tensor: FloatTensor<Self>, group: SharedStatsReduce) -> FloatTensor<Self> {
        host_all_reduce::<Self>(tensor, group.as_ref())
    }
}

impl<B: Backend + AllReduceBackend, C: CheckpointStrategy> AllReduceBackend for Autodiff<B, C> {
    fn all_reduce_sum(tensor: FloatTensor<Self>, group: SharedStatsReduce) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct AllReduceBackward;

        impl<B: Backend + AllReduceBackend> Backward<B, 1> for AllReduceBackward {
            type State = SharedStatsReduce;

            fn backward(
                self,
                ops: Ops<Self::State, 1>,
                grads: &mut Gradients,
                _checkpointer: &mut Checkpointer,
            ) {
                let [parent] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                // Every worker runs this step (the same graph), so the reduction always pairs up.
                let summed = B::all_reduce_sum(grad, ops.state);
                if let Some(node) = parent {
                    grads.register::<B>(node.id, summed);
                }
            }
        }

        match AllReduceBackward
            .prepare::<C>([tensor.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish(
                group.clone(),
                B::all_reduce_sum(tensor.into_primitive(), group),
            ),
            OpsKind::UnTracked(prep) => {
                prep.finish(B::all_reduce_sum(tensor.into_primitive(), group))
            }
        }
    }
}

/// The element-wise sum of `tensor` over the workers of `group`, differentiable: the gradient
/// that reaches `tensor` is the sum of the workers' gradients of the result.
///
/// # Panics
/// On a backend without the operation (flex and, with the `wgpu` feature, wgpu have it).
pub fn all_reduce_sum<const D: usize>(tensor: Tensor<D>, group: &SharedStatsReduce) -> Tensor<D> {
    let out = <Dispatch as AllReduceBackend>::all_reduce_sum(tensor.into_dispatch(), group.clone());
    Tensor::from_dispatch(out)
}

std::thread_local! {
    static GROUP: RefCell<Option<SharedStatsReduce>> = const { RefCell::new(None) };
}

/// Runs `f` (a worker's forward pass) with every training-mode BatchNorm that goes through
/// [`crate::flexconv::batch_norm`] on this thread synchronised over `group`. A group of one
/// worker changes nothing. The previous setting is restored afterwards, also on a panic.
pub fn with_synchronised_batch_norm<T>(group: SharedStatsReduce, f: impl FnOnce() -> T) -> T {
    struct Restore(Option<SharedStatsReduce>);
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
pub(crate) fn current_group() -> Option<SharedStatsReduce> {
    GROUP
        .with(|g| g.borrow().clone())
        .filter(|g| g.world_size() > 1)
}

/// Training-mode BatchNorm of `x` (`[B, C, ...]`) with the statistics of the global batch of
/// `group`, and burn's running-statistics update from them (the same on every worker).
pub fn synchronised_batch_norm<const D: usize>(
    bn: &BatchNorm,
    x: Tensor<D>,
    group: &SharedStatsReduce,
) -> Tensor<D> {
    let dims = x.dims();
    let channels = dims[1];
    let local = (x.shape().num_elements() / channels.max(1)) as f64;
    let count = group.sum(vec![local])[0].max(1.0);
    let mut broadcast = [1usize; D];
    broadcast[1] = channels;
    let per_channel = |t: Tensor<D>| -> Tensor<1> {
        let mut t = t;
        for d in (0..D).filter(|&d| d != 1) {
            t = t.sum_dim(d);
        }
        t.reshape([channels])
    };
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
    crate::flexconv::update_running_stats(bn, mean, variance);
    out
}
