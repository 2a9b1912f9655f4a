//! 3x3, stride-1, padding-1 convolutions by Winograd's minimal filtering (Lavin & Gray, 2016):
//! the output in `m x m` tiles, each from an `(m + 2) x (m + 2)` input tile, as `(m + 2)²` GEMMs
//! over the transformed tiles, with [`Tile::F4`] (F(4x4, 3x3): 36 multiplications per input and
//! output channel pair for 16 outputs instead of 144) by default and [`Tile::F2`] (F(2x2, 3x3):
//! 16 for 4 instead of 36) on request. The forward and (with the weight flipped and transposed)
//! the input gradient of a ResNet's 3x3 convolutions, and by F(4x4, 3x3) their weight gradient
//! ([`conv3x3_weight_grad`]: `dW = Gᵀ [Σ_tiles (A dY Aᵀ) ⊙ (Bᵀ d B)] G`).
//!
//! The F(4x4, 3x3) transforms gather every tile of a group of images into rows as long as the
//! group has tiles and run as vector passes over those rows, so small images vectorize as well
//! as large ones; they are compiled for AVX-512, AVX2 and the baseline, chosen at run time.
//!
//! With `d` an input tile and `g` a 3x3 filter: `U = G g Gᵀ`, `V = Bᵀ d B`, and the output
//! tile `Y = Aᵀ (Σ_c U ⊙ V) A`. For F(2x2, 3x3):
//! `Bᵀ = [[1,0,-1,0],[0,1,1,0],[0,-1,1,0],[0,1,0,-1]]`,
//! `G = [[1,0,0],[½,½,½],[½,-½,½],[0,0,1]]`, `Aᵀ = [[1,1,1,0],[0,1,-1,-1]]`; F(4x4, 3x3)'s
//! matrices are in this file's `bt_f4`, `G_F4` and `at_f4`.
#![allow(unsafe_code)]

use rayon::prelude::*;

use crate::geometry::ConvGeometry;
use crate::simd::multiversion;

/// Transformed tiles per GEMM (images are grouped until they give about this many, one image
/// at least). With F(4x4, 3x3) at 64 channels, a group's transformed input then takes 590 KB
/// (36 positions x 64 channels x 64 tiles), about what one core's L2 cache holds; 192 tiles
/// measured slower at 8 to 32 px (`cargo run --release -p swav-engine --example conv_parts`).
const TILES_PER_GEMM: usize = 64;

/// Whether the convolution is one this module computes: 3x3, stride 1, padding 1.
fn is_same_3x3(g: &ConvGeometry) -> bool {
    g.kernel == [3, 3] && g.stride == [1, 1] && g.padding == [1, 1] && g.out == [g.height, g.width]
}

/// Whether the flex convolutions take this module's path: a 3x3, stride-1, padding-1
/// convolution with enough channels on both sides for the small per-position GEMMs to beat one large one.
pub fn serves(g: &ConvGeometry) -> bool {
    is_same_3x3(g) && g.channels_in >= 16 && g.channels_out >= 16
}

/// Filters (output x input channels) up to which the weight gradient takes
/// [`conv3x3_weight_grad`]: its accumulators, 36 values per filter and thread, then take at
/// most 36 MiB per thread (512 x 512 channels, ResNet-18's and ResNet-50's widest 3x3
/// convolutions).
const WEIGHT_GRAD_MAX_FILTERS: usize = 512 * 512;

/// Whether the flex weight gradient takes [`conv3x3_weight_grad`]: a convolution [`serves`]
/// with at most 512 x 512 filters (wider ones, as in the wide ResNet-50s, would need
/// accumulators of 36 values per filter and thread).
pub fn serves_weight_grad(g: &ConvGeometry) -> bool {
    serves(g) && g.channels_in * g.channels_out <= WEIGHT_GRAD_MAX_FILTERS
}

multiversion!(
    /// [`transform_inputs_body`], vectorized for the CPU at hand.
    fn transform_inputs = transform_inputs_body(
        x: &[f32],
        g: &ConvGeometry,
        first: usize,
        count: usize,
        v: &mut [f32],
    )
);
multiversion!(
    /// [`transform_outputs_body`], vectorized for the CPU at hand.
    fn transform_outputs = transform_outputs_body(
        m: &[f32],
        g: &ConvGeometry,
        count: usize,
        y: &mut [f32],
    )
);
multiversion!(
    /// [`transform_inputs_f4_body`], vectorized for the CPU at hand.
    fn transform_inputs_f4 = transform_inputs_f4_body(
        x: &[f32],
        g: &ConvGeometry,
        first: usize,
        count: usize,
        v: &mut [f32],
    )
);
multiversion!(
    /// [`transform_outputs_f4_body`], vectorized for the CPU at hand.
    fn transform_outputs_f4 = transform_outputs_f4_body(
        m: &[f32],
        g: &ConvGeometry,
        count: usize,
        y: &mut [f32],
    )
);
multiversion!(
    /// [`filter_row_body`], vectorized for the CPU at hand.
    fn filter_row = filter_row_body(
        weight: &[f32],
        c: usize,
        flip: bool,
        row: usize,
        coefs: &[[f32; 9]],
        taps: &mut [f32],
        out: &mut [f32],
    )
);

/// The output tile of a Winograd scheme for 3x3 filters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tile {
    /// F(2x2, 3x3): each 2x2 output tile from a 4x4 input tile, 16 products per channel pair
    /// for 4 outputs (2.25x fewer than direct). The transforms only add and halve.
    F2,
    /// F(4x4, 3x3): each 4x4 output tile from a 6x6 input tile, 36 products per channel pair
    /// for 16 outputs (4x fewer than direct), at the cost of larger transform coefficients (up
    /// to 8) and so a larger rounding error: about 1e-6 to 1e-5 of the output's scale in f32
    /// against 1e-7 for F2 (see `tests/winograd.rs`).
    F4,
}

impl Tile {
    /// The output tile's side.
    pub fn output(self) -> usize {
        match self {
            Tile::F2 => 2,
            Tile::F4 => 4,
        }
    }

