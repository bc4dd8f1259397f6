//! Plots of a load run (SVG): the latency-percentile curve.
//!
//! [`latency_svg`] draws latency against percentile on a scale of nines (x = -log10(1 - p)), so
//! 90 %, 99 %, 99.9 % ... sit one step apart and are the axis labels. The axis stops just past
//! the last percentile the sample supports; the maximum (the curve's 100 % point) is its own
//! marked point at the right edge. Latency is on a log scale with round labels, from a little
//! under the smallest value to a little over the largest.

use std::ops::Range;
use std::path::Path;

use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint, Ranged};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// Image size (px).
const SIZE_PX: (u32, u32) = (960, 560);
/// Font of every text.
const FONT: &str = "sans-serif";
/// Font size (px) of the caption.
const CAPTION_PX: u32 = 22;
/// Font size (px) of tick labels.
const LABEL_PX: u32 = 14;
/// Font size (px) of axis descriptions.
const DESC_PX: u32 = 15;
/// Space (px) around the chart.
const MARGIN_PX: u32 = 16;
/// Width (px) of a y label area (tick labels and the axis description).
const Y_AREA_PX: u32 = 72;
/// Height (px) of the x label area.
const X_AREA_PX: u32 = 48;
/// Round labels on a log axis, at most.
const LOG_LABELS_MAX: usize = 10;
/// Round labels on a log axis, at least when the range allows (a narrow range gets finer steps).
const LOG_LABELS_MIN: usize = 4;
/// Smallest latency drawn (ms); a log axis has no zero.
const MS_FLOOR: f64 = 1e-3;

/// Line colour of the latency curve.
const LINE_BLUE: RGBColor = RGBColor(31, 119, 180);
/// Draws latency (ms, log scale) against percentile (scale of nines) into an SVG at `path`.
///
/// `curve` is (percentile, ms) points as `LoadReport::latency_curve` gives them: percentiles
/// under 100 make the line, a point at 100 % is the maximum. Refuses a curve without a finite
/// point.
pub fn latency_svg(path: &Path, title: &str, curve: &[(f64, f64)]) -> Result<(), String> {
    let curve = Curve::new(curve)?;
    let axis = NinesAxis::new(&curve);
    let all_ms = curve.line.iter().map(|p| p.1).chain(curve.max_ms);
    let (ms_lo, ms_hi) = all_ms.fold((f64::INFINITY, 0.0f64), |(lo, hi), ms| {
        (lo.min(ms), hi.max(ms))
    });
    let y = LogAxis::new(ms_lo, ms_hi);

    let root = SVGBackend::new(path, SIZE_PX).into_drawing_area();
    root.fill(&WHITE).map_err(draw_err)?;
    let x_ticks: Vec<f64> = axis.ticks.iter().map(|t| t.0).collect();
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (FONT, CAPTION_PX))
        .margin(MARGIN_PX)
        .x_label_area_size(X_AREA_PX)
        .y_label_area_size(Y_AREA_PX)
        .build_cartesian_2d(
            Ticked::new(axis.lo..axis.hi, x_ticks),
            (y.lo..y.hi)
                .log_scale()
                .with_key_points(y.ticks.clone())
                .with_light_points(y.light.clone()),
        )
        .map_err(draw_err)?;
    let x_label = |x: &f64| axis.label(*x);
    let y_label = |ms: &f64| round_label(*ms);
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (ms)")
        .label_style((FONT, LABEL_PX))
        .axis_desc_style((FONT, DESC_PX))
        .x_label_formatter(&x_label)
        .y_label_formatter(&y_label)
        .draw()
        .map_err(draw_err)?;

    let line_style = LINE_BLUE.stroke_width(2);
    chart
        .draw_series(LineSeries::new(curve.line.iter().copied(), line_style))
        .map_err(draw_err)?;
    if let (Some(max_ms), Some(edge)) = (curve.max_ms, axis.max_x) {
        let max = (edge, max_ms);
        if let Some(last) = curve.line.last() {
            chart
                .draw_series(DashedLineSeries::new([*last, max], 4, 4, line_style))
                .map_err(draw_err)?;
        }
        let text = format!("max {} ms", round_label(max_ms));
        let style =
            TextStyle::from((FONT, LABEL_PX).into_font()).pos(Pos::new(HPos::Right, VPos::Bottom));
        chart
            .draw_series([EmptyElement::at(max)
                + Circle::new((0, 0), 5, LINE_BLUE.filled())
                + Text::new(text, (-8, -4), style)])
            .map_err(draw_err)?;
    }
    root.present().map_err(draw_err)
}

