//! Small PNG pictures drawn with the `image` crate and a built-in 5x7 bitmap font, so a run or
//! evaluation folder can be inspected without Python: line charts (loss, learning rate, kNN
//! accuracy over time) and confusion matrices.

use std::path::Path;

use image::{Rgb, RgbImage};

use swav_models::atomic::AtomicFile;

use crate::EvalError;

const W: u32 = 640;
const H: u32 = 400;
const LEFT: u32 = 70;
const RIGHT: u32 = 20;
const TOP: u32 = 36;
const BOTTOM: u32 = 40;

/// 5x7 glyphs, one byte per row, bit 4 = leftmost column.
fn glyph(c: char) -> [u8; 7] {
    match c.to_ascii_uppercase() {
        '0' => [14, 17, 19, 21, 25, 17, 14],
        '1' => [4, 12, 4, 4, 4, 4, 14],
        '2' => [14, 17, 1, 2, 4, 8, 31],
        '3' => [31, 2, 4, 2, 1, 17, 14],
        '4' => [2, 6, 10, 18, 31, 2, 2],
        '5' => [31, 16, 30, 1, 1, 17, 14],
        '6' => [6, 8, 16, 30, 17, 17, 14],
        '7' => [31, 1, 2, 4, 8, 8, 8],
        '8' => [14, 17, 17, 14, 17, 17, 14],
        '9' => [14, 17, 17, 15, 1, 2, 12],
        'A' => [14, 17, 17, 31, 17, 17, 17],
        'B' => [30, 17, 17, 30, 17, 17, 30],
        'C' => [14, 17, 16, 16, 16, 17, 14],
        'D' => [28, 18, 17, 17, 17, 18, 28],
        'E' => [31, 16, 16, 30, 16, 16, 31],
        'F' => [31, 16, 16, 30, 16, 16, 16],
        'G' => [14, 17, 16, 23, 17, 17, 15],
        'H' => [17, 17, 17, 31, 17, 17, 17],
        'I' => [14, 4, 4, 4, 4, 4, 14],
        'J' => [7, 2, 2, 2, 2, 18, 12],
        'K' => [17, 18, 20, 24, 20, 18, 17],
        'L' => [16, 16, 16, 16, 16, 16, 31],
        'M' => [17, 27, 21, 21, 17, 17, 17],
        'N' => [17, 17, 25, 21, 19, 17, 17],
        'O' => [14, 17, 17, 17, 17, 17, 14],
        'P' => [30, 17, 17, 30, 16, 16, 16],
        'Q' => [14, 17, 17, 17, 21, 18, 13],
        'R' => [30, 17, 17, 30, 20, 18, 17],
        'S' => [15, 16, 16, 14, 1, 1, 30],
        'T' => [31, 4, 4, 4, 4, 4, 4],
        'U' => [17, 17, 17, 17, 17, 17, 14],
        'V' => [17, 17, 17, 17, 17, 10, 4],
        'W' => [17, 17, 17, 21, 21, 21, 10],
        'X' => [17, 17, 10, 4, 10, 17, 17],
        'Y' => [17, 17, 10, 4, 4, 4, 4],
        'Z' => [31, 1, 2, 4, 8, 16, 31],
        '.' => [0, 0, 0, 0, 0, 12, 12],
        '-' => [0, 0, 0, 31, 0, 0, 0],
        '+' => [0, 4, 4, 31, 4, 4, 0],
        '%' => [24, 25, 2, 4, 8, 19, 3],
        '(' => [2, 4, 8, 8, 8, 4, 2],
        ')' => [8, 4, 2, 2, 2, 4, 8],
        '/' => [0, 1, 2, 4, 8, 16, 0],
        ':' => [0, 12, 12, 0, 12, 12, 0],
        '=' => [0, 0, 31, 0, 31, 0, 0],
        _ => [0; 7],
    }
}

pub(crate) fn text(img: &mut RgbImage, x: u32, y: u32, s: &str, color: Rgb<u8>) {
    for (i, c) in s.chars().enumerate() {
        let g = glyph(c);
        for (row, bits) in g.iter().enumerate() {
            for col in 0..5u32 {
                if bits & (1 << (4 - col)) != 0 {
                    let (px, py) = (x + i as u32 * 6 + col, y + row as u32);
                    if px < img.width() && py < img.height() {
                        img.put_pixel(px, py, color);
                    }
                }
            }
        }
    }
}

fn line(img: &mut RgbImage, (x0, y0): (f64, f64), (x1, y1): (f64, f64), color: Rgb<u8>) {
    let steps = ((x1 - x0).abs().max((y1 - y0).abs()).ceil() as usize).max(1);
    for s in 0..=steps {
        let t = s as f64 / steps as f64;
        let (x, y) = (x0 + (x1 - x0) * t, y0 + (y1 - y0) * t);
        if x >= 0.0 && y >= 0.0 && (x as u32) < img.width() && (y as u32) < img.height() {
            img.put_pixel(x as u32, y as u32, color);
        }
    }
}

