//! Readers of the binary dataset formats: CIFAR-10 and CIFAR-100 ("binary version"), STL-10
//! (including the 100,000-image unlabeled split), MNIST and Fashion-MNIST (IDX, gzipped or
//! not). Small sets are read into memory at opening; STL-10's unlabeled split is read per
//! sample from the file.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use swav_augment::RgbImage;

use crate::DataError;
use crate::dataset::{ImageDataset, Sample};

/// Which part of a dataset to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// The training split.
    Train,
    /// The test split.
    Test,
    /// STL-10's 100,000 unlabeled images.
    Unlabeled,
}

/// How the pixels of one stored image are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// Channel planes, each row-major (CIFAR).
    PlanarRowMajor,
    /// Channel planes, each column-major (STL-10).
    PlanarColMajor,
    /// One gray plane, row-major (MNIST).
    Gray,
}

fn to_image(raw: &[u8], w: u32, h: u32, layout: Layout) -> RgbImage {
    let (wu, hu) = (w as usize, h as usize);
    let plane = wu * hu;
    RgbImage::from_fn(w, h, |x, y| {
        let (x, y) = (x as usize, y as usize);
        match layout {
            Layout::PlanarRowMajor => {
                let i = y * wu + x;
                image::Rgb([raw[i], raw[plane + i], raw[2 * plane + i]])
            }
            Layout::PlanarColMajor => {
                let i = x * hu + y;
                image::Rgb([raw[i], raw[plane + i], raw[2 * plane + i]])
            }
            Layout::Gray => {
                let v = raw[y * wu + x];
                image::Rgb([v, v, v])
            }
        }
    })
}

fn read_file(path: &Path) -> Result<Vec<u8>, DataError> {
    std::fs::read(path).map_err(|e| DataError::io(path, e))
}

fn check_records(path: &Path, size: u64, record: u64, what: &str) -> Result<u64, DataError> {
    if size == 0 || !size.is_multiple_of(record) {
        return Err(DataError::BadFileSize {
            path: path.to_path_buf(),
            size,
            record,
            what: what.to_string(),
        });
    }
    Ok(size / record)
}

/// Images held in memory in their stored layout, with labels.
#[derive(Debug, Clone)]
pub struct InMemoryImages {
    name: String,
    width: u32,
    height: u32,
    layout: Layout,
    bytes_per_image: usize,
    pixels: Vec<u8>,
    labels: Vec<Option<usize>>,
    classes: Option<usize>,
}

impl InMemoryImages {
    /// All labels, in sample order.
    pub fn labels(&self) -> &[Option<usize>] {
        &self.labels
    }
}

impl ImageDataset for InMemoryImages {
    fn len(&self) -> usize {
        self.labels.len()
    }
    fn get(&self, index: usize) -> Result<Sample, DataError> {
        if index >= self.labels.len() {
            return Err(DataError::OutOfRange {
                index,
                len: self.labels.len(),
            });
        }
        let raw = &self.pixels[index * self.bytes_per_image..(index + 1) * self.bytes_per_image];
        Ok(Sample {
            image: to_image(raw, self.width, self.height, self.layout),
            label: self.labels[index],
        })
    }
    fn num_classes(&self) -> Option<usize> {
        self.classes
    }
    fn label(&self, index: usize) -> Option<usize> {
        self.labels.get(index).copied().flatten()
    }
    fn describe(&self, index: usize) -> String {
        format!("{} sample {index}", self.name)
    }
}

/// Which CIFAR-100 label to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cifar100Label {
    /// The 100 fine classes.
    Fine,
    /// The 20 coarse superclasses.
    Coarse,
}

const CIFAR_PIXELS: usize = 3 * 32 * 32;

/// Reads records of `label_bytes` label bytes then 3072 pixel bytes from each file.
fn read_cifar(
    files: &[PathBuf],
    label_bytes: usize,
    label_at: usize,
    classes: usize,
    name: &str,
) -> Result<InMemoryImages, DataError> {
    let record = label_bytes + CIFAR_PIXELS;
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    for path in files {
        let data = read_file(path)?;
        let n = check_records(
            path,
            data.len() as u64,
            record as u64,
            &format!("{name} records"),
        )?;
        pixels.reserve(n as usize * CIFAR_PIXELS);
        for r in data.chunks_exact(record) {
            let label = r[label_at] as usize;
            if label >= classes {
                return Err(DataError::BadFormat {
                    path: path.clone(),
                    reason: format!(
                        "label {label} is not below {classes}: is this the right format?"
                    ),
                });
            }
            labels.push(Some(label));
            pixels.extend_from_slice(&r[label_bytes..]);
        }
    }
    Ok(InMemoryImages {
        name: name.to_string(),
        width: 32,
        height: 32,
        layout: Layout::PlanarRowMajor,
        bytes_per_image: CIFAR_PIXELS,
        pixels,
        labels,
        classes: Some(classes),
    })
}

