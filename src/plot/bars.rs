//! The grouped bar chart: one slot per group on the x axis (its label under the centre), the
//! group's bars side by side in it, each series in its own colour, ± error bars, a dashed
//! reference line labelled at its right-hand end.

use super::frame::{self, font, Sizes, Swatch, INK, MUTED};
use super::{drawn, series_color, BarChart};
use crate::error::Result;
use plotters::coord::Shift;
use plotters::element::DashedPathElement;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

fn error_of(e: Option<f64>) -> f64 {
    e.filter(|e| e.is_finite()).map_or(0.0, f64::abs)
}

/// The value axis: `y_range` when it is finite and not empty, else 0, every value ± error and
/// the reference line, with 5% headroom away from 0.
fn value_range(c: &BarChart) -> (f64, f64) {
    if let Some((a, b)) = c
        .y_range
        .filter(|(a, b)| a.is_finite() && b.is_finite() && a != b)
    {
        return (a.min(b), a.max(b));
    }
    let (mut lo, mut hi) = (0.0f64, 0.0f64);
    for b in c.groups.iter().flat_map(|g| &g.bars) {
        if b.value.is_finite() {
            let e = error_of(b.error);
            (lo, hi) = (lo.min(b.value - e), hi.max(b.value + e));
        }
    }
    if let Some((v, _)) = c.reference_line.as_ref().filter(|(v, _)| v.is_finite()) {
        (lo, hi) = (lo.min(*v), hi.max(*v));
    }
    if lo == hi {
        return (0.0, 1.0);
    }
    let head = (hi - lo) * 0.05;
    (
        if lo < 0.0 { lo - head } else { lo },
        if hi > 0.0 { hi + head } else { hi },
    )
}

pub fn draw<DB: DrawingBackend>(c: &BarChart, area: &DrawingArea<DB, Shift>) -> Result<()> {
    let sz = Sizes::of(area);
    let mut series: Vec<&str> = Vec::new();
    for b in c.groups.iter().flat_map(|g| &g.bars) {
        if !series.contains(&b.series.as_str()) {
            series.push(&b.series);
        }
    }
    let legend: Vec<(String, RGBColor)> = (series.iter().enumerate())
        .filter(|(_, n)| !n.trim().is_empty())
        .map(|(i, n)| (n.trim().to_string(), series_color(i)))
        .collect();
    let body = frame::header(area, &sz, &c.title, &legend, Swatch::Square)?;

    let (ylo, yhi) = value_range(c);
    let reference = c
        .reference_line
        .as_ref()
        .filter(|(v, _)| v.is_finite() && *v >= ylo && *v <= yhi);
    let ref_style = font(sz.label)
        .color(&MUTED)
        .pos(Pos::new(HPos::Left, VPos::Center));
    let (body_w, _) = body.dim_in_pixel();
    let ref_label = match reference {
        Some((_, l)) => frame::fit(&body, l.trim(), &ref_style, body_w / 5)?,
        None => String::new(),
    };
    let right = sz.pad + frame::text_width(&body, &ref_label, &ref_style)? as i32 + sz.pad;
    let y_room = frame::y_label_room(&body, &sz, (ylo, yhi), !c.y_label.trim().is_empty())?;
    let n = c.groups.len().max(1);
    let mut chart = drawn(
        ChartBuilder::on(&body)
            .margin_left(sz.pad)
            .margin_right(right)
            .margin_bottom(sz.pad)
            .x_label_area_size((sz.tick * 2.0).round() as i32)
            .y_label_area_size(y_room)
            .build_cartesian_2d(0.0..n as f64, ylo..yhi),
    )?;

    let tick_of = |v: &f64| frame::tick_label(*v);
    drawn(
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(0)
            .y_max_light_lines(0)
            .y_label_formatter(&tick_of)
            .y_desc(c.y_label.trim())
            .label_style(font(sz.tick))
            .axis_desc_style(font(sz.label))
            .axis_style(INK.stroke_width(sz.line))
            .bold_line_style(frame::GRID)
            .draw(),
    )?;

    // Bars: each slot holds as many bar widths as its fullest group, over 80% of the slot.
    let base = 0f64.clamp(ylo, yhi);
    let most = c.groups.iter().map(|g| g.bars.len()).max().unwrap_or(0);
    let bw = 0.8 / most.max(1) as f64;
    let mut error_bars = Vec::new();
    let mut any = false;
    for (i, g) in c.groups.iter().enumerate() {
        let start = i as f64 + 0.5 - g.bars.len() as f64 * bw / 2.0;
        for (j, b) in g.bars.iter().enumerate() {
            if !b.value.is_finite() {
                continue;
            }
            any = true;
            let x0 = start + (j as f64 + 0.05) * bw;
            let x1 = start + (j as f64 + 0.95) * bw;
            let v = b.value.clamp(ylo, yhi);
            let k = series.iter().position(|s| *s == b.series).unwrap_or(0);
            drawn(chart.draw_series(std::iter::once(Rectangle::new(
                [(x0, base), (x1, v)],
                series_color(k).filled(),
            ))))?;
            let e = error_of(b.error);
            if e > 0.0 {
                error_bars.push(((x0 + x1) / 2.0, (x1 - x0) / 4.0, b.value, e));
            }
        }
    }
    let stroke = INK.stroke_width(sz.line);
    for (x, half, v, e) in error_bars {
        let (lo, hi) = (v - e, v + e);
        let ends = [lo.clamp(ylo, yhi), hi.clamp(ylo, yhi)];
        let mut lines = vec![PathElement::new(vec![(x, ends[0]), (x, ends[1])], stroke)];
        for end in [lo, hi].into_iter().filter(|end| (ylo..=yhi).contains(end)) {
            lines.push(PathElement::new(
                vec![(x - half, end), (x + half, end)],
                stroke,
            ));
        }
        drawn(chart.draw_series(lines))?;
    }
    let plot = chart.plotting_area();
    if ylo < 0.0 && yhi > 0.0 {
        drawn(plot.draw(&PathElement::new(vec![(0.0, 0.0), (n as f64, 0.0)], stroke)))?;
    }
    if let Some((v, _)) = reference {
        let dash = (6.0 * sz.line as f64) as i32;
        drawn(plot.draw(&DashedPathElement::new(
            vec![(0.0, *v), (n as f64, *v)],
            dash,
            dash * 2 / 3,
            stroke,
        )))?;
        let label = EmptyElement::at((n as f64, *v)) + Text::new(ref_label, (sz.pad, 0), ref_style);
        drawn(plot.draw(&label))?;
    }
    // Group labels under the slots' centres (the mesh has no x labels: its x axis is numeric).
    let slot = plot.dim_in_pixel().0 / n as u32;
    let label_style = font(sz.tick).pos(Pos::new(HPos::Center, VPos::Top));
    for (i, g) in c.groups.iter().enumerate() {
        let text = frame::fit(&body, g.label.trim(), &label_style, slot.saturating_sub(4))?;
        let at = EmptyElement::at((i as f64 + 0.5, ylo));
        drawn(plot.draw(&(at + Text::new(text, (0, sz.pad / 2), label_style.clone()))))?;
    }
    if !any {
        frame::no_data(plot, &sz, (n as f64 / 2.0, (ylo + yhi) / 2.0))?;
    }
    Ok(())
}
