//! The linear probe's classifier on burn tensors, on any device: the forward, the cross-entropy
//! gradient and PyTorch's SGD (momentum, weight decay) as tensor operations, so the probe runs
//! where the features are (a GPU, or the CPU's GEMM) instead of in scalar loops.

use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Tensor, TensorData};

use crate::EvalError;
use crate::linear::{Accuracy, LinearClassifier};

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
    /// The classifier `host` (its initial weights) on `device`.
    pub(crate) fn from_host(host: &LinearClassifier, device: &Device) -> Self {
        let (dim, classes) = (host.dim, host.classes);
        let w =
            Tensor::<2>::from_data(TensorData::new(host.weight.clone(), [classes, dim]), device)
                .transpose();
        let b = Tensor::<1>::from_data(TensorData::new(host.bias.clone(), [classes]), device);
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

    /// Top-1, top-5 and the confusion matrix on `x` (`n x dim`), in chunks of rows.
    pub(crate) fn evaluate(&self, x: &[f32], labels: &[usize]) -> Result<Accuracy, EvalError> {
        let mut logits = Vec::with_capacity(labels.len() * self.classes);
        for chunk in x.chunks(4096 * self.dim.max(1)) {
            let t = self.upload(chunk)?;
            let l = t.matmul(self.w.clone()).add(self.b.clone().unsqueeze());
            logits.extend(crate::features::floats(l, "logits")?);
        }
        Ok(crate::linear::accuracy_of(&logits, self.classes, labels))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// The tensor classifier takes the same SGD steps as the scalar reference (PyTorch's SGD
    /// with momentum and weight decay on mean cross-entropy).
    #[test]
    fn tensor_steps_equal_the_scalar_reference() {
        let (dim, classes, n) = (12, 5, 16);
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mut host = LinearClassifier::new(dim, classes, 0.1, &mut rng);
        let device = Device::flex();
        let mut t = TensorLinear::from_host(&host, &device);
        for step in 0..6 {
            let x: Vec<f32> = (0..n * dim)
                .map(|_| rng.random_range(-1.0f32..1.0))
                .collect();
            let y: Vec<usize> = (0..n).map(|i| (i + step) % classes).collect();
            let loss = host.step(&x, &y, 0.3, 0.9, 1e-3);
            t.step(&x, &y, 0.3, 0.9, 1e-3).expect("step");
            let tl = t.take_loss().expect("loss");
            assert!((loss - tl).abs() < 1e-5, "step {step}: loss {loss} vs {tl}");
        }
        // Weights `[dim, classes]` on the device, `classes x dim` on the host.
        let w = crate::features::floats(t.w.clone().transpose(), "w").expect("w");
        for (a, b) in w.iter().zip(&host.weight) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
        let b = crate::features::floats(t.b.clone().reshape([1, classes]), "b").expect("b");
        for (a, c) in b.iter().zip(&host.bias) {
            assert!((a - c).abs() < 1e-5, "{a} vs {c}");
        }
        let x: Vec<f32> = (0..n * dim)
            .map(|_| rng.random_range(-1.0f32..1.0))
            .collect();
        let y: Vec<usize> = (0..n).map(|i| i % classes).collect();
        assert_eq!(t.evaluate(&x, &y).expect("eval"), host.evaluate(&x, &y));
    }
}
