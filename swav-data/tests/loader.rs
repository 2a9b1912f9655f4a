//! The loader: determinism across thread counts, order and sharding, resume, bad files
//! skipped and counted, batch layout and tensors.

use std::collections::HashSet;
use std::fs;

use image::{ImageFormat, Rgb, RgbImage};
use swav_augment::{CropGroup, MultiCrop, MultiCropConfig};
use swav_data::{Batch, ImageDataset, ImageFolder, Loader, LoaderConfig, Shapes10};

fn small_multicrop() -> MultiCrop {
    MultiCrop::new(MultiCropConfig {
        groups: vec![
            CropGroup {
                count: 2,
                size: 16,
                min_scale: 0.3,
                max_scale: 1.0,
            },
            CropGroup {
                count: 3,
                size: 8,
                min_scale: 0.1,
                max_scale: 0.3,
            },
        ],
        ..MultiCropConfig::cifar()
    })
    .expect("valid")
}

fn config(workers: usize) -> LoaderConfig {
    LoaderConfig {
        batch_size: 8,
        seed: 5,
        workers,
        prefetch: 3,
        warn: false,
        ..LoaderConfig::default()
    }
}

fn collect(loader: &Loader<Shapes10>, epoch: u64, start: usize) -> Vec<Batch> {
    loader.epoch(epoch, start).collect()
}

#[test]
fn batches_are_identical_whatever_the_number_of_threads() {
    let one = Loader::new(Shapes10::train(1, 70), small_multicrop(), config(1)).expect("loader");
    let four = Loader::new(Shapes10::train(1, 70), small_multicrop(), config(4)).expect("loader");
    let a = collect(&one, 3, 0);
    let b = collect(&four, 3, 0);
    assert_eq!(a.len(), 70 / 8, "drop_last");
    assert_eq!(a, b);
    // Another epoch is shuffled differently.
    assert_ne!(a[0].indices, collect(&one, 4, 0)[0].indices);
}

#[test]
fn batches_have_the_crop_major_layout() {
    let loader = Loader::new(Shapes10::train(1, 40), small_multicrop(), config(2)).expect("loader");
    let batch = loader.epoch(0, 0).next().expect("a batch");
    assert_eq!(batch.groups.len(), 2);
    assert_eq!(batch.groups[0].shape(), [2 * 8, 3, 16, 16]);
    assert_eq!(batch.groups[1].shape(), [3 * 8, 3, 8, 8]);
    assert_eq!(batch.labels.len(), 8);
    assert_eq!(
        batch.labels[0],
        Shapes10::train(1, 40).label(batch.indices[0])
    );
    // The two large crops of one sample differ; crop 0 of sample 0 is the first block.
    let per = 3 * 16 * 16;
    let g = &batch.groups[0];
    assert_ne!(&g.crop(0)[..per], &g.crop(1)[..per]);
    assert_eq!(g.data.len(), 16 * per);
    assert_eq!(g.crop(0), &g.data[..8 * per]);
}

#[test]
fn shards_are_disjoint_and_cover_the_epoch() {
    let n = 64;
    let mut seen = Vec::new();
    for rank in 0..4 {
        let cfg = LoaderConfig {
            rank,
            world_size: 4,
            ..config(2)
        };
        let loader = Loader::new(Shapes10::train(1, n), small_multicrop(), cfg).expect("loader");
        assert_eq!(loader.batches_per_epoch(), 2);
        seen.extend(loader.epoch_order(7));
    }
    assert_eq!(seen.len(), n);
    assert_eq!(
        seen.iter().collect::<HashSet<_>>().len(),
        n,
        "every sample exactly once"
    );
}

#[test]
fn resuming_at_a_batch_gives_the_rest_of_the_epoch() {
    let loader = Loader::new(Shapes10::train(2, 50), small_multicrop(), config(2)).expect("loader");
    let full = collect(&loader, 1, 0);
    let tail = collect(&loader, 1, 4);
    assert_eq!(tail.len(), full.len() - 4);
    assert_eq!(tail, full[4..].to_vec());
    assert!(collect(&loader, 1, 99).is_empty());
}

#[test]
fn dropping_an_epoch_early_stops_the_workers() {
    let loader =
        Loader::new(Shapes10::train(2, 400), small_multicrop(), config(3)).expect("loader");
    let mut it = loader.epoch(0, 0);
    assert!(it.next().is_some());
    drop(it); // must return (joins the threads) instead of hanging
}

#[test]
fn bad_files_are_skipped_counted_and_replaced() {
    let dir = tempfile::tempdir().expect("tmp");
    for i in 0..12u8 {
        let img = RgbImage::from_fn(20, 20, |x, y| Rgb([x as u8 * 9 + i, y as u8 * 9, i * 20]));
        fs::create_dir_all(dir.path().join("c")).expect("mkdir");
        img.save_with_format(dir.path().join(format!("c/{i:02}.png")), ImageFormat::Png)
            .expect("save");
    }
    fs::write(dir.path().join("c/03.png"), b"").expect("zero bytes");
    fs::write(dir.path().join("c/07.png"), b"not a png at all").expect("not an image");
    let folder = ImageFolder::open(dir.path()).expect("open");
    let cfg = LoaderConfig {
        batch_size: 4,
        shuffle: false,
        ..config(2)
    };
    let loader = Loader::new(folder, small_multicrop(), cfg).expect("loader");
    let batches: Vec<Batch> = loader.epoch(0, 0).collect();
    assert_eq!(batches.len(), 3, "the run goes on");
    assert!(
        batches.iter().all(|b| b.indices.len() == 4),
        "batches keep their size"
    );
    assert_eq!(batches.iter().map(|b| b.skipped).sum::<usize>(), 2);
    let skipped = loader.skipped();
    assert_eq!(skipped.len(), 2);
    assert!(
        skipped[0].source.ends_with("03.png") && skipped[1].source.ends_with("07.png"),
        "{skipped:?}"
    );
    assert!(
        !batches[0].indices.contains(&3),
        "the unreadable sample's slot holds another image"
    );
}

#[test]
fn impossible_configs_are_refused() {
    let bad =
        |cfg: LoaderConfig| Loader::new(Shapes10::train(1, 10), small_multicrop(), cfg).is_err();
    assert!(bad(LoaderConfig {
        batch_size: 0,
        ..config(1)
    }));
    assert!(bad(LoaderConfig {
        workers: 0,
        ..config(1)
    }));
    assert!(bad(LoaderConfig {
        rank: 2,
        world_size: 2,
        ..config(1)
    }));
    assert!(
        bad(LoaderConfig {
            batch_size: 11,
            ..config(1)
        }),
        "drop_last leaves no batch"
    );
    assert!(!bad(LoaderConfig {
        batch_size: 11,
        drop_last: false,
        ..config(1)
    }));
}
