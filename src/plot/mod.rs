//! Dependency-free charts for the experiment tables: grouped bar charts with error bars (win
//! rates per model and setting) and scatter plots (the paper's Figure 5), written as SVG and PNG.
//!
//! A chart is laid out once into a [`Scene`] of pixel-space shapes; [`Scene::to_svg`] writes it
//! as SVG text and [`Scene::to_png`] draws it with the crate's own rasteriser (anti-aliased
//! rectangles, lines, dashes and circles; a built-in 5x7 bitmap font) and PNG encoder (CRC-32,
//! zlib with fixed-Huffman deflate, Adler-32). Text is measured with the bitmap font (6 px
//! advance per character at scale 1); the SVG uses a monospace font of the same advance, so
//! both outputs share one layout.
//!
//! ```no_run
//! use implicit::plot::{Bar, BarChart, BarGroup};
//! let chart = BarChart {
//!     title: "AlpacaEval win rate vs. instruction tuning".into(),
//!     y_label: "win rate (%)".into(),
//!     y_range: Some((0.0, 100.0)),
//!     groups: vec![BarGroup {
//!         label: "Llama-2-7B".into(),
//!         bars: vec![Bar::new("response tuning", 43.2, Some(1.5))],
//!     }],
//!     reference_line: Some((50.0, "parity".into())),
//! };
//! implicit::plot::write_svg(&chart, "figures/winrate.svg".as_ref())?;
//! implicit::plot::write_png(&chart, "figures/winrate.png".as_ref(), 800, 500)?;
//! # Ok::<(), implicit::Error>(())
//! ```

mod deflate;
mod font;
mod layout;
mod png;
mod raster;
mod scatter;
mod svg;
mod text;
mod ticks;

pub use png::{adler32, crc32, encode_png};
pub use ticks::{format_tick, nice_ticks};

use crate::error::{Context, Result};
use std::path::Path;

/// Size of [`render_svg`]'s canvas, in pixels.
pub const DEFAULT_SIZE: (u32, u32) = (800, 500);
/// Largest side [`render_png`] draws; bigger requests are clamped.
pub const MAX_SIDE: u32 = 16384;

/// An sRGB colour.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rgb(pub u8, pub u8, pub u8);

impl Rgb {
    /// `#rrggbb`.
    pub fn hex(self) -> String {
        format!("#{:02x}{:02x}{:02x}", self.0, self.1, self.2)
    }
}

/// Series colours, in order: the Okabe-Ito colour-blind-safe palette (black left out, yellow
/// last for its low contrast on white). Series beyond eight reuse colours.
pub const PALETTE: [Rgb; 8] = [
    Rgb(0x00, 0x72, 0xB2), // blue
    Rgb(0xE6, 0x9F, 0x00), // orange
    Rgb(0x00, 0x9E, 0x73), // bluish green
    Rgb(0xD5, 0x5E, 0x00), // vermillion
    Rgb(0xCC, 0x79, 0xA7), // reddish purple
    Rgb(0x56, 0xB4, 0xE9), // sky blue
    Rgb(0x99, 0x99, 0x99), // grey
    Rgb(0xF0, 0xE4, 0x42), // yellow
];

/// The colour of the `index`-th series.
pub fn series_color(index: usize) -> Rgb {
    PALETTE[index % PALETTE.len()]
}

/// One bar: its series (legend entry and colour; the same series has the same colour in every
/// group), its value and an optional ± error (e.g. a standard deviation over seeds).
/// Non-finite values are skipped; a non-finite or zero error draws no error bar.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Bar {
    pub series: String,
    pub value: f64,
    pub error: Option<f64>,
}

impl Bar {
    pub fn new(series: impl Into<String>, value: f64, error: Option<f64>) -> Self {
        Bar {
            series: series.into(),
            value,
            error,
        }
    }
}

/// Bars drawn side by side above one label on the x axis (e.g. one model).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BarGroup {
    pub label: String,
    pub bars: Vec<Bar>,
}

/// A grouped bar chart. Bars grow from 0 (or from the nearest end of `y_range` when it excludes
/// 0). Without `y_range` the axis covers 0, every value ± error and the reference line, rounded
/// out to nice ticks. `reference_line` is a dashed horizontal line with its label at the
/// right-hand end (e.g. `(50.0, "parity")` for win rates).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BarChart {
    pub title: String,
    pub y_label: String,
    pub y_range: Option<(f64, f64)>,
    pub groups: Vec<BarGroup>,
    pub reference_line: Option<(f64, String)>,
}

