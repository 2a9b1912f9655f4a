//! Every reader of bytes a user hands us, fuzzed: the seed corpus (`tests/fuzz-corpus/TARGET/`,
//! valid files of each format) mutated by proptest (bit flips, overwritten bytes and 32-bit
//! fields, insertions, deletions, truncations, several at once) and fed to the reader.
//!
//! | target | reader | what a case must do |
//! |---|---|---|
//! | `checkpoint` | `read_checkpoint`, its spec and training state, `load_model` | no panic; an error names the file |
//! | `torch_pt` | `load_torchvision_resnet` (the `.pt` importer) | no panic; an error names the file |
//! | `safetensors` | `load_safetensors` | no panic; an error names the file |
//! | `cifar` | `cifar10(dir, Test)` | no panic; an error names the file |
//! | `stl10` | `stl10(dir, Test)` (images and labels files) | no panic; an error names the file |
//! | `mnist` | `mnist(dir, Test)` (IDX images and labels) | no panic; an error names the file |
//! | `config` | `TrainConfig::from_toml`, then `validate` | no panic; an error says something |
//! | `image` | `decode_image` within its default limits (PNG, JPEG) | no panic; an error names the file |
//! | `features` | `FeatureFile::open`, then reading every row | no panic; an error names the file |
//!
//! The whole binary runs under the engine's block-caching allocator, whose peak of live large
//! blocks is checked against [`PEAK_LIMIT`] after each target: a reader that believes a length
//! field and allocates for it fails here. Each target runs for `SWAV_FUZZ_SECONDS` (6 by
//! default, the CI's short run; `SWAV_FUZZ_SECONDS=600` for the long one) and prints how many
//! inputs it ran and refused. `SWAV_FUZZ_WRITE_CORPUS=1` rewrites the seed corpus from the
//! generators below (the committed files are theirs).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use swav_engine::BlockCache;

#[global_allocator]
static ALLOC: BlockCache = BlockCache::following_peak();

/// The most memory in large blocks (1 MiB or more) live at once that any input may cost: the
/// image decoder's budget (512 MiB) for its buffer and again for the RGB result, and room for
/// the rest.
const PEAK_LIMIT: usize = (2 * 512 + 64) << 20;

/// One edit of a seed file.
#[derive(Debug, Clone)]
enum Edit {
    /// Flips one bit.
    Flip { at: usize, bit: u8 },
    /// Overwrites one byte.
    Byte { at: usize, value: u8 },
    /// Overwrites four bytes with a little- or big-endian length-like value.
    Word { at: usize, value: u32, big: bool },
    /// Inserts bytes.
    Insert { at: usize, bytes: Vec<u8> },
    /// Removes up to `len` bytes.
    Remove { at: usize, len: usize },
    /// Cuts the file.
    Truncate { at: usize },
}

fn edit() -> impl Strategy<Value = Edit> {
    let word = prop_oneof![
        Just(0u32),
        Just(1),
        Just(0x7fff_ffff),
        Just(u32::MAX),
        Just(1 << 24),
        any::<u32>()
    ];
    prop_oneof![
        4 => (any::<usize>(), 0u8..8).prop_map(|(at, bit)| Edit::Flip { at, bit }),
        3 => (any::<usize>(), any::<u8>()).prop_map(|(at, value)| Edit::Byte { at, value }),
        3 => (any::<usize>(), word, any::<bool>())
            .prop_map(|(at, value, big)| Edit::Word { at, value, big }),
        1 => (any::<usize>(), proptest::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(at, bytes)| Edit::Insert { at, bytes }),
        1 => (any::<usize>(), 1usize..64).prop_map(|(at, len)| Edit::Remove { at, len }),
        1 => any::<usize>().prop_map(|at| Edit::Truncate { at }),
    ]
}

/// `seed` with `edits` applied (positions taken modulo the length at the time).
fn mutate(seed: &[u8], edits: &[Edit]) -> Vec<u8> {
    let mut b = seed.to_vec();
    for e in edits {
        let n = b.len().max(1);
        match e {
            Edit::Flip { at, bit } if !b.is_empty() => b[at % n] ^= 1 << bit,
            Edit::Byte { at, value } if !b.is_empty() => b[at % n] = *value,
            Edit::Word { at, value, big } if b.len() >= 4 => {
                let at = at % (b.len() - 3);
                let bytes = if *big {
                    value.to_be_bytes()
                } else {
                    value.to_le_bytes()
                };
                b[at..at + 4].copy_from_slice(&bytes);
            }
            Edit::Insert { at, bytes } => {
                let at = at % (b.len() + 1);
                b.splice(at..at, bytes.iter().copied());
            }
            Edit::Remove { at, len } if !b.is_empty() => {
                let at = at % b.len();
                let end = (at + len).min(b.len());
                b.drain(at..end);
            }
            Edit::Truncate { at } => b.truncate(at % (b.len() + 1)),
            _ => {}
        }
    }
    b
}