/// How a chart's axes are labelled and what it draws besides its curve.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChartOptions {
    /// The x values are counts (iterations, epochs): ticks fall on whole numbers and are
    /// labelled without decimals.
    pub integer_x: bool,
    /// Horizontal reference lines, each labelled (e.g. the same network at random
    /// initialisation on a kNN chart), drawn dashed and included in the y range.
    pub baselines: Vec<(String, f64)>,
}

/// The tick labels of `ticks`: whole numbers as integers, values that are all small (below
/// 0.01) or large (10,000 and up) in scientific notation, otherwise the fewest decimals (up
/// to 4) that write every tick within 1 % of the ticks' spacing, the same for every tick.
pub fn tick_labels(ticks: &[f64]) -> Vec<String> {
    let finite: Vec<f64> = ticks.iter().copied().filter(|v| v.is_finite()).collect();
    let largest = finite.iter().fold(0f64, |m, v| m.max(v.abs()));
    if finite.iter().all(|v| (v - v.round()).abs() < 1e-9) && largest < 1e7 {
        return ticks.iter().map(|v| format!("{v:.0}")).collect();
    }
    if largest != 0.0 && !(1e-2..1e4).contains(&largest) {
        return ticks.iter().map(|v| format!("{v:.1e}")).collect();
    }
    let step = finite
        .windows(2)
        .map(|w| (w[1] - w[0]).abs())
        .filter(|d| *d > 0.0)
        .fold(f64::MAX, f64::min);
    // The fewest decimals that write every tick within 1 % of their spacing.
    let decimals = if step == f64::MAX {
        2
    } else {
        (0..=4usize)
            .find(|&d| {
                let scale = 10f64.powi(d as i32);
                finite
                    .iter()
                    .all(|v| ((v * scale).round() / scale - v).abs() <= 0.01 * step)
            })
            .unwrap_or(4)
    };
    ticks.iter().map(|v| format!("{v:.decimals$}")).collect()
}

/// Five tick positions over `[lo, hi]`; with `integer`, on whole numbers (fewer when the range
/// holds fewer than five).
fn ticks(lo: f64, hi: f64, integer: bool) -> Vec<f64> {
    if !integer {
        return (0..=4).map(|i| lo + (hi - lo) * i as f64 / 4.0).collect();
    }
    let (lo, hi) = (lo.ceil(), hi.floor());
    if hi <= lo {
        return vec![lo];
    }
    let step = ((hi - lo) / 4.0).ceil().max(1.0);
    let mut v = Vec::new();
    let mut t = lo;
    while t <= hi + 1e-9 {
        v.push(t);
        t += step;
    }
    v
}

/// Draws `points` (x, y) as a line chart titled `title` with axis label `x_label`, into a PNG
/// at `path`. Fewer than one point gives an empty chart with its title.
pub fn line_chart(
    path: &Path,
    title: &str,
    x_label: &str,
    points: &[(f64, f64)],
) -> Result<(), EvalError> {
    line_chart_with(path, title, x_label, points, &ChartOptions::default())
}

