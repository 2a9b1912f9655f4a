//! Label subsets for semi-supervised evaluation: the ImageNet 1% / 10% list files, and a
//! seeded class-balanced fraction of any labelled dataset.

use std::collections::HashMap;
use std::path::Path;

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use crate::DataError;
use crate::dataset::{ImageDataset, Subset};
use crate::folder::ImageFolder;

/// The samples of `folder` named in a list file: one image per line, as the file name
/// (`n01440764_10026.JPEG`, the format of the ImageNet 1% and 10% lists) or a path ending in
/// it; blank lines are ignored. Entries are matched by file name; a name that matches no image,
/// or more than one, is an error naming the list file, the line and the name.
pub fn subset_from_list(
    folder: ImageFolder,
    list: impl AsRef<Path>,
) -> Result<Subset<ImageFolder>, DataError> {
    let list = list.as_ref();
    let text = std::fs::read_to_string(list).map_err(|e| DataError::io(list, e))?;
    let mut by_name: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, (path, _)) in folder.files().iter().enumerate() {
        if let Some(n) = path.file_name().and_then(|n| n.to_str()) {
            by_name.entry(n).or_default().push(i);
        }
    }
    let mut indices = Vec::new();
    for (line_no, line) in text.lines().enumerate() {
        let entry = line.trim();
        if entry.is_empty() {
            continue;
        }
        let name = entry.rsplit(['/', '\\']).next().unwrap_or(entry);
        match by_name.get(name).map(Vec::as_slice) {
            Some([one]) => indices.push(*one),
            Some(many) => {
                return Err(DataError::BadFormat {
                    path: list.to_path_buf(),
                    reason: format!(
                        "line {}: `{name}` matches {} images in {}",
                        line_no + 1,
                        many.len(),
                        folder.root().display()
                    ),
                });
            }
            None => {
                return Err(DataError::BadFormat {
                    path: list.to_path_buf(),
                    reason: format!(
                        "line {}: no image named `{name}` in {}",
                        line_no + 1,
                        folder.root().display()
                    ),
                });
            }
        }
    }
    if indices.is_empty() {
        return Err(DataError::BadFormat {
            path: list.to_path_buf(),
            reason: "the list names no image".into(),
        });
    }
    Subset::new(folder, indices)
}

/// Indices of a class-balanced `fraction` of a labelled dataset: in each class, `round(fraction
/// x class size)` samples (at least one), chosen by a generator seeded from `(seed, class)`,
/// returned in ascending order. The same seed gives the same subset on every machine.
pub fn class_balanced_fraction<D: ImageDataset>(
    dataset: &D,
    fraction: f64,
    seed: u64,
) -> Result<Vec<usize>, DataError> {
    if !(fraction > 0.0 && fraction <= 1.0) {
        return Err(DataError::param(
            "fraction",
            format!("{fraction} must be in (0, 1]"),
        ));
    }
    let mut per_class: Vec<Vec<usize>> = Vec::new();
    for i in 0..dataset.len() {
        let label = dataset.label(i).ok_or_else(|| {
            DataError::param("dataset", format!("{} has no label", dataset.describe(i)))
        })?;
        if per_class.len() <= label {
            per_class.resize_with(label + 1, Vec::new);
        }
        per_class[label].push(i);
    }
    let mut out = Vec::new();
    for (class, mut members) in per_class.into_iter().enumerate() {
        if members.is_empty() {
            continue;
        }
        let take = ((members.len() as f64 * fraction).round() as usize).clamp(1, members.len());
        let mut rng =
            ChaCha8Rng::seed_from_u64(seed ^ (class as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        members.shuffle(&mut rng);
        out.extend_from_slice(&members[..take]);
    }
    out.sort_unstable();
    Ok(out)
}
