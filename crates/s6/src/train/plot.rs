//! The loss curve as an SVG (train loss per step, validation loss per eval).

use std::path::Path;

use plotters::prelude::*;

use crate::{Error, Result};

/// Draws train (step, loss) and validation (step, loss) curves into `path`.
pub fn loss_curve(path: &Path, train: &[(u64, f64)], val: &[(u64, f64)]) -> Result<()> {
    let err = |e: String| Error::format(path, format!("cannot draw the loss curve: {e}"));
    if train.is_empty() {
        return Ok(());
    }
    let max_step = train.iter().chain(val).map(|p| p.0).max().unwrap_or(1).max(1);
    let finite = train.iter().chain(val).map(|p| p.1).filter(|v| v.is_finite());
    let (lo, hi) = finite.fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let (lo, hi) = if lo <= hi { (lo.min(hi - 1e-3), hi) } else { (0.0, 1.0) };
    let tmp = path.with_extension("svg.tmp");
    {
        let root = SVGBackend::new(&tmp, (900, 540)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
        let mut chart = ChartBuilder::on(&root)
            .caption("s6 training loss", ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0u64..max_step, lo * 0.98..hi * 1.02)
            .map_err(|e| err(e.to_string()))?;
        chart.configure_mesh().x_desc("step").y_desc("loss (nats/token)").draw().map_err(|e| err(e.to_string()))?;
        chart
            .draw_series(LineSeries::new(train.iter().copied(), &BLUE))
            .map_err(|e| err(e.to_string()))?
            .label("train")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], BLUE));
        if !val.is_empty() {
            chart
                .draw_series(LineSeries::new(val.iter().copied(), RED.stroke_width(2)))
                .map_err(|e| err(e.to_string()))?
                .label("validation")
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], RED));
        }
        chart.configure_series_labels().border_style(BLACK).draw().map_err(|e| err(e.to_string()))?;
        root.present().map_err(|e| err(e.to_string()))?;
    }
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}
