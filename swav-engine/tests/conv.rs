//! The engine's convolution (`swav_engine::conv2d_no_bias` and the slice-level weight
//! gradient) against a plain f64 loop and against burn's own convolution gradients, on shapes
//! with padding, strides, 1x1 and 7x7 kernels and non-square inputs.

use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Device, Distribution, Tensor};
use swav_engine::kernels::{ConvGeometry, conv2d_weight_grad, conv3x3_weight_grad_shifted};
use swav_engine::{conv2d_no_bias, is_flex};

/// (batch, channels in, height, width, channels out, kernel, stride, padding)
type Case = (usize, usize, usize, usize, usize, usize, usize, usize);

/// Cases 8 and 9 put several images into one GEMM (few output positions; the last group short);
/// the last seven are 3x3 stride-1 "same" convolutions with 16 channels or more, which the
/// forward and the input gradient compute by Winograd's F(4x4, 3x3) (odd, non-square, 1x1), and
/// the last one's weight gradient by shifted GEMMs (its images are large enough). Every 3x3
/// stride-1 "same" case also checks the shifted weight gradient directly (two with several
/// images per GEMM, the last group short).
const CASES: [Case; 16] = [
    (2, 3, 9, 7, 4, 3, 1, 1),
    (3, 5, 10, 10, 6, 3, 2, 1),
    (2, 3, 15, 15, 8, 7, 2, 3),
    (2, 8, 6, 6, 4, 1, 2, 0),
    (5, 6, 8, 8, 6, 1, 1, 0),
    (1, 2, 5, 5, 3, 3, 1, 0),
    (3, 4, 7, 11, 5, 3, 2, 2),
    (9, 4, 4, 4, 6, 3, 1, 1),
    (7, 6, 6, 6, 5, 1, 1, 0),
    (2, 16, 9, 7, 17, 3, 1, 1),
    (3, 20, 4, 4, 16, 3, 1, 1),
    (1, 16, 1, 1, 16, 3, 1, 1),
    (5, 16, 2, 3, 18, 3, 1, 1),
    (9, 16, 4, 5, 20, 3, 1, 1),
    (7, 24, 3, 6, 16, 3, 1, 1),
    (3, 16, 18, 17, 20, 3, 1, 1),
];

fn out_size(n: usize, k: usize, s: usize, p: usize) -> usize {
    (n + 2 * p - k) / s + 1
}

fn naive(x: &[f32], g: &[f32], geo: &ConvGeometry) -> Vec<f64> {
    let [kh, kw] = geo.kernel;
    let [ho, wo] = geo.out;
    let mut out = vec![0.0f64; geo.channels_out * geo.channels_in * kh * kw];
    for b in 0..geo.batch {
        for o in 0..geo.channels_out {
            for c in 0..geo.channels_in {
                for i in 0..kh {
                    for j in 0..kw {
                        let mut acc = 0.0f64;
                        for oy in 0..ho {
                            for ox in 0..wo {
                                let iy =
                                    (oy * geo.stride[0] + i) as isize - geo.padding[0] as isize;
                                let ix =
                                    (ox * geo.stride[1] + j) as isize - geo.padding[1] as isize;
                                if iy < 0
                                    || ix < 0
                                    || iy >= geo.height as isize
                                    || ix >= geo.width as isize
                                {
                                    continue;
                                }
                                let xv = x[((b * geo.channels_in + c) * geo.height + iy as usize)
                                    * geo.width
                                    + ix as usize];
                                let gv = g[((b * geo.channels_out + o) * ho + oy) * wo + ox];
                                acc += xv as f64 * gv as f64;
                            }
                        }
                        out[((o * geo.channels_in + c) * kh + i) * kw + j] += acc;
                    }
                }
            }
        }
    }
    out
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .expect("f32 data")
}