/// A seed file of a target's corpus.
struct Seed {
    name: String,
    bytes: Vec<u8>,
}

impl Seed {
    fn new(name: &str, bytes: Vec<u8>) -> Self {
        Self {
            name: name.to_string(),
            bytes,
        }
    }
}

/// Writes a target's seeds from scratch (into a scratch folder where it needs files).
type Generate = fn(&Path) -> Vec<Seed>;

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz-corpus")
        .join(target)
}

/// The committed seeds of `target` (rewritten from `generate` first when asked), by file name.
fn seeds(target: &str, generate: Generate) -> Vec<Seed> {
    let dir = corpus_dir(target);
    if std::env::var_os("SWAV_FUZZ_WRITE_CORPUS").is_some() {
        let scratch = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir_all(&dir).expect("corpus folder");
        for seed in generate(scratch.path()) {
            std::fs::write(dir.join(seed.name), seed.bytes).expect("seed written");
        }
    }
    let mut out: Vec<Seed> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e} (SWAV_FUZZ_WRITE_CORPUS=1 writes it)",
                dir.display()
            )
        })
        .map(|e| e.expect("entry").path())
        .map(|p| {
            let name = p.file_name().expect("name").to_string_lossy().into_owned();
            Seed::new(&name, std::fs::read(&p).expect("seed reads"))
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    assert!(!out.is_empty(), "{}: no seeds", dir.display());
    out
}

/// Runs `check` (`true`: accepted, `false`: refused with an error) on the seeds, then on their
/// mutations for the time budget, and prints the counts.
fn fuzz(target: &str, seeds: &[Seed], check: impl Fn(&str, &[u8]) -> bool) {
    let secs: u64 = std::env::var("SWAV_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(6);
    let deadline = Instant::now() + Duration::from_secs(secs);
    let strategy = (0..seeds.len(), proptest::collection::vec(edit(), 1..6));
    let (mut inputs, mut refused) = (0u64, 0u64);
    let mut batch = 0u64;
    // The seeds themselves read.
    for seed in seeds {
        let name = &seed.name;
        assert!(
            check(name, &seed.bytes),
            "{target}: the seed {name} is refused"
        );
    }
    while Instant::now() < deadline {
        let mut key = [0u8; 32];
        key[..8].copy_from_slice(&batch.to_le_bytes());
        key[8..8 + target.len().min(24)]
            .copy_from_slice(&target.as_bytes()[..target.len().min(24)]);
        let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &key);
        let config = Config {
            cases: 64,
            failure_persistence: None,
            ..Config::default()
        };
        let mut runner = TestRunner::new_with_rng(config, rng);
        let counts = std::cell::Cell::new((0u64, 0u64));
        let result = runner.run(&strategy, |(seed, edits)| {
            let seed = &seeds[seed];
            let ok = check(&seed.name, &mutate(&seed.bytes, &edits));
            let (n, r) = counts.get();
            counts.set((n + 1, r + u64::from(!ok)));
            Ok(())
        });
        if let Err(e) = result {
            panic!("{target}: {e}");
        }
        let (n, r) = counts.get();
        inputs += n;
        refused += r;
        batch += 1;
    }
    // The process's peak: every target so far (and any running beside this one).
    let peak = ALLOC.stats().peak_live_bytes;
    println!(
        "fuzz {target}: {inputs} inputs in {secs} s, {refused} refused with an error, no panic; \
         the process's peak of live large blocks so far {} MiB",
        peak >> 20
    );
    assert!(
        peak <= PEAK_LIMIT,
        "{target}: {} MiB of large blocks live at once, over the {} MiB limit",
        peak >> 20,
        PEAK_LIMIT >> 20
    );
}

/// An error must name the file it is about.
fn names(err: &impl std::fmt::Display, file: &Path) -> bool {
    let text = err.to_string();
    let name = file.file_name().expect("name").to_string_lossy();
    assert!(
        text.contains(name.as_ref()),
        "the error names {name}: {text}"
    );
    false
}

// ---- the model files ------------------------------------------------------------------------

fn tiny_spec() -> swav_models::SwavModelSpec {
    swav_models::SwavModelSpec {
        arch: "resnet18".into(),
        base_width: 1,
        cifar_stem: true,
        hidden_mlp: 4,
        feat_dim: 4,
        prototypes: vec![3],
        backbone: serde_json::Value::Null,
    }
}

fn tiny_model() -> swav_models::SwavModel<swav_models::ResNet> {
    tiny_spec()
        .init(&burn::tensor::Device::flex())
        .expect("a tiny model")
}

fn model_seeds(dir: &Path) -> Vec<Seed> {
    let model = tiny_model();
    let ckpt = dir.join("tiny.bpk");
    let mut meta = std::collections::BTreeMap::new();
    meta.insert(
        swav_models::SPEC_KEY.to_string(),
        serde_json::to_string(&tiny_spec()).expect("spec"),
    );
    let arrays = vec![swav_models::StateArray {
        name: "queue.0".into(),
        shape: vec![1, 2, 4],
        values: vec![0.5; 8],
    }];
    swav_models::write_checkpoint(&ckpt, &model, arrays, &meta).expect("checkpoint");
    vec![Seed::new("tiny.bpk", std::fs::read(ckpt).expect("read"))]
}

#[test]
fn fuzz_checkpoint() {
    let seeds = seeds("checkpoint", model_seeds);
    let dir = tempfile::tempdir().expect("temp dir");
    fuzz("checkpoint", &seeds, |name, bytes| {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).expect("write");
        let c = match swav_models::read_checkpoint(&path) {
            Ok(c) => c,
            Err(e) => return names(&e, &path),
        };
        if let Err(e) = c.spec() {
            return names(&e, &path);
        }
        if let Err(e) = swav_train::checkpoint_config(&c) {
            return names(&e, &path);
        }
        match c.load_model(tiny_model()) {
            Ok(_) => true,
            Err(e) => names(&e, &path),
        }
    });
}