/// CIFAR-10, binary version: `dir` holds `data_batch_1.bin` ... `data_batch_5.bin` and
/// `test_batch.bin` (the `cifar-10-batches-bin` folder of the official archive).
pub fn cifar10(dir: impl AsRef<Path>, split: Split) -> Result<InMemoryImages, DataError> {
    let dir = dir.as_ref();
    if !dir.is_dir() {
        return Err(DataError::MissingRoot {
            path: dir.to_path_buf(),
        });
    }
    let files: Vec<PathBuf> = match split {
        Split::Train => (1..=5)
            .map(|i| dir.join(format!("data_batch_{i}.bin")))
            .collect(),
        Split::Test => vec![dir.join("test_batch.bin")],
        Split::Unlabeled => {
            return Err(DataError::param("split", "CIFAR-10 has no unlabeled split"));
        }
    };
    read_cifar(&files, 1, 0, 10, "CIFAR-10")
}

/// CIFAR-100, binary version: `dir` holds `train.bin` and `test.bin`; each record has a coarse
/// then a fine label byte.
pub fn cifar100(
    dir: impl AsRef<Path>,
    split: Split,
    label: Cifar100Label,
) -> Result<InMemoryImages, DataError> {
    let dir = dir.as_ref();
    if !dir.is_dir() {
        return Err(DataError::MissingRoot {
            path: dir.to_path_buf(),
        });
    }
    let file = match split {
        Split::Train => dir.join("train.bin"),
        Split::Test => dir.join("test.bin"),
        Split::Unlabeled => {
            return Err(DataError::param(
                "split",
                "CIFAR-100 has no unlabeled split",
            ));
        }
    };
    let (at, classes) = match label {
        Cifar100Label::Coarse => (0, 20),
        Cifar100Label::Fine => (1, 100),
    };
    read_cifar(&[file], 2, at, classes, "CIFAR-100")
}

const STL_SIDE: u32 = 96;
const STL_PIXELS: usize = 3 * 96 * 96;

/// STL-10's labelled splits, in memory: `dir` holds `train_X.bin` / `train_y.bin` (5,000) and
/// `test_X.bin` / `test_y.bin` (8,000); labels are stored 1-10 and returned 0-9.
pub fn stl10(dir: impl AsRef<Path>, split: Split) -> Result<InMemoryImages, DataError> {
    let dir = dir.as_ref();
    if !dir.is_dir() {
        return Err(DataError::MissingRoot {
            path: dir.to_path_buf(),
        });
    }
    let (xs, ys) = match split {
        Split::Train => ("train_X.bin", "train_y.bin"),
        Split::Test => ("test_X.bin", "test_y.bin"),
        Split::Unlabeled => {
            return Err(DataError::param(
                "split",
                "use Stl10Unlabeled for the unlabeled split",
            ));
        }
    };
    let (xp, yp) = (dir.join(xs), dir.join(ys));
    let pixels = read_file(&xp)?;
    let n = check_records(
        &xp,
        pixels.len() as u64,
        STL_PIXELS as u64,
        "STL-10 96x96x3 images",
    )?;
    let raw_labels = read_file(&yp)?;
    if raw_labels.len() as u64 != n {
        return Err(DataError::BadFileSize {
            path: yp,
            size: raw_labels.len() as u64,
            record: 1,
            what: format!("one label per image of {} ({n} images)", xp.display()),
        });
    }
    let mut labels = Vec::with_capacity(raw_labels.len());
    for &l in &raw_labels {
        if !(1..=10).contains(&l) {
            return Err(DataError::BadFormat {
                path: yp.clone(),
                reason: format!("label {l} is not in 1..=10"),
            });
        }
        labels.push(Some(l as usize - 1));
    }
    Ok(InMemoryImages {
        name: "STL-10".into(),
        width: STL_SIDE,
        height: STL_SIDE,
        layout: Layout::PlanarColMajor,
        bytes_per_image: STL_PIXELS,
        pixels,
        labels,
        classes: Some(10),
    })
}

/// STL-10's unlabeled split (`unlabeled_X.bin`, 100,000 images, 2.8 GB), read one image at a
/// time from the file rather than into memory.
#[derive(Debug)]
pub struct Stl10Unlabeled {
    path: PathBuf,
    file: Mutex<File>,
    len: usize,
}

impl Stl10Unlabeled {
    /// Opens `dir/unlabeled_X.bin`, checking its size.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, DataError> {
        let path = dir.as_ref().join("unlabeled_X.bin");
        let file = File::open(&path).map_err(|e| DataError::io(&path, e))?;
        let size = file.metadata().map_err(|e| DataError::io(&path, e))?.len();
        let n = check_records(&path, size, STL_PIXELS as u64, "STL-10 96x96x3 images")?;
        Ok(Self {
            path,
            file: Mutex::new(file),
            len: n as usize,
        })
    }
}