/// A linear f64 axis whose ticks are given (plotters' own ticks on f64 cannot be chosen
/// together with a label formatter).
struct Ticked {
    range: Range<f64>,
    ticks: Vec<f64>,
}

impl Ticked {
    fn new(range: Range<f64>, ticks: Vec<f64>) -> Ticked {
        debug_assert!(range.end > range.start, "empty axis {range:?}");
        Ticked { range, ticks }
    }
}

impl Ranged for Ticked {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        let share = (value - self.range.start) / (self.range.end - self.range.start);
        limit.0 + (share * f64::from(limit.1 - limit.0)).round() as i32
    }

    fn key_points<Hint: KeyPointHint>(&self, _hint: Hint) -> Vec<f64> {
        self.ticks.clone()
    }

    fn range(&self) -> Range<f64> {
        self.range.clone()
    }
}

/// A latency curve ready to draw: the line in (nines, ms), and the maximum.
struct Curve {
    /// Points under 100 %, as (nines, ms), in order of nines.
    line: Vec<(f64, f64)>,
    /// The 100 % point (ms), if given.
    max_ms: Option<f64>,
}

impl Curve {
    fn new(points: &[(f64, f64)]) -> Result<Curve, String> {
        let mut line = Vec::with_capacity(points.len());
        let mut max_ms: Option<f64> = None;
        for &(p, ms) in points
            .iter()
            .filter(|(p, ms)| p.is_finite() && ms.is_finite())
        {
            let ms = ms.max(MS_FLOOR);
            if p >= 100.0 {
                max_ms = Some(max_ms.map_or(ms, |m| m.max(ms)));
            } else {
                line.push((nines(p.max(0.0)), ms));
            }
        }
        if line.is_empty() && max_ms.is_none() {
            return Err("no latency samples to plot".into());
        }
        line.sort_by(|a, b| a.0.total_cmp(&b.0));
        Ok(Curve { line, max_ms })
    }
}

/// The scale of nines of percentile `p`: 90 → 1, 99 → 2, 99.9 → 3.
fn nines(p: f64) -> f64 {
    -(1.0 - p / 100.0).log10()
}

/// The percentile axis: its range in nines, its labelled ticks and where the maximum goes.
struct NinesAxis {
    lo: f64,
    hi: f64,
    /// (nines, label) of each tick, left to right.
    ticks: Vec<(f64, String)>,
    /// Where the maximum is drawn (the right edge), if the curve has one.
    max_x: Option<f64>,
}

impl NinesAxis {
    /// Highest number of nines labelled.
    const NINES_MAX: u32 = 12;

    fn new(curve: &Curve) -> NinesAxis {
        let fifty = nines(50.0);
        // Without a point under 100 % the axis still shows 50 % .. 90 %.
        let (first, last) = match (curve.line.first(), curve.line.last()) {
            (Some(a), Some(b)) => (a.0, b.0),
            _ => (fifty, 1.0),
        };
        let span = (last - first).max(0.5);
        let lo = first - 0.03 * span;
        let last_tick = last + 1e-6;
        let mut ticks = Vec::new();
        if (lo..=last_tick).contains(&fifty) {
            ticks.push((fifty, "50%".to_string()));
        }
        for k in 1..=Self::NINES_MAX {
            let x = f64::from(k);
            if (lo..=last_tick).contains(&x) {
                ticks.push((x, nines_label(k)));
            }
        }
        let (hi, max_x) = match curve.max_ms {
            Some(_) => {
                let edge = last + (0.08 * span).max(0.25);
                ticks.push((edge, "max".to_string()));
                (edge + 0.02 * span, Some(edge))
            }
            None => (last + 0.03 * span, None),
        };
        NinesAxis {
            lo,
            hi,
            ticks,
            max_x,
        }
    }

    /// The label of the tick nearest `x`.
    fn label(&self, x: f64) -> String {
        self.ticks
            .iter()
            .min_by(|a, b| (a.0 - x).abs().total_cmp(&(b.0 - x).abs()))
            .map(|t| t.1.clone())
            .unwrap_or_default()
    }
}

/// "90%", "99%", "99.9%" ... for `k` nines (k ≥ 1).
fn nines_label(k: u32) -> String {
    match k {
        1 => "90%".into(),
        _ => format!(
            "99{}{}%",
            if k > 2 { "." } else { "" },
            "9".repeat(k as usize - 2)
        ),
    }
}

/// A log axis (values > 0) with round ticks.
struct LogAxis {
    lo: f64,
    hi: f64,
    /// Labelled ticks.
    ticks: Vec<f64>,
    /// Grid lines between the labelled ticks: 1..9 × each decade.
    light: Vec<f64>,
}

