//! Probe: flex conv2d vs shifted-slices im2col + matmul, forward + backward.
use std::time::Instant;

use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Device, Distribution, Tensor};

fn im2col_conv(x: Tensor<4>, w: Tensor<4>) -> Tensor<4> {
    let [b, c, h, wd] = x.dims();
    let [o, _, kh, kw] = w.dims();
    let xp = x.pad([(1, 1), (1, 1)], burn::tensor::ops::PadMode::Constant(0.0));
    let mut cols = Vec::new();
    for i in 0..kh {
        for j in 0..kw {
            cols.push(xp.clone().slice([0..b, 0..c, i..i + h, j..j + wd]));
        }
    }
    let col = Tensor::stack::<5>(cols, 2).reshape([b, c * kh * kw, h * wd]);
    let wm = w.reshape([1, o, c * kh * kw]);
    wm.matmul(col).reshape([b, o, h, wd])
}

fn main() {
    let device = Device::flex().autodiff();
    for (b, c, s) in [(64usize, 64usize, 32usize), (64, 128, 16), (64, 8, 32)] {
        let x = Tensor::<4>::random([b, c, s, s], Distribution::Normal(0.0, 1.0), &device)
            .require_grad();
        let w = Tensor::<4>::random([c, c, 3, 3], Distribution::Normal(0.0, 0.1), &device)
            .require_grad();
        let opts = ConvOptions::new([1, 1], [1, 1], [1, 1], 1);
        let a = conv2d(x.clone(), w.clone(), None, opts.clone());
        let r = im2col_conv(x.clone(), w.clone());
        let diff = (a - r).abs().max().into_scalar::<f32>();
        for name in ["flex conv2d", "im2col+matmul"] {
            let mut best = f64::MAX;
            for _ in 0..4 {
                let t = Instant::now();
                let y = if name == "flex conv2d" {
                    conv2d(x.clone(), w.clone(), None, opts.clone())
                } else {
                    im2col_conv(x.clone(), w.clone())
                };
                let g = y.sum().backward();
                let gx = x.grad(&g).expect("gx").sum().into_scalar::<f32>();
                let gw = w.grad(&g).expect("gw").sum().into_scalar::<f32>();
                std::hint::black_box((gx, gw));
                best = best.min(t.elapsed().as_secs_f64());
            }
            println!(
                "B{b} C{c} {s}px {name}: {:.1} ms (max diff {diff:e})",
                best * 1e3
            );
        }
    }
}
