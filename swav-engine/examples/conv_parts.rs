//! Probe: where flex spends a 3x3 convolution's forward + backward (no autodiff; the three
//! kernels autodiff calls: conv2d, conv_transpose2d for the input gradient, and conv2d over
//! swapped batch/channel axes for the weight gradient).
use std::time::Instant;

use burn::tensor::module::{conv_transpose2d, conv2d};
use burn::tensor::ops::{ConvOptions, ConvTransposeOptions};
use burn::tensor::{Device, Distribution, Tensor};

// As in the binaries and the backbone bench: freed large blocks are kept for the next call, so
// the figures leave out page faults that a training step does not pay.
#[global_allocator]
static ALLOC: swav_engine::BlockCache = swav_engine::BlockCache::new();

fn best<F: FnMut() -> f32>(mut f: F) -> f64 {
    let mut best = f64::MAX;
    for _ in 0..4 {
        let t = Instant::now();
        std::hint::black_box(f());
        best = best.min(t.elapsed().as_secs_f64());
    }
    best * 1e3
}

fn main() {
    let device = Device::flex();
    for (b, c, s, stride) in [
        (64usize, 64usize, 32usize, 1usize),
        (64, 128, 16, 1),
        (64, 256, 8, 1),
        (64, 512, 4, 1),
        (64, 64, 32, 2),
    ] {
        let so = s / stride;
        let x = Tensor::<4>::random([b, c, s, s], Distribution::Normal(0.0, 1.0), &device);
        let w = Tensor::<4>::random([c, c, 3, 3], Distribution::Normal(0.0, 0.1), &device);
        let g = Tensor::<4>::random([b, c, so, so], Distribution::Normal(0.0, 1.0), &device);
        let opts = ConvOptions::new([stride, stride], [1, 1], [1, 1], 1);
        let fwd = best(|| {
            conv2d(x.clone(), w.clone(), None, opts.clone())
                .sum()
                .into_scalar::<f32>()
        });
        let tpad = stride - 1;
        let topts = ConvTransposeOptions::new([stride, stride], [1, 1], [tpad, tpad], [1, 1], 1);
        let xb = best(|| {
            conv_transpose2d(g.clone(), w.clone(), None, topts.clone())
                .sum()
                .into_scalar::<f32>()
        });
        let wopts = ConvOptions::new([1, 1], [1, 1], [stride, stride], 1);
        let wb = best(|| {
            conv2d(
                x.clone().swap_dims(0, 1),
                g.clone().swap_dims(0, 1),
                None,
                wopts.clone(),
            )
            .sum()
            .into_scalar::<f32>()
        });
        let geo = swav_engine::kernels::ConvGeometry {
            batch: b,
            channels_in: c,
            height: s,
            width: s,
            channels_out: c,
            kernel: [3, 3],
            out: [so, so],
            stride: [stride, stride],
            padding: [1, 1],
        };
        let xv: Vec<f32> = x.to_data().try_to_vec::<f32>().expect("x");
        let wv: Vec<f32> = w.to_data().try_to_vec::<f32>().expect("w");
        let gv: Vec<f32> = g.to_data().try_to_vec::<f32>().expect("g");
        let ofwd = best(|| swav_engine::kernels::conv2d_forward(&xv, &wv, &geo)[0]);
        let oxb = best(|| swav_engine::kernels::conv2d_input_grad(&wv, &gv, &geo)[0]);
        let owb = best(|| swav_engine::kernels::conv2d_weight_grad(&xv, &gv, &geo)[0]);
        // The im2col path beside it, where the flex convolutions take Winograd's.
        let im2col = swav_engine::kernels::winograd::serves(&geo).then(|| {
            use swav_engine::kernels::winograd::{
                Tile, conv3x3_forward_with, conv3x3_input_grad_with,
            };
            (
                best(|| swav_engine::kernels::conv2d_forward_im2col(&xv, &wv, &geo)[0]),
                best(|| swav_engine::kernels::conv2d_input_grad_im2col(&wv, &gv, &geo)[0]),
                best(|| conv3x3_forward_with(Tile::F2, &xv, &wv, &geo)[0]),
                best(|| conv3x3_input_grad_with(Tile::F2, &wv, &gv, &geo)[0]),
                best(|| swav_engine::kernels::conv2d_weight_grad_im2col(&xv, &gv, &geo)[0]),
                best(|| swav_engine::kernels::conv3x3_weight_grad_shifted(&xv, &gv, &geo)[0]),
                best(|| swav_engine::kernels::winograd::conv3x3_weight_grad(&xv, &gv, &geo)[0]),
            )
        });
        let gflop = 2.0 * (b * c * c * 9 * so * so) as f64 / 1e9;
        println!(
            "B{b} C{c} {s}px s{stride}: fwd {fwd:.1} ms ({:.1} GF/s)  x-grad {xb:.1} ms ({:.1})  w-grad {wb:.1} ms ({:.1})",
            gflop / fwd * 1e3,
            gflop / xb * 1e3,
            gflop / wb * 1e3
        );
        println!(
            "    swav-models flexconv:  fwd {ofwd:.1} ms ({:.1})  x-grad {oxb:.1} ms ({:.1})  w-grad {owb:.1} ms ({:.1})",
            gflop / ofwd * 1e3,
            gflop / oxb * 1e3,
            gflop / owb * 1e3
        );
        if let Some((ifwd, ixb, f2fwd, f2xb, iwb, swb, wwb)) = im2col {
            println!(
                "    (flexconv above: Winograd {:?}; im2col: fwd {ifwd:.1} ms ({:.1})  x-grad {ixb:.1} ms ({:.1})  w-grad {iwb:.1} ms ({:.1}); shifted w-grad {swb:.1} ms ({:.1}); Winograd F4 w-grad {wwb:.1} ms ({:.1});",
                swav_engine::kernels::winograd::DEFAULT_TILE,
                gflop / ifwd * 1e3,
                gflop / ixb * 1e3,
                gflop / iwb * 1e3,
                gflop / swb * 1e3,
                gflop / wwb * 1e3
            );
            println!(
                "     Winograd F2: fwd {f2fwd:.1} ms ({:.1})  x-grad {f2xb:.1} ms ({:.1}))",
                gflop / f2fwd * 1e3,
                gflop / f2xb * 1e3
            );
        }
    }
}
