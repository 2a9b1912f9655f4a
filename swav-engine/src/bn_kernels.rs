//! Training-mode BatchNorm over contiguous NCHW f32 slices: per-channel statistics in f64 over
//! 16 independent lanes, one fused normalising pass; backward: two per-channel sums and one
//! pass. Each pass is compiled for AVX-512, AVX2 and the baseline ([`crate::simd`]).

use rayon::prelude::*;

use crate::simd::multiversion;

/// the sums are not one chain of dependent additions.
const SUM_LANES: usize = 16;

/// `Σ f(i)` over `0..n` as [`SUM_LANES`] interleaved partial sums, then their total.
#[inline(always)]
fn lane_sum(n: usize, f: impl Fn(usize) -> f64) -> f64 {
    let mut lanes = [0.0f64; SUM_LANES];
    let full = n - n % SUM_LANES;
    for base in (0..full).step_by(SUM_LANES) {
        for (l, lane) in lanes.iter_mut().enumerate() {
            *lane += f(base + l);
        }
    }
    let tail: f64 = (full..n).map(&f).sum();
    lanes.iter().sum::<f64>() + tail
}

/// `Σ x` over one plane, in f64.
#[inline(always)]
fn plane_sum_body(x: &[f32]) -> f64 {
    lane_sum(x.len(), |i| x[i] as f64)
}

/// `Σ (x − mean)²` of one plane, in f64.
#[inline(always)]
fn plane_sq_dev_body(x: &[f32], mean: f64) -> f64 {
    lane_sum(x.len(), |i| {
        let d = x[i] as f64 - mean;
        d * d
    })
}

/// `(Σ dy, Σ dy · (x − mean))` of one plane, in f64.
#[inline(always)]
fn plane_grad_sums_body(dy: &[f32], x: &[f32], mean: f64) -> (f64, f64) {
    let x = &x[..dy.len()];
    (
        lane_sum(dy.len(), |i| dy[i] as f64),
        lane_sum(dy.len(), |i| dy[i] as f64 * (x[i] as f64 - mean)),
    )
}

/// `out = (x − mean) · scale + shift` over one plane.
#[inline(always)]
fn plane_normalize_body(out: &mut [f32], x: &[f32], mean: f32, scale: f32, shift: f32) {
    let x = &x[..out.len()];
    for (o, v) in out.iter_mut().zip(x) {
        *o = (v - mean) * scale + shift;
    }
}

/// BatchNorm's input gradient over one plane: `a · (dy − mean_dy − (x − mean) · k)`, in f64.
#[inline(always)]
fn plane_input_grad_body(dx: &mut [f32], x: &[f32], dy: &[f32], coefs: [f64; 4]) {
    let [a, mean, mean_dy, k] = coefs;
    let (x, dy) = (&x[..dx.len()], &dy[..dx.len()]);
    for ((o, xv), g) in dx.iter_mut().zip(x).zip(dy) {
        let xc = *xv as f64 - mean;
        *o = (a * (*g as f64 - mean_dy - xc * k)) as f32;
    }
}

multiversion!(
    /// [`plane_sum_body`] for the CPU at hand.
    fn plane_sum = plane_sum_body(x: &[f32]) -> f64
);
multiversion!(
    /// [`plane_sq_dev_body`] for the CPU at hand.
    fn plane_sq_dev = plane_sq_dev_body(x: &[f32], mean: f64) -> f64
);
multiversion!(
    /// [`plane_grad_sums_body`] for the CPU at hand.
    fn plane_grad_sums = plane_grad_sums_body(dy: &[f32], x: &[f32], mean: f64) -> (f64, f64)
);
multiversion!(
    /// [`plane_normalize_body`] for the CPU at hand.
    fn plane_normalize = plane_normalize_body(
        out: &mut [f32],
        x: &[f32],
        mean: f32,
        scale: f32,
        shift: f32,
    )
);
multiversion!(
    /// [`plane_input_grad_body`] for the CPU at hand.
    fn plane_input_grad = plane_input_grad_body(
        dx: &mut [f32],
        x: &[f32],
        dy: &[f32],
        coefs: [f64; 4],
    )
);

/// The planes of channel `c` in contiguous NCHW data (`channels` planes of `plane` values per
/// image).
fn channel_planes(
    data: &[f32],
    channels: usize,
    plane: usize,
    c: usize,
) -> impl Iterator<Item = &[f32]> {
    data.chunks_exact(plane.max(1))
        .skip(c)
        .step_by(channels.max(1))
}

