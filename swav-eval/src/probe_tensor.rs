//! The linear probe's classifier on burn tensors, on any device: the forward, the cross-entropy
//! gradient and PyTorch's SGD (momentum, weight decay) as tensor operations, so the probe runs
//! where the features are (a GPU, or the CPU's GEMM) instead of in scalar loops.

use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Tensor, TensorData};

use crate::EvalError;
use crate::accuracy::{Accuracy, accuracy_of};

/// A Linear layer `dim -> classes` with its momentum buffers, on a device.
pub(crate) struct TensorLinear {
    dim: usize,
    classes: usize,
    /// `[dim, classes]`.
    w: Tensor<2>,
    b: Tensor<1>,
    mw: Option<Tensor<2>>,
    mb: Option<Tensor<1>>,
    device: Device,
    /// The training loss summed on the device since the last read.
    loss: Option<Tensor<1>>,
}

impl TensorLinear {
    /// A classifier `dim -> classes` on `device` with `weight` (row-major `classes x dim`,
    /// PyTorch's layout) and `bias`.
    pub(crate) fn new(
        (dim, classes): (usize, usize),
        weight: &[f32],
        bias: &[f32],
        device: &Device,
    ) -> Self {
        let w = Tensor::<2>::from_data(TensorData::new(weight.to_vec(), [classes, dim]), device)
            .transpose();
        let b = Tensor::<1>::from_data(TensorData::new(bias.to_vec(), [classes]), device);
        Self {
            dim,
            classes,
            w,
            b,
            mw: None,
            mb: None,
            device: device.clone(),
            loss: None,
        }
    }

    fn upload(&self, x: &[f32]) -> Result<Tensor<2>, EvalError> {
        let n = x.len() / self.dim.max(1);
        if n * self.dim != x.len() {
            return Err(EvalError::invalid(
                "features",
                format!("{} values are not rows of {}", x.len(), self.dim),
            ));
        }
        Ok(Tensor::from_data(
            TensorData::new(x.to_vec(), [n, self.dim]),
            &self.device,
        ))
    }

    /// One SGD step of mean cross-entropy on a batch (`x`: `n x dim`); the loss is summed on
    /// the device ([`TensorLinear::take_loss`] reads it).
    pub(crate) fn step(
        &mut self,
        x: &[f32],
        labels: &[usize],
        lr: f64,
        momentum: f64,
        wd: f64,
    ) -> Result<(), EvalError> {
        let n = labels.len();
        let x = self.upload(x)?;
        let mut onehot = vec![0f32; n * self.classes];
        for (i, &y) in labels.iter().enumerate() {
            onehot[i * self.classes + y] = 1.0;
        }
        let onehot =
            Tensor::<2>::from_data(TensorData::new(onehot, [n, self.classes]), &self.device);
        let logits = x
            .clone()
            .matmul(self.w.clone())
            .add(self.b.clone().unsqueeze());
        let logp = log_softmax(logits, 1);
        let loss = logp
            .clone()
            .mul(onehot.clone())
            .sum()
            .neg()
            .div_scalar(n as f64);
        self.loss = Some(match self.loss.take() {
            Some(s) => s.add(loss),
            None => loss,
        });
        // d(mean CE)/d(logits) = (softmax - onehot) / n.
        let g = logp.exp().sub(onehot).div_scalar(n as f64);
        let gw = x
            .transpose()
            .matmul(g.clone())
            .add(self.w.clone().mul_scalar(wd));
        let gb = g
            .sum_dim(0)
            .reshape([self.classes])
            .add(self.b.clone().mul_scalar(wd));
        let step_w = match self.mw.take() {
            Some(m) if momentum > 0.0 => m.mul_scalar(momentum).add(gw),
            _ => gw,
        };
        let step_b = match self.mb.take() {
            Some(m) if momentum > 0.0 => m.mul_scalar(momentum).add(gb),
            _ => gb,
        };
        self.w = self.w.clone().sub(step_w.clone().mul_scalar(lr));
        self.b = self.b.clone().sub(step_b.clone().mul_scalar(lr));
        if momentum > 0.0 {
            self.mw = Some(step_w);
            self.mb = Some(step_b);
        }
        Ok(())
    }

    /// The training loss summed since the last call (one read from the device).
    pub(crate) fn take_loss(&mut self) -> Result<f64, EvalError> {
        match self.loss.take() {
            Some(t) => Ok(crate::features::floats(t.reshape([1, 1]), "loss")?[0] as f64),
            None => Ok(0.0),
        }
    }

    /// The weights (row-major `classes x dim`) and the bias, read back.
    #[cfg(test)]
    pub(crate) fn weights(&self) -> Result<(Vec<f32>, Vec<f32>), EvalError> {
        let w = crate::features::floats(self.w.clone().transpose(), "weights")?;
        let b = crate::features::floats(self.b.clone().reshape([1, self.classes]), "bias")?;
        Ok((w, b))
    }

    /// Top-1, top-5 and the confusion matrix on `x` (`n x dim`), in chunks of rows.
    #[cfg(test)]
    pub(crate) fn evaluate(&self, x: &[f32], labels: &[usize]) -> Result<Accuracy, EvalError> {
        self.evaluate_uploaded(&self.upload_rows(x)?, labels)
    }

    /// `x` (`n x dim`) on the device in chunks of 4,096 rows, for evaluating it every epoch
    /// without uploading it again.
    pub(crate) fn upload_rows(&self, x: &[f32]) -> Result<Vec<Tensor<2>>, EvalError> {
        x.chunks(4096 * self.dim.max(1))
            .map(|chunk| self.upload(chunk))
            .collect()
    }

    /// [`TensorLinear::evaluate`] on rows already on the device ([`TensorLinear::upload_rows`]).
    pub(crate) fn evaluate_uploaded(
        &self,
        x: &[Tensor<2>],
        labels: &[usize],
    ) -> Result<Accuracy, EvalError> {
        let mut logits = Vec::with_capacity(labels.len() * self.classes);
        for t in x {
            let l = t
                .clone()
                .matmul(self.w.clone())
                .add(self.b.clone().unsqueeze());
            logits.extend(crate::features::floats(l, "logits")?);
        }
        Ok(accuracy_of(&logits, self.classes, labels))
    }
}
