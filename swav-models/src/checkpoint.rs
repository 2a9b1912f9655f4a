//! Our own checkpoint container: one burnpack file (burn's native format) holding a module's
//! tensors under `model.`, any further named f32 arrays (optimiser state, queue, ...) under
//! their own names, and string metadata (for example the model spec as JSON). Writes are atomic:
//! a temporary sibling, fsynced, renamed into place.

use std::collections::BTreeMap;
use std::path::Path;

use burn::store::ModuleSnapshot;
use burn::store::burn_pack::{Bytes, DType, Reader, Tensor as PackTensor, Writer};
use serde::{Deserialize, Serialize};

use crate::ModelError;
use crate::head::{ProjectionHeadConfig, PrototypesConfig};
use crate::import::mismatch;
use crate::resnet::{ResNet, ResNetConfig};
use crate::swav::SwavModel;

/// Name prefix of the module's tensors in a checkpoint.
pub const MODEL_PREFIX: &str = "model.";
/// Metadata key of the [`SwavModelSpec`] JSON.
pub const SPEC_KEY: &str = "swav.model";

/// What is needed to rebuild a ResNet-based [`SwavModel`] before loading its weights; stored in
/// every checkpoint of such a model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwavModelSpec {
    /// Backbone name (`resnet18`, `resnet50w2`, ...), as [`ResNetConfig::from_name`] takes it,
    /// or the name of a backbone from another crate.
    pub arch: String,
    /// Channels of the stem and first stage before the width multiplier (64 normally).
    pub base_width: usize,
    /// CIFAR stem (3x3 stride-1 first convolution, no max-pool).
    pub cifar_stem: bool,
    /// Hidden width of the projection head (0: a single Linear).
    pub hidden_mlp: usize,
    /// Embedding size.
    pub feat_dim: usize,
    /// Prototypes per head.
    pub prototypes: Vec<usize>,
    /// The backbone's full configuration as its family describes it
    /// ([`crate::BackboneFamily::describe`]; for a ResNet, its [`ResNetConfig`]); `null` in
    /// checkpoints that predate it, which then rebuild from the fields above.
    #[serde(default)]
    pub backbone: serde_json::Value,
}

impl SwavModelSpec {
    /// The ResNet configuration of this spec; an error when `arch` is not a ResNet name.
    pub fn resnet(&self) -> Result<ResNetConfig, ModelError> {
        let mut c = ResNetConfig::from_name(&self.arch)?.with_base_width(self.base_width);
        c.cifar_stem = self.cifar_stem;
        Ok(c)
    }

    /// Builds the model (ResNet backbone) with fresh weights on `device`.
    pub fn init(&self, device: &burn::tensor::Device) -> Result<SwavModel<ResNet>, ModelError> {
        let backbone = self.resnet()?.init(device)?;
        self.wrap(backbone, device)
    }

    /// Puts the head and prototypes of this spec over `backbone` (any [`crate::Backbone`]).
    pub fn wrap<E: crate::Backbone + burn::module::Module>(
        &self,
        backbone: E,
        device: &burn::tensor::Device,
    ) -> Result<SwavModel<E>, ModelError> {
        if self.feat_dim == 0 || self.prototypes.is_empty() || self.prototypes.contains(&0) {
            return Err(ModelError::InvalidConfig {
                field: "prototypes",
                reason: "needs a positive embedding size and at least one non-empty head".into(),
            });
        }
        let head = ProjectionHeadConfig {
            input: backbone.feature_dim(),
            hidden: self.hidden_mlp,
            output: self.feat_dim,
        }
        .init(device);
        let prototypes = PrototypesConfig {
            dim: self.feat_dim,
            heads: self.prototypes.clone(),
        }
        .init(device);
        Ok(SwavModel {
            backbone,
            head,
            prototypes,
        })
    }
}

/// A named f32 array stored beside the model (optimiser state, queue, ...).
#[derive(Debug, Clone, PartialEq)]
pub struct StateArray {
    /// Its name (must not start with [`MODEL_PREFIX`]).
    pub name: String,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Its values, row-major.
    pub values: Vec<f32>,
}

