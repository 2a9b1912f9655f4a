//! Golden tests: every transform against torchvision + PIL with the same fixed parameters
//! (`tests/golden/gen_augment.py` wrote `augment.json`).
//!
//! Tolerances: colour operations, flips, solarize, grayscale and PIL's blur are exact (max
//! difference 0 levels: they are integer algorithms reproduced bit for bit); the bilinear
//! resize and torchvision's float Gaussian kernel are allowed 1 level (rounding of f32
//! accumulations); normalisation 1e-6.

use base64::Engine;
use serde_json::Value;
use swav_augment::{
    ColorOp, CropBox, JitterParams, Normalize, RgbImage, adjust_brightness, adjust_contrast,
    adjust_hue, adjust_saturation, central_fallback_crop, hflip, kernel_gaussian_blur,
    pil_gaussian_blur, resized_crop, solarize, to_grayscale,
};

fn golden() -> Value {
    serde_json::from_str(include_str!("golden/augment.json")).expect("golden JSON")
}

fn decode(v: &Value) -> RgbImage {
    let w = v["width"].as_u64().expect("width") as u32;
    let h = v["height"].as_u64().expect("height") as u32;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(v["rgb"].as_str().expect("rgb"))
        .expect("base64");
    RgbImage::from_raw(w, h, bytes).expect("size")
}

/// Largest per-value difference, and how many values differ.
fn diff(a: &RgbImage, b: &RgbImage) -> (u8, usize) {
    assert_eq!(a.dimensions(), b.dimensions(), "sizes differ");
    let mut max = 0;
    let mut count = 0;
    for (x, y) in a.iter().zip(b.iter()) {
        let d = x.abs_diff(*y);
        if d > 0 {
            count += 1;
        }
        max = max.max(d);
    }
    (max, count)
}

fn assert_close(got: &RgbImage, want: &RgbImage, tol: u8, what: &str) {
    let (max, count) = diff(got, want);
    assert!(
        max <= tol,
        "{what}: max difference {max} levels ({count} values differ), tolerance {tol}"
    );
}

fn f(v: &Value, k: &str) -> f64 {
    v[k].as_f64().expect(k)
}

fn u(v: &Value, k: &str) -> u32 {
    v[k].as_u64().expect(k) as u32
}

#[test]
fn resized_crop_matches_torchvision_bilinear() {
    let g = golden();
    let img = decode(&g["image"]);
    for case in g["resized_crop"].as_array().expect("cases") {
        let crop = CropBox {
            top: u(case, "top"),
            left: u(case, "left"),
            height: u(case, "height"),
            width: u(case, "width"),
        };
        let got =
            resized_crop(&img, crop, u(case, "out_width"), u(case, "out_height")).expect("resize");
        assert_close(
            &got,
            &decode(&case["out"]),
            1,
            &format!("resized_crop {crop:?}"),
        );
    }
}

#[test]
fn fallback_crop_matches_torchvision() {
    let g = golden();
    for case in g["fallback"].as_array().expect("cases") {
        let got =
            central_fallback_crop(u(case, "width"), u(case, "height"), (3.0 / 4.0, 4.0 / 3.0));
        let want = CropBox {
            top: u(case, "top"),
            left: u(case, "left"),
            height: u(case, "crop_height"),
            width: u(case, "crop_width"),
        };
        assert_eq!(
            got,
            want,
            "image {} x {}",
            u(case, "width"),
            u(case, "height")
        );
    }
}

#[test]
fn flip_grayscale_and_solarize_are_exact() {
    let g = golden();
    let img = decode(&g["image"]);
    let mut flipped = img.clone();
    hflip(&mut flipped);
    assert_close(&flipped, &decode(&g["hflip"]), 0, "hflip");
    let mut gray = img.clone();
    to_grayscale(&mut gray);
    assert_close(&gray, &decode(&g["grayscale"]), 0, "grayscale");
    for case in g["solarize"].as_array().expect("cases") {
        let mut s = img.clone();
        solarize(&mut s, u(case, "threshold") as u8);
        assert_close(
            &s,
            &decode(&case["out"]),
            0,
            &format!("solarize {}", case["threshold"]),
        );
    }
}

