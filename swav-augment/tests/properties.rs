//! Property tests of swav-augment: sizes, crop geometry, involutions, reproducibility, inputs.

use image::{DynamicImage, ImageBuffer, Luma, LumaA, Rgb, Rgba};
use proptest::prelude::*;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use swav_augment::{
    AugmentError, CropGroup, MultiCrop, MultiCropConfig, RgbImage, hflip, random_resized_crop_box,
    resized_crop, sample_rng, to_grayscale, to_rgb8,
};

fn textured(w: u32, h: u32, salt: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        let v = x.wrapping_mul(2_654_435_761) ^ y.wrapping_mul(40_503) ^ salt;
        Rgb([(v >> 3) as u8, (v >> 11) as u8, (x * 7 + y * 3) as u8])
    })
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 64,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn crops_have_exact_sizes_for_any_input_size(
        w in 1u32..300, h in 1u32..300, size in 1u32..80, seed in any::<u64>()
    ) {
        let mc = MultiCrop::new(MultiCropConfig {
            groups: vec![
                CropGroup { count: 2, size, min_scale: 0.14, max_scale: 1.0 },
                CropGroup { count: 1, size: size / 2 + 1, min_scale: 0.05, max_scale: 0.14 },
            ],
            ..MultiCropConfig::swav_2x224()
        }).expect("valid");
        let img = textured(w, h, 1);
        let mut rng = sample_rng(seed, 0, 0);
        let pixels = mc.apply_pixels(&img, &mut rng).expect("crops");
        prop_assert_eq!(pixels[0].dimensions(), (size, size));
        prop_assert_eq!(pixels[1].dimensions(), (size, size));
        prop_assert_eq!(pixels[2].dimensions(), (size / 2 + 1, size / 2 + 1));
        let floats = mc.apply(&img, &mut rng).expect("crops");
        prop_assert_eq!(floats[0].len(), 3 * (size * size) as usize);
        prop_assert!(floats.iter().flatten().all(|v| v.is_finite()));
    }

    #[test]
    fn crop_boxes_stay_inside_and_respect_scale_and_ratio(
        w in 8u32..400, h in 8u32..400, lo in 0.05f64..0.5, span in 0.0f64..0.5, seed in any::<u64>()
    ) {
        let hi = (lo + span).min(1.0);
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let b = random_resized_crop_box(w, h, (lo, hi), (0.75, 4.0 / 3.0), &mut rng);
        prop_assert!(b.width >= 1 && b.height >= 1);
        prop_assert!(b.left + b.width <= w && b.top + b.height <= h);
        let area = (w * h) as f64;
        let got = (b.width * b.height) as f64;
        let fallback = swav_augment::central_fallback_crop(w, h, (0.75, 4.0 / 3.0));
        if b != fallback || (got >= lo * area && got <= hi * area) {
            // Sides are rounded to whole pixels: allow half a pixel on each side.
            let slack = (b.width + b.height) as f64 / 2.0 + 0.25;
            prop_assert!(got >= lo * area - slack && got <= hi * area + slack,
                "area {} not in [{}, {}] (slack {})", got, lo * area, hi * area, slack);
            let ratio = b.width as f64 / b.height as f64;
            let tol_w = 0.5 / b.height as f64 + 0.5 * ratio / b.height as f64;
            prop_assert!(ratio >= 0.75 - tol_w - 0.5 / b.height as f64 && ratio <= 4.0 / 3.0 + tol_w + 0.5 / b.height as f64,
                "ratio {}", ratio);
        }
    }

    #[test]
    fn flips_are_involutions(w in 1u32..64, h in 1u32..64, salt in any::<u32>()) {
        let img = textured(w, h, salt);
        let mut twice = img.clone();
        hflip(&mut twice);
        hflip(&mut twice);
        prop_assert_eq!(twice, img);
    }

    #[test]
    fn grayscale_has_equal_channels(w in 1u32..40, h in 1u32..40, salt in any::<u32>()) {
        let mut img = textured(w, h, salt);
        to_grayscale(&mut img);
        prop_assert!(img.pixels().all(|p| p.0[0] == p.0[1] && p.0[1] == p.0[2]));
    }

    #[test]
    fn same_seed_same_bytes(seed in any::<u64>(), epoch in 0u64..100, index in 0u64..1_000_000) {
        let mc = MultiCrop::new(MultiCropConfig::stl10()).expect("preset");
        let img = textured(120, 90, 5);
        let a = mc.apply(&img, &mut sample_rng(seed, epoch, index)).expect("a");
        let b = mc.apply(&img, &mut sample_rng(seed, epoch, index)).expect("b");
        prop_assert!(a.iter().flatten().zip(b.iter().flatten()).all(|(x, y)| x.to_bits() == y.to_bits()));
    }
}