/// [`line_chart`] with [`ChartOptions`]: integer x ticks, labelled baselines.
pub fn line_chart_with(
    path: &Path,
    title: &str,
    x_label: &str,
    points: &[(f64, f64)],
    options: &ChartOptions,
) -> Result<(), EvalError> {
    let mut img = RgbImage::from_pixel(W, H, Rgb([255, 255, 255]));
    let black = Rgb([0, 0, 0]);
    let grey = Rgb([220, 220, 220]);
    let blue = Rgb([31, 119, 180]);
    let orange = Rgb([230, 120, 20]);
    text(&mut img, LEFT, 12, title, black);
    let (x0, x1) = (LEFT as f64, (W - RIGHT) as f64);
    let (y0, y1) = (TOP as f64, (H - BOTTOM) as f64);
    let finite: Vec<(f64, f64)> = points
        .iter()
        .copied()
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .collect();
    if finite.is_empty() {
        line(&mut img, (x0, y1), (x1, y1), black);
        line(&mut img, (x0, y0), (x0, y1), black);
    } else {
        let (mut xmin, mut xmax) = (f64::MAX, f64::MIN);
        let (mut ymin, mut ymax) = (f64::MAX, f64::MIN);
        for &(x, y) in &finite {
            xmin = xmin.min(x);
            xmax = xmax.max(x);
            ymin = ymin.min(y);
            ymax = ymax.max(y);
        }
        for (_, b) in options.baselines.iter().filter(|(_, b)| b.is_finite()) {
            ymin = ymin.min(*b);
            ymax = ymax.max(*b);
        }
        if xmax <= xmin {
            xmax = xmin + 1.0;
        }
        if ymax <= ymin {
            let pad = ymin.abs().max(1e-3) * 0.05;
            ymin -= pad;
            ymax += pad;
        }
        let px = |x: f64| x0 + (x - xmin) / (xmax - xmin) * (x1 - x0);
        let py = |y: f64| y1 - (y - ymin) / (ymax - ymin) * (y1 - y0);
        let yt = ticks(ymin, ymax, false);
        for (v, l) in yt.iter().zip(tick_labels(&yt)) {
            let y = py(*v);
            line(&mut img, (x0, y), (x1, y), grey);
            text(&mut img, 4, (y as u32).saturating_sub(3), &l, black);
        }
        let xt = ticks(xmin, xmax, options.integer_x);
        for (v, l) in xt.iter().zip(tick_labels(&xt)) {
            let x = px(*v);
            line(&mut img, (x, y0), (x, y1), grey);
            let lx = (x as u32).saturating_sub(3 * l.len() as u32);
            text(&mut img, lx, H - BOTTOM + 6, &l, black);
        }
        line(&mut img, (x0, y1), (x1, y1), black);
        line(&mut img, (x0, y0), (x0, y1), black);
        for (name, b) in options.baselines.iter().filter(|(_, b)| b.is_finite()) {
            let y = py(*b);
            // Dashed: 8 pixels drawn, 6 left out.
            let mut x = x0;
            while x < x1 {
                line(&mut img, (x, y), ((x + 8.0).min(x1), y), orange);
                x += 14.0;
            }
            let l = format!("{name} {}", tick_labels(&[*b])[0]);
            let lx = (x1 as u32).saturating_sub(6 * l.len() as u32 + 2);
            text(&mut img, lx, (y as u32).saturating_sub(10), &l, orange);
        }
        if finite.len() == 1 {
            let (x, y) = (px(finite[0].0), py(finite[0].1));
            for d in -2i32..=2 {
                line(
                    &mut img,
                    (x - 2.0, y + d as f64),
                    (x + 2.0, y + d as f64),
                    blue,
                );
            }
        }
        for w in finite.windows(2) {
            line(
                &mut img,
                (px(w[0].0), py(w[0].1)),
                (px(w[1].0), py(w[1].1)),
                blue,
            );
        }
    }
    let lx = (W / 2).saturating_sub(3 * x_label.len() as u32);
    text(&mut img, lx, H - 14, x_label, black);
    save_png(&img, path)
}

/// Draws a confusion matrix (`matrix[true][predicted]` counts) as a PNG heat map at `path`:
/// rows are true classes, columns predictions, each cell shaded by its share of its row (so
/// classes of different sizes compare), with the counts written in when the cells are large
/// enough and the class indices along the axes. `title` goes on top.
pub fn confusion_chart(path: &Path, title: &str, matrix: &[Vec<usize>]) -> Result<(), EvalError> {
    let n = matrix.len().max(1) as u32;
    let cell = (640 / n).clamp(4, 40);
    let (left, top) = (40u32, 40u32);
    let side = cell * n;
    let mut img = RgbImage::from_pixel(left + side + 20, top + side + 30, Rgb([255, 255, 255]));
    let black = Rgb([0, 0, 0]);
    text(&mut img, 4, 12, title, black);
    text(
        &mut img,
        4,
        26,
        "ROWS TRUE CLASS   COLUMNS PREDICTED",
        black,
    );
    for (t, row) in matrix.iter().enumerate() {
        let total = row.iter().sum::<usize>().max(1) as f64;
        for (p, &count) in row.iter().enumerate() {
            let share = count as f64 / total;
            // White (0) to dark blue (1).
            let shade = |full: f64| (255.0 - share * (255.0 - full)).round() as u8;
            let colour = Rgb([shade(8.0), shade(48.0), shade(107.0)]);
            let (x0, y0) = (left + p as u32 * cell, top + t as u32 * cell);
            for y in y0..y0 + cell {
                for x in x0..x0 + cell {
                    img.put_pixel(x, y, colour);
                }
            }
            let digits = count.to_string();
            if cell >= 6 * digits.len() as u32 + 4 && cell >= 12 {
                let ink = if share > 0.5 {
                    Rgb([255, 255, 255])
                } else {
                    black
                };
                let tx = x0 + (cell - 6 * digits.len() as u32) / 2;
                text(&mut img, tx, y0 + (cell - 7) / 2, &digits, ink);
            }
        }
        if cell >= 10 || t % 10 == 0 {
            text(
                &mut img,
                4,
                top + t as u32 * cell + cell.saturating_sub(7) / 2,
                &t.to_string(),
                black,
            );
            let l = t.to_string();
            let tx = (left + t as u32 * cell + cell / 2).saturating_sub(3 * l.len() as u32);
            text(&mut img, tx, top + side + 6, &l, black);
        }
    }
    save_png(&img, path)
}

