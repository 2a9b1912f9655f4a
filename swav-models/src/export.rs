//! Weights out, in the forms the PyTorch world loads: torchvision's ResNet key names (with the
//! original SwAV's `projection_head.{0,1,3}` and `prototypes` when the head goes too), written
//! as a PyTorch `.pt` state dict (`torch.save`'s zip format, readable by
//! `torch.load(..., weights_only=True)`) or as safetensors.
//!
//! torchvision's `load_state_dict` is strict: every BatchNorm gets its `num_batches_tracked`
//! (int64; written as 0, as burn's BatchNorm does not count its updates: PyTorch reads the count
//! only with `momentum=None`, cumulative averaging, which neither torchvision's nor SwAV's
//! BatchNorms use, so the exported statistics behave the same in training and evaluation), and a backbone-only export carries torchvision's classifier `fc` as zeros of the
//! requested class count (SwAV trains none; replace it or fine-tune it).

use std::io::Write;
use std::path::Path;

use burn::store::ModuleSnapshot;

use crate::ModelError;
use crate::resnet::ResNet;
use crate::swav::SwavModel;

/// A tensor's values, in the two types a state dict needs here.
#[derive(Debug, Clone, PartialEq)]
pub enum ExportValues {
    /// 32-bit floats (weights, statistics).
    F32(Vec<f32>),
    /// 64-bit integers (`num_batches_tracked`).
    I64(Vec<i64>),
}

/// One named tensor of an export, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportTensor {
    /// Its key in the state dict.
    pub name: String,
    /// Its shape (empty for a scalar).
    pub shape: Vec<usize>,
    /// Its values.
    pub values: ExportValues,
}

/// What goes into an export beside the backbone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportHead {
    /// The backbone alone, with torchvision's classifier `fc` as zeros of this many classes
    /// (`None`: no `fc`; torchvision then needs `strict=False`).
    BackboneOnly {
        /// Classes of the zero classifier.
        fc_classes: Option<usize>,
    },
    /// The backbone, the projection head and the prototypes, as the original SwAV saves them.
    WithHead,
}