impl LogAxis {
    /// Padding factor beyond the data at either end.
    const PAD: f64 = 1.2;
    /// The usual round mantissas.
    const ROUND: &'static [f64] = &[1.0, 2.0, 5.0];
    /// Finer mantissas for a narrow range, coarser one first.
    const FINER: [&'static [f64]; 2] = [
        &[1.0, 1.5, 2.0, 3.0, 5.0, 7.0],
        &[1.0, 1.2, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0],
    ];
    /// Coarser mantissas for a wide range, finer one first; then every k-th decade.
    const COARSER: [&'static [f64]; 2] = [&[1.0, 3.0], &[1.0]];

    /// From a little under `min` to a little over `max` (both > 0), widened to two round
    /// values when the data lies between fewer. Labels at 1, 2, 5 × 10^k, unless that makes
    /// too few (then finer) or too many (then coarser).
    fn new(min: f64, max: f64) -> LogAxis {
        debug_assert!(min > 0.0 && max >= min, "log axis of {min}..{max}");
        let mut lo = min / Self::PAD;
        let mut hi = max * Self::PAD;
        let finest = Self::FINER[1];
        if decade_values(lo, hi, finest, 1).len() < 2 {
            lo = decade_values(lo / 10.0, lo, finest, 1)
                .last()
                .copied()
                .unwrap_or(lo);
            hi = decade_values(hi, hi * 10.0, finest, 1)
                .first()
                .copied()
                .unwrap_or(hi);
        }
        let round = decade_values(lo, hi, Self::ROUND, 1);
        let ticks = if round.len() > LOG_LABELS_MAX {
            Self::COARSER
                .iter()
                .map(|m| decade_values(lo, hi, m, 1))
                // Then every k-th decade; this ends, as a step wider than the range gives one
                // value at most.
                .chain((2..).map(|every| decade_values(lo, hi, &[1.0], every)))
                .find(|t| t.len() <= LOG_LABELS_MAX)
                .unwrap_or_default()
        } else if round.len() < LOG_LABELS_MIN {
            let finer: Vec<Vec<f64>> = Self::FINER
                .iter()
                .map(|m| decade_values(lo, hi, m, 1))
                .filter(|t| t.len() <= LOG_LABELS_MAX)
                .collect();
            match finer.iter().position(|t| t.len() >= LOG_LABELS_MIN) {
                Some(i) => finer[i].clone(),
                None => finer.last().cloned().unwrap_or(round),
            }
        } else {
            round
        };
        let light = decade_values(lo, hi, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0], 1);
        LogAxis {
            lo,
            hi,
            ticks,
            light,
        }
    }
}

/// `m × 10^e` for each mantissa `m` and each decade `e` divisible by `every`, within `lo..=hi`.
fn decade_values(lo: f64, hi: f64, mantissas: &[f64], every: i32) -> Vec<f64> {
    let first = lo.log10().floor() as i32;
    let last = hi.log10().ceil() as i32;
    let within = |v: f64| v >= lo * (1.0 - 1e-9) && v <= hi * (1.0 + 1e-9);
    (first..=last)
        .filter(|e| e.rem_euclid(every) == 0)
        .flat_map(|e| mantissas.iter().map(move |m| m * 10f64.powi(e)))
        .filter(|v| within(*v))
        .collect()
}

