//! A [`Scene`] as a standalone SVG 1.1 document. Text is XML-escaped (characters XML 1.0 cannot
//! carry become '?') and set in a monospace font sized to the bitmap font's advance.

use super::{Anchor, Scene, Shape};
use std::fmt::Write;

/// Fonts whose advance is 0.6 em, matching the bitmap font's 6 px at a size of 10 px.
const FONT_FAMILY: &str = "DejaVu Sans Mono, Menlo, Consolas, Liberation Mono, monospace";

/// XML text and attribute escaping.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(' '),
            c if (c as u32) < 0x20 || matches!(c, '\u{fffe}' | '\u{ffff}') => out.push('?'),
            c => out.push(c),
        }
    }
    out
}

/// A coordinate with at most two decimals and no trailing zeros.
fn num(v: f64) -> String {
    if !v.is_finite() {
        return "0".into();
    }
    let s = format!("{:.2}", v);
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".into()
    } else {
        s.into()
    }
}

pub fn to_svg(scene: &Scene) -> String {
    let (w, h) = (scene.width, scene.height);
    let mut out = String::with_capacity(4096 + scene.shapes.len() * 120);
    let _ = writeln!(out, r#"<?xml version="1.0" encoding="UTF-8"?>"#);
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" version="1.1" width="{w}" height="{h}" viewBox="0 0 {w} {h}">"#
    );
    let _ = writeln!(out, r##"<rect width="{w}" height="{h}" fill="#ffffff"/>"##);
    for shape in &scene.shapes {
        match shape {
            Shape::Rect {
                x,
                y,
                w,
                h,
                fill,
                class,
                tooltip,
            } => {
                out.push_str("<rect");
                if let Some(class) = class {
                    let _ = write!(out, r#" class="{}""#, escape(class));
                }
                let _ = write!(
                    out,
                    r#" x="{}" y="{}" width="{}" height="{}" fill="{}""#,
                    num(*x),
                    num(*y),
                    num(w.max(0.0)),
                    num(h.max(0.0)),
                    fill.hex()
                );
                match tooltip {
                    Some(t) => {
                        let _ = writeln!(out, "><title>{}</title></rect>", escape(t));
                    }
                    None => out.push_str("/>\n"),
                }
            }
            Shape::Line {
                x1,
                y1,
                x2,
                y2,
                width,
                color,
                dash,
            } => {
                let _ = write!(
                    out,
                    r#"<line x1="{}" y1="{}" x2="{}" y2="{}" stroke="{}" stroke-width="{}""#,
                    num(*x1),
                    num(*y1),
                    num(*x2),
                    num(*y2),
                    color.hex(),
                    num(*width)
                );
                if let Some((on, off)) = dash {
                    let _ = write!(out, r#" stroke-dasharray="{} {}""#, num(*on), num(*off));
                }
                out.push_str("/>\n");
            }
            Shape::Circle {
                cx,
                cy,
                r,
                fill,
                opacity,
            } => {
                let _ = writeln!(
                    out,
                    r#"<circle cx="{}" cy="{}" r="{}" fill="{}" fill-opacity="{}"/>"#,
                    num(*cx),
                    num(*cy),
                    num(*r),
                    fill.hex(),
                    num(opacity.clamp(0.0, 1.0))
                );
            }
            Shape::Text {
                x,
                y,
                text,
                scale,
                anchor,
                vertical,
                bold,
                color,
            } => {
                let anchor = match anchor {
                    Anchor::Start => "start",
                    Anchor::Middle => "middle",
                    Anchor::End => "end",
                };
                let (x, y) = (num(*x), num(*y));
                let _ = write!(
                    out,
                    r#"<text x="{x}" y="{y}" font-family="{FONT_FAMILY}" font-size="{}" text-anchor="{anchor}" fill="{}""#,
                    scale * 10,
                    color.hex()
                );
                if *bold {
                    out.push_str(r#" font-weight="bold""#);
                }
                if *vertical {
                    let _ = write!(out, r#" transform="rotate(-90 {x} {y})""#);
                }
                let _ = writeln!(out, ">{}</text>", escape(text));
            }
        }
    }
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_formats() {
        assert_eq!(
            escape(r#"a<b & "c" 'd'>"#),
            "a&lt;b &amp; &quot;c&quot; &apos;d&apos;&gt;"
        );
        assert_eq!(escape("x\u{1}y\nz é"), "x?y z é");
        assert_eq!(num(1.0), "1");
        assert_eq!(num(1.25), "1.25");
        assert_eq!(num(-0.001), "0");
        assert_eq!(num(2.5), "2.5");
        assert_eq!(num(f64::NAN), "0");
    }
}
