//! The [`Transform`] trait and its combinators.

use image::RgbImage;
use rand::{Rng, RngCore};

/// One image-to-image augmentation step. Randomness comes only from the caller's generator, so
/// a pipeline is reproducible from its seed.
pub trait Transform: Send + Sync {
    /// Applies the transform, drawing any random parameter from `rng`.
    fn apply(&self, image: RgbImage, rng: &mut dyn RngCore) -> RgbImage;
}

/// Applies transforms in sequence (torchvision's `Compose`).
#[derive(Default)]
pub struct Compose {
    steps: Vec<Box<dyn Transform>>,
}

impl Compose {
    /// An empty pipeline.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a step.
    pub fn then(mut self, step: impl Transform + 'static) -> Self {
        self.steps.push(Box::new(step));
        self
    }
}

impl Transform for Compose {
    fn apply(&self, mut image: RgbImage, rng: &mut dyn RngCore) -> RgbImage {
        for step in &self.steps {
            image = step.apply(image, rng);
        }
        image
    }
}

/// Applies the inner transform with probability `p` (torchvision's `RandomApply`).
pub struct RandomApply<T> {
    /// The transform applied with probability `p`.
    pub inner: T,
    /// Probability of applying it.
    pub p: f64,
}

impl<T: Transform> Transform for RandomApply<T> {
    fn apply(&self, image: RgbImage, rng: &mut dyn RngCore) -> RgbImage {
        if rng.random::<f64>() < self.p {
            self.inner.apply(image, rng)
        } else {
            image
        }
    }
}
