//! ImageFolder: `root/<class>/<file>`, as torchvision and ImageNet lay it out.

use std::path::{Path, PathBuf};

use crate::DataError;
use crate::dataset::{DecodeLimits, ImageDataset, Sample, decode_image};

/// File extensions read as images (case-insensitive), as torchvision's `IMG_EXTENSIONS` for the
/// formats we decode.
pub const IMAGE_EXTENSIONS: [&str; 5] = ["jpg", "jpeg", "png", "bmp", "webp"];

fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))? {
        out.push(entry.map_err(|e| DataError::io(dir, e))?.path());
    }
    out.sort();
    Ok(out)
}

/// An image classification dataset in folders: class `i` is the `i`-th class folder in name
/// order (torchvision's rule), files are taken in name order within each class. Only the file
/// list is read at opening; images are decoded in [`ImageDataset::get`].
#[derive(Debug, Clone)]
pub struct ImageFolder {
    root: PathBuf,
    classes: Vec<String>,
    files: Vec<(PathBuf, usize)>,
    limits: DecodeLimits,
}

impl ImageFolder {
    /// Opens `root`, refusing a missing root, a root without class folders, and a class folder
    /// without image files. Files of other types are ignored, hidden entries (starting with
    /// `.`) too.
    pub fn open(root: impl AsRef<Path>) -> Result<Self, DataError> {
        let root = root.as_ref().to_path_buf();
        if !root.is_dir() {
            return Err(DataError::MissingRoot { path: root });
        }
        let mut classes = Vec::new();
        let mut files = Vec::new();
        for dir in sorted_entries(&root)? {
            let name = match dir.file_name().and_then(|n| n.to_str()) {
                Some(n) if !n.starts_with('.') && dir.is_dir() => n.to_string(),
                _ => continue,
            };
            let label = classes.len();
            let before = files.len();
            for f in sorted_entries(&dir)? {
                let hidden = f
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with('.'));
                // Symbolic links are listed even when they dangle: reading one then fails and
                // the file is skipped and counted by name, not silently left out.
                let link = std::fs::symlink_metadata(&f).is_ok_and(|m| m.file_type().is_symlink());
                if (f.is_file() || link) && !hidden && is_image(&f) {
                    files.push((f, label));
                }
            }
            if files.len() == before {
                return Err(DataError::EmptyClass { path: dir });
            }
            classes.push(name);
        }
        if classes.is_empty() {
            return Err(DataError::NoClasses { path: root });
        }
        Ok(Self {
            root,
            classes,
            files,
            limits: DecodeLimits::default(),
        })
    }

    /// Opens the split `root/<split>` (e.g. `train`, `val`, `test`).
    pub fn open_split(root: impl AsRef<Path>, split: &str) -> Result<Self, DataError> {
        Self::open(root.as_ref().join(split))
    }

    /// Replaces the decode limits.
    pub fn with_limits(mut self, limits: DecodeLimits) -> Self {
        self.limits = limits;
        self
    }

    /// The class names, in label order.
    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    /// The root folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The file of sample `index`.
    pub fn path(&self, index: usize) -> Option<&Path> {
        self.files.get(index).map(|(p, _)| p.as_path())
    }

    /// All files with their labels, in sample order.
    pub fn files(&self) -> &[(PathBuf, usize)] {
        &self.files
    }
}

impl ImageDataset for ImageFolder {
    fn len(&self) -> usize {
        self.files.len()
    }

    fn get(&self, index: usize) -> Result<Sample, DataError> {
        let (path, label) = self.files.get(index).ok_or(DataError::OutOfRange {
            index,
            len: self.files.len(),
        })?;
        let bytes = std::fs::read(path).map_err(|e| match std::fs::read_link(path) {
            Ok(target) if !path.exists() => DataError::io(
                path,
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!(
                        "a dangling symbolic link (its target {} does not exist)",
                        target.display()
                    ),
                ),
            ),
            _ => DataError::io(path, e),
        })?;
        let image = decode_image(&bytes, path, self.limits)?;
        Ok(Sample {
            image,
            label: Some(*label),
        })
    }

    fn num_classes(&self) -> Option<usize> {
        Some(self.classes.len())
    }

    fn label(&self, index: usize) -> Option<usize> {
        self.files.get(index).map(|(_, l)| *l)
    }

    fn describe(&self, index: usize) -> String {
        match self.files.get(index) {
            Some((p, _)) => p.display().to_string(),
            None => format!("{} sample {index}", self.root.display()),
        }
    }
}
