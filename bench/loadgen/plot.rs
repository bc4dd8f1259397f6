//! Plots of a load run (SVG): the latency-percentile curve and the per-second timeline.
//!
//! [`latency_svg`] draws latency against percentile on a scale of nines (x = -log10(1 - p)), so
//! 90 %, 99 %, 99.9 % ... sit one step apart and are the axis labels. The axis stops just past
//! the last percentile the sample supports; the maximum (the curve's 100 % point) is its own
//! marked point at the right edge. Latency is on a log scale with round labels, from a little
//! under the smallest value to a little over the largest.
//!
//! [`timeline_svg`] draws each second's committed tx/s (left axis) and p99 latency (right axis)
//! against seconds since load start, with each [`FaultMark`] as a shaded band (or a vertical
//! line for an instant fault) labelled above the plot; labels of faults close together go on
//! separate rows. A second's figures are drawn at its middle: [`Tick::second`] counts the seconds
//! that have ended, so tick `s` covers `[s - 1, s)`. A second with no commits has no p99
//! (`p99_ms` is 0) and leaves a gap in the p99 line.

use std::ops::Range;
use std::path::Path;

use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint, Ranged};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::Tick;

/// Image size (px) of both plots.
const SIZE_PX: (u32, u32) = (960, 560);
/// Font of every text.
const FONT: &str = "sans-serif";
/// Font size (px) of the caption.
const CAPTION_PX: u32 = 22;
/// Font size (px) of tick labels, fault labels and the legend.
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
/// Round labels on a linear axis, about.
const LINEAR_LABELS: f64 = 8.0;
/// Smallest latency drawn (ms); a log axis has no zero.
const MS_FLOOR: f64 = 1e-3;
/// Rows of fault labels, at most; labels beyond share the row whose last label ends first.
const FAULT_LABEL_ROWS_MAX: usize = 6;
/// Height (px) of a row of fault labels.
const FAULT_LABEL_ROW_PX: u32 = 18;
/// Gap (px) kept between two fault labels on one row.
const FAULT_LABEL_GAP_PX: i32 = 10;
/// Height (px) of the legend strip under the timeline.
const LEGEND_PX: u32 = 30;

