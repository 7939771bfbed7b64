//! Draws a [`Scene`] into an 8-bit RGB buffer: area-weighted anti-aliased rectangles, lines with
//! thickness and butt ends (dashes are split into segments), anti-aliased circles, and text from
//! the bitmap font at integer scales (bold by overdrawing one pixel to the right; vertical text
//! reads upwards).

use super::font::{self, ADVANCE, CAP_HEIGHT};
use super::{Anchor, Rgb, Scene, Shape};

pub struct Canvas {
    pub width: usize,
    pub height: usize,
    pub rgb: Vec<u8>,
}

impl Canvas {
    pub fn new(width: u32, height: u32) -> Self {
        let (width, height) = (width as usize, height as usize);
        Canvas {
            width,
            height,
            rgb: vec![0xff; width * height * 3],
        }
    }

    /// Blends `c` over pixel (x, y) with coverage `a` in 0..=1.
    fn blend(&mut self, x: i64, y: i64, c: Rgb, a: f64) {
        if x < 0 || y < 0 || x as usize >= self.width || y as usize >= self.height || a <= 0.0 {
            return;
        }
        let i = (y as usize * self.width + x as usize) * 3;
        let a = a.min(1.0);
        for (k, v) in [c.0, c.1, c.2].into_iter().enumerate() {
            let old = self.rgb[i + k] as f64;
            self.rgb[i + k] = (old + (v as f64 - old) * a).round() as u8;
        }
    }

    /// Pixel rows/columns a shape spanning [lo, hi] touches, clamped to `n`.
    fn span(lo: f64, hi: f64, n: usize) -> std::ops::Range<i64> {
        let a = lo.floor().max(0.0);
        let b = hi.ceil().min(n as f64);
        if !(lo.is_finite() && hi.is_finite()) || a >= b {
            return 0..0;
        }
        a as i64..b as i64
    }

    pub fn fill_rect(&mut self, x: f64, y: f64, w: f64, h: f64, c: Rgb, alpha: f64) {
        let (x0, x1) = (x.min(x + w), x.max(x + w));
        let (y0, y1) = (y.min(y + h), y.max(y + h));
        if ![x0, x1, y0, y1].iter().all(|v| v.is_finite()) {
            return;
        }
        for py in Self::span(y0, y1, self.height) {
            let cy = (y1.min(py as f64 + 1.0) - y0.max(py as f64)).clamp(0.0, 1.0);
            for px in Self::span(x0, x1, self.width) {
                let cx = (x1.min(px as f64 + 1.0) - x0.max(px as f64)).clamp(0.0, 1.0);
                self.blend(px, py, c, cx * cy * alpha);
            }
        }
    }

    /// A solid segment with butt ends: coverage falls off over one pixel across and along.
    fn segment(&mut self, (x1, y1): (f64, f64), (x2, y2): (f64, f64), width: f64, c: Rgb) {
        let (dx, dy) = (x2 - x1, y2 - y1);
        let len = (dx * dx + dy * dy).sqrt();
        if !(len > 0.0 && len.is_finite() && width > 0.0 && width.is_finite()) {
            return;
        }
        let (ux, uy) = (dx / len, dy / len);
        let half = width / 2.0;
        let m = half + 1.0;
        for py in Self::span(y1.min(y2) - m, y1.max(y2) + m, self.height) {
            for px in Self::span(x1.min(x2) - m, x1.max(x2) + m, self.width) {
                let (qx, qy) = (px as f64 + 0.5 - x1, py as f64 + 0.5 - y1);
                let along = qx * ux + qy * uy;
                let across = (qy * ux - qx * uy).abs();
                let ca = (along.min(len - along) + 0.5).clamp(0.0, 1.0);
                let cw = (half + 0.5 - across).clamp(0.0, 1.0).min(width);
                self.blend(px, py, c, ca * cw);
            }
        }
    }

