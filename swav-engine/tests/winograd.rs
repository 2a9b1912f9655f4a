//! Winograd convolutions (`swav_engine::kernels::winograd`, both tiles: F(2x2, 3x3) and F(4x4, 3x3))
//! against plain f64 loops: the forward, the input gradient and (F(4x4, 3x3)) the weight
//! gradient, on odd, non-square, 1x1 and 2x2 images, batch 1 and larger.

use swav_engine::kernels::ConvGeometry;
use swav_engine::kernels::winograd::{
    DEFAULT_TILE, Tile, conv3x3_forward, conv3x3_forward_with, conv3x3_input_grad,
    conv3x3_input_grad_with, conv3x3_weight_grad, serves,
};

/// (batch, channels in, height, width, channels out): odd, non-square, 1x1 and 2x2 images,
/// batch 1 to 9.
const CASES: [(usize, usize, usize, usize, usize); 8] = [
    (2, 16, 9, 7, 17),
    (3, 20, 4, 4, 16),
    (1, 16, 1, 1, 16),
    (5, 16, 2, 3, 18),
    (2, 24, 8, 8, 32),
    (9, 16, 5, 6, 16),
    (2, 64, 13, 10, 16),
    (1, 16, 3, 11, 20),
];

/// Deterministic values in [-1, 1) from a seed (no RNG crate needed).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// Calls `visit(x_index, w_index, y_index)` for every product of the convolution
/// `y[b, o, i, j] = Σ_c Σ_(p, q) x[b, c, i + p - 1, j + q - 1] · w[o, c, p, q]` (taps falling in
/// the zero padding skipped).
fn for_each_product(g: &ConvGeometry, mut visit: impl FnMut(usize, usize, usize)) {
    let (h, wd) = (g.height, g.width);
    for b in 0..g.batch {
        for o in 0..g.channels_out {
            for i in 0..h {
                for j in 0..wd {
                    let yi = ((b * g.channels_out + o) * h + i) * wd + j;
                    for c in 0..g.channels_in {
                        for p in 0..3 {
                            for q in 0..3 {
                                let (yy, xx) = (i + p, j + q);
                                if yy < 1 || xx < 1 || yy > h || xx > wd {
                                    continue;
                                }
                                let xi = ((b * g.channels_in + c) * h + yy - 1) * wd + xx - 1;
                                let wi = ((o * g.channels_in + c) * 3 + p) * 3 + q;
                                visit(xi, wi, yi);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The convolution's output, in f64.
fn forward_f64(x: &[f32], w: &[f32], g: &ConvGeometry) -> Vec<f64> {
    let mut y = vec![0.0f64; g.batch * g.channels_out * g.height * g.width];
    for_each_product(g, |xi, wi, yi| y[yi] += x[xi] as f64 * w[wi] as f64);
    y
}

/// The input gradient of [`forward_f64`] for the output gradient `dy`, in f64.
fn input_grad_f64(w: &[f32], dy: &[f32], g: &ConvGeometry) -> Vec<f64> {
    let mut dx = vec![0.0f64; g.batch * g.channels_in * g.height * g.width];
    for_each_product(g, |xi, wi, yi| dx[xi] += dy[yi] as f64 * w[wi] as f64);
    dx
}

/// The weight gradient of [`forward_f64`] for the output gradient `dy`, in f64.
fn weight_grad_f64(x: &[f32], dy: &[f32], g: &ConvGeometry) -> Vec<f64> {
    let mut dw = vec![0.0f64; g.channels_out * g.channels_in * 9];
    for_each_product(g, |xi, wi, yi| dw[wi] += dy[yi] as f64 * x[xi] as f64);
    dw
}

/// Asserts every element within `tolerance` of the largest reference value; returns the largest
/// error relative to that scale.
fn assert_close(name: &str, got: &[f32], want: &[f64], g: &ConvGeometry, tolerance: f64) -> f64 {
    assert_eq!(got.len(), want.len(), "{name} length");
    let scale = want.iter().fold(1.0f64, |m, v| m.max(v.abs()));
    let mut worst = 0.0f64;
    for (i, (a, r)) in got.iter().zip(want).enumerate() {
        let err = (*a as f64 - r).abs() / scale;
        worst = worst.max(err);
        assert!(
            err <= tolerance,
            "{name} {g:?} element {i}: {a} vs {r} (error {err:e} of the scale)"
        );
    }
    worst
}

/// The bound each tile is held to, relative to the output's largest value.
fn tolerance(tile: Tile) -> f64 {
    match tile {
        Tile::F2 => 2e-6,
        Tile::F4 => 1e-5,
    }
}

#[test]
fn forward_and_input_gradient_match_plain_loops() {
    for tile in [Tile::F2, Tile::F4] {
        let mut worst = 0.0f64;
        for (b, c, h, w, o) in CASES {
            let g = ConvGeometry::same_3x3(b, c, h, w, o);
            assert!(serves(&g));
            let x = values(b * c * h * w, 1 + b as u64);
            let wt = values(o * c * 9, 7 + c as u64);
            let dy = values(b * o * h * w, 3 + o as u64);
            let bound = tolerance(tile);
            worst = worst.max(assert_close(
                &format!("{tile:?} output"),
                &conv3x3_forward_with(tile, &x, &wt, &g),
                &forward_f64(&x, &wt, &g),
                &g,
                bound,
            ));
            worst = worst.max(assert_close(
                &format!("{tile:?} input gradient"),
                &conv3x3_input_grad_with(tile, &wt, &dy, &g),
                &input_grad_f64(&wt, &dy, &g),
                &g,
                bound,
            ));
        }
        println!("{tile:?}: largest error {worst:e} of the output's scale");
    }
}

#[test]
fn the_default_tile_is_what_the_plain_calls_use() {
    let g = ConvGeometry::same_3x3(3, 16, 6, 9, 24);
    let x = values(3 * 16 * 54, 11);
    let wt = values(24 * 16 * 9, 12);
    let dy = values(3 * 24 * 54, 13);
    assert_eq!(
        conv3x3_forward(&x, &wt, &g),
        conv3x3_forward_with(DEFAULT_TILE, &x, &wt, &g)
    );
    assert_eq!(
        conv3x3_input_grad(&wt, &dy, &g),
        conv3x3_input_grad_with(DEFAULT_TILE, &wt, &dy, &g)
    );
}

#[test]
fn only_3x3_stride_one_same_convolutions_with_enough_channels_are_served() {
    assert!(serves(&ConvGeometry::same_3x3(4, 64, 32, 32, 64)));
    assert!(
        !serves(&ConvGeometry::same_3x3(4, 3, 32, 32, 64)),
        "an RGB stem"
    );
    assert!(!serves(&ConvGeometry::same_3x3(4, 64, 32, 32, 8)));
    let mut strided = ConvGeometry::same_3x3(4, 64, 32, 32, 64);
    strided.stride = [2, 2];
    strided.out = [16, 16];
    assert!(!serves(&strided));
    let mut unpadded = ConvGeometry::same_3x3(4, 64, 32, 32, 64);
    unpadded.padding = [0, 0];
    unpadded.out = [30, 30];
    assert!(!serves(&unpadded));
    let mut one = ConvGeometry::same_3x3(4, 64, 32, 32, 64);
    one.kernel = [1, 1];
    one.padding = [0, 0];
    assert!(!serves(&one));
}

#[test]
#[should_panic(expected = "not a 3x3 stride-1 padding-1 convolution")]
fn a_strided_geometry_is_refused() {
    let mut g = ConvGeometry::same_3x3(1, 16, 8, 8, 16);
    g.stride = [2, 2];
    g.out = [4, 4];
    conv3x3_forward(&values(16 * 64, 1), &values(16 * 16 * 9, 2), &g);
}

/// The F(4x4, 3x3) weight gradient against the f64 loop: odd and non-square images (tiles cut
/// by the border), 1x1 and 2x2 images, one image and batches that span several groups and
/// threads.
#[test]
fn weight_gradient_matches_a_plain_loop() {
    let mut worst = 0.0f64;
    // Beyond the shared cases: a batch over several groups and both threads, and tiles cut by
    // the border on a larger image.
    for (b, c, h, w, o) in CASES
        .into_iter()
        .chain([(33, 16, 4, 4, 16), (4, 16, 17, 18, 16)])
    {
        let g = ConvGeometry::same_3x3(b, c, h, w, o);
        let x = values(b * c * h * w, 11 + b as u64);
        let dy = values(b * o * h * w, 5 + o as u64);
        worst = worst.max(assert_close(
            "F4 weight gradient",
            &conv3x3_weight_grad(&x, &dy, &g),
            &weight_grad_f64(&x, &dy, &g),
            &g,
            1e-5,
        ));
    }
    eprintln!("F4 weight gradient: largest error {worst:e} of the scale");
}
