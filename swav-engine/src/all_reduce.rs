//! The sum of a tensor over the workers of a data-parallel group as a differentiable tensor
//! operation ([`all_reduce_sum`]): its backward is itself a sum over the workers, so the
//! gradient that reaches each worker's input is the one a single worker holding the global batch
//! would compute. Synchronised BatchNorm reduces its per-channel sums through it.
//!
//! The group is a parameter: any [`swav_core::Collective`] (the workspace's one transport for
//! reductions). Backends: flex, and the cubecl backends with the `wgpu` or `cuda` feature; the
//! reduced values travel through the host in f64.

use std::sync::Arc;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, Flex, TensorMetadata, backend_extension};
use burn::tensor::Tensor;
use swav_core::{Collective, ReduceOp, reduce_data};

/// A group handle as the BatchNorms and their backward passes hold it: any
/// [`swav_core::Collective`] (threads of one process, processes under MPI).
pub type SharedCollective = Arc<dyn Collective>;

/// The collective sum as a differentiable tensor operation.
#[backend_extension(Flex, Cube: cfg(any(feature = "wgpu", feature = "cuda")), Autodiff)]
pub trait AllReduceBackend: Backend {
    /// The element-wise sum of `tensor` over the workers of `group`; its gradient is the sum of
    /// the workers' gradients.
    fn all_reduce_sum(tensor: FloatTensor<Self>, group: SharedCollective) -> FloatTensor<Self>;
}

/// The sum over the workers through the host (swav-core's one round trip), in the tensor's own
/// float type.
fn host_all_reduce<B: Backend>(tensor: FloatTensor<B>, group: &dyn Collective) -> FloatTensor<B> {
    let device = tensor.device();
    let data = burn::tensor::try_read_sync(B::float_into_data(tensor))
        .and_then(Result::ok)
        .expect("synchronised BatchNorm: the device returns its statistics to the host");
    B::float_from_data(reduce_data(group, data, ReduceOp::Sum), &device)
}

impl AllReduceBackend for Flex {
    fn all_reduce_sum(tensor: FloatTensor<Self>, group: SharedCollective) -> FloatTensor<Self> {
        host_all_reduce::<Self>(tensor, group.as_ref())
    }
}

#[cfg(any(feature = "wgpu", feature = "cuda"))]
impl AllReduceBackend for burn::backend::Cube {
    fn all_reduce_sum(tensor: FloatTensor<Self>, group: SharedCollective) -> FloatTensor<Self> {
        host_all_reduce::<Self>(tensor, group.as_ref())
    }
}

impl<B: Backend + AllReduceBackend, C: CheckpointStrategy> AllReduceBackend for Autodiff<B, C> {
    fn all_reduce_sum(tensor: FloatTensor<Self>, group: SharedCollective) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct AllReduceBackward;

        impl<B: Backend + AllReduceBackend> Backward<B, 1> for AllReduceBackward {
            type State = SharedCollective;

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
pub fn all_reduce_sum<const D: usize>(tensor: Tensor<D>, group: &SharedCollective) -> Tensor<D> {
    let out = <Dispatch as AllReduceBackend>::all_reduce_sum(tensor.into_dispatch(), group.clone());
    Tensor::from_dispatch(out)
}
