//! Writes Shapes10 as an image-folder tree (`OUT/train/<class>/<i>.png`, `OUT/test/...`), for
//! looking at it or feeding it to another tool (e.g. the PyTorch cross-checks).
//!
//! Run: `cargo run -p swav-data --example shapes10_export -- OUT [TRAIN] [TEST] [SEED]`

use std::path::PathBuf;

use swav_data::{ImageDataset, SHAPES10_CLASSES, Shapes10};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let out = PathBuf::from(
        args.next()
            .ok_or("usage: shapes10_export OUT [TRAIN] [TEST] [SEED]")?,
    );
    let train: usize = args.next().map_or(Ok(2000), |s| s.parse())?;
    let test: usize = args.next().map_or(Ok(1000), |s| s.parse())?;
    let seed: u64 = args.next().map_or(Ok(31), |s| s.parse())?;
    for (split, ds) in [
        ("train", Shapes10::train(seed, train)),
        ("test", Shapes10::test(seed, test)),
    ] {
        for class in SHAPES10_CLASSES {
            std::fs::create_dir_all(out.join(split).join(class))?;
        }
        for i in 0..ds.len() {
            let s = ds.get(i)?;
            let class = SHAPES10_CLASSES[s.label.ok_or("unlabelled sample")?];
            s.image
                .save(out.join(split).join(class).join(format!("{i:05}.png")))?;
        }
    }
    println!("wrote {}", out.display());
    Ok(())
}