    pub fn line(
        &mut self,
        a: (f64, f64),
        b: (f64, f64),
        width: f64,
        c: Rgb,
        dash: Option<(f64, f64)>,
    ) {
        let Some((on, off)) = dash.filter(|&(on, off)| on > 0.0 && off >= 0.0) else {
            return self.segment(a, b, width, c);
        };
        let (dx, dy) = (b.0 - a.0, b.1 - a.1);
        let len = (dx * dx + dy * dy).sqrt();
        if !len.is_finite() || len / (on + off) > 1e5 {
            return;
        }
        let at = |t: f64| (a.0 + dx * t / len, a.1 + dy * t / len);
        let mut t = 0.0;
        while t < len {
            self.segment(at(t), at((t + on).min(len)), width, c);
            t += on + off;
        }
    }

    pub fn circle(&mut self, cx: f64, cy: f64, r: f64, c: Rgb, opacity: f64) {
        if !(r > 0.0 && r.is_finite() && cx.is_finite() && cy.is_finite()) {
            return;
        }
        for py in Self::span(cy - r - 1.0, cy + r + 1.0, self.height) {
            for px in Self::span(cx - r - 1.0, cx + r + 1.0, self.width) {
                let d = ((px as f64 + 0.5 - cx).powi(2) + (py as f64 + 0.5 - cy).powi(2)).sqrt();
                self.blend(px, py, c, (r + 0.5 - d).clamp(0.0, 1.0) * opacity);
            }
        }
    }

    /// Text with its baseline at `y`; vertical text is turned anticlockwise about (x, y).
    #[allow(clippy::too_many_arguments)]
    pub fn text(
        &mut self,
        x: f64,
        y: f64,
        text: &str,
        scale: u32,
        anchor: Anchor,
        vertical: bool,
        bold: bool,
        c: Rgb,
    ) {
        if !(x.is_finite() && y.is_finite()) || text.is_empty() {
            return;
        }
        let s = scale.max(1) as i64;
        let width = font::text_width(text, scale.max(1)) as i64;
        let start = match anchor {
            Anchor::Start => 0,
            Anchor::Middle => -width / 2,
            Anchor::End => -width,
        };
        let (ox, oy) = (x.round() as i64, y.round() as i64);
        let bold = bold && s >= 2;
        for (k, ch) in text.chars().enumerate() {
            let pen = start + k as i64 * ADVANCE as i64 * s;
            for (row, bits) in font::glyph(ch).iter().enumerate() {
                for col in 0..5i64 {
                    if bits >> (4 - col) & 1 == 0 {
                        continue;
                    }
                    // Text-local: u along the text, v down from the baseline.
                    let u = pen + col * s;
                    let v = (row as i64 - CAP_HEIGHT as i64) * s;
                    let w = s + bold as i64;
                    if vertical {
                        self.fill_px(ox + v, oy - u - w, s, w, c);
                    } else {
                        self.fill_px(ox + u, oy + v, w, s, c);
                    }
                }
            }
        }
    }

    fn fill_px(&mut self, x: i64, y: i64, w: i64, h: i64, c: Rgb) {
        for py in y..y + h {
            for px in x..x + w {
                self.blend(px, py, c, 1.0);
            }
        }
    }
}

pub fn rasterize(scene: &Scene) -> Vec<u8> {
    let mut canvas = Canvas::new(scene.width, scene.height);
    for shape in &scene.shapes {
        match shape {
            Shape::Rect {
                x, y, w, h, fill, ..
            } => canvas.fill_rect(*x, *y, *w, *h, *fill, 1.0),
            Shape::Line {
                x1,
                y1,
                x2,
                y2,
                width,
                color,
                dash,
            } => canvas.line((*x1, *y1), (*x2, *y2), *width, *color, *dash),
            Shape::Circle {
                cx,
                cy,
                r,
                fill,
                opacity,
            } => canvas.circle(*cx, *cy, *r, *fill, opacity.clamp(0.0, 1.0)),
            Shape::Text {
                x,
                y,
                text,
                scale,
                anchor,
                vertical,
                bold,
                color,
            } => canvas.text(*x, *y, text, *scale, *anchor, *vertical, *bold, *color),
        }
    }
    canvas.rgb
}