/// A round value as a person writes it: at most three significant digits, no trailing zeros.
fn round_label(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return "0".into();
    }
    let digits = (2 - v.abs().log10().floor() as i32).max(0) as usize;
    let s = format!("{v:.digits$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

fn draw_err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (text, x, y) of each `<text>` element of the SVG at `path`.
    fn svg_texts(path: &Path) -> Vec<(String, f64, f64)> {
        let svg = std::fs::read_to_string(path).expect("read svg");
        let attr = |tag: &str, name: &str| -> f64 {
            let key = format!(" {name}=\"");
            let at = tag.find(&key).expect("attribute") + key.len();
            let len = tag[at..].find('"').expect("closing quote");
            tag[at..at + len].parse().expect("number")
        };
        svg.split("<text")
            .skip(1)
            .map(|rest| {
                let open_end = rest.find('>').expect("tag end");
                let body_end = rest.find("</text>").expect("text end");
                let tag = &rest[..open_end];
                let body = rest[open_end + 1..body_end].trim().to_string();
                (body, attr(tag, "x"), attr(tag, "y"))
            })
            .collect()
    }

    fn labels(path: &Path) -> Vec<String> {
        svg_texts(path).into_iter().map(|t| t.0).collect()
    }

    /// A curve as `latency_curve` makes it from `n` samples: every twentieth of a decade of
    /// nines from 50 % up to 1 - 1/n, then the maximum.
    fn curve(n: f64, ms_at_nines: impl Fn(f64) -> f64, max_ms: f64) -> Vec<(f64, f64)> {
        let mut out = Vec::new();
        let mut x = 2f64.log10();
        while x <= n.log10() + 1e-9 {
            out.push((100.0 * (1.0 - 10f64.powf(-x)), ms_at_nines(x)));
            x += 0.05;
        }
        out.push((100.0, max_ms));
        out
    }

    #[test]
    fn latency_axis_reads_in_percentiles_as_far_as_the_data_goes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("latency.svg");
        // 2,000 samples: the curve reaches 99.95 %; 4 ms at the median up to 150 ms, max 400 ms.
        let c = curve(2000.0, |x| 4.0 * 3f64.powf(x), 400.0);
        latency_svg(&path, "latency", &c).expect("draw");
        let l = labels(&path);
        for want in [
            "50%",
            "90%",
            "99%",
            "99.9%",
            "max",
            "percentile",
            "latency (ms)",
        ] {
            assert!(l.iter().any(|t| t == want), "{want:?} missing from {l:?}");
        }
        for unwanted in ["99.99%", "99.999%"] {
            assert!(!l.iter().any(|t| t == unwanted), "{unwanted:?} in {l:?}");
        }
        // Round ms labels over the data's range only: 5 .. 200, nothing a decade away.
        for want in ["5", "10", "20", "50", "100", "200"] {
            assert!(l.iter().any(|t| t == want), "{want:?} missing from {l:?}");
        }
        for unwanted in ["1", "2", "500", "1000"] {
            assert!(!l.iter().any(|t| t == unwanted), "{unwanted:?} in {l:?}");
        }
        assert!(l.iter().any(|t| t == "max 400 ms"), "{l:?}");
    }

    #[test]
    fn a_larger_sample_reaches_further_nines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("latency.svg");
        // 20,000 samples: up to 99.995 %.
        let c = curve(20_000.0, |x| 2.0 + x * x, 90.0);
        latency_svg(&path, "latency", &c).expect("draw");
        let l = labels(&path);
        assert!(l.iter().any(|t| t == "99.99%"), "{l:?}");
        assert!(!l.iter().any(|t| t == "99.999%"), "{l:?}");
        // The percentile ticks stand left to right in order, the max at the right edge.
        let xs: Vec<f64> = svg_texts(&path)
            .into_iter()
            .filter(|t| t.0.ends_with('%') || t.0 == "max")
            .map(|t| t.1)
            .collect();
        assert_eq!(xs.len(), 6, "50%, 90%, 99%, 99.9%, 99.99%, max");
        assert!(xs.windows(2).all(|w| w[0] < w[1]), "{xs:?}");
    }

    #[test]
    fn latency_refuses_a_curve_without_points() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("latency.svg");
        assert!(latency_svg(&path, "latency", &[]).is_err());
        assert!(latency_svg(&path, "latency", &[(f64::NAN, 3.0), (50.0, f64::INFINITY)]).is_err());
        // One sample gives the maximum alone, which is still a plot.
        latency_svg(&path, "latency", &[(100.0, 7.0)]).expect("max only");
        assert!(labels(&path).iter().any(|t| t == "max"));
    }

    #[test]
    fn round_labels_are_short() {
        let cases = [
            (1.0, "1"),
            (0.15000000000000002, "0.15"),
            (2.9999999999, "3"),
            (20.0, "20"),
            (1500.0, "1500"),
            (0.30000000000000004, "0.3"),
            (0.0, "0"),
        ];
        for (v, want) in cases {
            assert_eq!(round_label(v), want, "{v}");
        }
    }

    #[test]
    fn log_ticks_cover_only_the_data() {
        let axis = LogAxis::new(3.0, 400.0);
        assert_eq!(axis.ticks, vec![5.0, 10.0, 20.0, 50.0, 100.0, 200.0]);
        // A narrow range gets finer steps, and at least two labels.
        assert_eq!(LogAxis::new(10.0, 14.2).ticks, vec![10.0, 12.0, 15.0]);
        let narrow = LogAxis::new(10.0, 10.5);
        assert!(narrow.ticks.len() >= 2, "{:?}", narrow.ticks);
        // Many decades: one label a decade at most, never more than the bound.
        let wide = LogAxis::new(0.01, 1e6);
        assert!(wide.ticks.len() <= LOG_LABELS_MAX, "{:?}", wide.ticks);
    }
}