#[test]
fn fuzz_torch_pt() {
    let seeds = seeds("torch_pt", |dir| {
        let tensors = swav_models::torchvision_tensors(
            &tiny_model(),
            swav_models::ExportHead::BackboneOnly {
                fc_classes: Some(2),
            },
        )
        .expect("tensors");
        let pt = dir.join("tiny.pt");
        swav_models::write_torch_state_dict(&pt, &tensors).expect("pt");
        vec![Seed::new("tiny.pt", std::fs::read(pt).expect("read"))]
    });
    let dir = tempfile::tempdir().expect("temp dir");
    fuzz("torch_pt", &seeds, |name, bytes| {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).expect("write");
        match swav_models::load_torchvision_resnet(tiny_model().backbone, &path) {
            Ok(_) => true,
            Err(e) => names(&e, &path),
        }
    });
}

#[test]
fn fuzz_safetensors() {
    let seeds = seeds("safetensors", |dir| {
        let st = dir.join("tiny.safetensors");
        swav_models::save_safetensors(&tiny_model(), &st).expect("safetensors");
        vec![Seed::new(
            "tiny.safetensors",
            std::fs::read(st).expect("read"),
        )]
    });
    let dir = tempfile::tempdir().expect("temp dir");
    fuzz("safetensors", &seeds, |name, bytes| {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).expect("write");
        match swav_models::load_safetensors(tiny_model(), &path) {
            Ok(_) => true,
            Err(e) => names(&e, &path),
        }
    });
}

// ---- the dataset files ----------------------------------------------------------------------

/// `n` pseudo-random bytes.
fn noise(n: usize, mut state: u32) -> Vec<u8> {
    (0..n)
        .map(|_| {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (state >> 24) as u8
        })
        .collect()
}

/// Fuzzes one file of a dataset folder whose other files stay valid: the seeds are the files,
/// each mutation replaces one of them in a fresh copy of the folder.
fn fuzz_folder(
    target: &str,
    generate: Generate,
    read: fn(&Path) -> Result<swav_data::InMemoryImages, swav_data::DataError>,
) {
    let seeds = seeds(target, generate);
    let dir = tempfile::tempdir().expect("temp dir");
    fuzz(target, &seeds, |name, bytes| {
        for other in &seeds {
            std::fs::write(dir.path().join(&other.name), &other.bytes).expect("write");
        }
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).expect("write");
        match read(dir.path()) {
            Ok(_) => true,
            Err(e) => names(&e, &path),
        }
    });
}

