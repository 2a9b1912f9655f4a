//! Export round trips without Python: a model written under torchvision's / the original SwAV's
//! names as a `.pt` state dict reads back through the PyTorch importers (`load_torchvision_resnet`,
//! `load_swav_checkpoint`) into a fresh model with every tensor bit-identical, and the safetensors
//! file holds the same keys. (`scripts/parity/torch_export_check.py` checks the same files in
//! PyTorch itself: strict `load_state_dict` and features to 1e-4.)

use burn::store::ModuleSnapshot;
use burn::tensor::Device;
use swav_models::{
    ExportHead, SwavModelSpec, load_swav_checkpoint, load_torchvision_resnet, torchvision_tensors,
    write_safetensors_export, write_torch_state_dict,
};

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
        let model = s.init(&device).expect("model");

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

        // The safetensors file: the same keys, in its own header.
        let st = dir.path().join(format!("{arch}-swav.safetensors"));
        write_safetensors_export(&st, &tensors).expect("safetensors written");
        let raw = std::fs::read(&st).expect("read");
        let n = u64::from_le_bytes(raw[..8].try_into().expect("8 bytes")) as usize;
        let header: serde_json::Value = serde_json::from_slice(&raw[8..8 + n]).expect("header");
        let mut keys: Vec<&String> = header.as_object().expect("object").keys().collect();
        keys.sort();
        let mut want: Vec<&String> = tensors.iter().map(|t| &t.name).collect();
        want.sort();
        assert_eq!(keys, want);
    }
}
