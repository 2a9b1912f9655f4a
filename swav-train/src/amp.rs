//! Mixed-precision bookkeeping: which half type a run computes in, and f16's dynamic loss
//! scaling (as PyTorch's `GradScaler` and apex's dynamic scaler).

use burn::tensor::{DType, Device};
use serde::{Deserialize, Serialize};
use swav_core::{HalfType, SwavConfig};

/// The half type the workers' forward passes use, or `None` for f32: `use_fp16` on GPU
/// devices only (on the CPU backend the half-precision kernels are slower than f32's).
pub fn autocast_for(swav: &SwavConfig, devices: &[Device]) -> Option<DType> {
    let on_cpu = devices.iter().any(swav_models::layers::is_flex);
    (swav.use_fp16 && !on_cpu).then_some(match swav.half_type {
        HalfType::F16 => DType::F16,
        HalfType::Bf16 => DType::BF16,
    })
}

/// Dynamic loss scaling for f16: the loss is multiplied by `scale` before the backward pass so
/// that small gradients do not underflow; a step whose gradients overflow is skipped and the
/// scale halved; after [`LossScaler::GROWTH_INTERVAL`] good steps in a row it is doubled.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LossScaler {
    /// The current factor.
    pub scale: f64,
    /// Good steps since the last change.
    pub good_steps: u64,
    /// Steps skipped for overflow so far.
    pub skipped: u64,
}

impl Default for LossScaler {
    fn default() -> Self {
        Self {
            scale: Self::INITIAL,
            good_steps: 0,
            skipped: 0,
        }
    }
}

impl LossScaler {
    /// The first scale (2^16, PyTorch's default).
    pub const INITIAL: f64 = 65536.0;
    /// Good steps before the scale doubles (PyTorch's default).
    pub const GROWTH_INTERVAL: u64 = 2000;

    /// Records a step whose gradients were `finite`; whether its update is to be applied.
    pub fn update(&mut self, finite: bool) -> bool {
        if finite {
            self.good_steps += 1;
            if self.good_steps >= Self::GROWTH_INTERVAL {
                self.scale *= 2.0;
                self.good_steps = 0;
            }
            true
        } else {
            self.scale = (self.scale / 2.0).max(1.0);
            self.good_steps = 0;
            self.skipped += 1;
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overflow_halves_and_skips_and_good_steps_double() {
        let mut s = LossScaler::default();
        assert!(!s.update(false));
        assert_eq!((s.scale, s.skipped), (LossScaler::INITIAL / 2.0, 1));
        for _ in 0..LossScaler::GROWTH_INTERVAL - 1 {
            assert!(s.update(true));
        }
        assert_eq!(s.scale, LossScaler::INITIAL / 2.0);
        assert!(s.update(true));
        assert_eq!((s.scale, s.good_steps), (LossScaler::INITIAL, 0));
        let mut low = LossScaler {
            scale: 1.0,
            ..LossScaler::default()
        };
        low.update(false);
        assert_eq!(low.scale, 1.0, "never below 1");
    }

    #[test]
    fn mixed_precision_is_for_gpu_devices() {
        let cpu = [Device::flex()];
        let fp16 = SwavConfig {
            use_fp16: true,
            ..SwavConfig::default()
        };
        assert_eq!(autocast_for(&fp16, &cpu), None);
    }
}
