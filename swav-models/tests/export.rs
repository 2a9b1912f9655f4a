//! Export round trips without Python, on a model whose every tensor (weights, BatchNorm scales,
//! shifts and running statistics) holds distinct random values, so that two tensors of one
//! shape swapped (a BatchNorm's weight and running variance) cannot round-trip unseen: the `.pt`
//! state dict reads back through the PyTorch importers (`load_torchvision_resnet`,
//! `load_swav_checkpoint`) into a fresh model bit-identical, and the safetensors file, read by
//! the safetensors crate, holds every exported tensor with its dtype, shape and values.
//! (`scripts/parity/torch_export_check.py` checks the same files in PyTorch itself: strict
//! `load_state_dict` and features to 1e-4.)

use burn::store::ModuleSnapshot;
use burn::store::burn_pack::{Bytes, DType, Tensor as PackTensor};
use burn::tensor::Device;
use swav_models::{
    ExportHead, ExportTensor, ExportValues, SwavModel, SwavModelSpec, load_swav_checkpoint,
    load_torchvision_resnet, torchvision_tensors, write_safetensors_export, write_torch_state_dict,
};

/// `model` with every float tensor replaced by distinct pseudo-random values (running
/// variances positive), drawn from a fixed sequence.
fn randomised(mut model: SwavModel<swav_models::ResNet>) -> SwavModel<swav_models::ResNet> {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32
    };
    let tensors: Vec<PackTensor> = model
        .collect(None, None, false)
        .into_iter()
        .map(|t| {
            let n: usize = t.shape.iter().product();
            let positive = t.name.ends_with("running_var");
            let values: Vec<f32> = (0..n)
                .map(|_| {
                    if positive {
                        0.5 + next()
                    } else {
                        2.0 * next() - 1.0
                    }
                })
                .collect();
            PackTensor::new(
                t.name.clone(),
                DType::F32,
                t.shape.to_vec(),
                None,
                Bytes::from_elems(values),
            )
        })
        .collect();
    let n = tensors.len();
    let applied = model.apply(tensors, None, None, false);
    assert_eq!(
        applied.applied.len(),
        n,
        "every tensor randomised: {applied:?}"
    );
    model
}

/// The safetensors file holds exactly `tensors`: names, dtypes, shapes and values.
fn assert_safetensors_hold(path: &std::path::Path, tensors: &[ExportTensor]) {
    use safetensors::tensor::Dtype;
    let raw = std::fs::read(path).expect("read");
    let file = safetensors::SafeTensors::deserialize(&raw).expect("a safetensors file");
    assert_eq!(
        file.len(),
        tensors.len(),
        "{}: tensor count",
        path.display()
    );
    for t in tensors {
        let view = file
            .tensor(&t.name)
            .expect("every exported tensor is in the file");
        assert_eq!(view.shape(), t.shape.as_slice(), "{}: shape", t.name);
        let (dtype, bytes): (Dtype, Vec<u8>) = match &t.values {
            ExportValues::F32(v) => (Dtype::F32, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
            ExportValues::I64(v) => (Dtype::I64, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        };
        assert_eq!(view.dtype(), dtype, "{}: dtype", t.name);
        assert_eq!(view.data(), bytes.as_slice(), "{}: values", t.name);
    }
}

fn bits<M: ModuleSnapshot>(m: &M) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = m
        .collect(None, None, false)
        .into_iter()
        .map(|t| {
            let name = t.name.clone();
            (name, t.into_bytes().expect("bytes").to_vec())
        })
        .collect();
    v.sort();
    v
}

fn spec(arch: &str, cifar: bool) -> SwavModelSpec {
    SwavModelSpec {
        arch: arch.into(),
        base_width: 8,
        cifar_stem: cifar,
        hidden_mlp: 32,
        feat_dim: 16,
        prototypes: vec![24],
        backbone: serde_json::Value::Null,
    }
}

#[test]
fn a_pt_export_reads_back_bit_identical() {
    let dir = tempfile::tempdir().expect("temp dir");
    let device = Device::flex();
    for (arch, cifar) in [("resnet18", true), ("resnet50", false)] {
        let s = spec(arch, cifar);
        let model = randomised(s.init(&device).expect("model"));
        let bn_weight = model.backbone.bn1.gamma.val().into_data();
        let bn_var = model.backbone.bn1.running_var.value().into_data();
        assert_ne!(bn_weight, bn_var, "BatchNorm scale and variance differ");

        // The backbone under torchvision's names, with its zero classifier.
        let tensors = torchvision_tensors(
            &model,
            ExportHead::BackboneOnly {
                fc_classes: Some(10),
            },
        )
        .expect("tensors");
        assert!(tensors.iter().any(|t| t.name == "fc.weight"
            && t.shape == [10, 8 * 8 * if arch == "resnet50" { 4 } else { 1 }]));
        assert!(tensors.iter().any(|t| t.name == "bn1.num_batches_tracked"));
        let pt = dir.path().join(format!("{arch}.pt"));
        write_torch_state_dict(&pt, &tensors).expect("pt written");
        let fresh = s.init(&device).expect("fresh model");
        let back = load_torchvision_resnet(fresh.backbone, &pt).expect("the .pt reads back");
        assert_eq!(
            bits(&back),
            bits(&model.backbone),
            "{arch}: backbone round trip"
        );

        // With the head and prototypes, as the original SwAV saves them.
        let tensors = torchvision_tensors(&model, ExportHead::WithHead).expect("tensors");
        let pt = dir.path().join(format!("{arch}-swav.pt"));
        write_torch_state_dict(&pt, &tensors).expect("pt written");
        let fresh = s.init(&device).expect("fresh model");
        let back = load_swav_checkpoint(fresh, &pt, None).expect("the SwAV .pt reads back");
        assert_eq!(bits(&back), bits(&model), "{arch}: model round trip");

        // The safetensors file: every tensor, with its dtype, shape and values.
        let st = dir.path().join(format!("{arch}-swav.safetensors"));
        write_safetensors_export(&st, &tensors).expect("safetensors written");
        assert_safetensors_hold(&st, &tensors);
    }
}
