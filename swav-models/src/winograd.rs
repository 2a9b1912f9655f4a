//! 3x3, stride-1, padding-1 convolutions by Winograd's minimal filtering F(2x2, 3x3) (Lavin &
//! Gray, 2016): every 2x2 output tile from a 4x4 input tile with 16 multiplications per input
//! and output channel pair instead of 36, as 16 GEMMs over the transformed tiles. The forward and
//! (with the weight flipped and transposed) the input gradient of a ResNet's 3x3 convolutions.
//!
//! With `d` a 4x4 input tile and `g` a 3x3 filter: `U = G g Gᵀ`, `V = Bᵀ d B`, and the 2x2
//! output `Y = Aᵀ (Σ_c U ⊙ V) A`, where
//! `Bᵀ = [[1,0,-1,0],[0,1,1,0],[0,-1,1,0],[0,1,0,-1]]`,
//! `G = [[1,0,0],[½,½,½],[½,-½,½],[0,0,1]]`, `Aᵀ = [[1,1,1,0],[0,1,-1,-1]]`.
#![allow(unsafe_code)]

use rayon::prelude::*;

use crate::flexconv::ConvGeometry;

/// Transformed tiles per GEMM (images are grouped until they give about this many).
const TILES_PER_GEMM: usize = 192;

/// Whether the convolution is one this module computes: 3x3, stride 1, padding 1.
fn is_same_3x3(g: &ConvGeometry) -> bool {
    g.kernel == [3, 3] && g.stride == [1, 1] && g.padding == [1, 1] && g.out == [g.height, g.width]
}

/// Whether the flex convolutions take this module's path: a 3x3, stride-1, padding-1
/// convolution with enough channels on both sides for the 16 small GEMMs to beat one large one.
pub fn serves(g: &ConvGeometry) -> bool {
    is_same_3x3(g) && g.channels_in >= 16 && g.channels_out >= 16
}

/// `U = G g Gᵀ` for every filter: `[16, O, C]` (the 16 transformed positions outermost, so each
/// position's `O x C` matrix is contiguous).
fn transform_filters(weight: &[f32], o: usize, c: usize) -> Vec<f32> {
    let mut u = vec![0.0f32; 16 * o * c];
    let oc = o * c;
    for (f, g) in weight.chunks_exact(9).enumerate() {
        // rows: t = G g (4x3)
        let mut t = [[0.0f32; 3]; 4];
        for col in 0..3 {
            let (g0, g1, g2) = (g[col], g[3 + col], g[6 + col]);
            t[0][col] = g0;
            t[1][col] = 0.5 * (g0 + g1 + g2);
            t[2][col] = 0.5 * (g0 - g1 + g2);
            t[3][col] = g2;
        }
        // columns: t Gᵀ (4x4)
        for (r, row) in t.iter().enumerate() {
            let (g0, g1, g2) = (row[0], row[1], row[2]);
            let vals = [g0, 0.5 * (g0 + g1 + g2), 0.5 * (g0 - g1 + g2), g2];
            for (s, v) in vals.into_iter().enumerate() {
                u[(r * 4 + s) * oc + f] = v;
            }
        }
    }
    u
}

/// `V = Bᵀ d B` for the tiles of `count` images starting at `first`: `v` is `[16, C, T]` with
/// `T = count · tiles per image`. Worked one row of tiles at a time, as whole-row vector
/// operations: the row transform over the four input rows, then the column transform over the
/// even and odd columns (tile `tx` reads padded columns `2tx .. 2tx + 3`).
fn transform_inputs(x: &[f32], g: &ConvGeometry, first: usize, count: usize, v: &mut [f32]) {
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
fn transform_outputs(m: &[f32], g: &ConvGeometry, count: usize, y: &mut [f32]) {
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

/// The convolution's output `[B, O, H, W]` from the input `[B, C, H, W]` and the weight
/// `[O, C, 3, 3]` (contiguous row-major f32) for a 3x3, stride-1, padding-1 geometry (any
/// channel counts; [`serves`] says when it is the faster path).
///
/// # Panics
/// If the geometry is not a 3x3, stride-1, padding-1 convolution, or the slices' lengths do not
/// match it.
pub fn conv3x3_forward(x: &[f32], weight: &[f32], g: &ConvGeometry) -> Vec<f32> {
    assert!(
        is_same_3x3(g),
        "not a 3x3 stride-1 padding-1 convolution: {g:?}"
    );
    let (o, c) = (g.channels_out, g.channels_in);
    let plane = g.height * g.width;
    assert_eq!(x.len(), g.batch * c * plane, "input length");
    assert_eq!(weight.len(), o * c * 9, "weight length");
    let mut y = vec![0.0f32; g.batch * o * plane];
    if y.is_empty() {
        return y;
    }
    let u = transform_filters(weight, o, c);
    let tiles_per_image = g.height.div_ceil(2) * g.width.div_ceil(2);
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
                v.resize(16 * c * tiles, 0.0);
                m.resize(16 * o * tiles, 0.0);
                transform_inputs(x, g, first, count, v);
                for pos in 0..16 {
                    let up = &u[pos * o * c..(pos + 1) * o * c];
                    let vp = &v[pos * c * tiles..(pos + 1) * c * tiles];
                    let mp = &mut m[pos * o * tiles..(pos + 1) * o * tiles];
                    // SAFETY: mp is o x tiles (row stride tiles), up o x c (row stride c), vp
                    // c x tiles (row stride tiles): the slices above have exactly these lengths;
                    // mp does not overlap the others.
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
                            c as isize,
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
                transform_outputs(m, g, count, yg);
            },
        );
    y
}

/// The input gradient `[B, C, H, W]` of a 3x3, stride-1, padding-1 convolution, from the weight
/// `[O, C, 3, 3]` and the output gradient `[B, O, H, W]`: the same convolution of the output
/// gradient with the weight flipped in both axes and its channel axes swapped.
pub fn conv3x3_input_grad(weight: &[f32], output_grad: &[f32], g: &ConvGeometry) -> Vec<f32> {
    let (o, c) = (g.channels_out, g.channels_in);
    assert_eq!(weight.len(), o * c * 9, "weight length");
    let mut flipped = vec![0.0f32; c * o * 9];
    for oo in 0..o {
        for cc in 0..c {
            for k in 0..9 {
                flipped[(cc * o + oo) * 9 + 8 - k] = weight[(oo * c + cc) * 9 + k];
            }
        }
    }
    let transposed = ConvGeometry {
        channels_in: o,
        channels_out: c,
        ..g.clone()
    };
    conv3x3_forward(output_grad, &flipped, &transposed)
}