#[test]
fn colour_adjustments_are_exact() {
    let g = golden();
    let img = decode(&g["image"]);
    type Op = fn(&mut RgbImage, f64);
    let ops: [(&str, Op); 4] = [
        ("brightness", adjust_brightness),
        ("contrast", adjust_contrast),
        ("saturation", adjust_saturation),
        ("hue", adjust_hue),
    ];
    for (name, op) in ops {
        for case in g[name].as_array().expect("cases") {
            let mut out = img.clone();
            op(&mut out, f(case, "factor"));
            assert_close(
                &out,
                &decode(&case["out"]),
                0,
                &format!("{name} {}", case["factor"]),
            );
        }
    }
}

#[test]
fn jitter_in_a_given_order_matches() {
    let g = golden();
    let img = decode(&g["image"]);
    let ops = [
        ColorOp::Brightness,
        ColorOp::Contrast,
        ColorOp::Saturation,
        ColorOp::Hue,
    ];
    for case in g["jitter"].as_array().expect("cases") {
        let order: Vec<ColorOp> = case["order"]
            .as_array()
            .expect("order")
            .iter()
            .map(|i| ops[i.as_u64().expect("index") as usize])
            .collect();
        let params = JitterParams {
            order: [order[0], order[1], order[2], order[3]],
            brightness: Some(f(case, "brightness")),
            contrast: Some(f(case, "contrast")),
            saturation: Some(f(case, "saturation")),
            hue: Some(f(case, "hue")),
        };
        let mut out = img.clone();
        params.apply(&mut out);
        assert_close(
            &out,
            &decode(&case["out"]),
            0,
            &format!("jitter {:?}", case["order"]),
        );
    }
}

#[test]
fn pil_gaussian_blur_is_exact() {
    let g = golden();
    let img = decode(&g["image"]);
    for case in g["pil_blur"].as_array().expect("cases") {
        let mut out = img.clone();
        pil_gaussian_blur(&mut out, f(case, "radius"));
        assert_close(
            &out,
            &decode(&case["out"]),
            0,
            &format!("PIL blur radius {}", case["radius"]),
        );
    }
}

#[test]
fn kernel_gaussian_blur_matches_torchvision() {
    let g = golden();
    let img = decode(&g["image"]);
    for case in g["kernel_blur"].as_array().expect("cases") {
        let mut out = img.clone();
        kernel_gaussian_blur(&mut out, u(case, "kernel_size") as usize, f(case, "sigma"));
        assert_close(
            &out,
            &decode(&case["out"]),
            1,
            &format!("kernel blur {}", case["kernel_size"]),
        );
    }
}

#[test]
fn normalize_matches_to_tensor_then_normalize() {
    let g = golden();
    let img = decode(&g["small"]);
    for case in g["normalize"].as_array().expect("cases") {
        let arr = |k: &str| -> [f32; 3] {
            let v: Vec<f32> = case[k]
                .as_array()
                .expect(k)
                .iter()
                .map(|x| x.as_f64().expect("number") as f32)
                .collect();
            [v[0], v[1], v[2]]
        };
        let norm = Normalize {
            mean: arr("mean"),
            std: arr("std"),
        };
        let mut out = vec![0f32; 3 * (img.width() * img.height()) as usize];
        norm.write_chw(&img, &mut out).expect("size");
        let want: Vec<f64> = case["out"]
            .as_array()
            .expect("out")
            .iter()
            .map(|x| x.as_f64().expect("number"))
            .collect();
        let max = out
            .iter()
            .zip(&want)
            .map(|(a, b)| (*a as f64 - b).abs())
            .fold(0.0, f64::max);
        assert!(max <= 1e-6, "normalize {:?}: {max:e}", norm.std);
    }
    assert_eq!(Normalize::SWAV.std[0], 0.228);
    assert_eq!(Normalize::IMAGENET.std[0], 0.229);
}
