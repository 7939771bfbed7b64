//! Scatter plot layout (the paper's Figure 5): points coloured by series over a grid, nice ticks
//! on both axes (x labels thinned so they never touch), darker grid lines at zero.

use super::layout::{
    crisp, header, labels_for, line, no_data, text, text_scale, YLabel, CAP, GRID, INK, LINE, ZERO,
};
use super::text::{fit_line, tw};
use super::ticks::nice_ticks;
use super::{series_color, Anchor, Rgb, ScatterChart, Scene, Shape};

pub fn scatter_scene(c: &ScatterChart, width: u32, height: u32) -> Scene {
    let mut sc = Scene {
        width,
        height,
        shapes: Vec::new(),
    };
    let (w, h, s) = (width as f64, height as f64, text_scale(width, height));
    let (sf, pad, tick) = (s as f64, 8.0 * s as f64, 4.0 * s as f64);
    let lw = sf;
    let legend: Vec<(String, Rgb)> = (c.series.iter().enumerate())
        .filter(|(_, ser)| !ser.name.trim().is_empty())
        .map(|(i, ser)| (ser.name.trim().to_string(), series_color(i)))
        .collect();
    let top = header(&mut sc, &c.title, &legend, true, s).round();

    let finite = |p: &&(f64, f64)| p.0.is_finite() && p.1.is_finite();
    let pts = || {
        c.series
            .iter()
            .flat_map(|ser| ser.points.iter().filter(finite))
    };
    let range = |f: fn(&(f64, f64)) -> f64| {
        pts()
            .map(f)
            .fold(None, |acc: Option<(f64, f64)>, v| match acc {
                None => Some((v, v)),
                Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
            })
    };
    let any = pts().next().is_some();
    let (x0, x1) = range(|p| p.0).unwrap_or((0.0, 1.0));
    let (y0, y1) = range(|p| p.1).unwrap_or((0.0, 1.0));
    let xt = nice_ticks(x0, x1, if w >= 500.0 { 6 } else { 4 });
    let yt = nice_ticks(y0, y1, if h >= 300.0 { 6 } else { 4 });
    let (xl, yl) = (labels_for(&xt), labels_for(&yt));
    let (xlo, xhi, ylo, yhi) = (xt[0], xt[xt.len() - 1], yt[0], yt[yt.len() - 1]);

    let xlab = if c.x_label.trim().is_empty() {
        0.0
    } else {
        LINE * sf
    };
    let bottom = (h - pad - xlab - tick - 3.0 * sf - LINE * sf).round();
    let ylab = YLabel::new(&c.y_label, bottom - top, s);
    let tick_w = yl.iter().map(|l| tw(l, s)).fold(0.0, f64::max);
    let left = (pad + ylab.width() + tick_w + 3.0 * sf + tick).round();
    let right = (w - pad - (tw(&xl[xl.len() - 1], s) / 2.0).max(pad)).round();
    if bottom - top < 8.0 || right - left < 8.0 {
        return sc;
    }
    let x_of = |v: f64| left + (v - xlo) / (xhi - xlo) * (right - left);
    let y_of = |v: f64| top + (yhi - v) / (yhi - ylo) * (bottom - top);

    // Grid, with darker lines at zero.
    for &v in &xt {
        let x = crisp(x_of(v), 1.0);
        let col = if v == 0.0 && v > xlo { ZERO } else { GRID };
        line(&mut sc, x, top, x, bottom, 1.0, col, None);
    }
    for &v in &yt {
        let y = crisp(y_of(v), 1.0);
        let col = if v == 0.0 && v > ylo { ZERO } else { GRID };
        line(&mut sc, left, y, right, y, 1.0, col, None);
    }
    // Tick labels: every `stride`-th x label so that neighbours keep a gap.
    let spacing = (right - left) / (xt.len() - 1).max(1) as f64;
    let widest = xl.iter().map(|l| tw(l, s)).fold(0.0, f64::max);
    let stride = ((widest + 8.0 * sf) / spacing).ceil().max(1.0) as usize;
    for (k, (&v, l)) in xt.iter().zip(&xl).enumerate() {
        let x = crisp(x_of(v), lw);
        line(&mut sc, x, bottom, x, bottom + tick, lw, INK, None);
        if k % stride == 0 {
            let y = bottom + tick + 3.0 * sf + CAP * sf;
            text(&mut sc, x, y, l, s, Anchor::Middle, INK);
        }
    }
    for (&v, l) in yt.iter().zip(&yl) {
        let y = y_of(v);
        line(
            &mut sc,
            left - tick,
            crisp(y, lw),
            left,
            crisp(y, lw),
            lw,
            INK,
            None,
        );
        text(
            &mut sc,
            left - tick - 3.0 * sf,
            y + CAP * sf / 2.0,
            l,
            s,
            Anchor::End,
            INK,
        );
    }

    let r = 1.5 + 1.5 * sf;
    for (i, ser) in c.series.iter().enumerate() {
        for p in ser.points.iter().filter(finite) {
            sc.shapes.push(Shape::Circle {
                cx: x_of(p.0),
                cy: y_of(p.1),
                r,
                fill: series_color(i),
                opacity: 0.75,
            });
        }
    }
    let (xa, yb) = (crisp(left, lw), crisp(bottom, lw));
    line(&mut sc, xa, top, xa, bottom + lw / 2.0, lw, INK, None);
    line(&mut sc, left - lw / 2.0, yb, right, yb, lw, INK, None);

    let (t, ls) = fit_line(c.x_label.trim(), right - left, &[s, 1]);
    text(
        &mut sc,
        (left + right) / 2.0,
        h - pad - 2.0 * sf,
        &t,
        ls,
        Anchor::Middle,
        INK,
    );
    ylab.draw(&mut sc, pad, top, bottom);
    if !any {
        no_data(&mut sc, (left + right) / 2.0, (top + bottom) / 2.0, s);
    }
    sc
}
