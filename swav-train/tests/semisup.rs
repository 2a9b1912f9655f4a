//! Semi-supervised fine-tuning: only the subset's labels are read, the recipe's numbers are
//! the original's, and fine-tuning on a labelled subset learns.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use burn::tensor::Device;
use swav_augment::Normalize;
use swav_data::{DataError, ImageDataset, Sample, Shapes10};
use swav_eval::{EvalTransform, ExtractConfig};
use swav_tinynet::TinyNet;
use swav_train::{DynDataset, SemiSupConfig, finetune, seeded_init};

/// Shapes10 whose labels are a poison (class 99) outside `allowed`, recording every index
/// whose image or label is read.
struct Guarded {
    inner: Shapes10,
    allowed: BTreeSet<usize>,
    read: Mutex<BTreeSet<usize>>,
}

impl Guarded {
    fn label_of(&self, index: usize) -> Option<usize> {
        if self.allowed.contains(&index) {
            self.inner.label(index)
        } else {
            Some(99)
        }
    }
}

impl ImageDataset for Guarded {
    fn len(&self) -> usize {
        self.inner.len()
    }
    fn get(&self, index: usize) -> Result<Sample, DataError> {
        self.read.lock().expect("lock").insert(index);
        let mut s = self.inner.get(index)?;
        s.label = self.label_of(index);
        Ok(s)
    }
    fn num_classes(&self) -> Option<usize> {
        Some(10)
    }
    fn label(&self, index: usize) -> Option<usize> {
        self.read.lock().expect("lock").insert(index);
        self.label_of(index)
    }
    fn describe(&self, index: usize) -> String {
        self.inner.describe(index)
    }
}

fn recipe() -> SemiSupConfig {
    SemiSupConfig {
        epochs: 3,
        batch_size: 32,
        lr_backbone: 0.05,
        lr_head: 0.5,
        decay_epochs: vec![2],
        workers: 2,
        ..SemiSupConfig::imagenet_10pct(32, Normalize::CIFAR10)
    }
}

#[test]
fn the_original_recipes_are_the_defaults() {
    let ten = SemiSupConfig::imagenet_10pct(224, Normalize::SWAV);
    assert_eq!(ten.epochs, 20);
    assert_eq!(ten.batch_size, 256);
    assert_eq!((ten.lr_backbone, ten.lr_head), (0.01, 0.2));
    assert_eq!(ten.decay_epochs, vec![12, 16]);
    assert_eq!(ten.decay_factor, 0.2);
    assert_eq!(ten.momentum, 0.9);
    assert_eq!(ten.weight_decay, 0.0);
    let one = SemiSupConfig::imagenet_1pct(224, Normalize::SWAV);
    assert_eq!((one.lr_backbone, one.lr_head), (0.02, 5.0));
    // x0.2 at epochs 12 and 16.
    let (b, h) = ten.rates(11);
    assert_eq!((b, h), (0.01, 0.2));
    let (b, h) = ten.rates(12);
    assert!((b - 0.002).abs() < 1e-12 && (h - 0.04).abs() < 1e-12);
    let (b, _) = ten.rates(19);
    assert!((b - 0.0004).abs() < 1e-12);
}

#[test]
fn only_the_subsets_labels_are_used_and_it_learns() {
    let device = Device::flex();
    let inner = Shapes10::train(3, 600);
    // A 20 % class-balanced subset: 120 images.
    let subset = swav_data::class_balanced_fraction(&inner, 0.2, 5).expect("subset");
    assert_eq!(subset.len(), 120);
    let guarded = Arc::new(Guarded {
        inner,
        allowed: subset.iter().copied().collect(),
        read: Mutex::new(BTreeSet::new()),
    });
    let train: DynDataset = guarded.clone();
    let test: DynDataset = Arc::new(Shapes10::test(3, 200));
    let backbone = seeded_init(&device.clone().autodiff(), 7, |d| {
        Ok::<_, std::convert::Infallible>(TinyNet::new(16, d))
    })
    .expect("init");
    let extract = ExtractConfig {
        batch_size: 100,
        workers: 2,
        transform: EvalTransform::small(32),
    };
    let (_, report) = finetune(
        backbone,
        &train,
        &subset,
        &test,
        10,
        &recipe(),
        &extract,
        &device,
    )
    .expect("a poisoned label outside the subset would make the run fail");
    let read = guarded.read.lock().expect("lock");
    let outside: Vec<_> = read.difference(&guarded.allowed).collect();
    assert!(outside.is_empty(), "read outside the subset: {outside:?}");
    assert_eq!(report.labelled_images, 120);
    assert_eq!(report.train_images, 600);
    assert_eq!(report.epochs.len(), 3);
    assert!(
        (report.epochs[2].lr_head - 0.1).abs() < 1e-12,
        "x0.2 at epoch 2"
    );
    assert!(report.epochs[2].train_loss < report.epochs[0].train_loss);
    assert!(
        report.best_top1 > 10.0,
        "above chance: {}",
        report.best_top1
    );
}

#[test]
fn a_label_outside_the_classes_is_refused_before_training() {
    let device = Device::flex();
    let inner = Shapes10::train(3, 100);
    let guarded = Arc::new(Guarded {
        inner,
        allowed: BTreeSet::new(),
        read: Mutex::new(BTreeSet::new()),
    });
    let train: DynDataset = guarded;
    let test: DynDataset = Arc::new(Shapes10::test(3, 20));
    let backbone = TinyNet::new(4, &device.clone().autodiff());
    let extract = ExtractConfig {
        batch_size: 10,
        workers: 1,
        transform: EvalTransform::small(32),
    };
    let e = finetune(
        backbone,
        &train,
        &[0, 1],
        &test,
        10,
        &recipe(),
        &extract,
        &device,
    )
    .expect_err("label 99 of 10 classes");
    assert!(e.to_string().contains("label 99"), "{e}");
}