    /// The input tile's side (the output's plus the filter's 3 less one).
    pub fn input(self) -> usize {
        self.output() + 2
    }

    /// Transformed positions per tile: one small GEMM each.
    pub fn positions(self) -> usize {
        self.input() * self.input()
    }
}

/// The tile [`conv3x3_forward`] and [`conv3x3_input_grad`] (and so the flex convolutions) use.
pub const DEFAULT_TILE: Tile = Tile::F4;

/// `V = Bᵀ d B` for the tiles of `count` images starting at `first`: `v` is `[16, C, T]` with
/// `T = count · tiles per image`. Worked one row of tiles at a time, as whole-row vector
/// operations: the row transform over the four input rows, then the column transform over the
/// even and odd columns (tile `tx` reads padded columns `2tx .. 2tx + 3`).
#[inline(always)]
fn transform_inputs_body(x: &[f32], g: &ConvGeometry, first: usize, count: usize, v: &mut [f32]) {
    let (h, w) = (g.height, g.width);
    let (th, tw) = (h.div_ceil(2), w.div_ceil(2));
    let tiles = count * th * tw;
    let ct = g.channels_in * tiles;
    let plane = h * w;
    // Padded rows hold input columns -1 .. 2·tw + 1 (zero outside the image).
    let len = 2 * tw + 2;
    let mut d = vec![0.0f32; 4 * len];
    let mut t = vec![0.0f32; 4 * len];
    let mut even = vec![0.0f32; tw + 1];
    let mut odd = vec![0.0f32; tw + 1];
    for n in 0..count {
        let img = &x[(first + n) * g.channels_in * plane..(first + n + 1) * g.channels_in * plane];
        for c in 0..g.channels_in {
            let p = &img[c * plane..(c + 1) * plane];
            for ty in 0..th {
                for r in 0..4 {
                    let row = &mut d[r * len..(r + 1) * len];
                    row.fill(0.0);
                    let y = (2 * ty + r) as isize - 1;
                    if y >= 0 && (y as usize) < h {
                        let y = y as usize;
                        row[1..1 + w].copy_from_slice(&p[y * w..(y + 1) * w]);
                    }
                }
                // rows: t = Bᵀ d
                {
                    let (d0, rest) = d.split_at(len);
                    let (d1, rest) = rest.split_at(len);
                    let (d2, d3) = rest.split_at(len);
                    let (t0, rest) = t.split_at_mut(len);
                    let (t1, rest) = rest.split_at_mut(len);
                    let (t2, t3) = rest.split_at_mut(len);
                    for k in 0..len {
                        t0[k] = d0[k] - d2[k];
                        t1[k] = d1[k] + d2[k];
                        t2[k] = d2[k] - d1[k];
                        t3[k] = d1[k] - d3[k];
                    }
                }
                let col = c * tiles + (n * th + ty) * tw;
                for r in 0..4 {
                    let tr = &t[r * len..(r + 1) * len];
                    for k in 0..=tw {
                        even[k] = tr[2 * k];
                        odd[k] = tr[2 * k + 1];
                    }
                    // columns: with a, b, c, d = padded columns 2tx .. 2tx + 3:
                    // a - c, b + c, c - b, b - d
                    let base = r * 4 * ct + col;
                    let out = &mut v[base..];
                    for k in 0..tw {
                        out[k] = even[k] - even[k + 1];
                    }
                    let out = &mut v[base + ct..];
                    for k in 0..tw {
                        out[k] = odd[k] + even[k + 1];
                    }
                    let out = &mut v[base + 2 * ct..];
                    for k in 0..tw {
                        out[k] = even[k + 1] - odd[k];
                    }
                    let out = &mut v[base + 3 * ct..];
                    for k in 0..tw {
                        out[k] = odd[k] - odd[k + 1];
                    }
                }
            }
        }
    }
}

/// `Y = Aᵀ M A` for every output channel and tile of `count` images, written into `y` (those
/// images' `[count, O, H, W]` block). `m` is `[16, O, T]`. One row of tiles at a time, as in
/// [`transform_inputs`].
#[inline(always)]
fn transform_outputs_body(m: &[f32], g: &ConvGeometry, count: usize, y: &mut [f32]) {
    let (h, w) = (g.height, g.width);
    let (th, tw) = (h.div_ceil(2), w.div_ceil(2));
    let tiles = count * th * tw;
    let ot = g.channels_out * tiles;
    let plane = h * w;
    // t[a][s]: the row transform Aᵀ M for output row a of the tile and column s, over tx.
    let mut t = vec![0.0f32; 8 * tw];
    let mut left = vec![0.0f32; tw];
    let mut right = vec![0.0f32; tw];
    for n in 0..count {
        for o in 0..g.channels_out {
            let out = &mut y[(n * g.channels_out + o) * plane..][..plane];
            for ty in 0..th {
                let col = o * tiles + (n * th + ty) * tw;
                for s in 0..4 {
                    let m0 = &m[s * ot + col..][..tw];
                    let m1 = &m[(4 + s) * ot + col..][..tw];
                    let m2 = &m[(8 + s) * ot + col..][..tw];
                    let m3 = &m[(12 + s) * ot + col..][..tw];
                    let (ta, tb) = t.split_at_mut(4 * tw);
                    let t0 = &mut ta[s * tw..(s + 1) * tw];
                    let t1 = &mut tb[s * tw..(s + 1) * tw];
                    for k in 0..tw {
                        t0[k] = m0[k] + m1[k] + m2[k];
                        t1[k] = m1[k] - m2[k] - m3[k];
                    }
                }
                for a in 0..2 {
                    let yy = 2 * ty + a;
                    if yy >= h {
                        continue;
                    }
                    let ta = &t[a * 4 * tw..(a + 1) * 4 * tw];
                    let (s0, s1, s2, s3) = (
                        &ta[..tw],
                        &ta[tw..2 * tw],
                        &ta[2 * tw..3 * tw],
                        &ta[3 * tw..],
                    );
                    for k in 0..tw {
                        left[k] = s0[k] + s1[k] + s2[k];
                        right[k] = s1[k] - s2[k] - s3[k];
                    }
                    let row = &mut out[yy * w..(yy + 1) * w];
                    for (k, pair) in row.chunks_mut(2).enumerate() {
                        pair[0] = left[k];
                        if let Some(second) = pair.get_mut(1) {
                            *second = right[k];
                        }
                    }
                }
            }
        }
    }
}

