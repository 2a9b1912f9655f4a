//! The parallel multi-crop loader: worker threads decode and augment whole batches, a bounded
//! window of batches in flight, batches yielded in order and grouped by crop resolution.
//!
//! Determinism: the order of an epoch depends only on (seed, epoch, rank, world size), and each
//! sample's crops only on (seed, epoch, sample index) through [`swav_augment::sample_rng`], so
//! the batches of an epoch are identical whatever the number of threads and their timing.

use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use swav_augment::{MultiCrop, RgbImage, sample_rng};

use crate::DataError;
use crate::dataset::ImageDataset;

/// How batches are formed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoaderConfig {
    /// Samples per batch (per worker of a data-parallel run).
    pub batch_size: usize,
    /// Run seed: shuffling and augmentation derive from it.
    pub seed: u64,
    /// Threads that decode and augment.
    pub workers: usize,
    /// Batches that may be in flight or waiting ahead of the consumer.
    pub prefetch: usize,
    /// Shuffle every epoch (from the seed and the epoch).
    pub shuffle: bool,
    /// Drop the last incomplete batch.
    pub drop_last: bool,
    /// This process's rank in a data-parallel group.
    pub rank: usize,
    /// Number of data-parallel workers.
    pub world_size: usize,
    /// Print a warning (to stderr) naming each skipped file.
    pub warn: bool,
}

impl Default for LoaderConfig {
    fn default() -> Self {
        Self {
            batch_size: 64,
            seed: 31,
            workers: 2,
            prefetch: 4,
            shuffle: true,
            drop_last: true,
            rank: 0,
            world_size: 1,
            warn: true,
        }
    }
}

/// A sample that could not be read or augmented, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedSample {
    /// Epoch in which it was met.
    pub epoch: u64,
    /// Its index in the dataset.
    pub index: usize,
    /// Its file (or position in a binary file).
    pub source: String,
    /// The error.
    pub reason: String,
}

/// One resolution group of a batch: `count` crops of `size x size` for each of `batch` samples,
/// laid out `[count x batch, 3, size, size]`, crop-major (all samples' first crop, then all
/// samples' second crop, ...), as the SwAV model concatenates crops of equal size.
#[derive(Debug, Clone, PartialEq)]
pub struct CropGroupBatch {
    /// Crop side in pixels.
    pub size: u32,
    /// Crops per sample in this group.
    pub count: usize,
    /// Samples in the batch.
    pub batch: usize,
    /// The floats, `count x batch x 3 x size x size`.
    pub data: Vec<f32>,
}

impl CropGroupBatch {
    /// The tensor shape `[count x batch, 3, size, size]`.
    pub fn shape(&self) -> [usize; 4] {
        let s = self.size as usize;
        [self.count * self.batch, 3, s, s]
    }

    /// The floats of crop `c` (in this group) for every sample, `batch x 3 x size x size`.
    pub fn crop(&self, c: usize) -> &[f32] {
        let per = self.batch * 3 * (self.size as usize).pow(2);
        &self.data[c * per..(c + 1) * per]
    }
}

/// One batch, ready for the model.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// Epoch it belongs to.
    pub epoch: u64,
    /// Its position in the epoch.
    pub index: usize,
    /// Dataset index of each sample (a skipped sample's slot holds the index of the sample
    /// whose image replaced it).
    pub indices: Vec<usize>,
    /// Label of each sample, when the dataset has labels.
    pub labels: Vec<Option<usize>>,
    /// One entry per resolution group, in the multi-crop's order.
    pub groups: Vec<CropGroupBatch>,
    /// Samples of this batch that could not be read and were replaced.
    pub skipped: usize,
}

/// Multi-crop batches of a dataset, epoch by epoch.
pub struct Loader<D> {
    dataset: Arc<D>,
    multicrop: Arc<MultiCrop>,
    config: LoaderConfig,
    skipped: Arc<Mutex<Vec<SkippedSample>>>,
}

impl<D> std::fmt::Debug for Loader<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loader")
            .field("config", &self.config)
            .finish()
    }
}