/// Writes `img` as a PNG at `path`, whole or not at all.
pub(crate) fn save_png(img: &image::RgbImage, path: &Path) -> Result<(), EvalError> {
    let mut file = AtomicFile::create(path).map_err(|e| EvalError::io(path, e))?;
    img.write_to(&mut file, image::ImageFormat::Png)
        .map_err(|e| EvalError::io(path, e))?;
    file.commit().map_err(|e| EvalError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chart_is_a_png_with_the_line_drawn() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("loss.png");
        let pts: Vec<(f64, f64)> = (0..50).map(|i| (i as f64, (50 - i) as f64)).collect();
        line_chart(&p, "LOSS", "ITERATION", &pts).expect("chart");
        let img = image::open(&p).expect("png").to_rgb8();
        assert_eq!(img.dimensions(), (W, H));
        let blue = img.pixels().filter(|p| p.0 == [31, 119, 180]).count();
        assert!(blue > 200, "the line is drawn ({blue} pixels)");
        // The first point (highest loss) is at the top left of the plot area.
        assert_eq!(img.get_pixel(LEFT, TOP).0, [31, 119, 180]);
    }

    #[test]
    fn tick_labels_read_well() {
        // Counts as integers, not `10.000`.
        assert_eq!(tick_labels(&[0.0, 5.0, 10.0]), ["0", "5", "10"]);
        // Small learning rates in scientific notation.
        assert_eq!(tick_labels(&[0.0006, 0.003]), ["6.0e-4", "3.0e-3"]);
        // Otherwise the fewest decimals that tell the ticks apart.
        assert_eq!(
            tick_labels(&[0.0, 0.15, 0.3, 0.45, 0.6]),
            ["0.00", "0.15", "0.30", "0.45", "0.60"]
        );
        assert_eq!(tick_labels(&[34.0, 48.5, 63.0]), ["34.0", "48.5", "63.0"]);
        assert_eq!(tick_labels(&[5.5452]), ["5.55"]);
    }

    #[test]
    fn integer_axes_tick_on_whole_numbers() {
        assert_eq!(ticks(1.0, 20.0, true), [1.0, 6.0, 11.0, 16.0]);
        assert_eq!(ticks(0.0, 3.0, true), [0.0, 1.0, 2.0, 3.0]);
        assert_eq!(ticks(2.0, 2.0, true), [2.0]);
        assert_eq!(ticks(0.0, 1.0, false), [0.0, 0.25, 0.5, 0.75, 1.0]);
    }

    #[test]
    fn a_baseline_is_drawn_dashed_across_the_chart_and_in_range() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("knn.png");
        let pts: Vec<(f64, f64)> = (1..=10)
            .map(|e| (e as f64, 40.0 + 5.0 * e as f64))
            .collect();
        let options = ChartOptions {
            integer_x: true,
            baselines: vec![("RANDOM INIT".into(), 34.0)],
        };
        line_chart_with(&p, "KNN", "EPOCH", &pts, &options).expect("chart");
        let img = image::open(&p).expect("png").to_rgb8();
        // Below every point: the baseline sets the bottom of the range.
        let y = H - BOTTOM;
        let orange = (LEFT..W - RIGHT)
            .filter(|&x| img.get_pixel(x, y).0 == [230, 120, 20])
            .count();
        let span = (W - RIGHT - LEFT) as usize;
        assert!(
            orange > span / 2 && orange < span,
            "dashed across the plot: {orange} of {span} pixels"
        );
    }

    #[test]
    fn confusion_cells_are_shaded_by_row_share() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("confusion.png");
        // Class 0 always right; class 1 half wrong.
        confusion_chart(&p, "CONFUSION", &[vec![10, 0], vec![5, 5]]).expect("chart");
        let img = image::open(&p).expect("png").to_rgb8();
        let cell = 40;
        let at = |t: u32, q: u32| img.get_pixel(40 + q * cell + 1, 40 + t * cell + 1).0;
        assert_eq!(
            at(0, 0),
            [8, 48, 107],
            "a full row share is the darkest blue"
        );
        assert_eq!(at(0, 1), [255, 255, 255], "an empty cell is white");
        assert_eq!(at(1, 0), at(1, 1), "equal shares, equal shades");
        assert_ne!(at(1, 0), at(0, 0));
    }
}