/// Training-mode BatchNorm over contiguous NCHW f32: (output, mean, biased variance).
pub(crate) fn batch_norm_train_f32(
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    channels: usize,
    plane: usize,
    epsilon: f64,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let count = (x.len() / channels.max(1)).max(1) as f64;
    let stats: Vec<(f64, f64)> = (0..channels)
        .into_par_iter()
        .map(|c| {
            let mean = channel_planes(x, channels, plane, c)
                .map(plane_sum)
                .sum::<f64>()
                / count;
            let var = channel_planes(x, channels, plane, c)
                .map(|p| plane_sq_dev(p, mean))
                .sum::<f64>()
                / count;
            (mean, var)
        })
        .collect();
    let mut out = vec![0.0f32; x.len()];
    out.par_chunks_mut(plane.max(1))
        .zip(x.par_chunks(plane.max(1)))
        .enumerate()
        .for_each(|(p, (o, xp))| {
            let c = p % channels;
            let (mean, var) = stats[c];
            // (x − mean)·scale + beta, not x·scale + shift: no cancellation where the mean is
            // large against the spread.
            let scale = (gamma[c] as f64 / (var + epsilon).sqrt()) as f32;
            plane_normalize(o, xp, mean as f32, scale, beta[c]);
        });
    let mean = stats.iter().map(|s| s.0 as f32).collect();
    let var = stats.iter().map(|s| s.1 as f32).collect();
    (out, mean, var)
}

/// Gradients of training-mode BatchNorm: (dx, dgamma, dbeta).
#[allow(clippy::too_many_arguments)]
pub(crate) fn batch_norm_backward_f32(
    x: &[f32],
    dy: &[f32],
    gamma: &[f32],
    mean: &[f32],
    variance: &[f32],
    channels: usize,
    plane: usize,
    epsilon: f64,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let count = (x.len() / channels.max(1)).max(1) as f64;
    let sums: Vec<(f64, f64)> = (0..channels)
        .into_par_iter()
        .map(|c| {
            let m = mean[c] as f64;
            channel_planes(dy, channels, plane, c)
                .zip(channel_planes(x, channels, plane, c))
                .map(|(g, xp)| plane_grad_sums(g, xp, m))
                .fold((0.0, 0.0), |acc, s| (acc.0 + s.0, acc.1 + s.1))
        })
        .collect();
    let mut dx = vec![0.0f32; x.len()];
    dx.par_chunks_mut(plane.max(1))
        .enumerate()
        .for_each(|(p, d)| {
            let c = p % channels;
            let (sum_dy, sum_dy_xc) = sums[c];
            let inv_std = 1.0 / (variance[c] as f64 + epsilon).sqrt();
            let m = mean[c] as f64;
            // dx = gamma·inv_std·(dy − mean(dy) − x̂·mean(dy·x̂)), x̂ = (x − m)·inv_std
            let a = gamma[c] as f64 * inv_std;
            let mean_dy = sum_dy / count;
            let k = sum_dy_xc / count * inv_std * inv_std;
            let base = p * plane;
            let n = d.len();
            plane_input_grad(
                d,
                &x[base..base + n],
                &dy[base..base + n],
                [a, m, mean_dy, k],
            );
        });
    let dgamma = (0..channels)
        .map(|c| {
            let inv_std = 1.0 / (variance[c] as f64 + epsilon).sqrt();
            (sums[c].1 * inv_std) as f32
        })
        .collect();
    let dbeta = sums.iter().map(|s| s.0 as f32).collect();
    (dx, dgamma, dbeta)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The BatchNorm plane kernels as dispatched (AVX-512 or AVX2 where the CPU has them) give
    /// the same bits as their bodies compiled for the baseline, called directly here.
    #[test]
    fn every_compiled_version_of_the_batch_norm_kernels_rounds_alike() {
        for n in [1, 15, 16, 35, 1024] {
            let x: Vec<f32> = (0..n)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
                .collect();
            let dy: Vec<f32> = (0..n)
                .map(|i| ((i * 53 % 89) as f32 - 44.0) / 9.0)
                .collect();
            assert_eq!(plane_sum(&x).to_bits(), plane_sum_body(&x).to_bits());
            assert_eq!(
                plane_sq_dev(&x, 0.3).to_bits(),
                plane_sq_dev_body(&x, 0.3).to_bits()
            );
            let (a, b) = plane_grad_sums(&dy, &x, -0.2);
            let (c, d) = plane_grad_sums_body(&dy, &x, -0.2);
            assert_eq!((a.to_bits(), b.to_bits()), (c.to_bits(), d.to_bits()));
            let (mut fast, mut base) = (vec![0.0f32; n], vec![0.0f32; n]);
            plane_normalize(&mut fast, &x, 0.1, 1.7, -0.4);
            plane_normalize_body(&mut base, &x, 0.1, 1.7, -0.4);
            assert_eq!(fast, base);
            plane_input_grad(&mut fast, &x, &dy, [1.3, 0.1, -0.05, 0.02]);
            plane_input_grad_body(&mut base, &x, &dy, [1.3, 0.1, -0.05, 0.02]);
            assert_eq!(fast, base);
            // The lanes add up to the plain sum (to rounding).
            let plain: f64 = x.iter().map(|v| *v as f64).sum();
            assert!((plane_sum(&x) - plain).abs() <= 1e-9 * plain.abs().max(1.0));
        }
    }
}