#[test]
fn fuzz_cifar() {
    fuzz_folder(
        "cifar",
        |_| {
            let mut b = Vec::new();
            for i in 0..3u8 {
                b.push(i);
                b.extend(noise(3072, u32::from(i)));
            }
            vec![Seed::new("test_batch.bin", b)]
        },
        |d| swav_data::cifar10(d, swav_data::Split::Test),
    );
}

#[test]
fn fuzz_stl10() {
    fuzz_folder(
        "stl10",
        |_| {
            vec![
                Seed::new("test_X.bin", noise(2 * 96 * 96 * 3, 7)),
                Seed::new("test_y.bin", vec![1, 10]),
            ]
        },
        |d| swav_data::stl10(d, swav_data::Split::Test),
    );
}

#[test]
fn fuzz_mnist() {
    fuzz_folder(
        "mnist",
        |_| {
            let mut images = vec![0, 0, 8, 3];
            for v in [3u32, 28, 28] {
                images.extend(v.to_be_bytes());
            }
            images.extend(noise(3 * 28 * 28, 3));
            let mut labels = vec![0, 0, 8, 1];
            labels.extend(3u32.to_be_bytes());
            labels.extend([0, 9, 4]);
            vec![
                Seed::new("t10k-images-idx3-ubyte", images),
                Seed::new("t10k-labels-idx1-ubyte", labels),
            ]
        },
        |d| swav_data::mnist(d, swav_data::Split::Test),
    );
}

// ---- configuration, images, feature files ---------------------------------------------------

#[test]
fn fuzz_config() {
    let seeds = seeds("config", |_| {
        let configs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
        ["demo.toml", "cifar10-cpu.toml", "imagenet-800ep.toml"]
            .iter()
            .map(|f| Seed::new(f, std::fs::read(configs.join(f)).expect("config")))
            .collect()
    });
    fuzz("config", &seeds, |_, bytes| {
        let text = String::from_utf8_lossy(bytes);
        let refused = |e: swav_train::TrainError| {
            assert!(!e.to_string().trim().is_empty(), "an empty error");
            false
        };
        // Parsed is accepted; validation may still refuse it, with a message.
        match swav_train::TrainConfig::from_toml(&text, &[]) {
            Ok(c) => {
                if let Err(e) = c.validate() {
                    refused(e);
                }
                true
            }
            Err(e) => refused(e),
        }
    });
}

#[test]
fn fuzz_image() {
    let seeds = seeds("image", |_| {
        let img =
            image::RgbImage::from_fn(8, 6, |x, y| image::Rgb([x as u8 * 30, y as u8 * 40, 90]));
        let mut out = Vec::new();
        for (name, format) in [
            ("seed.png", image::ImageFormat::Png),
            ("seed.jpg", image::ImageFormat::Jpeg),
        ] {
            let mut bytes = std::io::Cursor::new(Vec::new());
            img.write_to(&mut bytes, format).expect("encode");
            out.push(Seed::new(name, bytes.into_inner()));
        }
        out
    });
    fuzz("image", &seeds, |name, bytes| {
        let path = Path::new(name);
        match swav_data::decode_image(bytes, path, swav_data::DecodeLimits::default()) {
            Ok(_) => true,
            Err(e) => names(&e, path),
        }
    });
}

#[test]
fn fuzz_features() {
    let seeds = seeds("features", |dir| {
        let path = dir.join("seed.features");
        let mut w = swav_eval::FeatureWriter::create(&path, 3).expect("writer");
        w.append(&[0.5; 12], &[Some(1), None, Some(0), Some(2)])
            .expect("rows");
        w.finish().expect("finished");
        vec![Seed::new(
            "seed.features",
            std::fs::read(path).expect("read"),
        )]
    });
    let dir = tempfile::tempdir().expect("temp dir");
    fuzz("features", &seeds, |name, bytes| {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).expect("write");
        let file = match swav_eval::FeatureFile::open(&path) {
            Ok(f) => f,
            Err(e) => return names(&e, &path),
        };
        let rows: Vec<usize> = (0..file.len()).collect();
        let mut out = Vec::new();
        match file.read_rows(&rows, &mut out) {
            Ok(()) => true,
            Err(e) => names(&e, &path),
        }
    });
}
