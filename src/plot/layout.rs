//! Lays charts out into [`Scene`]s: title, legend, axes with nice ticks, and labels sized with
//! the bitmap font's metrics so nothing overlaps; then the grouped bar chart. Long group labels
//! are wrapped (at spaces, then after hyphens), then drawn smaller, then truncated with "...".

use super::font::{CAP_HEIGHT, LINE_HEIGHT};
use super::text::{ellipsize, fit_labels, fit_line, max_chars, tw};
use super::ticks::{format_tick, nice_ticks, tick_step};
use super::{series_color, Anchor, BarChart, Rgb, Scene, Shape};

pub use super::scatter::scatter_scene;

pub const INK: Rgb = Rgb(0x22, 0x22, 0x22);
const MUTED: Rgb = Rgb(0x55, 0x55, 0x55);
pub const GRID: Rgb = Rgb(0xe4, 0xe4, 0xe4);
pub const ZERO: Rgb = Rgb(0xaa, 0xaa, 0xaa);
/// Most lines a group label may wrap to.
const MAX_LABEL_LINES: usize = 3;

/// Text scale for a canvas: twice the font's size from 600 x 360 up.
pub fn text_scale(width: u32, height: u32) -> u32 {
    if width >= 600 && height >= 360 {
        2
    } else {
        1
    }
}

pub const CAP: f64 = CAP_HEIGHT as f64;
pub const LINE: f64 = LINE_HEIGHT as f64;

/// The centre of a `width`-pixel line drawn near `v`, so that it covers whole pixels.
pub fn crisp(v: f64, width: f64) -> f64 {
    if (width.round() as i64) % 2 == 1 {
        v.floor() + 0.5
    } else {
        v.round()
    }
}

pub fn text(sc: &mut Scene, x: f64, y: f64, t: &str, scale: u32, anchor: Anchor, color: Rgb) {
    if t.is_empty() {
        return;
    }
    sc.shapes.push(Shape::Text {
        x: x.round(),
        y: y.round(),
        text: t.to_string(),
        scale,
        anchor,
        vertical: false,
        bold: false,
        color,
    });
}

#[allow(clippy::too_many_arguments)]
pub fn line(
    sc: &mut Scene,
    x1: f64,
    y1: f64,
    x2: f64,
    y2: f64,
    w: f64,
    c: Rgb,
    dash: Option<(f64, f64)>,
) {
    sc.shapes.push(Shape::Line {
        x1,
        y1,
        x2,
        y2,
        width: w,
        color: c,
        dash,
    });
}

/// Title and legend (square or round swatches); returns where the plot area may begin.
pub fn header(sc: &mut Scene, title: &str, legend: &[(String, Rgb)], round: bool, s: u32) -> f64 {
    let (w, sf) = (sc.width as f64, s as f64);
    let pad = 8.0 * sf;
    let mut y = pad;
    let title = title.trim();
    if !title.is_empty() {
        let (t, ts) = fit_line(title, w - 2.0 * pad, &[s + 1, s, 1]);
        y += CAP * ts as f64;
        sc.shapes.push(Shape::Text {
            x: (w / 2.0).round(),
            y: y.round(),
            text: t,
            scale: ts,
            anchor: Anchor::Middle,
            vertical: false,
            bold: true,
            color: INK,
        });
        y += 8.0 * sf;
    }
    if legend.is_empty() {
        return y + 4.0 * sf;
    }
    let (sw, gap, space) = (CAP * sf, 4.0 * sf, 14.0 * sf);
    let items: Vec<(String, Rgb, f64)> = legend
        .iter()
        .map(|(name, c)| {
            let name = ellipsize(name, max_chars(w - 2.0 * pad - sw - gap, s));
            let iw = sw + gap + tw(&name, s);
            (name, *c, iw)
        })
        .collect();
    let mut rows: Vec<Vec<&(String, Rgb, f64)>> = vec![Vec::new()];
    let mut row_w = 0.0;
    for item in &items {
        let row = rows.last_mut().unwrap();
        if !row.is_empty() && row_w + space + item.2 > w - 2.0 * pad {
            rows.push(vec![item]);
            row_w = item.2;
        } else {
            row_w += if row.is_empty() { 0.0 } else { space } + item.2;
            row.push(item);
        }
    }
    for row in rows {
        let total: f64 = row.iter().map(|i| i.2).sum::<f64>() + space * (row.len() - 1) as f64;
        let mut x = ((w - total) / 2.0).round();
        let base = (y + CAP * sf).round();
        for (name, c, iw) in row {
            if round {
                sc.shapes.push(Shape::Circle {
                    cx: x + sw / 2.0,
                    cy: base - sw / 2.0,
                    r: sw / 2.0,
                    fill: *c,
                    opacity: 1.0,
                });
            } else {
                sc.shapes.push(Shape::Rect {
                    x,
                    y: base - sw,
                    w: sw,
                    h: sw,
                    fill: *c,
                    class: None,
                    tooltip: None,
                });
            }
            text(sc, x + sw + gap, base, name, s, Anchor::Start, INK);
            x += iw + space;
        }
        y += LINE * sf;
    }
    y + 6.0 * sf
}