#[test]
fn different_seeds_give_different_crops() {
    let mc = MultiCrop::new(MultiCropConfig::cifar()).expect("preset");
    let img = textured(32, 32, 9);
    let outs: Vec<Vec<Vec<f32>>> = (0..8)
        .map(|i| mc.apply(&img, &mut sample_rng(31, 0, i)).expect("crops"))
        .collect();
    for i in 0..outs.len() {
        for j in i + 1..outs.len() {
            assert_ne!(
                outs[i][0], outs[j][0],
                "samples {i} and {j} got the same first crop"
            );
        }
    }
    // The two crops of one sample differ too.
    assert_ne!(outs[0][0], outs[0][1]);
}

#[test]
fn results_do_not_depend_on_threads() {
    let mc = MultiCrop::new(MultiCropConfig::swav_2x160_4x96()).expect("preset");
    let img = textured(200, 150, 3);
    let sequential: Vec<Vec<Vec<f32>>> = (0..6)
        .map(|i| mc.apply(&img, &mut sample_rng(7, 1, i)).expect("crops"))
        .collect();
    let parallel: Vec<Vec<Vec<f32>>> = std::thread::scope(|s| {
        // Spawn in reverse order so the threads run in a different order.
        let handles: Vec<_> = (0..6u64)
            .rev()
            .map(|i| {
                let (mc, img) = (&mc, &img);
                s.spawn(move || (i, mc.apply(img, &mut sample_rng(7, 1, i)).expect("crops")))
            })
            .collect();
        let mut out: Vec<(u64, Vec<Vec<f32>>)> = handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect();
        out.sort_by_key(|(i, _)| *i);
        out.into_iter().map(|(_, v)| v).collect()
    });
    assert_eq!(sequential, parallel);
}

#[test]
fn empty_images_are_errors_not_panics() {
    let mc = MultiCrop::new(MultiCropConfig::cifar()).expect("preset");
    for (w, h) in [(0, 0), (0, 10), (10, 0)] {
        let img = RgbImage::new(w, h);
        let err = mc.apply(&img, &mut sample_rng(1, 0, 0)).expect_err("empty");
        assert_eq!(
            err,
            AugmentError::EmptyImage {
                width: w,
                height: h
            }
        );
        assert!(to_rgb8(&DynamicImage::ImageRgb8(img)).is_err());
    }
}

#[test]
fn small_images_are_upscaled_to_the_crop_size() {
    let img = textured(3, 2, 1);
    let crop = swav_augment::CropBox {
        top: 0,
        left: 0,
        height: 2,
        width: 3,
    };
    let out = resized_crop(&img, crop, 224, 224).expect("upscale");
    assert_eq!(out.dimensions(), (224, 224));
    let mc = MultiCrop::new(MultiCropConfig::swav_2x224_6x96()).expect("preset");
    let crops = mc
        .apply_pixels(
            &RgbImage::from_pixel(1, 1, Rgb([10, 20, 30])),
            &mut sample_rng(0, 0, 0),
        )
        .expect("1x1");
    assert_eq!(crops[0].dimensions(), (224, 224));
}

#[test]
fn any_decoded_format_becomes_rgb8() {
    let gray = DynamicImage::ImageLuma8(ImageBuffer::from_fn(4, 3, |x, _| Luma([x as u8 * 50])));
    let rgb = to_rgb8(&gray).expect("gray");
    assert!(rgb.pixels().all(|p| p.0[0] == p.0[1] && p.0[1] == p.0[2]));
    assert_eq!(rgb.get_pixel(3, 0).0, [150, 150, 150]);

    let rgba = DynamicImage::ImageRgba8(ImageBuffer::from_pixel(2, 2, Rgba([1, 2, 3, 0])));
    assert_eq!(
        to_rgb8(&rgba).expect("rgba").get_pixel(0, 0).0,
        [1, 2, 3],
        "alpha is dropped"
    );

    let la = DynamicImage::ImageLumaA8(ImageBuffer::from_pixel(2, 2, LumaA([77, 9])));
    assert_eq!(to_rgb8(&la).expect("la").get_pixel(1, 1).0, [77, 77, 77]);

    let deep = DynamicImage::ImageRgb16(ImageBuffer::from_pixel(2, 2, Rgb([65535u16, 0, 32896])));
    assert_eq!(
        to_rgb8(&deep).expect("16-bit").get_pixel(0, 0).0,
        [255, 0, 128]
    );
}