/// Points of one colour in a scatter plot.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ScatterSeries {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// A scatter plot; points with a non-finite coordinate are skipped.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ScatterChart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<ScatterSeries>,
}

/// Where a text's anchor point sits along the text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Anchor {
    Start,
    Middle,
    End,
}

/// A drawing primitive in pixel coordinates (origin top left, y down).
#[derive(Clone, Debug, PartialEq)]
pub enum Shape {
    /// A filled rectangle; `class` becomes the SVG element's class, `tooltip` its `<title>`.
    Rect {
        x: f64,
        y: f64,
        w: f64,
        h: f64,
        fill: Rgb,
        class: Option<&'static str>,
        tooltip: Option<String>,
    },
    /// A straight line with butt ends; `dash` is (on, off) lengths.
    Line {
        x1: f64,
        y1: f64,
        x2: f64,
        y2: f64,
        width: f64,
        color: Rgb,
        dash: Option<(f64, f64)>,
    },
    /// A filled circle, blended with `opacity` in 0..=1.
    Circle {
        cx: f64,
        cy: f64,
        r: f64,
        fill: Rgb,
        opacity: f64,
    },
    /// One line of text; `y` is the baseline. `scale` multiplies the 5x7 font (SVG font size
    /// `10 * scale`). `vertical` turns it 90 degrees anticlockwise about (x, y), to read upwards.
    Text {
        x: f64,
        y: f64,
        text: String,
        scale: u32,
        anchor: Anchor,
        vertical: bool,
        bold: bool,
        color: Rgb,
    },
}

/// A laid-out chart: shapes drawn in order over a white `width` x `height` canvas.
#[derive(Clone, Debug, PartialEq)]
pub struct Scene {
    pub width: u32,
    pub height: u32,
    pub shapes: Vec<Shape>,
}

impl Scene {
    /// Standalone SVG document.
    pub fn to_svg(&self) -> String {
        svg::to_svg(self)
    }

    /// The scene drawn into an RGB buffer (`width * height * 3` bytes, rows top to bottom).
    pub fn to_rgb(&self) -> Vec<u8> {
        raster::rasterize(self)
    }

    /// The scene as a PNG file.
    pub fn to_png(&self) -> Vec<u8> {
        encode_png(self.width, self.height, &self.to_rgb())
    }
}

/// Anything that lays itself out on a canvas of a given size.
pub trait Chart {
    fn scene(&self, width: u32, height: u32) -> Scene;
}

impl Chart for BarChart {
    fn scene(&self, width: u32, height: u32) -> Scene {
        layout::bar_scene(self, width, height)
    }
}

impl Chart for ScatterChart {
    fn scene(&self, width: u32, height: u32) -> Scene {
        layout::scatter_scene(self, width, height)
    }
}

fn clamp_size(width: u32, height: u32) -> (u32, u32) {
    (width.clamp(1, MAX_SIDE), height.clamp(1, MAX_SIDE))
}

/// The chart as a standalone SVG document of [`DEFAULT_SIZE`].
pub fn render_svg<C: Chart + ?Sized>(chart: &C) -> String {
    render_svg_sized(chart, DEFAULT_SIZE.0, DEFAULT_SIZE.1)
}

/// The chart as a standalone SVG document laid out for `width` x `height` pixels.
pub fn render_svg_sized<C: Chart + ?Sized>(chart: &C, width: u32, height: u32) -> String {
    let (w, h) = clamp_size(width, height);
    chart.scene(w, h).to_svg()
}

/// The chart as a `width` x `height` PNG (sides clamped to 1..=[`MAX_SIDE`]). Text is drawn at
/// twice the font's size from 600 x 360 up, at its size below.
pub fn render_png<C: Chart + ?Sized>(chart: &C, width: u32, height: u32) -> Vec<u8> {
    let (w, h) = clamp_size(width, height);
    chart.scene(w, h).to_png()
}

/// Writes [`render_svg`]'s document to `path` atomically.
pub fn write_svg<C: Chart + ?Sized>(chart: &C, path: &Path) -> Result<()> {
    crate::io::atomic::write_atomic(path, render_svg(chart).as_bytes())
        .with_context(|| format!("{}: cannot write SVG chart", path.display()))
}

/// Writes [`render_png`]'s image to `path` atomically.
pub fn write_png<C: Chart + ?Sized>(chart: &C, path: &Path, width: u32, height: u32) -> Result<()> {
    crate::io::atomic::write_atomic(path, &render_png(chart, width, height))
        .with_context(|| format!("{}: cannot write PNG chart", path.display()))
}

#[cfg(test)]
mod tests;
