//! Dataset readers, the built-in default dataset and the parallel multi-crop loader of swav-rs.
//!
//! - Readers implement [`ImageDataset`] (`len` and `get`, in the style of burn's `Dataset`, with
//!   errors that name the file): [`ImageFolder`], CIFAR-10/100 ([`cifar10`], [`cifar100`]),
//!   STL-10 ([`stl10`], [`Stl10Unlabeled`]), MNIST and Fashion-MNIST ([`mnist`]).
//! - Wrappers: [`Subset`], [`Unlabeled`]; label subsets [`subset_from_list`] (the ImageNet
//!   1% / 10% lists) and [`class_balanced_fraction`].
//! - [`Shapes10`]: the built-in procedurally generated dataset that needs no download.
//! - [`Loader`]: worker threads, bounded prefetch, deterministic batches grouped by resolution.

/// The README's example, compiled and run as a doc test.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeExample;

mod binary;
mod dataset;
mod error;
mod folder;
mod loader;
mod subset;
mod synthetic;

pub use binary::{
    Cifar100Label, InMemoryImages, Split, Stl10Unlabeled, cifar10, cifar100, mnist, stl10,
};
pub use dataset::{DecodeLimits, ImageDataset, Sample, Subset, Unlabeled, decode_image};
pub use error::DataError;
pub use folder::{IMAGE_EXTENSIONS, ImageFolder};
pub use loader::{Batch, CropGroupBatch, EpochIter, Loader, LoaderConfig, SkippedSample};
pub use subset::{class_balanced_fraction, subset_from_list};
pub use synthetic::{SHAPES10_CLASSES, SHAPES10_SIDE, Shapes10};
