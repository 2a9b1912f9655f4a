//! Convolutions on contiguous NCHW f32 slices as one GEMM per image, forward and backward.
//! Per image `b`, with `col(x_b)` the `[C·kh·kw, Ho·Wo]` patch matrix:
//!
//! - forward: `Y_b[O, Ho·Wo] = W[O, C·kh·kw] · col(x_b)` (a 1x1 stride-1 convolution uses `x_b`
//!   itself);
//! - input gradient: `dcol = Wᵀ · dY_b`, added back onto `dX_b` (col2im);
//! - weight gradient: `dW += dY_b · col(x_b)ᵀ`, one accumulator per thread, summed in order.
//!
//! The 3x3 stride-1 "same" convolutions with 16 channels and more take Winograd's algorithm
//! instead ([`crate::winograd`]): forward, input gradient and (up to 512 x 512 channels) weight
//! gradient; wider ones on larger images take the weight gradient by shifted GEMMs
//! ([`conv3x3_weight_grad_shifted`]).
//!
//! Images are split over the rayon threads (the GEMM itself is split when there are fewer
//! images than threads); every sum runs in a fixed order, so results do not depend on timing.
//! Per-kernel timings: `cargo run --release -p swav-engine --example conv_parts`.

use rayon::prelude::*;

use crate::geometry::ConvGeometry;

/// How many images share one weight-gradient GEMM: enough that its inner dimension (images x
/// output positions) reaches [`GEMM_COLUMNS`], but no more than leaves every thread a group of
/// its own. Late ResNet stages have few output positions per image (16 at 4x4): one GEMM per
/// image would read and write the `O x C·kh·kw` accumulator once per image for a product of
/// depth 16. (The forward and the input gradient stay one GEMM per image: grouping them,
/// which needs the images gathered and scattered, measured slower at every size,
/// `cargo run -p swav-engine --example conv_parts`.)
fn images_per_gemm(g: &ConvGeometry) -> usize {
    let plane_out = (g.out[0] * g.out[1]).max(1);
    let per_thread = g.batch.div_ceil(rayon::current_num_threads().max(1)).max(1);
    (GEMM_COLUMNS / plane_out).clamp(1, per_thread)
}

/// The depth a weight-gradient GEMM should have at least, where the batch allows (see
/// [`images_per_gemm`]).
const GEMM_COLUMNS: usize = 256;

/// The column matrix of images `first..first + count`: `[C·kh·kw, count·Ho·Wo]`, image `k`'s
/// output positions in columns `k·Ho·Wo..`.
fn im2col_group(x: &[f32], g: &ConvGeometry, first: usize, count: usize, col: &mut [f32]) {
    let plane_in = g.channels_in * g.height * g.width;
    let plane_out = g.out[0] * g.out[1];
    for k in 0..count {
        let xb = &x[(first + k) * plane_in..(first + k + 1) * plane_in];
        im2col(xb, g, col, count * plane_out, k * plane_out);
    }
}

/// Images `first..first + count` of an `[B, O, Ho·Wo]` tensor as one `[O, count·Ho·Wo]` matrix.
fn gather_group(
    t: &[f32],
    channels: usize,
    plane: usize,
    first: usize,
    count: usize,
    out: &mut [f32],
) {
    let width = count * plane;
    for k in 0..count {
        let image = &t[(first + k) * channels * plane..(first + k + 1) * channels * plane];
        for (o, src) in image.chunks_exact(plane).enumerate() {
            out[o * width + k * plane..o * width + (k + 1) * plane].copy_from_slice(src);
        }
    }
}

/// The weight gradient of a convolution without groups or dilation, `[O, C, kh, kw]` row-major,
/// from the input `x` (`[B, C, H, W]`) and the output gradient (`[B, O, Ho, Wo]`), both
/// contiguous row-major f32: by Winograd's F(4x4, 3x3) ([`crate::winograd::conv3x3_weight_grad`])
/// where [`crate::winograd::serves_weight_grad`] says so (3x3 stride-1 "same" convolutions with
/// at least 16 channels on each side and at most 512 x 512), else by
/// [`conv3x3_weight_grad_shifted`] for the larger such convolutions on images of about 15x15
/// or more, else by [`conv2d_weight_grad_im2col`].
///
/// # Panics
/// If the slices' lengths do not match `geometry`.
pub fn conv2d_weight_grad(x: &[f32], output_grad: &[f32], geometry: &ConvGeometry) -> Vec<f32> {
    if crate::winograd::serves_weight_grad(geometry) {
        crate::winograd::conv3x3_weight_grad(x, output_grad, geometry)
    } else if shifted_serves(geometry) {
        conv3x3_weight_grad_shifted(x, output_grad, geometry)
    } else {
        conv2d_weight_grad_im2col(x, output_grad, geometry)
    }
}

