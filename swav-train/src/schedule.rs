//! The learning-rate schedule of the original `main_swav.py`: a per-iteration table of linear
//! warmup from `start_warmup` to `base_lr` (numpy's `linspace`, end point included), then
//! cosine from `base_lr` to `final_lr` over the remaining iterations.

/// The per-iteration learning rate of a run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LrSchedule {
    base: f64,
    final_lr: f64,
    start: f64,
    warmup_iters: usize,
    cosine_iters: usize,
}

impl LrSchedule {
    /// The schedule for `epochs` of `iters_per_epoch` iterations, the first `warmup_epochs` of
    /// them warming up.
    pub fn new(
        base: f64,
        final_lr: f64,
        start: f64,
        warmup_epochs: usize,
        epochs: usize,
        iters_per_epoch: usize,
    ) -> Self {
        Self {
            base,
            final_lr,
            start,
            warmup_iters: warmup_epochs * iters_per_epoch,
            cosine_iters: epochs.saturating_sub(warmup_epochs) * iters_per_epoch,
        }
    }

    /// Total iterations of the run.
    pub fn len(&self) -> usize {
        self.warmup_iters + self.cosine_iters
    }

    /// Whether the run has no iteration.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The learning rate of iteration `it` (0-based; past the end, the last value).
    pub fn lr(&self, it: usize) -> f64 {
        let it = it.min(self.len().saturating_sub(1));
        if it < self.warmup_iters {
            if self.warmup_iters == 1 {
                return self.start;
            }
            let f = it as f64 / (self.warmup_iters - 1) as f64;
            return self.start + (self.base - self.start) * f;
        }
        let t = (it - self.warmup_iters) as f64;
        let n = self.cosine_iters.max(1) as f64;
        self.final_lr
            + 0.5 * (self.base - self.final_lr) * (1.0 + (std::f64::consts::PI * t / n).cos())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_is_linspace_then_cosine_from_base_to_final() {
        let s = LrSchedule::new(4.8, 0.0048, 0.3, 2, 10, 5);
        assert_eq!(s.len(), 50);
        assert!((s.lr(0) - 0.3).abs() < 1e-12);
        assert!(
            (s.lr(9) - 4.8).abs() < 1e-12,
            "linspace includes the end point"
        );
        assert!((s.lr(4) - (0.3 + 4.5 * 4.0 / 9.0)).abs() < 1e-12);
        assert!((s.lr(10) - 4.8).abs() < 1e-12, "cosine starts at base_lr");
        // Half way through the cosine: the mean of base and final.
        assert!((s.lr(30) - (4.8 + 0.0048) / 2.0).abs() < 1e-12);
        let last =
            0.0048 + 0.5 * (4.8 - 0.0048) * (1.0 + (std::f64::consts::PI * 39.0 / 40.0).cos());
        assert!((s.lr(49) - last).abs() < 1e-12);
        assert_eq!(s.lr(1000), s.lr(49));
        for i in 10..49 {
            assert!(s.lr(i + 1) <= s.lr(i), "cosine decreases");
        }
    }

    #[test]
    fn no_warmup_starts_at_base() {
        let s = LrSchedule::new(0.6, 0.0006, 0.0, 0, 3, 4);
        assert!((s.lr(0) - 0.6).abs() < 1e-12);
        assert_eq!(s.len(), 12);
    }
}