#[cfg(test)]
mod tests {
    use super::*;

    const RED: Rgb = Rgb(255, 0, 0);

    fn px(c: &Canvas, x: usize, y: usize) -> [u8; 3] {
        let i = (y * c.width + x) * 3;
        [c.rgb[i], c.rgb[i + 1], c.rgb[i + 2]]
    }

    #[test]
    fn primitives_cover_the_right_pixels() {
        let mut c = Canvas::new(40, 30);
        c.fill_rect(2.0, 3.0, 4.0, 5.0, RED, 1.0);
        assert_eq!(px(&c, 2, 3), [255, 0, 0]);
        assert_eq!(px(&c, 5, 7), [255, 0, 0]);
        assert_eq!(px(&c, 6, 7), [255, 255, 255]);
        assert_eq!(px(&c, 5, 8), [255, 255, 255]);
        // A half-covered column is blended half way.
        c.fill_rect(10.5, 0.0, 1.0, 1.0, Rgb(0, 0, 0), 1.0);
        assert_eq!(px(&c, 10, 0), [128, 128, 128]);
        // A 1 px line on a pixel centre is crisp, with butt ends.
        c.line((20.0, 10.5), (30.0, 10.5), 1.0, RED, None);
        assert_eq!(px(&c, 20, 10), [255, 0, 0]);
        assert_eq!(px(&c, 29, 10), [255, 0, 0]);
        assert_eq!(px(&c, 30, 10), [255, 255, 255]);
        assert_eq!(px(&c, 25, 9), [255, 255, 255]);
        // Dashes 2 on, 2 off.
        c.line((20.0, 20.5), (30.0, 20.5), 1.0, RED, Some((2.0, 2.0)));
        let row: Vec<bool> = (20..30).map(|x| px(&c, x, 20) == [255, 0, 0]).collect();
        assert_eq!(
            row,
            [true, true, false, false, true, true, false, false, true, true]
        );
        c.circle(10.0, 20.0, 3.0, RED, 1.0);
        assert_eq!(px(&c, 10, 20), [255, 0, 0]);
        assert_eq!(px(&c, 10, 25), [255, 255, 255]);
        // Shapes partly or wholly off the canvas, or with NaN, are clipped without panics.
        c.fill_rect(-10.0, -10.0, 1e9, 15.0, RED, 1.0);
        c.line((f64::NAN, 0.0), (1.0, 1.0), 1.0, RED, None);
        c.circle(-100.0, 5.0, 2.0, RED, 1.0);
        c.text(-50.0, 500.0, "off", 2, Anchor::Middle, true, true, RED);
    }

    #[test]
    fn text_draws_glyph_pixels() {
        let mut c = Canvas::new(20, 20);
        // 'I' at scale 1: top row .###., baseline at y = 9 so the top row is y = 2.
        c.text(1.0, 9.0, "I", 1, Anchor::Start, false, false, RED);
        assert_eq!(px(&c, 1, 2), [255, 255, 255]);
        assert_eq!(px(&c, 2, 2), [255, 0, 0]);
        assert_eq!(px(&c, 3, 5), [255, 0, 0]);
        assert_eq!(px(&c, 3, 9), [255, 255, 255]);
        // Vertical: the glyph's top row is at the left, reading upwards from the anchor.
        let mut v = Canvas::new(20, 20);
        v.text(10.0, 15.0, "I", 1, Anchor::Start, true, false, RED);
        assert_eq!(px(&v, 3, 13), [255, 0, 0]); // top row, second column
        assert_eq!(px(&v, 3, 14), [255, 255, 255]); // top row, first column is blank
    }
}