/// Whether [`conv2d_weight_grad`] may take [`conv3x3_weight_grad_shifted`]: a 3x3 stride-1
/// "same" convolution with at least 16 channels on each side whose images are large enough
/// that the laid-out rows' extra zeros (one per row and one row per image) add at most 1/7 to
/// the GEMM depth (15x15 and up). On smaller images the im2col path is as fast or faster
/// (`cargo run --release -p swav-engine --example conv_parts`, which times every path: at 16
/// px 14 vs 16 ms, at 8 px, where the zeros add 27 %, 16.5 vs 14.5 ms; at 4x4 they add 56 %).
fn shifted_serves(g: &ConvGeometry) -> bool {
    crate::winograd::serves(g) && 7 * (g.height + 1) * (g.width + 1) <= 8 * g.height * g.width
}

/// Images of one group laid out for [`conv3x3_weight_grad_shifted`]: per channel, a margin of
/// `W + 2` zeros, then each image's rows of `W` values each followed by one zero, each image
/// followed by a zero row, then the margin again. The zero after a row is that row's right
/// padding and the next row's left padding; the zero row is the bottom padding of one image and
/// the top padding of the next. Returns the length per channel.
fn lay_out_shifted(
    t: &[f32],
    channels: usize,
    g: &ConvGeometry,
    first: usize,
    count: usize,
    out: &mut Vec<f32>,
) -> usize {
    let (h, w) = (g.height, g.width);
    let row = w + 1;
    let margin = row + 1;
    let len = 2 * margin + count * (h + 1) * row;
    out.clear();
    out.resize(channels * len, 0.0);
    let plane = h * w;
    for (ch, dst) in out.chunks_exact_mut(len).enumerate() {
        for k in 0..count {
            let src = &t[((first + k) * channels + ch) * plane..][..plane];
            let base = margin + k * (h + 1) * row;
            for (y, line) in src.chunks_exact(w).enumerate() {
                dst[base + y * row..base + y * row + w].copy_from_slice(line);
            }
        }
    }
    len
}

