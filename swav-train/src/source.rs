//! Where a run's batches come from: the [`BatchSource`] trait and the default source, the
//! multi-crop loader over the config's dataset ([`MultiCropSource`]).
//!
//! A source yields, for each data-parallel worker (rank), the batches of an epoch in order, each
//! a [`swav_data::Batch`]: one [`CropGroupBatch`] per resolution group, crop-major, the same
//! number of samples in every batch. A user with views of their own (another augmentation, a
//! streaming reader, precomputed crops) implements the trait and passes it to
//! [`crate::Trainer::source`]; the config's `[swav]` crop counts and sizes must describe what
//! the source makes (they size the model's forward and the codes' crops).

use burn::tensor::{Device, Tensor, TensorData};
use swav_augment::MultiCrop;
use swav_data::{Batch, CropGroupBatch, Loader, LoaderConfig, SkippedSample};

use crate::TrainError;
use crate::adapters::{multicrop_for, workers};
use crate::config::TrainConfig;
use crate::data::{DynDataset, RunData};

/// The batches of a run, per worker and epoch.
pub trait BatchSource: Send + Sync {
    /// Batches per epoch of each worker (the same for every worker).
    fn batches_per_epoch(&self) -> usize;

    /// Worker `rank`'s batches of `epoch`, starting at batch `start` (a resumed run continues
    /// mid-epoch). The same `(epoch, rank)` must give the same batches every time for a resumed
    /// run to equal an uninterrupted one.
    fn epoch(
        &self,
        epoch: usize,
        start: usize,
        rank: usize,
    ) -> Result<Box<dyn Iterator<Item = Batch> + Send>, TrainError>;

    /// Samples skipped so far as unreadable (each time one was met), for the run summary.
    fn skipped(&self) -> Vec<SkippedSample> {
        Vec::new()
    }
}

/// The default source: one [`Loader`] per worker over the run's training split, each on its
/// shard of the epoch, with the config's multi-crop.
pub struct MultiCropSource {
    loaders: Vec<Loader<DynDataset>>,
}

impl MultiCropSource {
    /// The loaders of `world` workers for `config` over `data.train`; the decode threads
    /// (`data.workers`) are shared out between them.
    pub fn new(config: &TrainConfig, data: &RunData, world: usize) -> Result<Self, TrainError> {
        let s = &config.swav;
        let multicrop = multicrop_for(config)?;
        let decode_workers = workers(config).div_ceil(world.max(1)).max(1);
        let loaders = (0..world.max(1))
            .map(|rank| {
                Loader::new(
                    data.train.clone(),
                    MultiCrop::new(multicrop.clone())?,
                    LoaderConfig {
                        batch_size: s.batch_size,
                        seed: s.seed,
                        workers: decode_workers,
                        prefetch: config.data.prefetch,
                        shuffle: true,
                        drop_last: true,
                        rank,
                        world_size: world.max(1),
                        warn: rank == 0,
                    },
                )
                .map_err(TrainError::from)
            })
            .collect::<Result<Vec<_>, TrainError>>()?;
        Ok(Self { loaders })
    }
}

impl BatchSource for MultiCropSource {
    fn batches_per_epoch(&self) -> usize {
        self.loaders.first().map_or(0, |l| l.batches_per_epoch())
    }

    fn epoch(
        &self,
        epoch: usize,
        start: usize,
        rank: usize,
    ) -> Result<Box<dyn Iterator<Item = Batch> + Send>, TrainError> {
        let loader = self.loaders.get(rank).ok_or_else(|| {
            TrainError::Parallel(format!(
                "no loader for worker {rank} ({} workers)",
                self.loaders.len()
            ))
        })?;
        Ok(Box::new(loader.epoch(epoch as u64, start)))
    }

    fn skipped(&self) -> Vec<SkippedSample> {
        self.loaders.iter().flat_map(|l| l.skipped()).collect()
    }
}

/// A crop group's floats as a tensor `[count x batch, 3, size, size]` on `device` (the host
/// vector moves into the tensor data without a copy).
pub fn group_tensor(group: CropGroupBatch, device: &Device) -> Tensor<4> {
    let shape = group.shape();
    Tensor::from_data(TensorData::new(group.data, shape), device)
}

impl<T: BatchSource + ?Sized> BatchSource for &T {
    fn batches_per_epoch(&self) -> usize {
        (**self).batches_per_epoch()
    }

    fn epoch(
        &self,
        epoch: usize,
        start: usize,
        rank: usize,
    ) -> Result<Box<dyn Iterator<Item = Batch> + Send>, TrainError> {
        (**self).epoch(epoch, start, rank)
    }

    fn skipped(&self) -> Vec<SkippedSample> {
        (**self).skipped()
    }
}
