//! The latency-percentile plot (SVG).

use std::path::Path;

use plotters::prelude::*;

/// Draws latency (ms, log scale) against percentile (as "nines": 90 → 1, 99 → 2, ...).
pub fn latency_svg(path: &Path, title: &str, curve: &[(f64, f64)]) -> Result<(), String> {
    if curve.is_empty() {
        return Err("no latency samples to plot".into());
    }
    let nines = |p: f64| -((1.0 - (p / 100.0).min(0.99999)).log10());
    let xs: Vec<(f64, f64)> = curve
        .iter()
        .map(|(p, ms)| (nines(*p), ms.max(0.001)))
        .collect();
    let x_max = xs.iter().map(|p| p.0).fold(1.0, f64::max) + 0.2;
    let y_max = xs.iter().map(|p| p.1).fold(1.0, f64::max) * 1.5;
    let root = SVGBackend::new(path, (900, 540)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(20)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..x_max, (0.01..y_max).log_scale())
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (ms)")
        .x_label_formatter(&|x| format!("{:.4}%", 100.0 * (1.0 - 10f64.powf(-*x))))
        .draw()
        .map_err(|e| e.to_string())?;
    chart
        .draw_series(LineSeries::new(xs.iter().copied(), &BLUE))
        .map_err(|e| e.to_string())?;
    chart
        .draw_series(xs.iter().map(|p| Circle::new(*p, 4, BLUE.filled())))
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}