/// The weight gradient of a 3x3, stride-1, padding-1 convolution without an im2col matrix:
/// with the input and the output gradient laid out as rows of `W + 1` (see
/// [`lay_out_shifted`]), the input a tap `(i, j)` reads for every output position is the
/// input laid out the same way and shifted by `(i - 1)·(W + 1) + j - 1`, so each tap's
/// `O x C` gradient is one GEMM of the output gradient against the shifted input, both read
/// where they lie (the output gradient's zeros cancel what the shift brings in from padding or
/// from a neighbouring image). Images are grouped for a GEMM depth of about 1024 positions;
/// the groups are spread over the threads, each with its own `[9, O, C]` accumulator. Same
/// arguments, result and panics as [`conv2d_weight_grad`]; any channel counts.
///
/// # Panics
/// If the geometry is not a 3x3, stride-1, padding-1 convolution, or the slices' lengths do
/// not match it.
pub fn conv3x3_weight_grad_shifted(x: &[f32], output_grad: &[f32], g: &ConvGeometry) -> Vec<f32> {
    assert!(
        g.kernel == [3, 3]
            && g.stride == [1, 1]
            && g.padding == [1, 1]
            && g.out == [g.height, g.width],
        "not a 3x3 stride-1 padding-1 convolution: {g:?}"
    );
    let (o, c) = (g.channels_out, g.channels_in);
    let (h, w) = (g.height, g.width);
    assert_eq!(x.len(), g.batch * c * h * w, "input length");
    assert_eq!(
        output_grad.len(),
        g.batch * o * h * w,
        "output gradient length"
    );
    let size = o * c * 9;
    if g.batch == 0 || h * w == 0 || size == 0 {
        return vec![0.0; size];
    }
    let row = w + 1;
    let per_image = (h + 1) * row;
    let threads = rayon::current_num_threads().max(1);
    let group = (SHIFTED_DEPTH / per_image).clamp(1, g.batch.div_ceil(threads));
    let groups = g.batch.div_ceil(group);
    let parts = threads.clamp(1, groups);
    let groups_per_part = groups.div_ceil(parts);
    let partials: Vec<Vec<f32>> = (0..parts)
        .into_par_iter()
        .map(|part| {
            // acc[t, o, c]: tap t's gradient.
            let mut acc = vec![0.0f32; size];
            let (mut xs, mut dys) = (Vec::new(), Vec::new());
            let first_group = part * groups_per_part;
            let last_group = ((part + 1) * groups_per_part).min(groups);
            for (n, gi) in (first_group..last_group).enumerate() {
                let first = gi * group;
                let count = group.min(g.batch - first);
                let x_len = lay_out_shifted(x, c, g, first, count, &mut xs);
                let dy_len = lay_out_shifted(output_grad, o, g, first, count, &mut dys);
                let margin = row + 1;
                let depth = count * per_image;
                for tap in 0..9 {
                    let (i, j) = (tap / 3, tap % 3);
                    let start = margin + i * row + j - row - 1;
                    let dst = &mut acc[tap * o * c..(tap + 1) * o * c];
                    // dst[O, C] (+)= dY[O, depth] · shifted(X)[depth, C]
                    #[allow(unsafe_code)]
                    // SAFETY: dst is o x c (row stride c). The output gradient is read as
                    // o x depth from dys[margin..] with row stride dy_len: its last element,
                    // (o - 1)·dy_len + margin + depth - 1, is within dys (o·dy_len long, as
                    // margin + depth < dy_len). The input is read as depth x c from xs[start..]
                    // with column stride x_len: start + depth - 1 + (c - 1)·x_len is within xs
                    // as start <= 2·margin and 2·margin + depth = x_len. No buffers overlap.
                    unsafe {
                        gemm::gemm(
                            o,
                            c,
                            depth,
                            dst.as_mut_ptr(),
                            1,
                            c as isize,
                            n > 0,
                            dys[margin..].as_ptr(),
                            1,
                            dy_len as isize,
                            xs[start..].as_ptr(),
                            x_len as isize,
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
            }
            acc
        })
        .collect();
    // Sum the parts and reorder [9, O, C] to [O, C, 9].
    let mut out = vec![0.0f32; size];
    out.par_chunks_mut(c * 9).enumerate().for_each(|(oo, dst)| {
        for partial in &partials {
            for (tap, src) in partial.chunks_exact(o * c).enumerate() {
                for (cc, v) in src[oo * c..(oo + 1) * c].iter().enumerate() {
                    dst[cc * 9 + tap] += v;
                }
            }
        }
    });
    out
}

/// The depth (positions of the laid-out images) [`conv3x3_weight_grad_shifted`] aims for per
/// GEMM, where the batch allows.
const SHIFTED_DEPTH: usize = 1024;

/// [`conv2d_weight_grad`] by im2col, for any geometry: per group of images, the column matrix
/// and one GEMM against the output gradient.
///
/// # Panics
/// If the slices' lengths do not match `geometry`.
pub fn conv2d_weight_grad_im2col(
    x: &[f32],
    output_grad: &[f32],
    geometry: &ConvGeometry,
) -> Vec<f32> {
    let g = geometry;
    let plane_in = g.height * g.width;
    let plane_out = g.out[0] * g.out[1];
    let cols = g.channels_in * g.kernel[0] * g.kernel[1];
    assert_eq!(x.len(), g.batch * g.channels_in * plane_in, "input length");
    assert_eq!(
        output_grad.len(),
        g.batch * g.channels_out * plane_out,
        "output gradient length"
    );
    let size = g.channels_out * cols;
    if g.batch == 0 || plane_out == 0 {
        return vec![0.0; size];
    }
    let group = images_per_gemm(g);
    let groups = g.batch.div_ceil(group);
    let parts = rayon::current_num_threads().clamp(1, groups);
    let groups_per_part = groups.div_ceil(parts);
    let partials: Vec<Vec<f32>> = (0..parts)
        .into_par_iter()
        .map(|part| {
            let mut acc = vec![0.0f32; size];
            let width = group * plane_out;
            let mut col = vec![0.0f32; cols * width];
            let mut gathered = vec![0.0f32; if group > 1 { g.channels_out * width } else { 0 }];
            let first_group = part * groups_per_part;
            let last_group = ((part + 1) * groups_per_part).min(groups);
            for (n, gi) in (first_group..last_group).enumerate() {
                let first = gi * group;
                let count = group.min(g.batch - first);
                let width = count * plane_out;
                let col = &mut col[..cols * width];
                im2col_group(x, g, first, count, col);
                let gb: &[f32] = if group > 1 {
                    gather_group(
                        output_grad,
                        g.channels_out,
                        plane_out,
                        first,
                        count,
                        &mut gathered,
                    );
                    &gathered[..g.channels_out * width]
                } else {
                    let per_image = g.channels_out * plane_out;
                    &output_grad[first * per_image..(first + 1) * per_image]
                };
                // acc[O, cols] (+)= gb[O, width] · colᵀ[width, cols]
                #[allow(unsafe_code)]
                // SAFETY: every pointer spans the buffer its strides describe: acc is
                // channels_out x cols (row stride cols), gb channels_out x width (row stride
                // width), and col is read transposed as width x cols (column stride width); the
                // buffers do not overlap.
                unsafe {
                    gemm::gemm(
                        g.channels_out,
                        cols,
                        width,
                        acc.as_mut_ptr(),
                        1,
                        cols as isize,
                        n > 0,
                        gb.as_ptr(),
                        1,
                        width as isize,
                        col.as_ptr(),
                        width as isize,
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
            acc
        })
        .collect();
    let mut out = vec![0.0f32; size];
    for partial in &partials {
        for (o, p) in out.iter_mut().zip(partial) {
            *o += p;
        }
    }
    out
}

/// One image's columns, written into `col` with row stride `ld` from column `offset`: row
/// `(c, i, j)` holds, for every output position, the input value the kernel tap `(i, j)` of
/// channel `c` reads there (zero in the padding).
fn im2col(xb: &[f32], g: &ConvGeometry, col: &mut [f32], ld: usize, offset: usize) {
    let [kh, kw] = g.kernel;
    let [ho, wo] = g.out;
    let [sh, sw] = g.stride;
    let [ph, pw] = g.padding;
    let plane_out = ho * wo;
    for c in 0..g.channels_in {
        let plane = &xb[c * g.height * g.width..(c + 1) * g.height * g.width];
        for i in 0..kh {
            for j in 0..kw {
                let row = &mut col[((c * kh + i) * kw + j) * ld + offset..][..plane_out];
                let (ox_lo, ox_hi) = valid_columns(g.width, wo, sw, pw, j);
                for oy in 0..ho {
                    let dst = &mut row[oy * wo..(oy + 1) * wo];
                    let iy = (oy * sh + i) as isize - ph as isize;
                    if iy < 0 || iy >= g.height as isize {
                        dst.fill(0.0);
                        continue;
                    }
                    let src = &plane[iy as usize * g.width..(iy as usize + 1) * g.width];
                    dst[..ox_lo].fill(0.0);
                    dst[ox_hi..].fill(0.0);
                    if ox_lo == ox_hi {
                        continue;
                    }
                    let first = ox_lo * sw + j - pw;
                    if sw == 1 {
                        dst[ox_lo..ox_hi].copy_from_slice(&src[first..first + (ox_hi - ox_lo)]);
                    } else {
                        for (k, d) in dst[ox_lo..ox_hi].iter_mut().enumerate() {
                            *d = src[first + k * sw];
                        }
                    }
                }
            }
        }
    }
}

/// Splits the images of a batch over the rayon threads: `Some(threads)` when each image's GEMM
/// should itself use the threads (fewer images than threads), else `None`.
fn gemm_parallelism(batch: usize) -> gemm::Parallelism {
    let threads = rayon::current_num_threads();
    if batch < threads {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    }
}

/// The convolution's output, `[B, O, Ho, Wo]` row-major, from the input (`[B, C, H, W]`) and the
/// weight (`[O, C, kh, kw]`), both contiguous row-major f32: by Winograd's F(4x4, 3x3)
/// ([`crate::winograd`]) for the 3x3 stride-1 "same" convolutions it serves, else by
/// [`conv2d_forward_im2col`].
///
/// # Panics
/// If the slices' lengths do not match `geometry`.
pub fn conv2d_forward(x: &[f32], weight: &[f32], geometry: &ConvGeometry) -> Vec<f32> {
    if crate::winograd::serves(geometry) {
        crate::winograd::conv3x3_forward(x, weight, geometry)
    } else {
        conv2d_forward_im2col(x, weight, geometry)
    }
}

/// [`conv2d_forward`] by im2col and one GEMM per image, `Y_b = W · col(x_b)`, for any geometry.
///
/// # Panics
/// If the slices' lengths do not match `geometry`.
pub fn conv2d_forward_im2col(x: &[f32], weight: &[f32], geometry: &ConvGeometry) -> Vec<f32> {
    let g = geometry;
    let plane_in = g.height * g.width;
    let plane_out = g.out[0] * g.out[1];
    let cols = g.channels_in * g.kernel[0] * g.kernel[1];
    assert_eq!(x.len(), g.batch * g.channels_in * plane_in, "input length");
    assert_eq!(weight.len(), g.channels_out * cols, "weight length");
    let per_image = g.channels_out * plane_out;
    let mut y = vec![0.0f32; g.batch * per_image];
    if per_image == 0 || cols == 0 {
        return y;
    }
    let parallelism = gemm_parallelism(g.batch);
    let direct = g.kernel == [1, 1] && g.stride == [1, 1] && g.padding == [0, 0];
    y.par_chunks_mut(per_image).enumerate().for_each_init(
        || vec![0.0f32; if direct { 0 } else { cols * plane_out }],
        |col, (b, yb)| {
            let xb = &x[b * g.channels_in * plane_in..(b + 1) * g.channels_in * plane_in];
            let columns: &[f32] = if direct {
                xb
            } else {
                im2col(xb, g, col, plane_out, 0);
                col
            };
            // yb[O, plane_out] = weight[O, cols] · columns[cols, plane_out]
            #[allow(unsafe_code)]
            // SAFETY: yb is channels_out x plane_out (row stride plane_out), weight
            // channels_out x cols (row stride cols), columns cols x plane_out (row stride
            // plane_out); lengths checked above; no overlap.
            unsafe {
                gemm::gemm(
                    g.channels_out,
                    plane_out,
                    cols,
                    yb.as_mut_ptr(),
                    1,
                    plane_out as isize,
                    false,
                    weight.as_ptr(),
                    1,
                    cols as isize,
                    columns.as_ptr(),
                    1,
                    plane_out as isize,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    parallelism,
                );
            }
        },
    );
    y
}

/// The input gradient, `[B, C, H, W]` row-major, from the weight (`[O, C, kh, kw]`) and the
/// output gradient (`[B, O, Ho, Wo]`): for the convolutions [`crate::winograd`] serves,
/// Winograd's forward over the output gradient with the flipped, transposed weight, else
/// [`conv2d_input_grad_im2col`].
///
/// # Panics
/// If the slices' lengths do not match `geometry`.
pub fn conv2d_input_grad(weight: &[f32], output_grad: &[f32], geometry: &ConvGeometry) -> Vec<f32> {
    if crate::winograd::serves(geometry) {
        crate::winograd::conv3x3_input_grad(weight, output_grad, geometry)
    } else {
        conv2d_input_grad_im2col(weight, output_grad, geometry)
    }
}

/// [`conv2d_input_grad`] by one GEMM per image, `dcol = Wᵀ · dY_b`, scattered back by col2im,
/// for any geometry.
///
/// # Panics
/// If the slices' lengths do not match `geometry`.
pub fn conv2d_input_grad_im2col(
    weight: &[f32],
    output_grad: &[f32],
    geometry: &ConvGeometry,
) -> Vec<f32> {
    let g = geometry;
    let plane_in = g.height * g.width;
    let plane_out = g.out[0] * g.out[1];
    let cols = g.channels_in * g.kernel[0] * g.kernel[1];
    assert_eq!(weight.len(), g.channels_out * cols, "weight length");
    assert_eq!(
        output_grad.len(),
        g.batch * g.channels_out * plane_out,
        "output gradient length"
    );
    let per_image = g.channels_in * plane_in;
    let mut dx = vec![0.0f32; g.batch * per_image];
    if per_image == 0 || plane_out == 0 || cols == 0 {
        return dx;
    }
    let parallelism = gemm_parallelism(g.batch);
    let direct = g.kernel == [1, 1] && g.stride == [1, 1] && g.padding == [0, 0];
    dx.par_chunks_mut(per_image).enumerate().for_each_init(
        || vec![0.0f32; if direct { 0 } else { cols * plane_out }],
        |col, (b, dxb)| {
            let gb =
                &output_grad[b * g.channels_out * plane_out..(b + 1) * g.channels_out * plane_out];
            let target: &mut [f32] = if direct { dxb } else { col };
            // target[cols, plane_out] = weightᵀ[cols, O] · gb[O, plane_out]
            #[allow(unsafe_code)]
            // SAFETY: target is cols x plane_out (row stride plane_out; for the direct 1x1
            // case it is dxb, channels_in x plane_in with the same sizes), weight is read
            // transposed (column stride cols), gb is channels_out x plane_out; no overlap.
            unsafe {
                gemm::gemm(
                    cols,
                    plane_out,
                    g.channels_out,
                    target.as_mut_ptr(),
                    1,
                    plane_out as isize,
                    false,
                    weight.as_ptr(),
                    cols as isize,
                    1,
                    gb.as_ptr(),
                    1,
                    plane_out as isize,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    parallelism,
                );
            }
            if !direct {
                col2im(col, g, dxb, plane_out, 0);
            }
        },
    );
    dx
}

/// Adds one image's column gradients (in `col` with row stride `ld`, from column `offset`) back
/// onto its input gradient: the transpose of [`im2col`] (each input pixel receives the sum over
/// the taps that read it).
fn col2im(col: &[f32], g: &ConvGeometry, dxb: &mut [f32], ld: usize, offset: usize) {
    let [kh, kw] = g.kernel;
    let [ho, wo] = g.out;
    let [sh, sw] = g.stride;
    let [ph, pw] = g.padding;
    let plane_out = ho * wo;
    for c in 0..g.channels_in {
        let plane = &mut dxb[c * g.height * g.width..(c + 1) * g.height * g.width];
        for i in 0..kh {
            for j in 0..kw {
                let row = &col[((c * kh + i) * kw + j) * ld + offset..][..plane_out];
                let (ox_lo, ox_hi) = valid_columns(g.width, wo, sw, pw, j);
                if ox_lo == ox_hi {
                    continue;
                }
                let first = ox_lo * sw + j - pw;
                for oy in 0..ho {
                    let iy = (oy * sh + i) as isize - ph as isize;
                    if iy < 0 || iy >= g.height as isize {
                        continue;
                    }
                    let src = &row[oy * wo + ox_lo..oy * wo + ox_hi];
                    let dst = &mut plane[iy as usize * g.width..(iy as usize + 1) * g.width];
                    if sw == 1 {
                        for (d, v) in dst[first..first + src.len()].iter_mut().zip(src) {
                            *d += v;
                        }
                    } else {
                        for (k, v) in src.iter().enumerate() {
                            dst[first + k * sw] += v;
                        }
                    }
                }
            }
        }
    }
}

/// The output columns `ox_lo..ox_hi` whose input column `ox * stride + j - padding` lies inside
/// an image `width` wide.
fn valid_columns(
    width: usize,
    wo: usize,
    stride: usize,
    padding: usize,
    j: usize,
) -> (usize, usize) {
    let lo = padding.saturating_sub(j).div_ceil(stride).min(wo);
    let hi = if width + padding > j {
        ((width + padding - j - 1) / stride + 1).min(wo)
    } else {
        0
    };
    (lo, hi.max(lo))
}
