//! `cargo xtask export`: a checkpoint's weights in the forms PyTorch loads, under torchvision's
//! key names (and the original SwAV's for the head): a `.pt` state dict and safetensors.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use swav_models::{
    ExportHead, torchvision_tensors, write_safetensors_export, write_torch_state_dict,
};

/// The file formats of an export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    /// A PyTorch state dict (`torch.load(path, weights_only=True)`).
    Pt,
    /// safetensors.
    Safetensors,
    /// Both.
    Both,
}

/// Options of `cargo xtask export`.
#[derive(Args, Debug)]
pub struct ExportArgs {
    /// Our checkpoint: a run folder or its `checkpoint.bpk` (a ResNet backbone).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Where the files go (default: the run folder's `export/`).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Export the projection head and the prototypes too (the original SwAV's key names);
    /// without it the backbone alone, under torchvision's names.
    #[arg(long)]
    pub head: bool,
    /// Classes of the zero classifier `fc` added to a backbone-only export, so that
    /// torchvision's strict `load_state_dict` takes it (0: no `fc`).
    #[arg(long, default_value_t = 1000)]
    pub fc_classes: usize,
    /// File format.
    #[arg(long, value_enum, default_value_t = ExportFormat::Both)]
    pub format: ExportFormat,
    /// Also write `probe.safetensors`: a fixed random input and what our forward pass makes of
    /// it in eval mode (features; with `--head` the embeddings and scores too), for
    /// `scripts/parity/torch_export_check.py` to compare PyTorch's with.
    #[arg(long)]
    pub probe: bool,
}

/// Writes the probe: a seeded input `[2, 3, S, S]` and our eval-mode outputs for it.
fn write_probe(
    path: &std::path::Path,
    model: &swav_models::SwavModel<swav_models::ResNet>,
    spec: &swav_models::SwavModelSpec,
    head: bool,
) -> Result<()> {
    use burn::tensor::{Tensor, TensorData};
    use rand::{Rng, SeedableRng};
    use swav_models::{Backbone, ExportTensor, ExportValues};
    let side = if spec.cifar_stem { 32 } else { 64 };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let n = 2 * 3 * side * side;
    let input: Vec<f32> = (0..n).map(|_| rng.random_range(-2.0f32..2.0)).collect();
    let device = burn::tensor::Device::flex();
    let x = Tensor::<4>::from_data(TensorData::new(input.clone(), [2, 3, side, side]), &device);
    let floats = |t: Tensor<2>| -> Result<(Vec<usize>, Vec<f32>)> {
        let dims = t.dims().to_vec();
        let v = t
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        Ok((dims, v))
    };
    let mut tensors = vec![ExportTensor {
        name: "input".into(),
        shape: vec![2, 3, side, side],
        values: ExportValues::F32(input),
    }];
    let (shape, v) = floats(model.backbone.forward_features(x.clone()))?;
    tensors.push(ExportTensor {
        name: "features".into(),
        shape,
        values: ExportValues::F32(v),
    });
    if head {
        let out = model.forward(&[x]);
        let (shape, v) = floats(out.embeddings)?;
        tensors.push(ExportTensor {
            name: "embeddings".into(),
            shape,
            values: ExportValues::F32(v),
        });
        if let Some(scores) = out.scores.into_iter().next() {
            let (shape, v) = floats(scores)?;
            tensors.push(ExportTensor {
                name: "scores".into(),
                shape,
                values: ExportValues::F32(v),
            });
        }
    }
    write_safetensors_export(path, &tensors)?;
    let meta = serde_json::json!({
        "arch": spec.arch, "base_width": spec.base_width, "cifar_stem": spec.cifar_stem,
        "hidden_mlp": spec.hidden_mlp, "feat_dim": spec.feat_dim, "prototypes": spec.prototypes,
    });
    let meta_path = path.with_extension("json");
    swav_models::atomic::write_atomically(
        &meta_path,
        serde_json::to_string_pretty(&meta)?.as_bytes(),
    )
    .with_context(|| format!("writing {}", meta_path.display()))?;
    Ok(())
}

/// Runs `cargo xtask export`.
pub fn run(args: &ExportArgs) -> Result<()> {
    let file = if args.checkpoint.is_dir() {
        args.checkpoint.join(swav_train::CHECKPOINT_FILE)
    } else {
        args.checkpoint.clone()
    };
    let device = burn::tensor::Device::flex();
    let (model, ckpt) = swav_models::load_swav_model(&file, &device)
        .with_context(|| format!("reading {}", file.display()))?;
    let spec = ckpt.spec()?.context("the checkpoint names no model")?;
    if !spec.arch.starts_with("resnet") {
        bail!(
            "{}: a `{}` backbone; the export writes torchvision's ResNet layout only",
            file.display(),
            spec.arch
        );
    }
    let head = if args.head {
        ExportHead::WithHead
    } else {
        ExportHead::BackboneOnly {
            fc_classes: (args.fc_classes > 0).then_some(args.fc_classes),
        }
    };
    let tensors = torchvision_tensors(&model, head)?;
    let out = args.out.clone().unwrap_or_else(|| {
        file.parent()
            .map_or_else(|| PathBuf::from("export"), |d| d.join("export"))
    });
    let stem = if args.head {
        "swav"
    } else {
        spec.arch.as_str()
    };
    let mut written = Vec::new();
    if matches!(args.format, ExportFormat::Pt | ExportFormat::Both) {
        let p = out.join(format!("{stem}.pt"));
        write_torch_state_dict(&p, &tensors)?;
        written.push(p);
    }
    if matches!(args.format, ExportFormat::Safetensors | ExportFormat::Both) {
        let p = out.join(format!("{stem}.safetensors"));
        write_safetensors_export(&p, &tensors)?;
        written.push(p);
    }
    for p in &written {
        println!("wrote {} ({} tensors)", p.display(), tensors.len());
    }
    if args.probe {
        let p = out.join("probe.safetensors");
        write_probe(&p, &model, &spec, args.head)?;
        println!(
            "wrote {} (check: python3 scripts/parity/torch_export_check.py {})",
            p.display(),
            out.display()
        );
    }
    let cifar = if spec.cifar_stem {
        "; m.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False); m.maxpool = torch.nn.Identity()"
    } else {
        ""
    };
    if !args.head && spec.base_width == 64 {
        println!(
            "in PyTorch: import torch, torchvision; m = torchvision.models.{}(){cifar}; \
             m.load_state_dict(torch.load(\"{}\", weights_only=True))",
            spec.arch,
            out.join(format!("{stem}.pt")).display()
        );
    } else if !args.head {
        println!(
            "base width {}: torchvision's layout with narrower layers (scripts/parity/\
             torch_export_check.py builds it)",
            spec.base_width
        );
    }
    Ok(())
}