/// The vertical axis label: turned to read upwards, wrapped to two lines, then drawn smaller,
/// then truncated.
pub struct YLabel {
    lines: Vec<String>,
    scale: u32,
}

impl YLabel {
    /// Lays `label` out for a plot about `height` pixels tall.
    pub fn new(label: &str, height: f64, s: u32) -> Self {
        let label = label.trim();
        if label.is_empty() {
            return YLabel {
                lines: Vec::new(),
                scale: s,
            };
        }
        let (scale, mut all) = fit_labels(&[label], height, &[s, 1], 2);
        YLabel {
            lines: all.pop().unwrap_or_default(),
            scale,
        }
    }

    /// Room it takes at the left of the tick labels.
    pub fn width(&self) -> f64 {
        self.lines.len() as f64 * LINE * self.scale as f64
    }

    /// Draws it from `x` rightwards, centred on the plot's height.
    pub fn draw(&self, sc: &mut Scene, x: f64, top: f64, bottom: f64) {
        let ls = self.scale as f64;
        let max = max_chars(bottom - top, self.scale);
        for (k, l) in self.lines.iter().enumerate() {
            sc.shapes.push(Shape::Text {
                x: (x + CAP * ls + k as f64 * LINE * ls).round(),
                y: ((top + bottom) / 2.0).round(),
                text: ellipsize(l, max),
                scale: self.scale,
                anchor: Anchor::Middle,
                vertical: true,
                bold: false,
                color: INK,
            });
        }
    }
}

pub fn labels_for(ticks: &[f64]) -> Vec<String> {
    let step = tick_step(ticks);
    ticks.iter().map(|&v| format_tick(v, step)).collect()
}

pub fn no_data(sc: &mut Scene, x: f64, y: f64, s: u32) {
    text(
        sc,
        x,
        y + CAP * s as f64 / 2.0,
        "no data",
        s,
        Anchor::Middle,
        MUTED,
    );
}