/// Line colour of the latency curve and of committed tx/s.
const LINE_BLUE: RGBColor = RGBColor(31, 119, 180);
/// Line colour of p99.
const LINE_RED: RGBColor = RGBColor(214, 39, 40);
/// Colours of faults, in turn.
const FAULT_COLOURS: [RGBColor; 6] = [
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(44, 160, 44),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

/// A fault injected during a run, for [`timeline_svg`].
#[derive(Clone, Debug, PartialEq)]
pub struct FaultMark {
    /// What happened, as written above the plot ("crash v2", "partition").
    pub label: String,
    /// When it began (seconds since load start).
    pub start_s: f64,
    /// When it ended (seconds since load start); `None` for an instant fault.
    pub end_s: Option<f64>,
}

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

/// Draws committed tx/s and p99 per second, with `faults` marked, into an SVG at `path`.
///
/// Committed tx/s is on the left axis (linear), p99 (ms) on the right axis: log scale when the
/// seconds' values span more than a decade, else linear. A fault whose start is not a finite
/// number is left out; one whose end is not a finite number after its start is drawn as an
/// instant. Refuses an empty `ticks`.
pub fn timeline_svg(
    path: &Path,
    title: &str,
    ticks: &[Tick],
    faults: &[FaultMark],
) -> Result<(), String> {
    if ticks.is_empty() {
        return Err("no per-second figures to plot".into());
    }
    let faults: Vec<FaultMark> = faults
        .iter()
        .filter(|f| f.start_s.is_finite())
        .map(|f| FaultMark {
            end_s: f.end_s.filter(|end| end.is_finite() && *end > f.start_s),
            ..f.clone()
        })
        .collect();
    let middle = |t: &Tick| t.second as f64 - 0.5;
    let ends = faults
        .iter()
        .flat_map(|f| [Some(f.start_s), f.end_s])
        .flatten();
    let (x_lo, x_hi) = ticks
        .iter()
        .flat_map(|t| [t.second as f64 - 1.0, t.second as f64])
        .chain(ends)
        .fold((0.0f64, 1.0f64), |(lo, hi), s| (lo.min(s), hi.max(s)));
    let x = LinearAxis::new(x_lo, x_hi);
    let tps_max = ticks.iter().map(|t| t.committed_tps).max().unwrap_or(0) as f64;
    let tps = LinearAxis::new(0.0, tps_max.max(1.0) * 1.05);
    let p99 = P99Axis::new(ticks.iter().map(|t| t.p99_ms));

    let root = SVGBackend::new(path, SIZE_PX).into_drawing_area();
    root.fill(&WHITE).map_err(draw_err)?;
    let body = root
        .margin(MARGIN_PX, 0, MARGIN_PX, MARGIN_PX)
        .titled(title, (FONT, CAPTION_PX))
        .map_err(draw_err)?;
    // Fault labels go in a strip between the caption and the plot, one row per stagger level.
    let plot_x0 = (MARGIN_PX + Y_AREA_PX) as i32;
    let plot_x1 = (SIZE_PX.0 - MARGIN_PX - Y_AREA_PX) as i32;
    let to_px =
        |s: f64| plot_x0 + ((s - x.lo) / (x.hi - x.lo) * f64::from(plot_x1 - plot_x0)) as i32;
    let placed = place_labels(&faults, to_px, SIZE_PX.0 as i32 - MARGIN_PX as i32);
    let rows = placed.iter().map(|p| p.row + 1).max().unwrap_or(0) as u32;
    let strip_px = rows * FAULT_LABEL_ROW_PX + if rows > 0 { 6 } else { 0 };
    let (strip, rest) = body.split_vertically(strip_px);
    let (chart_area, legend_area) = rest.split_vertically(rest.dim_in_pixel().1 - LEGEND_PX);

    let chart = ChartBuilder::on(&chart_area)
        .x_label_area_size(X_AREA_PX)
        .y_label_area_size(Y_AREA_PX)
        .right_y_label_area_size(Y_AREA_PX)
        .build_cartesian_2d(
            Ticked::new(x.lo..x.hi, x.ticks.clone()),
            Ticked::new(tps.lo..tps.hi, tps.ticks.clone()),
        )
        .map_err(draw_err)?;
    debug_assert_eq!(
        chart.plotting_area().get_pixel_range().0,
        plot_x0..plot_x1,
        "fault labels were placed for another plot width"
    );
    let mut chart = chart.set_secondary_coord(
        x.lo..x.hi,
        Ticked::new(p99.axis.lo..p99.axis.hi, p99.axis.ticks.clone()),
    );
    let plain = |v: &f64| round_label(*v);
    let p99_label = |v: &f64| round_label(p99.ms(*v));
    chart
        .configure_mesh()
        .x_desc("seconds since load start")
        .y_desc("committed tx/s")
        .label_style((FONT, LABEL_PX))
        .axis_desc_style((FONT, DESC_PX))
        .x_label_formatter(&plain)
        .y_label_formatter(&plain)
        .draw()
        .map_err(draw_err)?;
    chart
        .configure_secondary_axes()
        .y_desc("p99 (ms)")
        .label_style((FONT, LABEL_PX))
        .axis_desc_style((FONT, DESC_PX))
        .y_label_formatter(&p99_label)
        .draw()
        .map_err(draw_err)?;

    // Faults under the lines.
    for (i, f) in faults.iter().enumerate() {
        let colour = FAULT_COLOURS[i % FAULT_COLOURS.len()];
        match f.end_s {
            Some(end) => chart
                .draw_series([Rectangle::new(
                    [(f.start_s, tps.hi), (end, tps.lo)],
                    colour.mix(0.18).filled(),
                )])
                .map(|_| ()),
            _ => chart
                .draw_series([PathElement::new(
                    [(f.start_s, tps.lo), (f.start_s, tps.hi)],
                    colour.stroke_width(2),
                )])
                .map(|_| ()),
        }
        .map_err(draw_err)?;
    }

    let tps_line = ticks.iter().map(|t| (middle(t), t.committed_tps as f64));
    chart
        .draw_series(LineSeries::new(tps_line, LINE_BLUE.stroke_width(2)))
        .map_err(draw_err)?;
    // p99 in runs of consecutive seconds that have one; a lone second is a dot.
    for run in p99_runs(ticks) {
        let points: Vec<(f64, f64)> = run
            .iter()
            .map(|t| (middle(t), p99.axis_value(t.p99_ms)))
            .collect();
        if points.len() == 1 {
            chart
                .draw_secondary_series([Circle::new(points[0], 3, LINE_RED.filled())])
                .map_err(draw_err)?;
        } else {
            chart
                .draw_secondary_series(LineSeries::new(points, LINE_RED.stroke_width(2)))
                .map_err(draw_err)?;
        }
    }

    // Fault labels, each with a leader line down to where its band starts. Leaders first, so
    // that a label (on a white ground) stays readable where another fault's leader passes.
    let (_, strip_y) = strip.get_pixel_range();
    let plot_top = chart.plotting_area().get_pixel_range().1.start;
    let row_y = |row: usize| strip_y.start + (row as i32) * FAULT_LABEL_ROW_PX as i32;
    for p in &placed {
        let colour = FAULT_COLOURS[p.index % FAULT_COLOURS.len()];
        let start_px = chart.backend_coord(&(faults[p.index].start_s, tps.hi)).0;
        root.draw(&PathElement::new(
            [(start_px, row_y(p.row)), (start_px, plot_top)],
            colour.mix(0.6).stroke_width(1),
        ))
        .map_err(draw_err)?;
    }
    for p in &placed {
        let colour = FAULT_COLOURS[p.index % FAULT_COLOURS.len()];
        let label = faults[p.index].label.as_str();
        let y = row_y(p.row);
        let ground = [
            (p.x0, y),
            (p.x0 + text_width_px(label), y + FAULT_LABEL_ROW_PX as i32),
        ];
        root.draw(&Rectangle::new(ground, WHITE.filled()))
            .map_err(draw_err)?;
        let style = TextStyle::from((FONT, LABEL_PX).into_font())
            .color(&colour)
            .pos(Pos::new(HPos::Left, VPos::Top));
        root.draw(&Text::new(label, (p.x0, y + 2), style))
            .map_err(draw_err)?;
    }

    draw_legend(&legend_area, &p99)?;
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

/// A linear axis from `lo` to `hi` with ticks at a round step (1, 2 or 5 × 10^k).
struct LinearAxis {
    lo: f64,
    hi: f64,
    ticks: Vec<f64>,
}

impl LinearAxis {
    fn new(lo: f64, hi: f64) -> LinearAxis {
        debug_assert!(hi > lo, "linear axis of {lo}..{hi}");
        let raw = (hi - lo) / LINEAR_LABELS;
        let decade = 10f64.powf(raw.log10().floor());
        let step = [1.0, 2.0, 5.0, 10.0]
            .iter()
            .map(|m| m * decade)
            .find(|s| *s >= raw)
            .unwrap_or(10.0 * decade);
        let first = (lo / step).ceil() as i64;
        let last = (hi / step + 1e-9).floor() as i64;
        let ticks = (first..=last).map(|k| k as f64 * step).collect();
        LinearAxis { lo, hi, ticks }
    }
}

/// The p99 axis of the timeline: linear in ms, or log10(ms) on a linear coordinate.
struct P99Axis {
    log: bool,
    /// In axis units: ms, or log10(ms).
    axis: LinearAxis,
}

impl P99Axis {
    /// From the seconds' p99 values; those ≤ 0 (no commit that second) are left out.
    fn new(values: impl Iterator<Item = f64>) -> P99Axis {
        let (min, max) = values
            .filter(|v| v.is_finite() && *v > 0.0)
            .fold((f64::INFINITY, 0.0f64), |(lo, hi), v| {
                (lo.min(v), hi.max(v))
            });
        if max <= 0.0 {
            return P99Axis {
                log: false,
                axis: LinearAxis::new(0.0, 1.0),
            };
        }
        if max / min > 10.0 {
            let log = LogAxis::new(min, max);
            let ticks = log.ticks.iter().map(|t| t.log10()).collect();
            P99Axis {
                log: true,
                axis: LinearAxis {
                    lo: log.lo.log10(),
                    hi: log.hi.log10(),
                    ticks,
                },
            }
        } else {
            P99Axis {
                log: false,
                axis: LinearAxis::new(0.0, max * 1.1),
            }
        }
    }

    fn axis_value(&self, ms: f64) -> f64 {
        if self.log {
            ms.log10()
        } else {
            ms
        }
    }

    fn ms(&self, axis_value: f64) -> f64 {
        if self.log {
            10f64.powf(axis_value)
        } else {
            axis_value
        }
    }
}

/// Runs of consecutive seconds that have a p99.
fn p99_runs(ticks: &[Tick]) -> Vec<&[Tick]> {
    let has = |t: &Tick| t.p99_ms.is_finite() && t.p99_ms > 0.0;
    ticks
        .chunk_by(|a, b| has(a) == has(b) && b.second == a.second + 1)
        .filter(|run| run.first().is_some_and(has))
        .collect()
}

/// Where a fault's label goes: its left edge (px) and its row above the plot.
#[derive(Debug, PartialEq)]
struct PlacedLabel {
    index: usize,
    x0: i32,
    row: usize,
}

/// Places fault labels left to right: each starts at its fault's start (moved left if it would
/// run past `right_px`) on the first row where it clears the labels already there.
fn place_labels(
    faults: &[FaultMark],
    to_px: impl Fn(f64) -> i32,
    right_px: i32,
) -> Vec<PlacedLabel> {
    let mut order: Vec<usize> = (0..faults.len()).collect();
    order.sort_by(|a, b| faults[*a].start_s.total_cmp(&faults[*b].start_s));
    // Right end (px) of the last label on each row.
    let mut row_ends: Vec<i32> = Vec::new();
    let mut placed = Vec::with_capacity(faults.len());
    for index in order {
        let width = text_width_px(&faults[index].label);
        let x0 = (to_px(faults[index].start_s) + 3).min(right_px - width);
        let free = row_ends
            .iter()
            .position(|end| end + FAULT_LABEL_GAP_PX <= x0);
        let row = match free {
            Some(row) => row,
            None if row_ends.len() < FAULT_LABEL_ROWS_MAX => {
                row_ends.push(i32::MIN);
                row_ends.len() - 1
            }
            None => (0..row_ends.len())
                .min_by_key(|r| row_ends[*r])
                .unwrap_or(0),
        };
        row_ends[row] = x0 + width;
        placed.push(PlacedLabel { index, x0, row });
    }
    placed
}

/// About how wide (px) `text` is at [`LABEL_PX`] in a sans-serif font; generous, since the
/// viewer picks the font.
fn text_width_px(text: &str) -> i32 {
    (text.chars().count() as f64 * f64::from(LABEL_PX) * 0.6).ceil() as i32
}

/// The legend under the timeline: a short line and the name of each line.
fn draw_legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    p99: &P99Axis,
) -> Result<(), String> {
    let p99_name = format!(
        "p99 latency (ms, right axis{})",
        if p99.log { ", log scale" } else { "" }
    );
    let entries = [
        (LINE_BLUE, "committed tx/s (left axis)".to_string()),
        (LINE_RED, p99_name),
    ];
    let y = (LEGEND_PX / 2) as i32;
    let mut x = (MARGIN_PX + Y_AREA_PX) as i32;
    for (colour, name) in entries {
        area.draw(&PathElement::new(
            [(x, y), (x + 28, y)],
            colour.stroke_width(3),
        ))
        .map_err(draw_err)?;
        let style =
            TextStyle::from((FONT, LABEL_PX).into_font()).pos(Pos::new(HPos::Left, VPos::Center));
        area.draw(&Text::new(name.as_str(), (x + 36, y), style))
            .map_err(draw_err)?;
        x += 36 + text_width_px(&name) + 16;
    }
    Ok(())
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

    fn tick(second: u64, committed_tps: u64, p99_ms: f64) -> Tick {
        Tick {
            second,
            committed_tps,
            p99_ms,
        }
    }

    fn fault(label: &str, start_s: f64, end_s: Option<f64>) -> FaultMark {
        FaultMark {
            label: label.into(),
            start_s,
            end_s,
        }
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
    fn timeline_marks_faults_with_staggered_labels_and_names_its_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("timeline.svg");
        let ticks: Vec<Tick> = (1..=60)
            .map(|s| match s {
                11..=20 => tick(s, 300, 900.0),
                21..=22 => tick(s, 0, 0.0),
                _ => tick(s, 5000, 25.0),
            })
            .collect();
        let faults = [
            fault("crash v2", 10.0, Some(20.0)),
            fault("leader kill", 21.0, None),
            fault("partition {0,1}|{2,3}", 22.0, Some(30.0)),
            fault("heal", 30.0, None),
        ];
        timeline_svg(&path, "timeline", &ticks, &faults).expect("draw");
        let t = svg_texts(&path);
        let y_of = |label: &str| {
            t.iter()
                .find(|x| x.0 == label)
                .unwrap_or_else(|| panic!("{label:?} missing from {t:?}"))
                .2
        };
        for f in &faults {
            y_of(&f.label);
        }
        // One second apart, and a long label eight seconds before a short one: different rows.
        assert_ne!(y_of("leader kill"), y_of("partition {0,1}|{2,3}"));
        assert_ne!(y_of("partition {0,1}|{2,3}"), y_of("heal"));
        for want in [
            "committed tx/s (left axis)",
            "p99 latency (ms, right axis, log scale)",
            "committed tx/s",
            "p99 (ms)",
            "seconds since load start",
        ] {
            y_of(want);
        }
    }

    #[test]
    fn timeline_refuses_no_ticks_and_skips_faults_without_a_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("timeline.svg");
        let faults = [fault("crash v2", 1.0, Some(2.0))];
        assert!(timeline_svg(&path, "timeline", &[], &faults).is_err());
        // A fault without a finite start is left out; the rest still draws.
        let ticks = [tick(1, 100, 4.0), tick(2, 120, 5.0)];
        let faults = [
            fault("never", f64::NAN, None),
            fault("ends never", 0.5, Some(f64::NAN)),
        ];
        timeline_svg(&path, "timeline", &ticks, &faults).expect("draw");
        let l = labels(&path);
        assert!(!l.iter().any(|t| t == "never"), "{l:?}");
        assert!(l.iter().any(|t| t == "ends never"), "{l:?}");
    }

    #[test]
    fn p99_axis_is_log_only_beyond_a_decade() {
        assert!(P99Axis::new([2.0, 30.0].into_iter()).log);
        assert!(!P99Axis::new([5.0, 40.0].into_iter()).log);
        // Seconds without commits (0) do not count.
        assert!(!P99Axis::new([0.0, 5.0, 40.0].into_iter()).log);
        let linear = P99Axis::new([5.0, 40.0].into_iter());
        assert_eq!(linear.axis.lo, 0.0);
        assert!(linear.axis.hi >= 40.0);
    }

    #[test]
    fn close_labels_stagger_and_far_ones_share_a_row() {
        let faults = [
            fault("a long label", 10.0, None),
            fault("b", 11.0, Some(12.0)),
            fault("c", 12.0, None),
            fault("d far away", 80.0, None),
        ];
        // 10 px per second.
        let placed = place_labels(&faults, |s| (s * 10.0) as i32, 2000);
        let row = |i: usize| placed.iter().find(|p| p.index == i).expect("placed").row;
        assert_eq!([row(0), row(1), row(2), row(3)], [0, 1, 2, 0]);
        // A label at the right edge is moved left to stay in the image.
        let edge = place_labels(
            &[fault("at the edge", 99.0, None)],
            |s| (s * 10.0) as i32,
            1000,
        );
        assert_eq!(edge[0].x0 + text_width_px("at the edge"), 1000);
    }

    #[test]
    fn p99_runs_break_at_seconds_without_commits() {
        let ticks = [
            tick(1, 10, 5.0),
            tick(2, 10, 6.0),
            tick(3, 0, 0.0),
            tick(4, 10, 7.0),
            tick(6, 10, 8.0),
            tick(7, 10, 9.0),
        ];
        let seconds: Vec<Vec<u64>> = p99_runs(&ticks)
            .iter()
            .map(|r| r.iter().map(|t| t.second).collect())
            .collect();
        assert_eq!(seconds, vec![vec![1, 2], vec![4], vec![6, 7]]);
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