fn err(path: &Path, reason: impl Into<String>) -> ModelError {
    ModelError::Weights {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

/// Our parameter path as torchvision's / the original SwAV's key, and whether the values are
/// transposed (burn's Linear weights are `[in, out]`, PyTorch's `[out, in]`). `None` for a
/// tensor that is not exported (the head without [`ExportHead::WithHead`]).
fn torch_name(name: &str, with_head: bool) -> Option<(String, bool)> {
    let mut n = name.to_string();
    for (a, b) in [
        (".downsample.conv.", ".downsample.0."),
        (".downsample.bn.", ".downsample.1."),
    ] {
        n = n.replace(a, b);
    }
    if let Some(rest) = n.strip_suffix(".gamma") {
        n = format!("{rest}.weight");
    } else if let Some(rest) = n.strip_suffix(".beta") {
        n = format!("{rest}.bias");
    }
    if let Some(rest) = n.strip_prefix("backbone.") {
        return Some((rest.to_string(), false));
    }
    if !with_head {
        return None;
    }
    let linear =
        |layer: &str, rest: &str| (format!("projection_head.{layer}.{rest}"), rest == "weight");
    if let Some(rest) = n.strip_prefix("head.fc1.") {
        return Some(linear("0", rest));
    }
    if let Some(rest) = n.strip_prefix("head.bn.") {
        return Some((format!("projection_head.1.{rest}"), false));
    }
    if let Some(rest) = n.strip_prefix("head.fc2.") {
        return Some(linear("3", rest));
    }
    if n == "prototypes.heads.0.weight" {
        return Some(("prototypes.weight".into(), true));
    }
    n.strip_prefix("prototypes.heads.")
        .and_then(|r| r.strip_suffix(".weight"))
        .map(|i| (format!("prototypes.prototypes{i}.weight"), true))
}

/// The model's tensors under torchvision's names (and the original SwAV's for the head), with
/// every BatchNorm's `num_batches_tracked` and, for a backbone-only export, the zero `fc`.
pub fn torchvision_tensors(
    model: &SwavModel<ResNet>,
    head: ExportHead,
) -> Result<Vec<ExportTensor>, ModelError> {
    let with_head = head == ExportHead::WithHead;
    let mut out = Vec::new();
    for t in model.collect(None, None, false) {
        let Some((name, transpose)) = torch_name(&t.name, with_head) else {
            continue;
        };
        let shape: Vec<usize> = t.shape.to_vec();
        if t.dtype != burn::tensor::DType::F32 {
            return Err(err(
                Path::new(&name),
                format!("{:?} weights; the export writes f32", t.dtype),
            ));
        }
        let bytes = t
            .into_bytes()
            .map_err(|e| err(Path::new(&name), format!("cannot read the tensor: {e:?}")))?;
        let values: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let (shape, values) = if transpose && shape.len() == 2 {
            let (r, c) = (shape[0], shape[1]);
            let mut v = vec![0f32; values.len()];
            for i in 0..r {
                for j in 0..c {
                    v[j * r + i] = values[i * c + j];
                }
            }
            (vec![c, r], v)
        } else {
            (shape, values)
        };
        if let Some(bn) = name.strip_suffix(".running_var") {
            out.push(ExportTensor {
                name: format!("{bn}.num_batches_tracked"),
                shape: Vec::new(),
                values: ExportValues::I64(vec![0]),
            });
        }
        out.push(ExportTensor {
            name,
            shape,
            values: ExportValues::F32(values),
        });
    }
    if let ExportHead::BackboneOnly {
        fc_classes: Some(classes),
    } = head
    {
        let features = crate::Backbone::feature_dim(&model.backbone);
        out.push(ExportTensor {
            name: "fc.weight".into(),
            shape: vec![classes, features],
            values: ExportValues::F32(vec![0.0; classes * features]),
        });
        out.push(ExportTensor {
            name: "fc.bias".into(),
            shape: vec![classes],
            values: ExportValues::F32(vec![0.0; classes]),
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

fn bytes_of(values: &ExportValues) -> Vec<u8> {
    match values {
        ExportValues::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        ExportValues::I64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
    }
}

/// Writes `path` whole or not at all from `bytes`.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), ModelError> {
    crate::atomic::write_atomically(path, bytes).map_err(|e| err(path, e.to_string()))
}

/// Writes `tensors` as a safetensors file (F32 and I64 entries), through the safetensors crate.
pub fn write_safetensors_export(path: &Path, tensors: &[ExportTensor]) -> Result<(), ModelError> {
    use safetensors::tensor::{Dtype, TensorView};
    let data: Vec<Vec<u8>> = tensors.iter().map(|t| bytes_of(&t.values)).collect();
    let mut views = Vec::with_capacity(tensors.len());
    for (t, bytes) in tensors.iter().zip(&data) {
        let dtype = match t.values {
            ExportValues::F32(_) => Dtype::F32,
            ExportValues::I64(_) => Dtype::I64,
        };
        let view = TensorView::new(dtype, t.shape.clone(), bytes)
            .map_err(|e| err(path, format!("tensor `{}`: {e}", t.name)))?;
        views.push((t.name.clone(), view));
    }
    let bytes = safetensors::serialize(views, None).map_err(|e| err(path, e.to_string()))?;
    write_atomically(path, &bytes)
}

/// The pickle (protocol 2) of an `OrderedDict` of `torch._utils._rebuild_tensor_v2` calls, the
/// i-th tensor's storage being the archive's `data/i`.
fn state_dict_pickle(tensors: &[ExportTensor]) -> Vec<u8> {
    fn global(p: &mut Vec<u8>, module: &str, name: &str) {
        p.push(b'c');
        p.extend(module.as_bytes());
        p.push(b'\n');
        p.extend(name.as_bytes());
        p.push(b'\n');
    }
    fn string(p: &mut Vec<u8>, s: &str) {
        p.push(b'X');
        p.extend((s.len() as u32).to_le_bytes());
        p.extend(s.as_bytes());
    }
    fn int(p: &mut Vec<u8>, v: usize) {
        p.push(b'J');
        p.extend((v as i32).to_le_bytes());
    }
    fn ints(p: &mut Vec<u8>, v: &[usize]) {
        p.push(b'(');
        for &x in v {
            int(p, x);
        }
        p.push(b't');
    }
    let mut p = vec![0x80, 2];
    global(&mut p, "collections", "OrderedDict");
    p.extend([b')', b'R', b'(']);
    for (i, t) in tensors.iter().enumerate() {
        let numel: usize = t.shape.iter().product();
        let mut strides = vec![1usize; t.shape.len()];
        for d in (0..t.shape.len().saturating_sub(1)).rev() {
            strides[d] = strides[d + 1] * t.shape[d + 1];
        }
        string(&mut p, &t.name);
        global(&mut p, "torch._utils", "_rebuild_tensor_v2");
        p.push(b'(');
        // The storage, by persistent id: ('storage', type, key, location, numel).
        p.push(b'(');
        string(&mut p, "storage");
        let storage = match t.values {
            ExportValues::F32(_) => "FloatStorage",
            ExportValues::I64(_) => "LongStorage",
        };
        global(&mut p, "torch", storage);
        string(&mut p, &i.to_string());
        string(&mut p, "cpu");
        int(&mut p, numel);
        p.extend([b't', b'Q']);
        int(&mut p, 0);
        ints(&mut p, &t.shape);
        ints(&mut p, &strides);
        p.push(0x89); // False: requires_grad
        global(&mut p, "collections", "OrderedDict");
        p.extend([b')', b'R', b't', b'R']);
    }
    p.extend([b'u', b'.']);
    p
}

/// A zip archive of stored (uncompressed) entries, each entry's data aligned to 64 bytes as
/// `torch.save` writes them (so they can be memory-mapped), through the zip crate; zip64 where
/// an entry needs it. Dated 1980-01-01 (zip's epoch), so the same tensors give the same bytes.
fn stored_zip(entries: &[(String, Vec<u8>)], path: &Path) -> Result<Vec<u8>, ModelError> {
    use zip::write::SimpleFileOptions;
    let zip_err = |e: zip::result::ZipError| err(path, format!("writing the archive: {e}"));
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, data) in entries {
        let options = SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored)
            .last_modified_time(zip::DateTime::default())
            .large_file(data.len() as u64 >= u64::from(u32::MAX))
            .with_alignment(64);
        zip.start_file(name.as_str(), options).map_err(zip_err)?;
        zip.write_all(data)
            .map_err(|e| err(path, format!("writing the archive: {e}")))?;
    }
    Ok(zip.finish().map_err(zip_err)?.into_inner())
}

/// Writes `tensors` as a PyTorch state dict file, as `torch.save(state_dict, path)` does (zip
/// format, version 3), loadable with `torch.load(path, weights_only=True)`.
pub fn write_torch_state_dict(path: &Path, tensors: &[ExportTensor]) -> Result<(), ModelError> {
    let stem = "archive";
    let mut entries = vec![(format!("{stem}/data.pkl"), state_dict_pickle(tensors))];
    entries.push((format!("{stem}/byteorder"), b"little".to_vec()));
    for (i, t) in tensors.iter().enumerate() {
        entries.push((format!("{stem}/data/{i}"), bytes_of(&t.values)));
    }
    entries.push((format!("{stem}/version"), b"3\n".to_vec()));
    let bytes = stored_zip(&entries, path)?;
    write_atomically(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_torchvision_and_the_original_swav() {
        let t = |n: &str, h: bool| torch_name(n, h);
        assert_eq!(
            t("backbone.conv1.weight", false),
            Some(("conv1.weight".into(), false))
        );
        assert_eq!(
            t("backbone.bn1.gamma", false),
            Some(("bn1.weight".into(), false))
        );
        assert_eq!(
            t("backbone.layer2.0.downsample.bn.beta", false),
            Some(("layer2.0.downsample.1.bias".into(), false))
        );
        assert_eq!(
            t("backbone.layer2.0.downsample.conv.weight", false),
            Some(("layer2.0.downsample.0.weight".into(), false))
        );
        assert_eq!(t("head.fc1.weight", false), None);
        assert_eq!(
            t("head.fc1.weight", true),
            Some(("projection_head.0.weight".into(), true))
        );
        assert_eq!(
            t("head.fc1.bias", true),
            Some(("projection_head.0.bias".into(), false))
        );
        assert_eq!(
            t("head.bn.running_var", true),
            Some(("projection_head.1.running_var".into(), false))
        );
        assert_eq!(
            t("prototypes.heads.0.weight", true),
            Some(("prototypes.weight".into(), true))
        );
    }

    #[test]
    fn the_zip_reads_back_through_the_zip_reader_with_aligned_entries() {
        let entries = vec![
            ("archive/data.pkl".to_string(), b"pickle".to_vec()),
            ("archive/data/0".to_string(), vec![1u8; 10]),
        ];
        let z = stored_zip(&entries, Path::new("x.pt")).expect("zip");
        let mut archive = zip::ZipArchive::new(std::io::Cursor::new(&z)).expect("a zip archive");
        assert_eq!(archive.len(), 2);
        for (name, data) in &entries {
            let mut f = archive.by_name(name).expect("entry");
            assert_eq!(f.compression(), zip::CompressionMethod::Stored);
            let start = f.data_start().expect("data offset");
            assert_eq!(start % 64, 0, "{name} starts on a 64-byte boundary");
            let mut read = Vec::new();
            std::io::Read::read_to_end(&mut f, &mut read).expect("read");
            assert_eq!(&read, data);
        }
    }
}