/// A value with at most three decimals, for tooltips.
fn short(v: f64) -> String {
    let s = format!("{v:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn error_of(e: Option<f64>) -> f64 {
    e.filter(|e| e.is_finite()).map_or(0.0, f64::abs)
}

pub fn bar_scene(c: &BarChart, width: u32, height: u32) -> Scene {
    let mut sc = Scene {
        width,
        height,
        shapes: Vec::new(),
    };
    let (w, h, s) = (width as f64, height as f64, text_scale(width, height));
    let (sf, pad, tick) = (s as f64, 8.0 * s as f64, 4.0 * s as f64);
    let lw = sf;

    let mut series: Vec<&str> = Vec::new();
    for b in c.groups.iter().flat_map(|g| &g.bars) {
        if !series.contains(&b.series.as_str()) {
            series.push(&b.series);
        }
    }
    let color_of = |name: &str| series_color(series.iter().position(|s| *s == name).unwrap_or(0));
    let legend: Vec<(String, Rgb)> = (series.iter().enumerate())
        .filter(|(_, n)| !n.trim().is_empty())
        .map(|(i, n)| (n.trim().to_string(), series_color(i)))
        .collect();
    let top = header(&mut sc, &c.title, &legend, false, s).round();

    // Value range: 0, every value ± error, the reference line.
    let (mut lo, mut hi, mut any) = (0.0f64, 0.0f64, false);
    for b in c.groups.iter().flat_map(|g| &g.bars) {
        if b.value.is_finite() {
            let e = error_of(b.error);
            (lo, hi, any) = (lo.min(b.value - e), hi.max(b.value + e), true);
        }
    }
    let reference = c.reference_line.as_ref().filter(|(v, _)| v.is_finite());
    if let Some((v, _)) = reference {
        (lo, hi) = (lo.min(*v), hi.max(*v));
    }
    let target = if h >= 300.0 { 6 } else { 4 };
    let given = c
        .y_range
        .filter(|(a, b)| a.is_finite() && b.is_finite() && a != b);
    let (ylo, yhi, step, values) = match given {
        Some((a, b)) => {
            let (a, b) = (a.min(b), a.max(b));
            let all = nice_ticks(a, b, target);
            let eps = (b - a) * 1e-9;
            let inside = all
                .iter()
                .copied()
                .filter(|v| *v >= a - eps && *v <= b + eps);
            (a, b, tick_step(&all), inside.collect())
        }
        None => {
            let t = nice_ticks(lo, hi, target);
            (t[0], t[t.len() - 1], tick_step(&t), t)
        }
    };
    let ticks: Vec<(f64, String)> = values.iter().map(|&v| (v, format_tick(v, step))).collect();

    // The plot's height is not known yet: assume two lines of group labels.
    let ylab = YLabel::new(
        &c.y_label,
        h - top - tick - 3.0 * sf - 2.0 * LINE * sf - pad,
        s,
    );
    let tick_w = ticks.iter().map(|(_, l)| tw(l, s)).fold(0.0, f64::max);
    let left = (pad + ylab.width() + tick_w + 3.0 * sf + tick).round();
    let ref_label = reference
        .filter(|(v, _)| *v >= ylo && *v <= yhi)
        .map(|(_, l)| ellipsize(l.trim(), max_chars(w * 0.2, s)));
    let right = match &ref_label {
        Some(l) if !l.is_empty() => w - pad - tw(l, s) - 4.0 * sf,
        _ => w - 2.0 * pad,
    }
    .round();
    let n = c.groups.len().max(1);
    let gw = (right - left) / n as f64;
    let names: Vec<&str> = c.groups.iter().map(|g| g.label.trim()).collect();
    let (ls, group_lines) = fit_labels(&names, gw - 4.0 * sf, &[s, 1], MAX_LABEL_LINES);
    let nlines = group_lines.iter().map(Vec::len).max().unwrap_or(0);
    let lsf = ls as f64;
    let below = tick + 3.0 * sf + nlines as f64 * LINE * lsf + pad;
    let bottom = (h - below).round();
    if bottom - top < 8.0 || right - left < 8.0 {
        return sc;
    }
    let y_of = |v: f64| top + (yhi - v) / (yhi - ylo) * (bottom - top);

    for (v, label) in &ticks {
        let y = y_of(*v);
        line(
            &mut sc,
            left,
            crisp(y, 1.0),
            right,
            crisp(y, 1.0),
            1.0,
            GRID,
            None,
        );
        let yt = crisp(y, lw);
        line(&mut sc, left - tick, yt, left, yt, lw, INK, None);
        text(
            &mut sc,
            left - tick - 3.0 * sf,
            y + CAP * sf / 2.0,
            label,
            s,
            Anchor::End,
            INK,
        );
    }

    let base = 0f64.clamp(ylo, yhi);
    let max_bars = c
        .groups
        .iter()
        .map(|g| g.bars.len())
        .max()
        .unwrap_or(0)
        .max(1);
    let bw = gw * 0.8 / max_bars as f64;
    let gap = if bw >= 6.0 {
        (bw * 0.1).clamp(1.0, 4.0 * sf)
    } else {
        0.0
    };
    let mut error_bars = Vec::new();
    for (i, g) in c.groups.iter().enumerate() {
        let cx = left + gw * (i as f64 + 0.5);
        let x_start = cx - g.bars.len() as f64 * bw / 2.0;
        for (j, b) in g.bars.iter().enumerate() {
            if !b.value.is_finite() {
                continue;
            }
            let x = x_start + j as f64 * bw;
            let (x0, x1) = ((x + gap / 2.0).round(), (x + bw - gap / 2.0).round());
            let x1 = x1.max(x0 + 1.0);
            let v = b.value.clamp(ylo, yhi);
            let (y0, y1) = (y_of(v.max(base)).round(), y_of(v.min(base)).round());
            let e = error_of(b.error);
            let tooltip = if e > 0.0 {
                format!(
                    "{}: {} = {} ± {}",
                    g.label,
                    b.series,
                    short(b.value),
                    short(e)
                )
            } else {
                format!("{}: {} = {}", g.label, b.series, short(b.value))
            };
            sc.shapes.push(Shape::Rect {
                x: x0,
                y: y0,
                w: x1 - x0,
                h: y1 - y0,
                fill: color_of(&b.series),
                class: Some("bar"),
                tooltip: Some(tooltip),
            });
            if e > 0.0 {
                error_bars.push(((x0 + x1) / 2.0, x1 - x0, b.value, e));
            }
        }
    }
    for (x, bar_w, v, e) in error_bars {
        let x = crisp(x, lw);
        let (lo, hi) = (v - e, v + e);
        let (ylo_px, yhi_px) = (y_of(lo.clamp(ylo, yhi)), y_of(hi.clamp(ylo, yhi)));
        line(&mut sc, x, ylo_px, x, yhi_px, lw, INK, None);
        let half = (bar_w * 0.25).clamp(lw, 6.0 * sf);
        for (end, y) in [(lo, ylo_px), (hi, yhi_px)] {
            if end >= ylo && end <= yhi {
                let y = crisp(y, lw);
                line(&mut sc, x - half, y, x + half, y, lw, INK, None);
            }
        }
    }
    if let (Some((v, _)), Some(label)) = (reference, &ref_label) {
        let y = crisp(y_of(*v), lw);
        line(
            &mut sc,
            left,
            y,
            right,
            y,
            lw,
            INK,
            Some((6.0 * sf, 4.0 * sf)),
        );
        text(
            &mut sc,
            right + 4.0 * sf,
            y + CAP * sf / 2.0,
            label,
            s,
            Anchor::Start,
            MUTED,
        );
    }

    let (xa, yb) = (crisp(left, lw), crisp(bottom, lw));
    line(&mut sc, xa, top, xa, bottom + lw / 2.0, lw, INK, None);
    line(&mut sc, left - lw / 2.0, yb, right, yb, lw, INK, None);
    if ylo < 0.0 && yhi > 0.0 {
        let y0 = crisp(y_of(0.0), lw);
        line(&mut sc, left, y0, right, y0, lw, INK, None);
    }
    for (i, lines) in group_lines.iter().enumerate() {
        let cx = left + gw * (i as f64 + 0.5);
        for (k, l) in lines.iter().enumerate() {
            let y = bottom + tick + 3.0 * sf + CAP * lsf + k as f64 * LINE * lsf;
            text(&mut sc, cx, y, l, ls, Anchor::Middle, INK);
        }
    }
    ylab.draw(&mut sc, pad, top, bottom);
    if !any {
        no_data(&mut sc, (left + right) / 2.0, (top + bottom) / 2.0, s);
    }
    sc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crisp_lines_and_short_values() {
        assert_eq!(short(43.25), "43.25");
        assert_eq!(short(1.0 / 3.0), "0.333");
        assert_eq!(short(50.0), "50");
        assert_eq!(crisp(10.2, 1.0), 10.5);
        assert_eq!(crisp(10.6, 2.0), 11.0);
    }
}