#[test]
fn invalid_configs_are_refused_naming_the_field() {
    let bad = |c: MultiCropConfig| match MultiCrop::new(c) {
        Err(AugmentError::InvalidParameter { field, .. }) => field,
        other => panic!("expected an error, got {other:?}"),
    };
    let base = MultiCropConfig::swav_2x224();
    assert_eq!(
        bad(MultiCropConfig {
            groups: vec![],
            ..base.clone()
        }),
        "groups"
    );
    assert_eq!(
        bad(MultiCropConfig {
            flip_p: 1.5,
            ..base.clone()
        }),
        "flip_p"
    );
    assert_eq!(
        bad(MultiCropConfig {
            groups: vec![CropGroup {
                count: 2,
                size: 32,
                min_scale: 0.5,
                max_scale: 0.2
            }],
            ..base.clone()
        }),
        "scale"
    );
    assert_eq!(
        bad(MultiCropConfig {
            groups: vec![CropGroup {
                count: 2,
                size: 0,
                min_scale: 0.1,
                max_scale: 1.0
            }],
            ..base.clone()
        }),
        "size"
    );
    let mut c = base.clone();
    c.normalize.std[1] = 0.0;
    assert_eq!(bad(c), "normalize");
    assert!(MultiCropConfig::preset("imagenet-9000").is_err());
}

#[test]
fn configs_round_trip_through_serde() {
    for name in ["swav", "swav-2x224", "swav-2x160-4x96", "cifar", "stl10"] {
        let c = MultiCropConfig::preset(name).expect("preset");
        let json = serde_json::to_string(&c).expect("serialise");
        let back: MultiCropConfig = serde_json::from_str(&json).expect("parse");
        assert_eq!(back, c);
        MultiCrop::new(back).expect("valid");
    }
    assert_eq!(
        MultiCropConfig::swav_2x224_6x96().crop_sizes(),
        vec![224, 224, 96, 96, 96, 96, 96, 96]
    );
}

#[test]
fn table_hue_shift_equals_the_reference_conversion_for_every_colour() {
    // Every 3rd value of each channel (~620k colours) and several shifts: the fast path of
    // adjust_hue must equal rgb_to_hsv -> shift -> hsv_to_rgb bit for bit.
    // The image path (blocks of pixels) on an image holding all those colours.
    let colours: Vec<[u8; 3]> = (0..=255u8)
        .step_by(3)
        .flat_map(|r| {
            (0..=255u8)
                .step_by(3)
                .flat_map(move |g| (0..=255u8).step_by(3).map(move |b| [r, g, b]))
        })
        .collect();
    let side = (colours.len() as f64).sqrt().ceil() as u32;
    let mut img = RgbImage::from_fn(side, side, |x, y| {
        Rgb(*colours.get((y * side + x) as usize).unwrap_or(&[0, 0, 0]))
    });
    let original = img.clone();
    swav_augment::adjust_hue(&mut img, 0.1);
    for (o, p) in original.pixels().zip(img.pixels()) {
        let [h, s, v] = swav_augment::rgb_to_hsv(o.0[0], o.0[1], o.0[2]);
        assert_eq!(
            p.0,
            swav_augment::hsv_to_rgb(h.wrapping_add(25), s, v),
            "pixel {:?}",
            o.0
        );
    }
    for shift in [0u8, 1, 25, 51, 128, 204, 230, 255] {
        for r in (0..=255u8).step_by(3) {
            for g in (0..=255u8).step_by(3) {
                for b in (0..=255u8).step_by(3) {
                    let [h, s, v] = swav_augment::rgb_to_hsv(r, g, b);
                    let want = swav_augment::hsv_to_rgb(h.wrapping_add(shift), s, v);
                    assert_eq!(
                        swav_augment::shift_hue_pixel(r, g, b, shift),
                        want,
                        "({r}, {g}, {b}) shift {shift}"
                    );
                }
            }
        }
    }
}