impl ImageDataset for Stl10Unlabeled {
    fn len(&self) -> usize {
        self.len
    }
    fn get(&self, index: usize) -> Result<Sample, DataError> {
        if index >= self.len {
            return Err(DataError::OutOfRange {
                index,
                len: self.len,
            });
        }
        let mut raw = vec![0u8; STL_PIXELS];
        {
            let mut f = self
                .file
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            f.seek(SeekFrom::Start((index * STL_PIXELS) as u64))
                .and_then(|_| f.read_exact(&mut raw))
                .map_err(|e| DataError::io(&self.path, e))?;
        }
        Ok(Sample {
            image: to_image(&raw, STL_SIDE, STL_SIDE, Layout::PlanarColMajor),
            label: None,
        })
    }
    fn num_classes(&self) -> Option<usize> {
        None
    }
    fn label(&self, _index: usize) -> Option<usize> {
        None
    }
    fn describe(&self, index: usize) -> String {
        format!("{} image {index}", self.path.display())
    }
}

/// Reads a file, gunzipping it when it starts with the gzip magic bytes.
fn read_maybe_gz(path: &Path) -> Result<Vec<u8>, DataError> {
    let raw = read_file(path)?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(raw.as_slice())
            .read_to_end(&mut out)
            .map_err(|e| DataError::BadFormat {
                path: path.to_path_buf(),
                reason: format!("bad gzip stream: {e}"),
            })?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// The first of `names` (with or without `.gz`) that exists in `dir`.
fn find(dir: &Path, names: &[&str]) -> Result<PathBuf, DataError> {
    for n in names {
        for candidate in [dir.join(n), dir.join(format!("{n}.gz"))] {
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    Err(DataError::io(
        dir.join(names[0]),
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "no such file (also tried .gz)",
        ),
    ))
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// MNIST or Fashion-MNIST from IDX files (`train-images-idx3-ubyte`, `train-labels-idx1-ubyte`,
/// `t10k-...`), gzipped or not; gray images are expanded to three channels.
pub fn mnist(dir: impl AsRef<Path>, split: Split) -> Result<InMemoryImages, DataError> {
    let dir = dir.as_ref();
    if !dir.is_dir() {
        return Err(DataError::MissingRoot {
            path: dir.to_path_buf(),
        });
    }
    let prefix = match split {
        Split::Train => "train",
        Split::Test => "t10k",
        Split::Unlabeled => return Err(DataError::param("split", "MNIST has no unlabeled split")),
    };
    let ip = find(
        dir,
        &[
            &format!("{prefix}-images-idx3-ubyte"),
            &format!("{prefix}-images.idx3-ubyte"),
        ],
    )?;
    let lp = find(
        dir,
        &[
            &format!("{prefix}-labels-idx1-ubyte"),
            &format!("{prefix}-labels.idx1-ubyte"),
        ],
    )?;
    let images = read_maybe_gz(&ip)?;
    let labels = read_maybe_gz(&lp)?;
    let bad = |path: &Path, reason: String| DataError::BadFormat {
        path: path.to_path_buf(),
        reason,
    };
    if images.len() < 16 || be32(&images, 0) != 0x0803 {
        return Err(bad(&ip, "not an IDX image file (magic 0x00000803)".into()));
    }
    if labels.len() < 8 || be32(&labels, 0) != 0x0801 {
        return Err(bad(&lp, "not an IDX label file (magic 0x00000801)".into()));
    }
    let (n, rows, cols) = (
        be32(&images, 4) as usize,
        be32(&images, 8),
        be32(&images, 12),
    );
    if rows == 0 || cols == 0 {
        return Err(bad(&ip, format!("images of {rows} x {cols} pixels")));
    }
    let per = rows as usize * cols as usize;
    // The header's counts are the file's word: checked, so a corrupt one is refused, not
    // wrapped around.
    let expected = n.checked_mul(per).and_then(|b| b.checked_add(16));
    if expected != Some(images.len()) {
        return Err(DataError::BadFileSize {
            path: ip,
            size: images.len() as u64,
            record: per as u64,
            what: format!("{n} images of {rows} x {cols} after a 16-byte header"),
        });
    }
    if be32(&labels, 4) as usize != n || labels.len() != 8 + n {
        return Err(bad(
            &lp,
            format!(
                "expected {n} labels after an 8-byte header, one per image of {}",
                ip.display()
            ),
        ));
    }
    let labels: Vec<Option<usize>> = labels[8..].iter().map(|&l| Some(l as usize)).collect();
    let classes = labels.iter().flatten().max().map_or(0, |m| m + 1).max(10);
    Ok(InMemoryImages {
        name: format!("IDX {}", ip.display()),
        width: cols,
        height: rows,
        layout: Layout::Gray,
        bytes_per_image: per,
        pixels: images[16..].to_vec(),
        labels,
        classes: Some(classes),
    })
}
