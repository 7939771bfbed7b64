//! What both chart kinds share: text sizes for a canvas, the header (title and a legend of
//! swatches, above the plot, where it can never cover data), tick labels, the room the y axis
//! needs, and the "no data" note.

use super::{drawn, FONT};
use crate::error::Result;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

pub const INK: RGBColor = RGBColor(0x22, 0x22, 0x22);
pub const MUTED: RGBColor = RGBColor(0x55, 0x55, 0x55);
pub const GRID: RGBColor = RGBColor(0xe4, 0xe4, 0xe4);
pub const ZERO: RGBColor = RGBColor(0xaa, 0xaa, 0xaa);

/// Text sizes and spacing, in pixels, for one canvas: those of an 800 x 500 canvas, scaled
/// with the smaller of the two ratios so that text keeps its share of the canvas.
pub struct Sizes {
    pub title: f64,
    pub label: f64,
    pub tick: f64,
    pub pad: i32,
    /// Line width of axes, error bars and reference lines.
    pub line: u32,
}

impl Sizes {
    pub fn of<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>) -> Self {
        let (w, h) = area.dim_in_pixel();
        let u = (w as f64 / 800.0).min(h as f64 / 500.0).max(0.4);
        Sizes {
            title: 22.0 * u,
            label: 16.0 * u,
            tick: 14.0 * u,
            pad: (10.0 * u).round().max(2.0) as i32,
            line: u.round().max(1.0) as u32,
        }
    }
}

/// The style of text of `size` pixels in [`FONT`].
pub fn font(size: f64) -> TextStyle<'static> {
    (FONT, size).into_font().color(&INK)
}

/// [`font`], bold. (Built bold: plotters' `FontDesc::style` keeps the regular glyphs.)
pub fn bold(size: f64) -> TextStyle<'static> {
    FontDesc::new(FONT.into(), size, FontStyle::Bold).color(&INK)
}

/// Width in pixels of `text` drawn in `style`.
pub fn text_width<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    text: &str,
    style: &TextStyle,
) -> Result<u32> {
    if text.is_empty() {
        return Ok(0);
    }
    Ok(drawn(area.estimate_text_size(text, style))?.0)
}

/// `text`, cut and ended with "..." until it is at most `max` pixels wide in `style`.
pub fn fit<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    text: &str,
    style: &TextStyle,
    max: u32,
) -> Result<String> {
    if text_width(area, text, style)? <= max {
        return Ok(text.to_string());
    }
    let chars: Vec<char> = text.chars().collect();
    for keep in (0..chars.len()).rev() {
        let cut: String = chars[..keep]
            .iter()
            .collect::<String>()
            .trim_end()
            .to_string()
            + "...";
        if keep == 0 || text_width(area, &cut, style)? <= max {
            return Ok(cut);
        }
    }
    Ok(String::new())
}

/// How a legend entry's swatch looks: squares for bars, dots for scatter points.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Swatch {
    Square,
    Round,
}