fn err(path: &Path, reason: impl Into<String>) -> ModelError {
    ModelError::Weights {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

/// Writes `model`'s tensors, `arrays` and `metadata` to `path` atomically (a temporary sibling,
/// fsynced and renamed into place; an interrupted write leaves the previous file intact).
pub fn write_checkpoint<M: ModuleSnapshot>(
    path: impl AsRef<Path>,
    model: &M,
    arrays: Vec<StateArray>,
    metadata: &BTreeMap<String, String>,
) -> Result<(), ModelError> {
    let path = path.as_ref();
    let mut tensors: Vec<PackTensor> = model
        .collect(None, None, false)
        .into_iter()
        .map(|mut t| {
            t.name = format!("{MODEL_PREFIX}{}", t.name);
            t
        })
        .collect();
    for a in arrays {
        if a.name.starts_with(MODEL_PREFIX) {
            return Err(err(path, format!("array name `{}` is reserved", a.name)));
        }
        let n: usize = a.shape.iter().product();
        if n != a.values.len() {
            return Err(err(
                path,
                format!(
                    "array `{}` has {} values for shape {:?}",
                    a.name,
                    a.values.len(),
                    a.shape
                ),
            ));
        }
        tensors.push(PackTensor::new(
            a.name,
            DType::F32,
            a.shape,
            None,
            Bytes::from_elems(a.values),
        ));
    }
    let mut writer = Writer::new(tensors).auto_extension(false).overwrite(true);
    for (k, v) in metadata {
        writer = writer.with_metadata(k, v);
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| err(path, format!("cannot create the folder: {e}")))?;
    }
    writer
        .write_to_file(path)
        .map_err(|e| err(path, format!("cannot write the checkpoint: {e}")))
}

/// A checkpoint read back: its metadata, its named arrays, and the model's tensors waiting to be
/// applied with [`Checkpoint::load_model`].
pub struct Checkpoint {
    path: std::path::PathBuf,
    /// String metadata.
    pub metadata: BTreeMap<String, String>,
    /// The arrays stored beside the model, by name.
    pub arrays: BTreeMap<String, StateArray>,
    model: Vec<PackTensor>,
}

impl std::fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpoint")
            .field("path", &self.path)
            .field("metadata", &self.metadata)
            .field("arrays", &self.arrays.keys().collect::<Vec<_>>())
            .field("model_tensors", &self.model.len())
            .finish()
    }
}

fn f32_values(path: &Path, name: &str, dtype: DType, bytes: &[u8]) -> Result<Vec<f32>, ModelError> {
    if dtype != DType::F32 {
        return Err(err(
            path,
            format!("array `{name}` is {dtype:?}, expected f32"),
        ));
    }
    if !bytes.len().is_multiple_of(4) {
        return Err(err(path, format!("array `{name}` has a truncated value")));
    }
    Ok(bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

/// Reads a checkpoint written by [`write_checkpoint`]. A missing, truncated or foreign file is
/// refused with its path and the reason.
pub fn read_checkpoint(path: impl AsRef<Path>) -> Result<Checkpoint, ModelError> {
    let path = path.as_ref();
    if !path.is_file() {
        return Err(err(path, "no such checkpoint file"));
    }
    let bytes = std::fs::read(path).map_err(|e| err(path, format!("cannot read: {e}")))?;
    let reader = Reader::from_bytes(Bytes::from_bytes_vec(bytes))
        .map_err(|e| err(path, format!("not a readable checkpoint (burnpack): {e}")))?;
    let metadata = reader.metadata().clone();
    let tensors = reader
        .into_tensors()
        .map_err(|e| err(path, format!("corrupt checkpoint: {e}")))?;
    let mut model = Vec::new();
    let mut arrays = BTreeMap::new();
    for t in tensors {
        if let Some(stripped) = t.name.strip_prefix(MODEL_PREFIX).map(str::to_string) {
            let mut t = t;
            t.name = stripped;
            model.push(t);
        } else {
            let (name, dtype, shape, _, bytes) = t
                .into_parts()
                .map_err(|e| err(path, format!("corrupt checkpoint: {e}")))?;
            let values = f32_values(path, &name, dtype, &bytes)?;
            let shape: Vec<usize> = shape.iter().copied().collect();
            arrays.insert(
                name.clone(),
                StateArray {
                    name,
                    shape,
                    values,
                },
            );
        }
    }
    Ok(Checkpoint {
        path: path.to_path_buf(),
        metadata,
        arrays,
        model,
    })
}

impl Checkpoint {
    /// The file it was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The model spec stored in the metadata, if any.
    pub fn spec(&self) -> Result<Option<SwavModelSpec>, ModelError> {
        match self.metadata.get(SPEC_KEY) {
            None => Ok(None),
            Some(s) => serde_json::from_str(s)
                .map(Some)
                .map_err(|e| err(&self.path, format!("bad `{SPEC_KEY}` metadata: {e}"))),
        }
    }

    /// Number of model tensors in the file.
    pub fn model_tensors(&self) -> usize {
        self.model.len()
    }

    /// Applies the stored model tensors to `model`, which must have the same structure: missing,
    /// mismatched or extra tensors are refused with their names.
    pub fn load_model<M: ModuleSnapshot>(&self, mut model: M) -> Result<M, ModelError> {
        let result = model.apply(self.model.clone(), None, None, false);
        let unused: Vec<&String> = result.unused.iter().collect();
        if let Some(reason) = mismatch("the checkpoint does not fit the model", &result, &unused) {
            return Err(err(&self.path, reason));
        }
        Ok(model)
    }
}

/// Reads a checkpoint of a ResNet-based SwAV model and rebuilds the model from its stored spec.
pub fn load_swav_model(
    path: impl AsRef<Path>,
    device: &burn::tensor::Device,
) -> Result<(SwavModel<ResNet>, Checkpoint), ModelError> {
    let ckpt = read_checkpoint(path.as_ref())?;
    let spec = ckpt.spec()?.ok_or_else(|| {
        err(
            path.as_ref(),
            format!("has no `{SPEC_KEY}` metadata, so the model cannot be rebuilt from it"),
        )
    })?;
    let model = ckpt.load_model(spec.init(device)?)?;
    Ok((model, ckpt))
}