/// `G` of F(2x2, 3x3) (4x3).
const G_F2: [[f64; 3]; 4] = [
    [1.0, 0.0, 0.0],
    [0.5, 0.5, 0.5],
    [0.5, -0.5, 0.5],
    [0.0, 0.0, 1.0],
];

/// `G` of F(4x4, 3x3) (6x3).
const G_F4: [[f64; 3]; 6] = [
    [0.25, 0.0, 0.0],
    [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
    [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
    [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
    [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
    [0.0, 0.0, 1.0],
];

/// `U = G g Gᵀ` for every filter, as `[O, P, C]`: output channel outermost, then the `P`
/// transformed positions, so position `p`'s `O x C` matrix starts at `p·C` with row stride
/// `P·C`. With `flip`, the filters of the input gradient instead (`o` and `c` still name the
/// forward weight's `[O, C, 3, 3]`; the result is `[C, P, O]`): channel axes swapped, both
/// spatial axes flipped.
///
/// Position `(r, s)` is `Σ_(i, j) G[r][i]·G[s][j]·g[i][j]`: per output channel, the taps of its
/// filters gathered into nine rows, then one vector pass per position over the non-zero
/// coefficients (products taken in f64, rounded once to f32). Output channels are spread over
/// the threads; each one's work stays in the L1/L2 cache.
fn transform_filters(weight: &[f32], o: usize, c: usize, flip: bool, tile: Tile) -> Vec<f32> {
    let g: &[[f64; 3]] = match tile {
        Tile::F2 => &G_F2,
        Tile::F4 => &G_F4,
    };
    let n = g.len();
    let positions = n * n;
    let coefs: Vec<[f32; 9]> = (0..positions)
        .map(|pos| {
            let (r, s) = (pos / n, pos % n);
            std::array::from_fn(|k| (g[r][k / 3] * g[s][k % 3]) as f32)
        })
        .collect();
    let (rows, inner) = if flip { (c, o) } else { (o, c) };
    let mut u = vec![0.0f32; rows * positions * inner];
    u.par_chunks_mut((positions * inner).max(1))
        .enumerate()
        .for_each_init(
            || vec![0.0f32; 9 * inner],
            |taps, (row, out)| filter_row(weight, c, flip, row, &coefs, taps, out),
        );
    u
}

/// `dst += a · src`, element by element (the lengths equal).
#[inline(always)]
fn axpy(dst: &mut [f32], a: f32, src: &[f32]) {
    for (d, v) in dst.iter_mut().zip(src) {
        *d += a * v;
    }
}

/// One output channel's transformed filters for [`transform_filters`] (`taps` is scratch of
/// `9 · inner` values; `out` is `[P, inner]`).
#[inline(always)]
fn filter_row_body(
    weight: &[f32],
    c: usize,
    flip: bool,
    row: usize,
    coefs: &[[f32; 9]],
    taps: &mut [f32],
    out: &mut [f32],
) {
    let inner = taps.len() / 9;
    // taps[k · inner + j]: tap k of this output channel's filter from input channel j.
    for j in 0..inner {
        for k in 0..9 {
            taps[k * inner + j] = if flip {
                weight[(j * c + row) * 9 + 8 - k]
            } else {
                weight[(row * c + j) * 9 + k]
            };
        }
    }
    for (coef, dst) in coefs.iter().zip(out.chunks_exact_mut(inner.max(1))) {
        dst.fill(0.0);
        for (k, &a) in coef.iter().enumerate() {
            if a == 0.0 {
                continue;
            }
            axpy(dst, a, &taps[k * inner..(k + 1) * inner]);
        }
    }
}

/// `Bᵀ` of F(4x4, 3x3) applied to six values:
/// `Bᵀ = [[4,0,-5,0,1,0],[0,-4,-4,1,1,0],[0,4,-4,-1,1,0],[0,-2,-1,2,1,0],[0,2,-1,-2,1,0],
/// [0,4,0,-5,0,1]]`.
#[inline(always)]
fn bt_f4(a: f32, b: f32, c: f32, d: f32, e: f32, f: f32) -> [f32; 6] {
    [
        4.0 * a - 5.0 * c + e,
        (d + e) - 4.0 * (b + c),
        (e - d) + 4.0 * (b - c),
        (e - c) + 2.0 * (d - b),
        (e - c) + 2.0 * (b - d),
        4.0 * b - 5.0 * d + f,
    ]
}

/// `Aᵀ` of F(4x4, 3x3) applied to six values:
/// `Aᵀ = [[1,1,1,1,1,0],[0,1,-1,2,-2,0],[0,1,1,4,4,0],[0,1,-1,8,-8,1]]`.
#[inline(always)]
fn at_f4(m0: f32, m1: f32, m2: f32, m3: f32, m4: f32, m5: f32) -> [f32; 4] {
    let (sum12, dif12) = (m1 + m2, m1 - m2);
    let (sum34, dif34) = (m3 + m4, m3 - m4);
    [
        m0 + sum12 + sum34,
        dif12 + 2.0 * dif34,
        sum12 + 4.0 * sum34,
        dif12 + 8.0 * dif34 + m5,
    ]
}

/// Defines `$name(inputs.., outputs..)`: `$f` applied lane by lane over the input rows, its
/// `i`-th result written into output row `i` (all rows as long as the first output). Each row is
/// its own argument so the compiler knows they do not overlap and vectorizes the loop (as
/// locals split from one buffer they stayed scalar).
macro_rules! lanewise {
    ($(#[$doc:meta])* fn $name:ident = $f:ident($($a:ident),+) -> ($($o:ident: $i:tt),+)) => {
        $(#[$doc])*
        #[allow(clippy::too_many_arguments)]
        #[inline(always)]
        fn $name($($a: &[f32],)+ $($o: &mut [f32],)+) {
            let n = [$($o.len()),+][0];
            $(let $a = &$a[..n];)+
            $(let $o = &mut $o[..n];)+
            for k in 0..n {
                let r = $f($($a[k]),+);
                $($o[k] = r[$i];)+
            }
        }
    };
}

lanewise!(
    /// [`bt_f4`] over six rows into six.
    fn bt_f4_rows = bt_f4(a0, a1, a2, a3, a4, a5) -> (o0: 0, o1: 1, o2: 2, o3: 3, o4: 4, o5: 5)
);
lanewise!(
    /// [`at_f4`] over six rows into four.
    fn at_f4_rows = at_f4(a0, a1, a2, a3, a4, a5) -> (o0: 0, o1: 1, o2: 2, o3: 3)
);
lanewise!(
    /// [`a_f4`] over four rows into six.
    fn a_f4_rows = a_f4(a0, a1, a2, a3) -> (o0: 0, o1: 1, o2: 2, o3: 3, o4: 4, o5: 5)
);

/// `buf` (at least `R · len` long) as its first `R` rows of `len` values.
fn rows_mut<const R: usize>(buf: &mut [f32], len: usize) -> [&mut [f32]; R] {
    let mut rest = buf;
    std::array::from_fn(|_| {
        let (head, tail) = std::mem::take(&mut rest).split_at_mut(len);
        rest = tail;
        head
    })
}

/// `R` rows of `len` values, one starting every `stride` values of `buf` (`stride ≥ len`;
/// `buf` at least `(R - 1) · stride + len` long).
fn strided_rows_mut<const R: usize>(buf: &mut [f32], stride: usize, len: usize) -> [&mut [f32]; R] {
    let mut rest = buf;
    std::array::from_fn(|r| {
        let step = if r + 1 < R { stride } else { len };
        let (head, tail) = std::mem::take(&mut rest).split_at_mut(step);
        rest = tail;
        &mut head[..len]
    })
}

/// `buf` (at least `R · len` long) as its first `R` rows of `len` values.
fn rows<const R: usize>(buf: &[f32], len: usize) -> [&[f32]; R] {
    std::array::from_fn(|r| &buf[r * len..(r + 1) * len])
}

/// `V = Bᵀ d B` of F(4x4, 3x3) for the tiles of `count` images starting at `first`: `v` is
/// `[36, C, T]` with `T = count · tiles per image`. One input channel at a time: each image's
/// plane copied into a zero-bordered one (padded row `p` is image row `p - 1`, the same for
/// columns), every tile's 6x6 values gathered into 36 rows of `T` (tile `(ty, tx)` reads padded
/// rows `4ty .. 4ty + 5` and columns `4tx .. 4tx + 5`), then the transform as vector passes
/// over those rows, as long as the group has tiles whatever the image size: the row transform,
/// then the column transform written straight into `v`.
#[inline(always)]
fn transform_inputs_f4_body(
    x: &[f32],
    g: &ConvGeometry,
    first: usize,
    count: usize,
    v: &mut [f32],
) {
    let (h, w) = (g.height, g.width);
    let (th, tw) = (h.div_ceil(4), w.div_ceil(4));
    let per_image = th * tw;
    let tiles = count * per_image;
    if tiles == 0 {
        return;
    }
    let ct = g.channels_in * tiles;
    let plane = h * w;
    // The padded plane: rows and columns -1 .. 4·t + 1 of the image (zero outside it; the
    // border is never written, so it stays zero across images and channels).
    let (ph, pw) = (4 * th + 2, 4 * tw + 2);
    let mut padded = vec![0.0f32; ph * pw];
    // d[(r · 6 + j) · T + t]: padded value (4ty + r, 4tx + j) of tile t; s: d after the row
    // transform, in the same layout.
    let mut d = vec![0.0f32; 36 * tiles];
    let mut s = vec![0.0f32; 36 * tiles];
    for c in 0..g.channels_in {
        for n in 0..count {
            let src = &x[((first + n) * g.channels_in + c) * plane..][..plane];
            for (y, row) in src.chunks_exact(w).enumerate() {
                padded[(y + 1) * pw + 1..][..w].copy_from_slice(row);
            }
            for ty in 0..th {
                let base = (n * th + ty) * tw;
                for r in 0..6 {
                    let prow = &padded[(4 * ty + r) * pw..][..pw];
                    let [d0, d1, d2, d3, d4, d5] = rows_mut::<6>(&mut d[r * 6 * tiles..], tiles);
                    let (d0, d1, d2) = (&mut d0[base..], &mut d1[base..], &mut d2[base..]);
                    let (d3, d4, d5) = (&mut d3[base..], &mut d4[base..], &mut d5[base..]);
                    for (tx, seg) in prow.windows(6).step_by(4).take(tw).enumerate() {
                        d0[tx] = seg[0];
                        d1[tx] = seg[1];
                        d2[tx] = seg[2];
                        d3[tx] = seg[3];
                        d4[tx] = seg[4];
                        d5[tx] = seg[5];
                    }
                }
            }
        }
        // Rows: s[r'][j] = (Bᵀ d)[r'][j], for each column j.
        for j in 0..6 {
            let [a0, a1, a2, a3, a4, a5]: [&[f32]; 6] =
                std::array::from_fn(|r| &d[(r * 6 + j) * tiles..][..tiles]);
            // Rows r' · 6 + j of s, r' = 0 .. 5: six rows of `tiles`, 6 · tiles apart.
            let [o0, o1, o2, o3, o4, o5] =
                strided_rows_mut::<6>(&mut s[j * tiles..], 6 * tiles, tiles);
            bt_f4_rows(a0, a1, a2, a3, a4, a5, o0, o1, o2, o3, o4, o5);
        }
        // Columns: v[r' · 6 + s'] = (s B)[r'][s'], into the channel's run of each position.
        for rr in 0..6 {
            let [a0, a1, a2, a3, a4, a5] = rows::<6>(&s[rr * 6 * tiles..], tiles);
            let block = &mut v[rr * 6 * ct..(rr + 1) * 6 * ct];
            let [v0, v1, v2, v3, v4, v5] = rows_mut::<6>(block, ct);
            let col = c * tiles;
            let (v0, v1, v2) = (
                &mut v0[col..col + tiles],
                &mut v1[col..col + tiles],
                &mut v2[col..col + tiles],
            );
            let (v3, v4, v5) = (
                &mut v3[col..col + tiles],
                &mut v4[col..col + tiles],
                &mut v5[col..col + tiles],
            );
            bt_f4_rows(a0, a1, a2, a3, a4, a5, v0, v1, v2, v3, v4, v5);
        }
    }
}

/// `Y = Aᵀ M A` of F(4x4, 3x3) for every output channel and tile of `count` images, written
/// into `y` (those images' `[count, O, H, W]` block). `m` is `[36, O, T]`. One output channel
/// at a time, as vector passes over all `T` tiles (the row transform, then the column
/// transform into 16 rows of `T`), then each tile's 4x4 values put in place.
#[inline(always)]
fn transform_outputs_f4_body(m: &[f32], g: &ConvGeometry, count: usize, y: &mut [f32]) {
    let (h, w) = (g.height, g.width);
    let (th, tw) = (h.div_ceil(4), w.div_ceil(4));
    let tiles = count * th * tw;
    if tiles == 0 {
        return;
    }
    let ot = g.channels_out * tiles;
    let plane = h * w;
    // t[(a · 6 + s) · T + k]: row a of Aᵀ M in column s; q[(a · 4 + b) · T + k]: output
    // (a, b) of tile k.
    let mut t = vec![0.0f32; 24 * tiles];
    let mut q = vec![0.0f32; 16 * tiles];
    for o in 0..g.channels_out {
        for s in 0..6 {
            let [m0, m1, m2, m3, m4, m5]: [&[f32]; 6] =
                std::array::from_fn(|r| &m[(r * 6 + s) * ot + o * tiles..][..tiles]);
            let [t0, t1, t2, t3] = strided_rows_mut::<4>(&mut t[s * tiles..], 6 * tiles, tiles);
            at_f4_rows(m0, m1, m2, m3, m4, m5, t0, t1, t2, t3);
        }
        for a in 0..4 {
            let [s0, s1, s2, s3, s4, s5] = rows::<6>(&t[a * 6 * tiles..], tiles);
            let [q0, q1, q2, q3] = rows_mut::<4>(&mut q[a * 4 * tiles..], tiles);
            at_f4_rows(s0, s1, s2, s3, s4, s5, q0, q1, q2, q3);
        }
        for n in 0..count {
            let out = &mut y[(n * g.channels_out + o) * plane..][..plane];
            for ty in 0..th {
                let base = (n * th + ty) * tw;
                for a in 0..4 {
                    let yy = 4 * ty + a;
                    if yy >= h {
                        break;
                    }
                    let [q0, q1, q2, q3] = rows::<4>(&q[a * 4 * tiles..], tiles);
                    let (q0, q1) = (&q0[base..base + tw], &q1[base..base + tw]);
                    let (q2, q3) = (&q2[base..base + tw], &q3[base..base + tw]);
                    let row = &mut out[yy * w..(yy + 1) * w];
                    let mut quads = row.chunks_exact_mut(4);
                    for (k, quad) in (&mut quads).enumerate() {
                        quad[0] = q0[k];
                        quad[1] = q1[k];
                        quad[2] = q2[k];
                        quad[3] = q3[k];
                    }
                    // A last, partial tile (the width not a multiple of 4).
                    let last = w / 4;
                    for (b, v) in quads.into_remainder().iter_mut().enumerate() {
                        *v = [q0[last], q1[last], q2[last]][b];
                    }
                }
            }
        }
    }
}

/// The convolution's output `[B, O, H, W]` from the input `[B, C, H, W]` and the weight
/// `[O, C, 3, 3]` (contiguous row-major f32) for a 3x3, stride-1, padding-1 geometry (any
/// channel counts; [`serves`] says when it is the faster path), with the [`DEFAULT_TILE`].
///
/// # Panics
/// If the geometry is not a 3x3, stride-1, padding-1 convolution, or the slices' lengths do not
/// match it.
pub fn conv3x3_forward(x: &[f32], weight: &[f32], g: &ConvGeometry) -> Vec<f32> {
    conv3x3_forward_with(DEFAULT_TILE, x, weight, g)
}

/// [`conv3x3_forward`] with the given tile.
///
/// # Panics
/// As [`conv3x3_forward`].
pub fn conv3x3_forward_with(tile: Tile, x: &[f32], weight: &[f32], g: &ConvGeometry) -> Vec<f32> {
    let (o, c) = (g.channels_out, g.channels_in);
    assert_eq!(weight.len(), o * c * 9, "weight length");
    forward_transformed(tile, x, &transform_filters(weight, o, c, false, tile), g)
}

/// The forward of a 3x3, stride-1, padding-1 convolution from its [`transform_filters`].
fn forward_transformed(tile: Tile, x: &[f32], u: &[f32], g: &ConvGeometry) -> Vec<f32> {
    assert!(
        is_same_3x3(g),
        "not a 3x3 stride-1 padding-1 convolution: {g:?}"
    );
    let (o, c) = (g.channels_out, g.channels_in);
    let plane = g.height * g.width;
    assert_eq!(x.len(), g.batch * c * plane, "input length");
    assert_eq!(
        u.len(),
        o * c * tile.positions(),
        "transformed filters' length"
    );
    let mut y = vec![0.0f32; g.batch * o * plane];
    if y.is_empty() {
        return y;
    }
    let positions = tile.positions();
    let tiles_per_image = g.height.div_ceil(tile.output()) * g.width.div_ceil(tile.output());
    let threads = rayon::current_num_threads().max(1);
    let per_group = (TILES_PER_GEMM / tiles_per_image).clamp(1, g.batch.div_ceil(threads));
    y.par_chunks_mut(per_group * o * plane)
        .enumerate()
        .for_each_init(
            || (Vec::new(), Vec::new()),
            |(v, m): &mut (Vec<f32>, Vec<f32>), (k, yg)| {
                let first = k * per_group;
                let count = yg.len() / (o * plane);
                let tiles = count * tiles_per_image;
                v.resize(positions * c * tiles, 0.0);
                m.resize(positions * o * tiles, 0.0);
                match tile {
                    Tile::F2 => transform_inputs(x, g, first, count, v),
                    Tile::F4 => transform_inputs_f4(x, g, first, count, v),
                }
                for pos in 0..positions {
                    let up = &u[pos * c..];
                    let vp = &v[pos * c * tiles..(pos + 1) * c * tiles];
                    let mp = &mut m[pos * o * tiles..(pos + 1) * o * tiles];
                    // SAFETY: mp is o x tiles (row stride tiles), vp c x tiles (row stride
                    // tiles): the slices above have exactly these lengths. up is o x c with row
                    // stride positions·c: its last element, (o - 1)·positions·c + c - 1, lies
                    // within u[pos·c..] since pos < positions. mp overlaps neither.
                    unsafe {
                        gemm::gemm(
                            o,
                            tiles,
                            c,
                            mp.as_mut_ptr(),
                            1,
                            tiles as isize,
                            false,
                            up.as_ptr(),
                            1,
                            (positions * c) as isize,
                            vp.as_ptr(),
                            1,
                            tiles as isize,
                            0.0,
                            1.0,
                            false,
                            false,
                            false,
                            gemm::Parallelism::None,
                        );
                    }
                }
                match tile {
                    Tile::F2 => transform_outputs(m, g, count, yg),
                    Tile::F4 => transform_outputs_f4(m, g, count, yg),
                }
            },
        );
    y
}

/// The input gradient `[B, C, H, W]` of a 3x3, stride-1, padding-1 convolution, from the weight
/// `[O, C, 3, 3]` and the output gradient `[B, O, H, W]`: the same convolution of the output
/// gradient with the weight flipped in both axes and its channel axes swapped, with the
/// [`DEFAULT_TILE`].
pub fn conv3x3_input_grad(weight: &[f32], output_grad: &[f32], g: &ConvGeometry) -> Vec<f32> {
    conv3x3_input_grad_with(DEFAULT_TILE, weight, output_grad, g)
}

/// [`conv3x3_input_grad`] with the given tile.
pub fn conv3x3_input_grad_with(
    tile: Tile,
    weight: &[f32],
    output_grad: &[f32],
    g: &ConvGeometry,
) -> Vec<f32> {
    let (o, c) = (g.channels_out, g.channels_in);
    assert_eq!(weight.len(), o * c * 9, "weight length");
    let transposed = ConvGeometry {
        channels_in: o,
        channels_out: c,
        ..g.clone()
    };
    let u = transform_filters(weight, o, c, true, tile);
    forward_transformed(tile, output_grad, &u, &transposed)
}

/// `A` of F(4x4, 3x3) (the transpose of [`at_f4`]'s `Aᵀ`) applied to four values: the six
/// values a 4-vector of output gradients spreads over in the transformed domain.
#[inline(always)]
fn a_f4(q0: f32, q1: f32, q2: f32, q3: f32) -> [f32; 6] {
    let (even, odd) = (q0 + q2, q1 + q3);
    let (even4, odd2) = (q0 + 4.0 * q2, 2.0 * q1 + 8.0 * q3);
    [q0, even + odd, even - odd, even4 + odd2, even4 - odd2, q3]
}

/// `A dY Aᵀ` of F(4x4, 3x3) for every 4x4 tile of the output gradient of `count` images from
/// `first` (zero beyond the image): `mg` is `[36, O, T]`, laid out as [`transform_inputs_f4`]'s
/// `v`. One output channel at a time: the tiles gathered into 16 rows of `T`, then the two
/// passes as vector loops.
#[inline(always)]
fn transform_output_grads_f4_body(
    dy: &[f32],
    g: &ConvGeometry,
    first: usize,
    count: usize,
    mg: &mut [f32],
) {
    let (h, w) = (g.height, g.width);
    let (th, tw) = (h.div_ceil(4), w.div_ceil(4));
    let tiles = count * th * tw;
    if tiles == 0 {
        return;
    }
    let o_all = g.channels_out;
    let ot = o_all * tiles;
    let plane = h * w;
    // d[(a · 4 + b) · T + t]: output gradient (4ty + a, 4tx + b) of tile t (zero outside).
    let mut d = vec![0.0f32; 16 * tiles];
    // s[(r · 4 + b) · T + t]: row r of A dY in column b.
    let mut s = vec![0.0f32; 24 * tiles];
    let whole = w % 4 == 0 && h % 4 == 0;
    for o in 0..o_all {
        if !whole {
            d.fill(0.0);
        }
        for n in 0..count {
            let src = &dy[((first + n) * o_all + o) * plane..][..plane];
            for (y, row) in src.chunks_exact(w).enumerate() {
                let (ty, a) = (y / 4, y % 4);
                let base = (n * th + ty) * tw;
                let [d0, d1, d2, d3] = rows_mut::<4>(&mut d[a * 4 * tiles..], tiles);
                let (d0, d1) = (&mut d0[base..base + tw], &mut d1[base..base + tw]);
                let (d2, d3) = (&mut d2[base..base + tw], &mut d3[base..base + tw]);
                let mut quads = row.chunks_exact(4);
                for (k, q) in (&mut quads).enumerate() {
                    d0[k] = q[0];
                    d1[k] = q[1];
                    d2[k] = q[2];
                    d3[k] = q[3];
                }
                let rest = quads.remainder();
                if !rest.is_empty() {
                    let last = w / 4;
                    let dst = [&mut *d0, &mut *d1, &mut *d2];
                    for (b, v) in rest.iter().enumerate() {
                        dst[b][last] = *v;
                    }
                }
            }
        }
        // Rows: s[r][b] = (A d)[r][b], for each column b.
        for b in 0..4 {
            let [a0, a1, a2, a3]: [&[f32]; 4] =
                std::array::from_fn(|a| &d[(a * 4 + b) * tiles..][..tiles]);
            let [o0, o1, o2, o3, o4, o5] =
                strided_rows_mut::<6>(&mut s[b * tiles..], 4 * tiles, tiles);
            a_f4_rows(a0, a1, a2, a3, o0, o1, o2, o3, o4, o5);
        }
        // Columns: mg[r · 6 + c'] = (s Aᵀ)[r][c'], into the channel's run of each position.
        for r in 0..6 {
            let [a0, a1, a2, a3] = rows::<4>(&s[r * 4 * tiles..], tiles);
            let block = &mut mg[r * 6 * ot..(r + 1) * 6 * ot];
            let [m0, m1, m2, m3, m4, m5] = rows_mut::<6>(block, ot);
            let col = o * tiles;
            a_f4_rows(
                a0,
                a1,
                a2,
                a3,
                &mut m0[col..col + tiles],
                &mut m1[col..col + tiles],
                &mut m2[col..col + tiles],
                &mut m3[col..col + tiles],
                &mut m4[col..col + tiles],
                &mut m5[col..col + tiles],
            );
        }
    }
}

multiversion!(
    /// [`transform_output_grads_f4_body`], vectorized for the CPU at hand.
    fn transform_output_grads_f4 = transform_output_grads_f4_body(
        dy: &[f32],
        g: &ConvGeometry,
        first: usize,
        count: usize,
        mg: &mut [f32],
    )
);

/// The weight gradient `[O, C, 3, 3]` of a 3x3, stride-1, padding-1 convolution from the input
/// `[B, C, H, W]` and the output gradient `[B, O, H, W]`, by F(4x4, 3x3):
/// `dW = Gᵀ [Σ_tiles (A dY Aᵀ) ⊙ (Bᵀ d B)] G`. Per thread, a share of the images in groups
/// of about [`TILES_PER_GEMM`] tiles: both transforms, then for each of the 36 positions one
/// GEMM `[O, T] x [T, C]` accumulated into the thread's `[36, O, C]`; the threads' sums added,
/// then `Gᵀ · G` per filter. Fewer multiplications than the im2col GEMM (36 per 16 outputs
/// instead of 144), at the price of accumulators four times the weight's size.
///
/// # Panics
/// If the geometry is not a 3x3, stride-1, padding-1 convolution, or the slices' lengths do not
/// match it.
pub fn conv3x3_weight_grad(x: &[f32], output_grad: &[f32], g: &ConvGeometry) -> Vec<f32> {
    assert!(
        is_same_3x3(g),
        "not a 3x3 stride-1 padding-1 convolution: {g:?}"
    );
    let (o, c) = (g.channels_out, g.channels_in);
    let plane = g.height * g.width;
    assert_eq!(x.len(), g.batch * c * plane, "input length");
    assert_eq!(
        output_grad.len(),
        g.batch * o * plane,
        "output gradient length"
    );
    let size = 36 * o * c;
    if g.batch == 0 || plane == 0 || o * c == 0 {
        return vec![0.0; o * c * 9];
    }
    let tiles_per_image = g.height.div_ceil(4) * g.width.div_ceil(4);
    let threads = rayon::current_num_threads().max(1);
    let parts = threads.min(g.batch);
    let per_part = g.batch.div_ceil(parts);
    let per_group = (TILES_PER_GEMM / tiles_per_image).clamp(1, per_part);
    let partials: Vec<Vec<f32>> = (0..parts)
        .into_par_iter()
        .filter_map(|part| {
            let (begin, end) = (part * per_part, ((part + 1) * per_part).min(g.batch));
            if begin >= end {
                return None;
            }
            // Not zeroed: the first group's GEMMs (which do not read it) write all of it.
            let mut acc: Vec<f32> = Vec::with_capacity(size);
            let mut v = Vec::new();
            let mut mg = Vec::new();
            let mut first = begin;
            let mut started = false;
            while first < end {
                let count = per_group.min(end - first);
                let tiles = count * tiles_per_image;
                v.resize(36 * c * tiles, 0.0);
                mg.resize(36 * o * tiles, 0.0);
                transform_inputs_f4(x, g, first, count, &mut v);
                transform_output_grads_f4(output_grad, g, first, count, &mut mg);
                for pos in 0..36 {
                    let mp = &mg[pos * o * tiles..(pos + 1) * o * tiles];
                    let vp = &v[pos * c * tiles..(pos + 1) * c * tiles];
                    // SAFETY: acc's capacity is 36·o·c, so position pos's o x c block (row
                    // stride c) from pos·o·c lies within it; before the first group is done it
                    // is only written (read_dst is false then), never read. mp is o x tiles
                    // (row stride tiles) and vp c x tiles read transposed as tiles x c (column
                    // stride tiles): the slices above have exactly these lengths. None overlap.
                    unsafe {
                        gemm::gemm(
                            o,
                            c,
                            tiles,
                            acc.as_mut_ptr().add(pos * o * c),
                            1,
                            c as isize,
                            started,
                            mp.as_ptr(),
                            1,
                            tiles as isize,
                            vp.as_ptr(),
                            tiles as isize,
                            1,
                            1.0,
                            1.0,
                            false,
                            false,
                            false,
                            gemm::Parallelism::None,
                        );
                    }
                }
                if !started {
                    // SAFETY: the 36 GEMMs above wrote every one of the 36·o·c values.
                    unsafe { acc.set_len(size) };
                    started = true;
                }
                first += count;
            }
            Some(acc)
        })
        .collect();
    let mut partials = partials.into_iter();
    let mut du = partials.next().unwrap_or_else(|| vec![0.0; size]);
    for p in partials {
        add_into(&mut du, &p);
    }
    filter_grads_from(&du, o * c)
}

/// `a += b`, element by element.
#[inline(always)]
fn add_into_body(a: &mut [f32], b: &[f32]) {
    for (x, y) in a.iter_mut().zip(b) {
        *x += y;
    }
}

multiversion!(
    /// [`add_into_body`] for the CPU at hand.
    fn add_into = add_into_body(a: &mut [f32], b: &[f32])
);

multiversion!(
    /// [`filter_grads_from_body`] for the CPU at hand.
    fn filter_grads_from = filter_grads_from_body(du: &[f32], n: usize) -> Vec<f32>
);

/// `dW = Gᵀ dU G` for `n` filters from `du` (`[36, n]`), as `[n, 3, 3]`: first over the
/// columns (`[6, 3, n]`), then over the rows, as vector passes over the filters, products taken
/// in f32 with the coefficients of [`G_F4`].
#[inline(always)]
fn filter_grads_from_body(du: &[f32], n: usize) -> Vec<f32> {
    let gc: [[f32; 3]; 6] = std::array::from_fn(|r| std::array::from_fn(|i| G_F4[r][i] as f32));
    // t[(r · 3 + j) · n + f] = Σ_s dU[r · 6 + s][f] · G[s][j]
    let mut t = vec![0.0f32; 18 * n];
    for r in 0..6 {
        for j in 0..3 {
            let dst = &mut t[(r * 3 + j) * n..][..n];
            for s in 0..6 {
                let coef = gc[s][j];
                if coef == 0.0 {
                    continue;
                }
                axpy(dst, coef, &du[(r * 6 + s) * n..][..n]);
            }
        }
    }
    // out[f · 9 + i · 3 + j] = Σ_r G[r][i] · t[r][j][f]
    let mut k = vec![0.0f32; 9 * n];
    for i in 0..3 {
        for j in 0..3 {
            let dst = &mut k[(i * 3 + j) * n..][..n];
            for r in 0..6 {
                let coef = gc[r][i];
                if coef == 0.0 {
                    continue;
                }
                axpy(dst, coef, &t[(r * 3 + j) * n..][..n]);
            }
        }
    }
    let mut out = vec![0.0f32; 9 * n];
    for (f, dst) in out.chunks_exact_mut(9).enumerate() {
        for (ij, d) in dst.iter_mut().enumerate() {
            *d = k[ij * n + f];
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8) as f32 / 1e7 - 0.8
            })
            .collect()
    }

    /// The transforms as dispatched (AVX-512 or AVX2 where the CPU has them) give the same bits
    /// as their bodies compiled for the baseline, which this test calls directly: the
    /// baseline path is checked on any machine, and the vector versions round as it does.
    #[test]
    fn every_compiled_version_of_the_transforms_rounds_alike() {
        for (h, w) in [(4, 4), (5, 7), (8, 8), (13, 6), (32, 32)] {
            let (count, c, o) = (3, 5, 4);
            let g = ConvGeometry::same_3x3(count + 1, c, h, w, o);
            let x = values(g.batch * c * h * w, 7);
            for tile in [Tile::F2, Tile::F4] {
                let tiles = count * h.div_ceil(tile.output()) * w.div_ceil(tile.output());
                let mut fast = vec![0.0; tile.positions() * c * tiles];
                let mut base = fast.clone();
                let mut y_fast = vec![0.0; count * o * h * w];
                let mut y_base = y_fast.clone();
                let m = values(tile.positions() * o * tiles, 3);
                match tile {
                    Tile::F2 => {
                        transform_inputs(&x, &g, 1, count, &mut fast);
                        transform_inputs_body(&x, &g, 1, count, &mut base);
                        transform_outputs(&m, &g, count, &mut y_fast);
                        transform_outputs_body(&m, &g, count, &mut y_base);
                    }
                    Tile::F4 => {
                        transform_inputs_f4(&x, &g, 1, count, &mut fast);
                        transform_inputs_f4_body(&x, &g, 1, count, &mut base);
                        transform_outputs_f4(&m, &g, count, &mut y_fast);
                        transform_outputs_f4_body(&m, &g, count, &mut y_base);
                    }
                }
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                if tile == Tile::F4 {
                    // The output gradient's transform of the weight gradient.
                    let dy = values(g.batch * o * h * w, 9);
                    let mut mg_fast = vec![0.0; 36 * o * tiles];
                    let mut mg_base = mg_fast.clone();
                    transform_output_grads_f4(&dy, &g, 1, count, &mut mg_fast);
                    transform_output_grads_f4_body(&dy, &g, 1, count, &mut mg_base);
                    assert_eq!(bits(&mg_fast), bits(&mg_base), "output gradients, {h}x{w}");
                    assert!(mg_fast.iter().any(|v| *v != 0.0));
                    let du = values(36 * o * c, 4);
                    assert_eq!(
                        bits(&filter_grads_from(&du, o * c)),
                        bits(&filter_grads_from_body(&du, o * c)),
                        "filter gradients"
                    );
                }
                assert_eq!(bits(&fast), bits(&base), "{tile:?} inputs, {h}x{w}");
                assert_eq!(bits(&y_fast), bits(&y_base), "{tile:?} outputs, {h}x{w}");
                assert!(fast.iter().any(|v| *v != 0.0) && y_fast.iter().any(|v| *v != 0.0));
            }
            let weight = values(o * c * 9, 5);
            for flip in [false, true] {
                let (rows, inner) = if flip { (c, o) } else { (o, c) };
                let coefs: Vec<[f32; 9]> = (0..36)
                    .map(|pos| {
                        std::array::from_fn(|k| {
                            (G_F4[pos / 6][k / 3] * G_F4[pos % 6][k % 3]) as f32
                        })
                    })
                    .collect();
                for row in 0..rows {
                    let mut taps = vec![0.0; 9 * inner];
                    let mut fast = vec![0.0; 36 * inner];
                    let mut base = fast.clone();
                    filter_row(&weight, c, flip, row, &coefs, &mut taps, &mut fast);
                    filter_row_body(&weight, c, flip, row, &coefs, &mut taps, &mut base);
                    assert_eq!(fast, base, "filter row {row}, flip {flip}");
                }
            }
        }
    }
}
