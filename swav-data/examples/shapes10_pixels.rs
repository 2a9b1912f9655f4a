//! How hard Shapes10 is for raw pixels: kNN (k = 20, cosine similarity, votes weighted by
//! exp(sim / 0.07), the DINO monitor's settings) on mean-centred, L2-normalised pixel vectors,
//! 5,000 training against 1,000 test images. Chance is 10%.
//!
//! Run: `cargo run --release -p swav-data --example shapes10_pixels`

use swav_data::{ImageDataset, Shapes10};

fn vectors(ds: &Shapes10) -> (Vec<Vec<f32>>, Vec<usize>) {
    let mut xs = Vec::with_capacity(ds.len());
    let mut ys = Vec::with_capacity(ds.len());
    for i in 0..ds.len() {
        let s = ds.get(i).expect("sample");
        let v: Vec<f32> = s.image.as_raw().iter().map(|&b| b as f32 / 255.0).collect();
        xs.push(v);
        ys.push(s.label.expect("label"));
    }
    (xs, ys)
}

fn normalise(xs: &mut [Vec<f32>], mean: &[f32]) {
    for x in xs.iter_mut() {
        for (v, m) in x.iter_mut().zip(mean) {
            *v -= m;
        }
        let n = x.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
        x.iter_mut().for_each(|v| *v /= n);
    }
}

fn main() {
    let (mut train, ytr) = vectors(&Shapes10::train(31, 5000));
    let (mut test, yte) = vectors(&Shapes10::test(31, 1000));
    let d = train[0].len();
    let mut mean = vec![0f32; d];
    for x in &train {
        for (m, v) in mean.iter_mut().zip(x) {
            *m += v / train.len() as f32;
        }
    }
    normalise(&mut train, &mean);
    normalise(&mut test, &mean);
    let (k, t) = (20, 0.07f32);
    let mut correct = 0;
    for (x, &y) in test.iter().zip(&yte) {
        let mut sims: Vec<(f32, usize)> = train
            .iter()
            .zip(&ytr)
            .map(|(tr, &l)| (tr.iter().zip(x).map(|(a, b)| a * b).sum(), l))
            .collect();
        sims.select_nth_unstable_by(k, |a, b| b.0.total_cmp(&a.0));
        let mut votes = [0f32; 10];
        for &(s, l) in &sims[..k] {
            votes[l] += (s / t).exp();
        }
        let pred = (0..10)
            .max_by(|&a, &b| votes[a].total_cmp(&votes[b]))
            .unwrap_or(0);
        correct += usize::from(pred == y);
    }
    println!(
        "Shapes10 raw-pixel kNN (k = {k}, T = {t}): {:.1}% top-1 on {} test images (chance 10%)",
        100.0 * correct as f64 / yte.len() as f64,
        yte.len()
    );
}