fn mix(seed: u64, epoch: u64) -> u64 {
    let mut z = seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl<D: ImageDataset + 'static> Loader<D> {
    /// A loader over `dataset`, refusing a configuration that cannot give one batch.
    pub fn new(dataset: D, multicrop: MultiCrop, config: LoaderConfig) -> Result<Self, DataError> {
        if config.batch_size == 0 {
            return Err(DataError::param("batch_size", "must be at least 1"));
        }
        if config.workers == 0 {
            return Err(DataError::param("workers", "must be at least 1"));
        }
        if config.world_size == 0 || config.rank >= config.world_size {
            return Err(DataError::param(
                "rank",
                format!("rank {} is not in 0..{}", config.rank, config.world_size),
            ));
        }
        if dataset.is_empty() {
            return Err(DataError::param("dataset", "has no samples"));
        }
        let loader = Self {
            dataset: Arc::new(dataset),
            multicrop: Arc::new(multicrop),
            config,
            skipped: Arc::new(Mutex::new(Vec::new())),
        };
        if loader.batches_per_epoch() == 0 {
            return Err(DataError::param(
                "batch_size",
                format!(
                    "{} is larger than this worker's share of the dataset ({} samples) with drop_last",
                    loader.config.batch_size,
                    loader.shard_len()
                ),
            ));
        }
        Ok(loader)
    }

    /// The configuration.
    pub fn config(&self) -> &LoaderConfig {
        &self.config
    }

    /// The dataset.
    pub fn dataset(&self) -> &D {
        &self.dataset
    }

    /// Samples in this worker's shard (the dataset padded to a multiple of the world size, as
    /// PyTorch's `DistributedSampler` does, then every `world_size`-th sample).
    pub fn shard_len(&self) -> usize {
        self.dataset.len().div_ceil(self.config.world_size)
    }

    /// Batches in one epoch of this worker.
    pub fn batches_per_epoch(&self) -> usize {
        let n = self.shard_len();
        if self.config.drop_last {
            n / self.config.batch_size
        } else {
            n.div_ceil(self.config.batch_size)
        }
    }

    /// This worker's samples for `epoch`, in order.
    pub fn epoch_order(&self, epoch: u64) -> Vec<usize> {
        let n = self.dataset.len();
        let mut order: Vec<usize> = (0..n).collect();
        if self.config.shuffle {
            let mut rng = ChaCha8Rng::seed_from_u64(mix(self.config.seed, epoch));
            order.shuffle(&mut rng);
        }
        let total = self.shard_len() * self.config.world_size;
        let mut i = 0;
        while order.len() < total {
            order.push(order[i]);
            i += 1;
        }
        order
            .into_iter()
            .skip(self.config.rank)
            .step_by(self.config.world_size)
            .collect()
    }

    /// Every sample skipped so far, sorted by epoch then dataset index (the same list whatever
    /// the worker threads' timing).
    pub fn skipped(&self) -> Vec<SkippedSample> {
        let mut v = self
            .skipped
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        v.sort_by_key(|s| (s.epoch, s.index));
        v
    }

    /// The batches of `epoch`, starting at batch `start_batch` (to resume without replaying the
    /// epoch). Work starts at once on the worker threads; dropping the iterator stops them.
    pub fn epoch(&self, epoch: u64, start_batch: usize) -> EpochIter {
        let order = Arc::new(self.epoch_order(epoch));
        let end = self.batches_per_epoch();
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                next_claim: start_batch.min(end),
                next_yield: start_batch.min(end),
                ready: BTreeMap::new(),
                stop: false,
                alive: self.config.workers,
            }),
            cv: Condvar::new(),
        });
        let window = self.config.prefetch.max(1);
        let handles = (0..self.config.workers)
            .map(|_| {
                let job = BatchJob {
                    dataset: Arc::clone(&self.dataset),
                    multicrop: Arc::clone(&self.multicrop),
                    config: self.config.clone(),
                    skipped: Arc::clone(&self.skipped),
                    order: Arc::clone(&order),
                    epoch,
                };
                let shared = Arc::clone(&shared);
                std::thread::spawn(move || worker(job, shared, end, window))
            })
            .collect();
        EpochIter {
            shared,
            handles,
            end,
        }
    }
}

struct State {
    next_claim: usize,
    next_yield: usize,
    ready: BTreeMap<usize, Option<Batch>>,
    stop: bool,
    alive: usize,
}

