//! `loss.svg`: training loss (raw and smoothed) and evaluation loss against step, drawn with
//! plotters from `metrics.jsonl`.

use std::path::Path;

use plotters::prelude::*;

use super::metrics::Record;

/// TensorBoard-style exponential smoothing with debiasing (weight `w` on the history).
pub fn smooth(values: &[f64], w: f64) -> Vec<f64> {
    let mut last = 0.0;
    let mut out = Vec::with_capacity(values.len());
    for (i, &v) in values.iter().enumerate() {
        last = last * w + (1.0 - w) * v;
        out.push(last / (1.0 - w.powi(i as i32 + 1)));
    }
    out
}

/// Write the loss plot of `records` to `path` (SVG).
pub fn write_svg(records: &[Record], path: &Path, title: &str) -> Result<(), String> {
    let train: Vec<(f64, f64)> = records
        .iter()
        .filter_map(|r| match r {
            Record::Step(s) if s.loss.is_finite() => Some((s.step as f64, s.loss)),
            _ => None,
        })
        .collect();
    let eval: Vec<(f64, f64)> = records
        .iter()
        .filter_map(|r| match r {
            Record::Eval(e) if e.eval_loss.is_finite() => Some((e.step as f64, e.eval_loss)),
            _ => None,
        })
        .collect();
    if train.is_empty() && eval.is_empty() {
        return Err("no losses recorded yet".into());
    }
    let smoothed: Vec<(f64, f64)> = train
        .iter()
        .map(|p| p.0)
        .zip(smooth(&train.iter().map(|p| p.1).collect::<Vec<_>>(), 0.8))
        .collect();
    let all = train.iter().chain(&eval);
    let (mut x_max, mut y_min, mut y_max) = (1.0f64, f64::INFINITY, f64::NEG_INFINITY);
    for (x, y) in all {
        x_max = x_max.max(*x);
        y_min = y_min.min(*y);
        y_max = y_max.max(*y);
    }
    let pad = ((y_max - y_min) * 0.05).max(1e-3);
    let root = SVGBackend::new(path, (900, 540)).into_drawing_area();
    let err = |e: &dyn std::fmt::Display| e.to_string();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..x_max * 1.02, (y_min - pad)..(y_max + pad))
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("optimizer step")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_desc("loss (nats per token)")
        .light_line_style(RGBColor(235, 235, 235))
        .draw()
        .map_err(|e| err(&e))?;
    if !train.is_empty() {
        chart
            .draw_series(LineSeries::new(
                train.iter().copied(),
                RGBColor(160, 190, 230).stroke_width(1),
            ))
            .map_err(|e| err(&e))?
            .label("train loss")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], RGBColor(160, 190, 230)));
        chart
            .draw_series(LineSeries::new(
                smoothed.iter().copied(),
                BLUE.stroke_width(2),
            ))
            .map_err(|e| err(&e))?
            .label("train loss (smoothed)")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], BLUE.stroke_width(2)));
    }
    if !eval.is_empty() {
        chart
            .draw_series(LineSeries::new(eval.iter().copied(), RED.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label("eval loss")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], RED.stroke_width(2)));
        chart
            .draw_series(eval.iter().map(|&p| Circle::new(p, 4, RED.filled())))
            .map_err(|e| err(&e))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))
}

/// Plot an output folder's metrics to `<dir>/loss.svg`.
pub fn plot_run(dir: &Path) -> Result<std::path::PathBuf, String> {
    let metrics = dir.join(super::metrics::FILE);
    let records =
        super::metrics::read(&metrics).map_err(|e| format!("{}: {e}", metrics.display()))?;
    let out = dir.join("loss.svg");
    let title = format!(
        "burnish: {}",
        dir.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    );
    write_svg(&records, &out, &title)?;
    Ok(out)
}
