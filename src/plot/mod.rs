//! Charts for the experiment tables, drawn with `plotters`: grouped bar charts with error bars
//! (win rates per model and setting) and scatter plots (the paper's Figure 5), written as SVG
//! (plotters' SVG backend) and PNG (plotters' bitmap backend, encoded by the `png` crate).
//!
//! Text is measured and rasterised with DejaVu Sans (the `dejavu` crate) through plotters'
//! `ab_glyph` feature, so no system font library is needed; the SVG names the `sans-serif`
//! family, which viewers draw with their own sans-serif font.
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

mod bars;
mod frame;
mod scatter;

use crate::error::{Context, Error, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::Path;
use std::sync::OnceLock;

/// Size of [`render_svg`]'s canvas, in pixels.
pub const DEFAULT_SIZE: (u32, u32) = (800, 500);
/// Smallest side drawn: below it the title, legend and axis labels leave no plot. Smaller
/// requests are enlarged to it.
pub const MIN_SIDE: u32 = 120;
/// Largest side drawn; bigger requests are clamped.
pub const MAX_SIDE: u32 = 16384;

/// Series colours, in order: the Okabe-Ito colour-blind-safe palette (black left out, yellow
/// last for its low contrast on white). Series beyond eight reuse colours.
pub const PALETTE: [RGBColor; 8] = [
    RGBColor(0x00, 0x72, 0xB2), // blue
    RGBColor(0xE6, 0x9F, 0x00), // orange
    RGBColor(0x00, 0x9E, 0x73), // bluish green
    RGBColor(0xD5, 0x5E, 0x00), // vermillion
    RGBColor(0xCC, 0x79, 0xA7), // reddish purple
    RGBColor(0x56, 0xB4, 0xE9), // sky blue
    RGBColor(0x99, 0x99, 0x99), // grey
    RGBColor(0xF0, 0xE4, 0x42), // yellow
];

/// The colour of the `index`-th series.
pub fn series_color(index: usize) -> RGBColor {
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
/// 0) and are clipped to `y_range`. Without `y_range` the axis covers 0, every value ± error and
/// the reference line. `reference_line` is a dashed horizontal line with its label at the
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

/// Anything that draws itself on a plotters drawing area (already filled white).
pub trait Chart {
    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> Result<()>;
}

impl Chart for BarChart {
    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> Result<()> {
        bars::draw(self, area)
    }
}

impl Chart for ScatterChart {
    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> Result<()> {
        scatter::draw(self, area)
    }
}

/// The family every text is drawn in; [`register_fonts`] gives it DejaVu Sans.
const FONT: &str = "sans-serif";

/// Registers DejaVu Sans (regular and bold) as [`FONT`] with plotters, once per process:
/// plotters' `ab_glyph` text has no font until one is registered.
fn register_fonts() -> Result<()> {
    static REGISTERED: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            for (style, bytes, name) in [
                (FontStyle::Normal, dejavu::sans::regular(), "DejaVu Sans"),
                (FontStyle::Bold, dejavu::sans::bold(), "DejaVu Sans Bold"),
            ] {
                plotters::style::register_font(FONT, style, bytes)
                    .map_err(|_| format!("plotting: the embedded {name} font does not parse"))?;
            }
            Ok(())
        })
        .clone()
        .map_err(Error)
}

/// Turns a plotters error into the crate's, saying what was being drawn.
pub(crate) fn drawn<T, E: std::fmt::Display>(r: std::result::Result<T, E>) -> Result<T> {
    r.context("plotting")
}

fn clamp_size(width: u32, height: u32) -> (u32, u32) {
    (
        width.clamp(MIN_SIDE, MAX_SIDE),
        height.clamp(MIN_SIDE, MAX_SIDE),
    )
}

/// The chart as a standalone SVG document of [`DEFAULT_SIZE`].
pub fn render_svg<C: Chart>(chart: &C) -> Result<String> {
    render_svg_sized(chart, DEFAULT_SIZE.0, DEFAULT_SIZE.1)
}

/// The chart as a standalone SVG document of `width` x `height` pixels (sides clamped to
/// [`MIN_SIDE`]..=[`MAX_SIDE`]).
pub fn render_svg_sized<C: Chart>(chart: &C, width: u32, height: u32) -> Result<String> {
    register_fonts()?;
    let mut svg = String::new();
    {
        let area = SVGBackend::with_string(&mut svg, clamp_size(width, height)).into_drawing_area();
        drawn(area.fill(&WHITE))?;
        chart.draw(&area)?;
        drawn(area.present())?;
    }
    Ok(svg)
}

/// The chart drawn into an RGB buffer (`width * height * 3` bytes, rows top to bottom) of the
/// clamped size, which it returns beside the pixels.
fn render_rgb<C: Chart>(chart: &C, width: u32, height: u32) -> Result<(u32, u32, Vec<u8>)> {
    register_fonts()?;
    let (w, h) = clamp_size(width, height);
    let mut rgb = vec![0u8; w as usize * h as usize * 3];
    {
        let area = BitMapBackend::with_buffer(&mut rgb, (w, h)).into_drawing_area();
        drawn(area.fill(&WHITE))?;
        chart.draw(&area)?;
        drawn(area.present())?;
    }
    Ok((w, h, rgb))
}

/// The chart as a `width` x `height` PNG (sides clamped to [`MIN_SIDE`]..=[`MAX_SIDE`]).
pub fn render_png<C: Chart>(chart: &C, width: u32, height: u32) -> Result<Vec<u8>> {
    let (w, h, rgb) = render_rgb(chart, width, height)?;
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, w, h);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().context("PNG chart")?;
    writer.write_image_data(&rgb).context("PNG chart")?;
    writer.finish().context("PNG chart")?;
    Ok(out)
}

/// Writes [`render_svg`]'s document to `path` atomically.
pub fn write_svg<C: Chart>(chart: &C, path: &Path) -> Result<()> {
    let svg = render_svg(chart).with_context(|| format!("{}", path.display()))?;
    crate::io::atomic::write_atomic(path, svg.as_bytes())
        .with_context(|| format!("{}: cannot write SVG chart", path.display()))
}

/// Writes [`render_png`]'s image to `path` atomically.
pub fn write_png<C: Chart>(chart: &C, path: &Path, width: u32, height: u32) -> Result<()> {
    let png = render_png(chart, width, height).with_context(|| format!("{}", path.display()))?;
    crate::io::atomic::write_atomic(path, &png)
        .with_context(|| format!("{}: cannot write PNG chart", path.display()))
}

#[cfg(test)]
mod tests;