struct Shared {
    state: Mutex<State>,
    cv: Condvar,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Marks a worker as gone when it ends, even by a panic, so the consumer never waits forever.
struct AliveGuard(Arc<Shared>);

impl Drop for AliveGuard {
    fn drop(&mut self) {
        let mut s = self.0.lock();
        s.alive -= 1;
        self.0.cv.notify_all();
    }
}

fn worker<D: ImageDataset>(job: BatchJob<D>, shared: Arc<Shared>, end: usize, window: usize) {
    let _guard = AliveGuard(Arc::clone(&shared));
    loop {
        let b = {
            let mut s = shared.lock();
            while !s.stop && s.next_claim < end && s.next_claim >= s.next_yield + window {
                s = shared.cv.wait(s).unwrap_or_else(PoisonError::into_inner);
            }
            if s.stop || s.next_claim >= end {
                return;
            }
            s.next_claim += 1;
            s.next_claim - 1
        };
        let batch = job.make(b);
        let mut s = shared.lock();
        s.ready.insert(b, batch);
        shared.cv.notify_all();
    }
}

/// The batches of one epoch, in order.
pub struct EpochIter {
    shared: Arc<Shared>,
    handles: Vec<JoinHandle<()>>,
    end: usize,
}

impl EpochIter {
    /// Number of batches this iterator yields in all (from its start batch to the end).
    pub fn end(&self) -> usize {
        self.end
    }
}

impl Iterator for EpochIter {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        let mut s = self.shared.lock();
        loop {
            if s.next_yield >= self.end {
                return None;
            }
            let want = s.next_yield;
            if let Some(batch) = s.ready.remove(&want) {
                s.next_yield += 1;
                self.shared.cv.notify_all();
                match batch {
                    Some(b) => return Some(b),
                    None => continue, // every sample of that batch was unreadable
                }
            }
            if s.alive == 0 {
                panic!("loader worker threads ended before producing batch {want}");
            }
            s = self
                .shared
                .cv
                .wait(s)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}

impl Drop for EpochIter {
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.cv.notify_all();
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

struct BatchJob<D> {
    dataset: Arc<D>,
    multicrop: Arc<MultiCrop>,
    config: LoaderConfig,
    skipped: Arc<Mutex<Vec<SkippedSample>>>,
    order: Arc<Vec<usize>>,
    epoch: u64,
}

/// Offset added to the epoch of a replacement's generator, so a replaced slot gets crops of its
/// own rather than copies of the sample it borrows.
const REPLACEMENT_STREAM: u64 = 1 << 63;

impl<D: ImageDataset> BatchJob<D> {
    fn record(&self, index: usize, reason: String) {
        let source = self.dataset.describe(index);
        if self.config.warn {
            eprintln!("warning: skipping {source}: {reason}");
        }
        self.skipped
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(SkippedSample {
                epoch: self.epoch,
                index,
                source,
                reason,
            });
    }

    /// Builds batch `b`; `None` when none of its samples can be read.
    fn make(&self, b: usize) -> Option<Batch> {
        let bs = self.config.batch_size;
        let start = b * bs;
        let slots: &[usize] = &self.order[start..(start + bs).min(self.order.len())];
        let n = slots.len();
        let groups_cfg = &self.multicrop.config().groups;
        let mut groups: Vec<CropGroupBatch> = groups_cfg
            .iter()
            .map(|g| CropGroupBatch {
                size: g.size,
                count: g.count,
                batch: n,
                data: vec![0.0; g.count * n * 3 * (g.size as usize).pow(2)],
            })
            .collect();

        let mut images: Vec<Option<(RgbImage, Option<usize>)>> = Vec::with_capacity(n);
        for &idx in slots {
            match self.dataset.get(idx) {
                Ok(s) if s.image.width() > 0 && s.image.height() > 0 => {
                    images.push(Some((s.image, s.label)))
                }
                Ok(_) => {
                    self.record(idx, "decoded to an empty image".into());
                    images.push(None);
                }
                Err(e) => {
                    self.record(idx, e.to_string());
                    images.push(None);
                }
            }
        }
        if images.iter().all(Option::is_none) {
            return None;
        }

        let mut indices = Vec::with_capacity(n);
        let mut labels = Vec::with_capacity(n);
        let mut skipped = 0;
        for j in 0..n {
            // A skipped slot takes the image of the next readable sample of the same batch
            // (cyclically), with a generator of its own: the batch keeps its size and stays a
            // function of its own samples only.
            let (src, seed_epoch) = if images[j].is_some() {
                (j, self.epoch)
            } else {
                skipped += 1;
                let k = (1..n)
                    .map(|d| (j + d) % n)
                    .find(|&k| images[k].is_some())
                    .unwrap_or(j);
                (k, self.epoch | REPLACEMENT_STREAM)
            };
            let Some((image, label)) = &images[src] else {
                continue;
            };
            let mut rng = sample_rng(self.config.seed, seed_epoch, slots[j] as u64);
            let mut outs: Vec<&mut [f32]> = Vec::new();
            for g in groups.iter_mut() {
                // Crop c of sample j lives at ((c * n) + j) * per: split the group's buffer at
                // increasing offsets to hand out one disjoint slice per crop.
                let per = 3 * (g.size as usize).pow(2);
                let mut pos = 0;
                let mut rest: &mut [f32] = &mut g.data;
                for c in 0..g.count {
                    let off = (c * n + j) * per;
                    let (_, tail) = std::mem::take(&mut rest).split_at_mut(off - pos);
                    let (mine, after) = tail.split_at_mut(per);
                    outs.push(mine);
                    rest = after;
                    pos = off + per;
                }
            }
            if let Err(e) = self.multicrop.apply_into(image, &mut rng, &mut outs) {
                self.record(slots[src], e.to_string());
            }
            indices.push(slots[src]);
            labels.push(*label);
        }
        Some(Batch {
            epoch: self.epoch,
            index: b,
            indices,
            labels,
            groups,
            skipped,
        })
    }
}