#[test]
fn weight_grad_matches_a_plain_loop() {
    let device = Device::flex();
    for (b, c, h, w, o, k, s, p) in CASES {
        let (ho, wo) = (out_size(h, k, s, p), out_size(w, k, s, p));
        let x = values(Tensor::<4>::random(
            [b, c, h, w],
            Distribution::Normal(0.0, 1.0),
            &device,
        ));
        let g = values(Tensor::<4>::random(
            [b, o, ho, wo],
            Distribution::Normal(0.0, 1.0),
            &device,
        ));
        let geo = ConvGeometry {
            batch: b,
            channels_in: c,
            height: h,
            width: w,
            channels_out: o,
            kernel: [k, k],
            out: [ho, wo],
            stride: [s, s],
            padding: [p, p],
        };
        let reference = naive(&x, &g, &geo);
        let mut results = vec![("dispatched", conv2d_weight_grad(&x, &g, &geo))];
        if (k, s, p) == (3, 1, 1) {
            results.push(("shifted", conv3x3_weight_grad_shifted(&x, &g, &geo)));
        }
        // Winograd's F(4x4, 3x3), which the dispatch takes for the 3x3 stride-1 cases with 16
        // channels and more, rounds with an error proportional to the largest values (a few
        // 1e-6 of them, tests/winograd.rs), not to each element: small elements are held to
        // 1e-5 of the largest.
        let scale = reference.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        for (path, fast) in results {
            assert_eq!(fast.len(), reference.len());
            for (i, (a, r)) in fast.iter().zip(&reference).enumerate() {
                assert!(
                    (*a as f64 - r).abs() <= 1e-4 * (1.0 + r.abs()) + 1e-5 * scale,
                    "{path}, case {:?}: element {i}: {a} vs {r}",
                    (b, c, h, w, o, k, s, p)
                );
            }
        }
    }
}

#[test]
fn gradients_match_burns_convolution() {
    let device = Device::flex().autodiff();
    assert!(is_flex(&device) && is_flex(&Device::flex()));
    for (b, c, h, w, o, k, s, p) in CASES {
        let x0 = Tensor::<4>::random([b, c, w, h], Distribution::Normal(0.0, 1.0), &device);
        let w0 = Tensor::<4>::random([o, c, k, k], Distribution::Normal(0.0, 0.3), &device);
        let (ho, wo) = (out_size(h, k, s, p), out_size(w, k, s, p));
        let r = Tensor::<4>::random([b, o, ho, wo], Distribution::Normal(0.0, 1.0), &device);
        let options = ConvOptions::new([s, s], [p, p], [1, 1], 1);
        let run = |fast: bool| {
            // A transposed view, so the fast path also meets a non-contiguous input.
            let x = x0.clone().detach().require_grad();
            let weight = w0.clone().detach().require_grad();
            let xt = x.clone().swap_dims(2, 3);
            let y = if fast {
                conv2d_no_bias(xt, weight.clone(), options.clone())
            } else {
                conv2d(xt, weight.clone(), None, options.clone())
            };
            let grads = (y.clone() * r.clone()).sum().backward();
            let gx = x.grad(&grads).expect("x gradient");
            let gw = weight.grad(&grads).expect("weight gradient");
            (values(y), values(gx), values(gw))
        };
        let (y_fast, gx_fast, gw_fast) = run(true);
        let (y_ref, gx_ref, gw_ref) = run(false);
        for (name, a, r) in [
            ("output", y_fast, y_ref),
            ("x grad", gx_fast, gx_ref),
            ("w grad", gw_fast, gw_ref),
        ] {
            assert_eq!(a.len(), r.len(), "{name}");
            let scale = r.iter().fold(1.0f32, |m, v| m.max(v.abs()));
            for (i, (u, v)) in a.iter().zip(&r).enumerate() {
                assert!(
                    (u - v).abs() <= 1e-5 * scale,
                    "case {:?} {name} element {i}: {u} vs {v}",
                    (b, c, h, w, o, k, s, p)
                );
            }
        }
    }
}

#[test]
fn without_autodiff_the_output_is_burns() {
    // Batch 2 and batch 1 (fewer images than threads: the GEMM itself is split).
    let device = Device::flex();
    for batch in [2, 1] {
        let x = Tensor::<4>::random([batch, 3, 8, 8], Distribution::Normal(0.0, 1.0), &device);
        let w = Tensor::<4>::random([4, 3, 3, 3], Distribution::Normal(0.0, 1.0), &device);
        let options = ConvOptions::new([1, 1], [1, 1], [1, 1], 1);
        let a = values(conv2d_no_bias(x.clone(), w.clone(), options.clone()));
        let b = values(conv2d(x, w, None, options));
        assert_eq!(a.len(), b.len());
        for (u, v) in a.iter().zip(&b) {
            assert!((u - v).abs() <= 1e-5 * (1.0 + v.abs()), "{u} vs {v}");
        }
    }
}
