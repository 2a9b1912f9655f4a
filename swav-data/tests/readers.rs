//! Readers: layouts, pixel order, labels, and the errors for bad roots and bad files. Fixtures
//! are built in temporary folders.

use std::fs;
use std::io::Write;
use std::path::Path;

use image::{ImageFormat, Rgb, RgbImage};
use swav_data::{
    Cifar100Label, DataError, DecodeLimits, ImageDataset, ImageFolder, Shapes10, Split,
    Stl10Unlabeled, Unlabeled, cifar10, cifar100, class_balanced_fraction, decode_image, mnist,
    stl10, subset_from_list,
};

fn save(img: &RgbImage, path: &Path, format: ImageFormat) {
    fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    img.save_with_format(path, format).expect("save");
}

fn pattern(w: u32, h: u32, k: u8) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| Rgb([x as u8 * 10 + k, y as u8 * 10, k]))
}

#[test]
fn image_folder_sorts_classes_and_files_and_reads_splits() {
    let dir = tempfile::tempdir().expect("tmp");
    let train = dir.path().join("train");
    save(
        &pattern(8, 6, 1),
        &train.join("dog/b.png"),
        ImageFormat::Png,
    );
    save(
        &pattern(8, 6, 2),
        &train.join("dog/a.PNG"),
        ImageFormat::Png,
    );
    save(
        &pattern(5, 5, 3),
        &train.join("cat/z.jpg"),
        ImageFormat::Jpeg,
    );
    save(
        &pattern(5, 5, 4),
        &train.join("cat/y.bmp"),
        ImageFormat::Bmp,
    );
    fs::write(train.join("cat/notes.txt"), "ignored").expect("write");
    fs::write(train.join("README"), "not a class").expect("write");
    let ds = ImageFolder::open_split(dir.path(), "train").expect("open");
    assert_eq!(ds.classes(), ["cat", "dog"]);
    assert_eq!(ds.len(), 4);
    let names: Vec<String> = (0..4)
        .map(|i| {
            ds.path(i)
                .expect("path")
                .file_name()
                .expect("name")
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert_eq!(names, ["y.bmp", "z.jpg", "a.PNG", "b.png"]);
    assert_eq!(
        (0..4).map(|i| ds.label(i)).collect::<Vec<_>>(),
        [Some(0), Some(0), Some(1), Some(1)]
    );
    let s = ds.get(2).expect("decode");
    assert_eq!(s.image, pattern(8, 6, 2), "PNG decodes losslessly");
    assert_eq!(s.label, Some(1));
    assert_eq!(Unlabeled(ds).get(0).expect("decode").label, None);
}

#[test]
fn bad_roots_are_refused_before_any_work() {
    let dir = tempfile::tempdir().expect("tmp");
    match ImageFolder::open(dir.path().join("missing")) {
        Err(DataError::MissingRoot { path }) => assert!(path.ends_with("missing")),
        other => panic!("expected MissingRoot, got {other:?}"),
    }
    match ImageFolder::open(dir.path()) {
        Err(DataError::NoClasses { .. }) => {}
        other => panic!("expected NoClasses, got {other:?}"),
    }
    save(
        &pattern(4, 4, 0),
        &dir.path().join("a/x.png"),
        ImageFormat::Png,
    );
    fs::create_dir_all(dir.path().join("b")).expect("mkdir");
    fs::write(dir.path().join("b/readme.txt"), "no images").expect("write");
    let err = ImageFolder::open(dir.path()).expect_err("empty class");
    assert!(
        matches!(&err, DataError::EmptyClass { path } if path.ends_with("b")),
        "{err}"
    );
    assert!(
        err.to_string().contains("b"),
        "the message names the folder: {err}"
    );
}

/// A PNG whose header claims 100,000 x 100,000 pixels.
fn huge_png() -> Vec<u8> {
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(b"IHDR");
    ihdr.extend_from_slice(&100_000u32.to_be_bytes());
    ihdr.extend_from_slice(&100_000u32.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    let mut crc = flate2::Crc::new();
    crc.update(&ihdr);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend_from_slice(&13u32.to_be_bytes());
    png.extend_from_slice(&ihdr);
    png.extend_from_slice(&crc.sum().to_be_bytes());
    png
}

#[test]
fn bad_files_give_errors_that_name_them() {
    let dir = tempfile::tempdir().expect("tmp");
    let good = dir.path().join("good.jpg");
    save(&pattern(16, 16, 7), &good, ImageFormat::Jpeg);
    let bytes = fs::read(&good).expect("read");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty.jpg", Vec::new()),
        ("truncated.jpg", bytes[..bytes.len() / 2].to_vec()),
        ("text.jpg", b"this is not an image".to_vec()),
        ("huge.png", huge_png()),
    ];
    for (name, content) in cases {
        let path = dir.path().join(name);
        fs::write(&path, &content).expect("write");
        let err = decode_image(&content, &path, DecodeLimits::default()).expect_err(name);
        assert!(matches!(err, DataError::Decode { .. }), "{name}: {err}");
        assert!(
            err.to_string().contains(name),
            "the message names the file: {err}"
        );
    }
    assert!(decode_image(&bytes, &good, DecodeLimits::default()).is_ok());
}

fn write(path: &Path, bytes: &[u8]) {
    fs::File::create(path)
        .and_then(|mut f| f.write_all(bytes))
        .expect("write");
}

/// A CIFAR record: pixel (x, y) of channel c is `(c * 80 + y * 2 + x) % 256`.
fn cifar_pixels(k: u8) -> Vec<u8> {
    let mut v = Vec::with_capacity(3072);
    for c in 0..3usize {
        for y in 0..32usize {
            for x in 0..32usize {
                v.push(((c * 80 + y * 2 + x + k as usize) % 256) as u8);
            }
        }
    }
    v
}

#[test]
fn cifar_binary_formats_read_labels_and_planar_pixels() {
    let dir = tempfile::tempdir().expect("tmp");
    for i in 1..=5u8 {
        let mut f = vec![i % 10];
        f.extend(cifar_pixels(i));
        f.push(9);
        f.extend(cifar_pixels(100));
        write(&dir.path().join(format!("data_batch_{i}.bin")), &f);
    }
    let mut t = vec![3];
    t.extend(cifar_pixels(0));
    write(&dir.path().join("test_batch.bin"), &t);
    let train = cifar10(dir.path(), Split::Train).expect("train");
    assert_eq!(train.len(), 10);
    assert_eq!(train.label(0), Some(1));
    assert_eq!(train.label(1), Some(9));
    let test = cifar10(dir.path(), Split::Test).expect("test");
    let img = test.get(0).expect("sample").image;
    assert_eq!(
        img.get_pixel(5, 7).0,
        [
            (7 * 2 + 5) as u8,
            (80 + 7 * 2 + 5) as u8,
            (160 + 7 * 2 + 5) as u8
        ]
    );

    write(&dir.path().join("test_batch.bin"), &t[..3000]);
    let err = cifar10(dir.path(), Split::Test).expect_err("short file");
    assert!(matches!(err, DataError::BadFileSize { .. }), "{err}");
    assert!(err.to_string().contains("test_batch.bin"), "{err}");

    let mut c100 = vec![4, 42];
    c100.extend(cifar_pixels(1));
    write(&dir.path().join("train.bin"), &c100);
    assert_eq!(
        cifar100(dir.path(), Split::Train, Cifar100Label::Fine)
            .expect("fine")
            .label(0),
        Some(42)
    );
    assert_eq!(
        cifar100(dir.path(), Split::Train, Cifar100Label::Coarse)
            .expect("coarse")
            .label(0),
        Some(4)
    );
}

#[test]
fn stl10_reads_column_major_planes_and_the_unlabeled_split() {
    let dir = tempfile::tempdir().expect("tmp");
    // Channel c, column x, row y stored at c * 9216 + x * 96 + y.
    let mut img = vec![0u8; 3 * 96 * 96];
    for c in 0..3usize {
        for x in 0..96usize {
            for y in 0..96usize {
                img[c * 9216 + x * 96 + y] = ((x + 2 * y + 50 * c) % 256) as u8;
            }
        }
    }
    let two = [img.clone(), img.clone()].concat();
    write(&dir.path().join("train_X.bin"), &two);
    write(&dir.path().join("train_y.bin"), &[1, 10]);
    write(
        &dir.path().join("unlabeled_X.bin"),
        &[two.clone(), img.clone()].concat(),
    );
    let train = stl10(dir.path(), Split::Train).expect("train");
    assert_eq!((train.label(0), train.label(1)), (Some(0), Some(9)));
    let s = train.get(1).expect("sample").image;
    assert_eq!(s.get_pixel(3, 10).0, [23, 73, 123]);
    let un = Stl10Unlabeled::open(dir.path()).expect("unlabeled");
    assert_eq!(un.len(), 3);
    assert_eq!(un.get(2).expect("sample").image, s);
    write(&dir.path().join("train_y.bin"), &[1]);
    assert!(matches!(
        stl10(dir.path(), Split::Train),
        Err(DataError::BadFileSize { .. })
    ));
}

fn idx(images: &[[u8; 6]], labels: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let mut im = Vec::new();
    im.extend_from_slice(&0x0803u32.to_be_bytes());
    im.extend_from_slice(&(images.len() as u32).to_be_bytes());
    im.extend_from_slice(&2u32.to_be_bytes());
    im.extend_from_slice(&3u32.to_be_bytes());
    for i in images {
        im.extend_from_slice(i);
    }
    let mut lb = Vec::new();
    lb.extend_from_slice(&0x0801u32.to_be_bytes());
    lb.extend_from_slice(&(labels.len() as u32).to_be_bytes());
    lb.extend_from_slice(labels);
    (im, lb)
}

#[test]
fn mnist_reads_plain_and_gzipped_idx() {
    let dir = tempfile::tempdir().expect("tmp");
    let (im, lb) = idx(&[[1, 2, 3, 4, 5, 6], [9, 9, 9, 9, 9, 9]], &[7, 3]);
    write(&dir.path().join("train-images-idx3-ubyte"), &im);
    write(&dir.path().join("train-labels-idx1-ubyte"), &lb);
    let gz = |b: &[u8]| {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(b).expect("gzip");
        e.finish().expect("gzip")
    };
    write(&dir.path().join("t10k-images-idx3-ubyte.gz"), &gz(&im));
    write(&dir.path().join("t10k-labels-idx1-ubyte.gz"), &gz(&lb));
    for split in [Split::Train, Split::Test] {
        let ds = mnist(dir.path(), split).expect("mnist");
        assert_eq!(ds.len(), 2);
        assert_eq!(ds.label(0), Some(7));
        let img = ds.get(0).expect("sample").image;
        assert_eq!(img.dimensions(), (3, 2));
        assert_eq!(
            img.get_pixel(2, 1).0,
            [6, 6, 6],
            "gray is copied to three channels"
        );
    }
    write(&dir.path().join("train-labels-idx1-ubyte"), &lb[..9]);
    assert!(mnist(dir.path(), Split::Train).is_err());
}

#[test]
fn label_subsets_from_lists_and_balanced_fractions() {
    let dir = tempfile::tempdir().expect("tmp");
    for (class, n) in [("a", 10), ("b", 30)] {
        for i in 0..n {
            save(
                &pattern(2, 2, i as u8),
                &dir.path().join(format!("{class}/{class}_{i}.png")),
                ImageFormat::Png,
            );
        }
    }
    let list = dir.path().join("1percent.txt");
    fs::write(&list, "a_3.png\n\nb/b_7.png\n").expect("write");
    let folder = ImageFolder::open(dir.path()).expect("open");
    let sub = subset_from_list(folder.clone(), &list).expect("subset");
    assert_eq!(sub.len(), 2);
    assert_eq!(sub.label(1), Some(1));
    fs::write(&list, "a_3.png\nnope.png\n").expect("write");
    let err = subset_from_list(folder.clone(), &list).expect_err("unknown name");
    assert!(
        err.to_string().contains("line 2") && err.to_string().contains("nope.png"),
        "{err}"
    );

    let tenth = class_balanced_fraction(&folder, 0.1, 5).expect("fraction");
    assert_eq!(tenth.len(), 1 + 3);
    assert_eq!(
        tenth
            .iter()
            .filter(|&&i| folder.label(i) == Some(0))
            .count(),
        1
    );
    assert_eq!(
        tenth,
        class_balanced_fraction(&folder, 0.1, 5).expect("same seed")
    );
    assert_ne!(
        tenth,
        class_balanced_fraction(&folder, 0.1, 6).expect("other seed")
    );
    assert!(class_balanced_fraction(&folder, 0.0, 5).is_err());
}

#[test]
fn shapes10_is_deterministic_balanced_and_varied() {
    let a = Shapes10::train(31, 100);
    let b = Shapes10::train(31, 100);
    assert_eq!(a.get(17).expect("a").image, b.get(17).expect("b").image);
    assert_ne!(
        a.get(17).expect("a").image,
        Shapes10::train(32, 100).get(17).expect("c").image
    );
    assert_ne!(
        a.get(17).expect("a").image,
        Shapes10::test(31, 100).get(17).expect("d").image
    );
    let counts = (0..100).fold([0; 10], |mut c, i| {
        c[a.label(i).expect("label")] += 1;
        c
    });
    assert_eq!(counts, [10; 10]);
    for i in 0..20 {
        let img = a.get(i).expect("sample").image;
        assert_eq!(img.dimensions(), (32, 32));
        let distinct: std::collections::HashSet<[u8; 3]> = img.pixels().map(|p| p.0).collect();
        assert!(distinct.len() > 20, "sample {i} has structure");
    }
}

/// Corrupt IDX headers the fuzzer found: counts whose product overflows, and images of zero
/// pixels, are refused naming the images file (they panicked, or named the labels file).
#[test]
fn corrupt_idx_headers_are_refused_naming_the_images_file() {
    let dir = tempfile::tempdir().expect("tmp");
    let (im, lb) = idx(&[[1, 2, 3, 4, 5, 6]], &[7]);
    write(&dir.path().join("train-labels-idx1-ubyte"), &lb);
    for (n, rows, cols) in [(u32::MAX, u32::MAX, u32::MAX), (5, 0, 3), (5, 2, 0)] {
        let mut bad = im.clone();
        bad[4..8].copy_from_slice(&n.to_be_bytes());
        bad[8..12].copy_from_slice(&rows.to_be_bytes());
        bad[12..16].copy_from_slice(&cols.to_be_bytes());
        bad.truncate(16);
        write(&dir.path().join("train-images-idx3-ubyte"), &bad);
        let e = mnist(dir.path(), Split::Train).expect_err("corrupt header");
        assert!(
            e.to_string().contains("train-images-idx3-ubyte"),
            "{n} x {rows} x {cols}: {e}"
        );
    }
}

/// The decoder's budget covers the 8-bit RGB result as well as its own buffer (the fuzzer found
/// a gray image decoding within the budget whose RGB copy went past it).
#[test]
fn the_rgb_result_counts_against_the_decode_budget() {
    let gray = image::GrayImage::from_pixel(700, 700, image::Luma([90]));
    let mut png = std::io::Cursor::new(Vec::new());
    gray.write_to(&mut png, ImageFormat::Png).expect("encode");
    let limits = swav_data::DecodeLimits {
        max_side: 16_384,
        max_alloc: 1 << 20,
    };
    // 490 KB decoded fits the 1 MiB budget; 1.47 MB as RGB does not.
    let e = decode_image(png.get_ref(), Path::new("gray.png"), limits).expect_err("over budget");
    assert!(
        e.to_string().contains("gray.png") && e.to_string().contains("8-bit RGB"),
        "{e}"
    );
    let roomy = swav_data::DecodeLimits {
        max_alloc: 2 << 20,
        ..limits
    };
    let rgb = decode_image(png.get_ref(), Path::new("gray.png"), roomy).expect("fits");
    assert_eq!(rgb.dimensions(), (700, 700));
}