/// Draws the title (bold, centred, cut to the width) and the legend (entries centred in rows,
/// wrapped to the width; rows past 40% of the height are summarised as "+N more") at the top of
/// `area`; returns the area below them.
pub fn header<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    sz: &Sizes,
    title: &str,
    legend: &[(String, RGBColor)],
    swatch: Swatch,
) -> Result<DrawingArea<DB, Shift>> {
    let (w, h) = area.dim_in_pixel();
    let (w, h) = (w as i32, h as i32);
    let mut y = sz.pad;
    let title = title.trim();
    if !title.is_empty() {
        let style = bold(sz.title).pos(Pos::new(HPos::Center, VPos::Top));
        let text = fit(area, title, &style, (w - 2 * sz.pad).max(1) as u32)?;
        drawn(area.draw(&Text::new(text, (w / 2, y), style)))?;
        y += (sz.title * 1.3).round() as i32;
    }
    let style = font(sz.label).pos(Pos::new(HPos::Left, VPos::Center));
    let side = (sz.label * 0.7).round() as i32;
    let (gap, space) = (sz.pad / 2, 2 * sz.pad);
    let row_h = (sz.label * 1.4).round() as i32;
    let room = w - 2 * sz.pad;
    let mut items = Vec::new();
    for (name, color) in legend {
        let name = fit(area, name.trim(), &style, (room - side - gap).max(1) as u32)?;
        let width = side + gap + text_width(area, &name, &style)? as i32;
        items.push((name, *color, width));
    }
    let mut rows: Vec<Vec<&(String, RGBColor, i32)>> = Vec::new();
    let mut row_w = 0;
    for item in &items {
        match rows.last_mut() {
            Some(row) if row_w + space + item.2 <= room => {
                row_w += space + item.2;
                row.push(item);
            }
            _ => {
                rows.push(vec![item]);
                row_w = item.2;
            }
        }
    }
    let max_rows = (((h as f64 * 0.4) as i32 - y) / row_h).max(1) as usize;
    let hidden: usize = rows.iter().skip(max_rows).map(Vec::len).sum();
    for (r, row) in rows.iter().take(max_rows).enumerate() {
        let total: i32 = row.iter().map(|i| i.2).sum::<i32>() + space * (row.len() as i32 - 1);
        let mut x = (w - total) / 2;
        let cy = y + row_h / 2;
        for (name, color, width) in row {
            match swatch {
                Swatch::Square => drawn(area.draw(&Rectangle::new(
                    [(x, cy - side / 2), (x + side, cy + side / 2)],
                    color.filled(),
                )))?,
                Swatch::Round => {
                    drawn(area.draw(&Circle::new((x + side / 2, cy), side / 2, color.filled())))?
                }
            }
            drawn(area.draw(&Text::new(
                name.clone(),
                (x + side + gap, cy),
                style.clone(),
            )))?;
            x += width + space;
        }
        if r + 1 == max_rows && hidden > 0 {
            let more = format!("+{hidden} more");
            drawn(area.draw(&Text::new(more, (x, cy), style.color(&MUTED))))?;
        }
        y += row_h;
    }
    y += sz.pad / 2;
    Ok(area.split_vertically(y.min(h / 2)).1)
}

/// A tick value with at most six decimals and no trailing zeros ("20", "0.25", "-0.1").
pub fn tick_label(v: f64) -> String {
    // Adding 0.0 turns -0 into 0.
    let rounded = (v * 1e6).round() / 1e6 + 0.0;
    format!("{rounded}")
}

/// Room at the left of the plot for tick labels of values in `lo..hi` and, when `described`,
/// the turned axis description beside them.
pub fn y_label_room<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    sz: &Sizes,
    (lo, hi): (f64, f64),
    described: bool,
) -> Result<i32> {
    let style = font(sz.tick);
    // Ticks fall about six to the range, at multiples of a power of ten (times 1, 2 or 5): the
    // widest label is an end of the range with as many decimals as that power asks for.
    let step = 10f64.powf(((hi - lo).abs() / 6.0).log10().floor());
    let decimals = if step.is_finite() && step < 1.0 {
        ((-step.log10().round()) as usize).min(10)
    } else {
        0
    };
    let mut widest = 0;
    for v in [lo, hi] {
        let text = format!("{v:.decimals$}");
        widest = widest.max(text_width(area, &text, &style)? as i32);
    }
    let desc = if described {
        (sz.label * 1.5).round() as i32
    } else {
        0
    };
    Ok(widest + desc + 2 * sz.pad)
}

/// "no data", centred on `at` in the chart's coordinates.
pub fn no_data<DB: DrawingBackend, X: Ranged, Y: Ranged>(
    plot: &DrawingArea<DB, Cartesian2d<X, Y>>,
    sz: &Sizes,
    at: (X::ValueType, Y::ValueType),
) -> Result<()> {
    let style = font(sz.label)
        .color(&MUTED)
        .pos(Pos::new(HPos::Center, VPos::Center));
    drawn(plot.draw(&Text::new("no data", at, style)))
}
