//! Accuracy against sequence length (log scale), one line per variant, as an SVG.

use std::path::Path;

use plotters::prelude::*;

use super::TaskReport;
use crate::{Error, Result};

/// Draws the accuracy of each report against its evaluated lengths into `path` (SVG), with the
/// training length marked. Skipped lengths are left out of the lines.
pub fn accuracy_vs_length(path: &Path, reports: &[TaskReport]) -> Result<()> {
    let err = |e: String| Error::format(path, format!("cannot draw the accuracy plot: {e}"));
    let lengths = reports.iter().flat_map(|r| r.results.iter().map(|x| x.seq_len));
    let (lo, hi) = lengths.fold((usize::MAX, 0), |(lo, hi), l| (lo.min(l), hi.max(l)));
    if hi == 0 {
        return Ok(());
    }
    let (x0, x1) = ((lo as f64).log2().floor(), (hi as f64).log2().ceil().max((lo as f64).log2().floor() + 1.0));
    let task = reports.first().map_or("", |r| r.task.name());
    let tmp = path.with_extension("svg.tmp");
    {
        let root = SVGBackend::new(&tmp, (900, 540)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(format!("s6 {task}: accuracy vs sequence length"), ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(x0..x1, 0.0..100.0)
            .map_err(|e| err(e.to_string()))?;
        chart
            .configure_mesh()
            .x_desc("sequence length")
            .x_label_formatter(&|x| format!("2^{}", x.round() as i64))
            .y_desc("accuracy (%)")
            .draw()
            .map_err(|e| err(e.to_string()))?;
        let colors = [BLUE, RED, GREEN, MAGENTA, CYAN, BLACK, RGBColor(255, 140, 0)];
        for (i, r) in reports.iter().enumerate() {
            let color = colors[i % colors.len()];
            let pts: Vec<(f64, f64)> =
                r.results.iter().filter_map(|x| x.accuracy.map(|a| ((x.seq_len as f64).log2(), 100.0 * a))).collect();
            chart
                .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))
                .map_err(|e| err(e.to_string()))?
                .label(format!("{} (trained at {})", r.variant.name(), r.train_seq_len))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
            chart
                .draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))
                .map_err(|e| err(e.to_string()))?;
        }
        if let Some(r) = reports.first() {
            let x = (r.train_seq_len as f64).log2();
            chart
                .draw_series(LineSeries::new([(x, 0.0), (x, 100.0)], BLACK.mix(0.3)))
                .map_err(|e| err(e.to_string()))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerLeft)
            .border_style(BLACK)
            .background_style(WHITE.mix(0.8))
            .draw()
            .map_err(|e| err(e.to_string()))?;
        root.present().map_err(|e| err(e.to_string()))?;
    }
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}
