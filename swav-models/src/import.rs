//! Loading PyTorch weights through burn's own store: torchvision ResNet state dicts and the
//! original SwAV checkpoints (their key names, the `module.` prefix of `DistributedDataParallel`,
//! the projection head and the prototypes).

use std::path::Path;

use burn::store::{KeyRemapper, ModuleSnapshot, ModuleStore, PytorchStore, SafetensorsStore};

use crate::ModelError;
use crate::resnet::ResNet;
use crate::swav::SwavModel;

/// torchvision's `downsample.0` / `downsample.1` are our `downsample.conv` / `downsample.bn`.
const DOWNSAMPLE: [(&str, &str); 2] = [
    (r"^(.*)\.downsample\.0\.(.*)$", "$1.downsample.conv.$2"),
    (r"^(.*)\.downsample\.1\.(.*)$", "$1.downsample.bn.$2"),
];

/// Keys a PyTorch file may hold that have no counterpart here, by design.
fn ignorable(key: &str) -> bool {
    key.ends_with("num_batches_tracked") || key.starts_with("fc.") || key.starts_with("module.fc.")
}

fn remapper(patterns: &[(&str, &str)]) -> Result<KeyRemapper, ModelError> {
    KeyRemapper::from_patterns(patterns.to_vec()).map_err(|e| ModelError::Weights {
        path: String::new(),
        reason: format!("bad key pattern: {e}"),
    })
}

/// Applies `store` (set to report rather than fail on partial matches) to `module`, refusing
/// missing, mismatched and unexpected tensors with their names.
fn load<M: ModuleSnapshot, S: ModuleStore>(
    mut module: M,
    path: &Path,
    mut store: S,
) -> Result<M, ModelError> {
    let name = path.display().to_string();
    if !path.is_file() {
        return Err(ModelError::Weights {
            path: name,
            reason: "no such file".into(),
        });
    }
    let result = module
        .load_from(&mut store)
        .map_err(|e| ModelError::Weights {
            path: name.clone(),
            reason: e.to_string(),
        })?;
    let unused: Vec<&String> = result.unused.iter().filter(|k| !ignorable(k)).collect();
    if let Some(reason) = mismatch("keys or shapes do not match", &result, &unused) {
        return Err(ModelError::Weights { path: name, reason });
    }
    Ok(module)
}

/// What `result` reports as missing, mismatched or `unused` (the unused keys that matter), after
/// `headline`; `None` when everything fits.
pub(crate) fn mismatch(
    headline: &str,
    result: &burn::store::ApplyResult,
    unused: &[&String],
) -> Option<String> {
    if result.missing.is_empty() && result.errors.is_empty() && unused.is_empty() {
        return None;
    }
    let mut reason = String::from(headline);
    if !result.missing.is_empty() {
        let m: Vec<&str> = result.missing.iter().map(|(k, _)| k.as_str()).collect();
        reason += &format!("; missing from the file: {}", m.join(", "));
    }
    if !result.errors.is_empty() {
        let e: Vec<String> = result.errors.iter().map(|e| format!("{e:?}")).collect();
        reason += &format!("; mismatched: {}", e.join("; "));
    }
    if !unused.is_empty() {
        let u: Vec<&str> = unused.iter().map(|k| k.as_str()).collect();
        reason += &format!("; in the file but not in the model: {}", u.join(", "));
    }
    Some(reason)
}

/// Loads a torchvision ResNet state dict (`torch.save(model.state_dict(), path)`) into `net`,
/// which must have the same architecture. The classifier (`fc`) is ignored. A file whose keys or
/// shapes do not match is refused, with the list of what is missing, mismatched or extra.
pub fn load_torchvision_resnet(net: ResNet, path: impl AsRef<Path>) -> Result<ResNet, ModelError> {
    let store = PytorchStore::from_file(path.as_ref()).remap(remapper(&DOWNSAMPLE)?);
    load(
        net,
        path.as_ref(),
        store.allow_partial(true).map_indices_contiguous(false),
    )
}

/// Loads an original SwAV checkpoint into `model`: keys with or without the `module.` prefix,
/// the backbone at the top level, `projection_head.{0,1,3}` (or one Linear), and `prototypes`
/// (one head) or `prototypes.prototypes{i}` (several heads). `top_level_key` selects a nested
/// dict (e.g. `"state_dict"` in training checkpoints). The original's backbones are ResNets:
/// another backbone type is refused with the keys that do not fit.
pub fn load_swav_checkpoint<
    E: crate::Backbone + burn::module::Module + burn::module::ModuleDisplay,
>(
    model: SwavModel<E>,
    path: impl AsRef<Path>,
    top_level_key: Option<&str>,
) -> Result<SwavModel<E>, ModelError> {
    let single_linear_head = model.head.fc2.is_none();
    let mut patterns: Vec<(&str, &str)> = vec![(r"^module\.(.*)$", "$1")];
    patterns.extend(DOWNSAMPLE);
    if single_linear_head {
        patterns.push((r"^projection_head\.(weight|bias)$", "head.fc1.$1"));
    } else {
        patterns.push((r"^projection_head\.0\.(.*)$", "head.fc1.$1"));
        patterns.push((r"^projection_head\.1\.(.*)$", "head.bn.$1"));
        patterns.push((r"^projection_head\.3\.(.*)$", "head.fc2.$1"));
    }
    patterns.push((r"^prototypes\.weight$", "prototypes.heads.0.weight"));
    patterns.push((
        r"^prototypes\.prototypes(\d+)\.weight$",
        "prototypes.heads.$1.weight",
    ));
    patterns.push((r"^(conv1|bn1|layer[1-4])\.(.*)$", "backbone.$1.$2"));
    let mut store = PytorchStore::from_file(path.as_ref())
        .remap(remapper(&patterns)?)
        .allow_partial(true)
        .map_indices_contiguous(false);
    if let Some(k) = top_level_key {
        store = store.with_top_level_key(k);
    }
    load(model, path.as_ref(), store)
}

/// Writes the module's tensors as a safetensors file, atomically: a temporary file beside
/// `path`, renamed into place once complete, so an interrupted save never leaves a half file.
pub fn save_safetensors<M: ModuleSnapshot>(
    module: &M,
    path: impl AsRef<Path>,
) -> Result<(), ModelError> {
    let path = path.as_ref();
    let name = path.display().to_string();
    let file = crate::atomic::AtomicFile::create(path).map_err(|e| ModelError::Weights {
        path: name.clone(),
        reason: format!("cannot create: {e}"),
    })?;
    let mut store = SafetensorsStore::from_file(file.temp_path()).overwrite(true);
    module
        .save_into(&mut store)
        .map_err(|e| ModelError::Weights {
            path: name.clone(),
            reason: format!("cannot write: {e}"),
        })?;
    file.commit().map_err(|e| ModelError::Weights {
        path: name,
        reason: format!("cannot move the finished file into place: {e}"),
    })
}

/// Loads a safetensors file written by [`save_safetensors`] (or any file with the same keys)
/// into `module`, refusing missing, mismatched or extra tensors.
pub fn load_safetensors<M: ModuleSnapshot>(
    module: M,
    path: impl AsRef<Path>,
) -> Result<M, ModelError> {
    let store = SafetensorsStore::from_file(path.as_ref()).allow_partial(true);
    load(module, path.as_ref(), store)
}
