//! Opening the datasets of a run from its [`DataConfig`]: the pretraining set, and the
//! labelled train/test splits of the kNN monitor when the data has them.

use std::path::Path;
use std::sync::Arc;

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use swav_data::{
    DataError, ImageDataset, ImageFolder, Sample, Shapes10, Split, Stl10Unlabeled, Subset,
    class_balanced_fraction,
};

use crate::TrainError;
use crate::config::{DataConfig, DataKind};

/// A shared dataset of any type.
pub type DynDataset = Arc<dyn ImageDataset>;

/// The datasets of a run.
#[derive(Clone)]
pub struct RunData {
    /// What pretraining reads (labels, if any, are not used).
    pub train: DynDataset,
    /// Labelled training split for the kNN monitor's memory bank.
    pub knn_train: Option<DynDataset>,
    /// Labelled test split of the kNN monitor.
    pub knn_test: Option<DynDataset>,
    /// Number of classes of the monitor's splits.
    pub classes: Option<usize>,
    /// A one-line description for the summary.
    pub description: String,
}

impl std::fmt::Debug for RunData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunData")
            .field("train", &self.train.len())
            .field("description", &self.description)
            .finish()
    }
}

/// Two datasets one after the other (STL-10's train and unlabeled splits).
struct Concat(DynDataset, DynDataset);

impl ImageDataset for Concat {
    fn len(&self) -> usize {
        self.0.len() + self.1.len()
    }
    fn get(&self, index: usize) -> Result<Sample, DataError> {
        let n = self.0.len();
        if index < n {
            self.0.get(index)
        } else {
            self.1.get(index - n)
        }
    }
    fn num_classes(&self) -> Option<usize> {
        None
    }
    fn label(&self, _index: usize) -> Option<usize> {
        None
    }
    fn describe(&self, index: usize) -> String {
        let n = self.0.len();
        if index < n {
            self.0.describe(index)
        } else {
            self.1.describe(index - n)
        }
    }
}

/// At most `limit` samples of `d` (0: all): class-balanced when labelled, else a seeded choice.
fn limited(d: DynDataset, limit: usize, seed: u64) -> Result<DynDataset, TrainError> {
    if limit == 0 || limit >= d.len() {
        return Ok(d);
    }
    let labelled = d.num_classes().is_some() && (0..d.len()).all(|i| d.label(i).is_some());
    let indices = if labelled {
        let mut idx = class_balanced_fraction(&d, limit as f64 / d.len() as f64, seed)?;
        idx.truncate(limit);
        idx
    } else {
        let mut idx: Vec<usize> = (0..d.len()).collect();
        idx.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
        idx.truncate(limit);
        idx.sort_unstable();
        idx
    };
    Ok(Arc::new(Subset::new(d, indices)?))
}

fn folder_splits(root: &std::path::Path) -> Result<(DynDataset, Option<DynDataset>), TrainError> {
    let train = root.join("train");
    if train.is_dir() {
        let t: DynDataset = Arc::new(ImageFolder::open(&train)?);
        let test = ["test", "val"]
            .iter()
            .map(|s| root.join(s))
            .find(|p| p.is_dir());
        let test: Option<DynDataset> = match test {
            Some(p) => Some(Arc::new(ImageFolder::open(p)?)),
            None => None,
        };
        Ok((t, test))
    } else {
        Ok((Arc::new(ImageFolder::open(root)?), None))
    }
}

/// The splits of a dataset before limits: what pretraining reads, the kNN monitor's labelled
/// pair, and what they are.
struct Splits {
    train: DynDataset,
    knn_train: Option<DynDataset>,
    knn_test: Option<DynDataset>,
    description: String,
}

/// The splits of `config`'s dataset kind at `path`.
fn open_splits(config: &DataConfig, path: &Path) -> Result<Splits, TrainError> {
    let labelled_pair = |train: DynDataset, test, description| Splits {
        train: train.clone(),
        knn_train: Some(train),
        knn_test: test,
        description,
    };
    Ok(match config.kind {
        DataKind::Shapes10 => {
            let tr: DynDataset =
                Arc::new(Shapes10::train(config.shapes10_seed, config.shapes10_train));
            let te: DynDataset =
                Arc::new(Shapes10::test(config.shapes10_seed, config.shapes10_test));
            let d = format!(
                "Shapes10 (built in, seed {}): {} train / {} test images",
                config.shapes10_seed, config.shapes10_train, config.shapes10_test
            );
            labelled_pair(tr, Some(te), d)
        }
        DataKind::Folder => {
            let (tr, te) = folder_splits(path)?;
            labelled_pair(tr, te, format!("image folder {}", path.display()))
        }
        DataKind::Cifar10 | DataKind::Cifar100 | DataKind::Mnist => {
            let open = |split| -> Result<DynDataset, TrainError> {
                Ok(match config.kind {
                    DataKind::Cifar10 => Arc::new(swav_data::cifar10(path, split)?),
                    DataKind::Cifar100 => Arc::new(swav_data::cifar100(
                        path,
                        split,
                        swav_data::Cifar100Label::Fine,
                    )?),
                    _ => Arc::new(swav_data::mnist(path, split)?),
                })
            };
            let d = format!("{:?} at {}", config.kind, path.display());
            labelled_pair(open(Split::Train)?, Some(open(Split::Test)?), d)
        }
        DataKind::Stl10 => {
            let tr: DynDataset = Arc::new(swav_data::stl10(path, Split::Train)?);
            let te: DynDataset = Arc::new(swav_data::stl10(path, Split::Test)?);
            let un: DynDataset = Arc::new(Stl10Unlabeled::open(path)?);
            Splits {
                train: Arc::new(Concat(tr.clone(), un)),
                knn_train: Some(tr),
                knn_test: Some(te),
                description: format!("STL-10 train + unlabeled at {}", path.display()),
            }
        }
    })
}

/// Opens the datasets of `config`; a missing or malformed dataset is an error naming it,
/// before any training work.
pub fn open_data(
    config: &DataConfig,
    seed: u64,
    knn: (usize, usize),
) -> Result<RunData, TrainError> {
    let path = config.path.clone().unwrap_or_default();
    let Splits {
        train,
        knn_train,
        knn_test,
        description,
    } = open_splits(config, &path)?;
    let train = limited(train, config.limit, seed)?;
    let classes = knn_train.as_ref().and_then(|d| d.num_classes());
    let labelled =
        |d: &DynDataset| d.num_classes().is_some() && !d.is_empty() && d.label(0).is_some();
    let knn_train = match knn_train.filter(labelled) {
        Some(d) => Some(limited(d, knn.0, seed ^ 0x6b6e_6e00)?),
        None => None,
    };
    let knn_test = match knn_test.filter(labelled) {
        Some(d) => Some(limited(d, knn.1, seed ^ 0x6b6e_6e01)?),
        None => None,
    };
    let description = format!("{description}; pretraining on {} images", train.len());
    Ok(RunData {
        train,
        knn_train,
        knn_test,
        classes,
        description,
    })
}
