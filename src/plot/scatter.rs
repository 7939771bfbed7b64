//! The scatter plot (the paper's Figure 5): points coloured by series over a grid, darker grid
//! lines at zero, both axes described.

use super::frame::{self, font, Sizes, Swatch, INK};
use super::{drawn, series_color, ScatterChart};
use crate::error::Result;
use plotters::coord::Shift;
use plotters::prelude::*;

/// The smallest and largest of `values`, padded by 5% of their span (by 0.5 when they are all
/// equal); `(0, 1)` when there are none.
fn padded_range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if lo > hi {
        return (0.0, 1.0);
    }
    let pad = if hi > lo { (hi - lo) * 0.05 } else { 0.5 };
    (lo - pad, hi + pad)
}

pub fn draw<DB: DrawingBackend>(c: &ScatterChart, area: &DrawingArea<DB, Shift>) -> Result<()> {
    let sz = Sizes::of(area);
    let legend: Vec<(String, RGBColor)> = (c.series.iter().enumerate())
        .filter(|(_, s)| !s.name.trim().is_empty())
        .map(|(i, s)| (s.name.trim().to_string(), series_color(i)))
        .collect();
    let body = frame::header(area, &sz, &c.title, &legend, Swatch::Round)?;

    let finite = |p: &&(f64, f64)| p.0.is_finite() && p.1.is_finite();
    let points = || c.series.iter().flat_map(|s| s.points.iter().filter(finite));
    let (x0, x1) = padded_range(points().map(|p| p.0));
    let (y0, y1) = padded_range(points().map(|p| p.1));
    let described_x = !c.x_label.trim().is_empty();
    let x_room = (sz.tick * 2.0 + if described_x { sz.label * 1.5 } else { 0.0 }).round();
    let y_room = frame::y_label_room(&body, &sz, (y0, y1), !c.y_label.trim().is_empty())?;
    let mut chart = drawn(
        ChartBuilder::on(&body)
            .margin_left(sz.pad)
            .margin_right(3 * sz.pad)
            .margin_bottom(sz.pad)
            .x_label_area_size(x_room as i32)
            .y_label_area_size(y_room)
            .build_cartesian_2d(x0..x1, y0..y1),
    )?;
    let tick_of = |v: &f64| frame::tick_label(*v);
    drawn(
        chart
            .configure_mesh()
            .max_light_lines(0)
            .x_labels(6)
            .y_labels(6)
            .x_label_formatter(&tick_of)
            .y_label_formatter(&tick_of)
            .x_desc(c.x_label.trim())
            .y_desc(c.y_label.trim())
            .label_style(font(sz.tick))
            .axis_desc_style(font(sz.label))
            .axis_style(INK.stroke_width(sz.line))
            .bold_line_style(frame::GRID)
            .draw(),
    )?;
    let plot = chart.plotting_area();
    if x0 < 0.0 && x1 > 0.0 {
        drawn(plot.draw(&PathElement::new(vec![(0.0, y0), (0.0, y1)], frame::ZERO)))?;
    }
    if y0 < 0.0 && y1 > 0.0 {
        drawn(plot.draw(&PathElement::new(vec![(x0, 0.0), (x1, 0.0)], frame::ZERO)))?;
    }

    let r = (sz.label / 4.0).round().max(2.0) as i32;
    for (i, s) in c.series.iter().enumerate() {
        let style = series_color(i).mix(0.75).filled();
        drawn(chart.draw_series(
            (s.points.iter().filter(finite)).map(|&(x, y)| Circle::new((x, y), r, style)),
        ))?;
    }
    if points().next().is_none() {
        frame::no_data(
            chart.plotting_area(),
            &sz,
            ((x0 + x1) / 2.0, (y0 + y1) / 2.0),
        )?;
    }
    Ok(())
}
