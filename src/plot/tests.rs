//! Whole-chart tests: what the SVG holds (texts, one rectangle per bar at heights in proportion
//! to the values, one circle per point where the data puts it), what the PNG holds (decoded by
//! the `png` crate: size, background, bars of the series' colours and heights), edge cases at
//! every size, file writing, and an ignored demo that writes charts to /tmp for eyeballing.

use super::*;

fn winrate_chart() -> BarChart {
    let settings = [
        ("instruction tuning", [50.0, 50.0, 50.0], None),
        ("response tuning", [43.2, 39.6, 45.1], Some(1.8)),
        ("single-task: poetry", [21.0, 17.5, 24.2], Some(2.5)),
        ("rule-based adapter", [24.4, 19.1, f64::NAN], Some(1.1)),
    ];
    let models = ["Llama-2-7B", "OLMo-7B-0724", "Llama-2-13B <base> & co"];
    BarChart {
        title: "AlpacaEval win rate against instruction tuning".into(),
        y_label: "win rate (%)".into(),
        y_range: Some((0.0, 60.0)),
        groups: models
            .iter()
            .enumerate()
            .map(|(m, model)| BarGroup {
                label: model.to_string(),
                bars: settings
                    .iter()
                    .map(|(name, values, err)| Bar::new(*name, values[m], *err))
                    .collect(),
            })
            .collect(),
        reference_line: Some((50.0, "parity".into())),
    }
}

fn similarity_chart() -> ScatterChart {
    let mut lcg = 7u64;
    let mut rnd = move || {
        lcg = lcg
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (lcg >> 11) as f64 / (1u64 << 53) as f64
    };
    let series = ["GSM", "MBPP", "poetry", "recipes", "chess"]
        .iter()
        .enumerate()
        .map(|(k, name)| ScatterSeries {
            name: name.to_string(),
            points: (0..40)
                .map(|_| {
                    let x = 0.3 + 0.08 * k as f64 + 0.1 * rnd();
                    (x, 0.6 * (x - 0.45) + 0.08 * (rnd() - 0.5))
                })
                .collect(),
        })
        .collect();
    ScatterChart {
        title: "Instruction similarity vs. response similarity (Figure 5)".into(),
        x_label: "instruction similarity to finetuning set".into(),
        y_label: "response similarity (task - LIMA)".into(),
        series,
    }
}

/// The `name="..."` attribute of an SVG element's text, as a number.
fn attr(element: &str, name: &str) -> f64 {
    let key = format!(" {name}=\"");
    let start = element
        .find(&key)
        .unwrap_or_else(|| panic!("{name} in {element}"))
        + key.len();
    let end = start + element[start..].find('"').unwrap();
    element[start..end].parse().unwrap()
}

/// Every `<tag ...>` element's opening text, in document order.
fn elements<'a>(svg: &'a str, tag: &str) -> Vec<&'a str> {
    let open = format!("<{tag} ");
    svg.match_indices(&open)
        .map(|(i, _)| &svg[i..i + svg[i..].find('>').unwrap()])
        .collect()
}

/// The trimmed contents of every `<text>` element.
fn texts(svg: &str) -> Vec<String> {
    svg.split("<text ")
        .skip(1)
        .map(|t| {
            t[t.find('>').unwrap() + 1..t.find("</text>").unwrap()]
                .trim()
                .to_string()
        })
        .collect()
}

fn hex(c: RGBColor) -> String {
    format!("#{:02X}{:02X}{:02X}", c.0, c.1, c.2)
}

/// Rectangles filled with `c`: (x, y, width, height).
fn rects_of(svg: &str, c: RGBColor) -> Vec<(f64, f64, f64, f64)> {
    let fill = format!("fill=\"{}\"", hex(c));
    (elements(svg, "rect").into_iter())
        .filter(|r| r.contains(&fill))
        .map(|r| {
            (
                attr(r, "x"),
                attr(r, "y"),
                attr(r, "width"),
                attr(r, "height"),
            )
        })
        .collect()
}

struct Image {
    width: u32,
    height: u32,
    rgb: Vec<u8>,
}

impl Image {
    fn decode(bytes: &[u8]) -> Image {
        let mut reader = png::Decoder::new(std::io::Cursor::new(bytes))
            .read_info()
            .unwrap();
        let mut rgb = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut rgb).unwrap();
        assert_eq!(
            (info.color_type, info.bit_depth),
            (png::ColorType::Rgb, png::BitDepth::Eight)
        );
        rgb.truncate(info.buffer_size());
        Image {
            width: info.width,
            height: info.height,
            rgb,
        }
    }

    fn pixel(&self, x: u32, y: u32) -> RGBColor {
        let i = 3 * (y as usize * self.width as usize + x as usize);
        RGBColor(self.rgb[i], self.rgb[i + 1], self.rgb[i + 2])
    }

    /// Runs of adjacent columns holding pixels of exactly `c` in rows `top..`: (first x,
    /// last x, top y, bottom y) of each, left to right.
    fn blobs(&self, c: RGBColor, top: u32) -> Vec<(u32, u32, u32, u32)> {
        let mut out: Vec<(u32, u32, u32, u32)> = Vec::new();
        for x in 0..self.width {
            let ys: Vec<u32> = (top..self.height)
                .filter(|&y| self.pixel(x, y) == c)
                .collect();
            let (Some(&top), Some(&bottom)) = (ys.first(), ys.last()) else {
                continue;
            };
            match out.last_mut() {
                Some(b) if b.1 + 1 == x => *b = (b.0, x, b.2.min(top), b.3.max(bottom)),
                _ => out.push((x, x, top, bottom)),
            }
        }
        out
    }
}

#[test]
fn svg_has_the_texts_and_one_rect_per_bar_in_proportion() {
    let chart = winrate_chart();
    let svg = render_svg(&chart).unwrap();
    assert!(
        svg.starts_with("<svg width=\"800\" height=\"500\""),
        "{}",
        &svg[..80]
    );
    assert!(svg.trim_end().ends_with("</svg>"));
    let texts = texts(&svg);
    for t in [
        "AlpacaEval win rate against instruction tuning",
        "win rate (%)",
        "parity",
        "Llama-2-7B",
        "OLMo-7B-0724",
        "Llama-2-13B &lt;base&gt; &amp; co",
        "instruction tuning",
        "response tuning",
        "single-task: poetry",
        "rule-based adapter",
        "0",
        "60",
    ] {
        assert_eq!(
            texts.iter().filter(|x| *x == t).count(),
            1,
            "{t}: {texts:?}"
        );
    }
    assert!(!svg.contains("<base>"));
    // One legend swatch per series, then one rectangle per finite bar; every bar stands on the
    // same baseline with a height in proportion to its value (the axis runs 0..60).
    let values = [
        [50.0, 50.0, 50.0],
        [43.2, 39.6, 45.1],
        [21.0, 17.5, 24.2],
        [24.4, 19.1, f64::NAN],
    ];
    let mut baseline = None;
    let mut px_per_unit = None;
    for (k, vs) in values.iter().enumerate() {
        let rects = rects_of(&svg, PALETTE[k]);
        let finite: Vec<f64> = vs.iter().copied().filter(|v| v.is_finite()).collect();
        assert_eq!(rects.len(), 1 + finite.len(), "series {k}: {rects:?}");
        let (swatch, bars) = (rects[0], &rects[1..]);
        assert!(swatch.1 < bars[0].1 && swatch.3 < 20.0, "{swatch:?}");
        for (bar, v) in bars.iter().zip(&finite) {
            let bottom = bar.1 + bar.3;
            assert!(
                (bottom - *baseline.get_or_insert(bottom)).abs() <= 1.0,
                "{bar:?}"
            );
            let scale = *px_per_unit.get_or_insert(bar.3 / v);
            assert!(
                (bar.3 - v * scale).abs() <= 1.0,
                "series {k} value {v}: {bar:?}"
            );
        }
    }
    // Bars of one group sit left to right in series order, groups left to right.
    let x_of = |k: usize, i: usize| rects_of(&svg, PALETTE[k])[1 + i].0;
    assert!(x_of(0, 0) < x_of(1, 0) && x_of(3, 0) < x_of(0, 1) && x_of(2, 1) < x_of(0, 2));
    // Error bars: a vertical line and two caps for each of the 8 bars with an error.
    let dark = elements(&svg, "polyline")
        .into_iter()
        .filter(|l| l.contains("stroke=\"#222222\""))
        .count();
    assert!(dark >= 8 * 3, "{dark} dark lines");
}

#[test]
fn png_decodes_with_bars_of_the_series_colours_and_heights() {
    let chart = winrate_chart();
    let (w, h) = (900, 520);
    let img = Image::decode(&render_png(&chart, w, h).unwrap());
    assert_eq!((img.width, img.height), (w, h));
    let white = RGBColor(255, 255, 255);
    for (x, y) in [(0, 0), (w - 1, 0), (0, h - 1), (w - 1, h - 1)] {
        assert_eq!(img.pixel(x, y), white, "corner {x},{y}");
    }
    // "response tuning" (orange) is a legend swatch, then three bars on one baseline whose
    // heights are the values on the axis that the dashed parity line (at 50, the row darkest
    // with ink above the x axis) sets out. The caps of the error bars are dark and the bars
    // anti-aliased at most at their edges: two pixels of slack.
    let blobs = img.blobs(PALETTE[1], 0);
    assert_eq!(blobs.len(), 4, "{blobs:?}");
    let baseline = blobs.iter().map(|b| b.3).max().unwrap();
    type Blob = (u32, u32, u32, u32);
    let (bars, swatch): (Vec<Blob>, Vec<Blob>) = blobs.iter().partition(|b| b.3 == baseline);
    assert_eq!(bars.len(), 3, "{blobs:?}");
    assert!(swatch[0].3 < bars[0].2, "swatch above the bars: {blobs:?}");
    let ink = |y: u32| (0..w).filter(|&x| img.pixel(x, y) == frame::INK).count();
    let parity = (0..baseline - 4).max_by_key(|&y| ink(y)).unwrap();
    assert!(
        ink(parity) > w as usize / 3,
        "dashed line at {parity}: {}",
        ink(parity)
    );
    let px_per_unit = (baseline + 1 - parity) as f64 / 50.0;
    for (b, v) in bars.iter().zip([43.2, 39.6, 45.1]) {
        let height = (b.3 + 1 - b.2) as f64;
        assert!(
            (height - v * px_per_unit).abs() <= 2.0,
            "{v}: {b:?}, parity at {parity}"
        );
    }
    // The bars at parity (below the legend) reach the line.
    let bars = img.blobs(PALETTE[0], swatch[0].3 + 1);
    assert_eq!(bars.len(), 3, "{bars:?}");
    for b in &bars {
        assert!(b.2.abs_diff(parity) <= 1, "{b:?}, parity at {parity}");
    }
    // The rule-based adapter (vermillion) has two bars, the third model's value being NaN.
    assert_eq!(img.blobs(PALETTE[3], 0).len(), 3);
}

#[test]
fn scatter_draws_every_finite_point_where_the_data_puts_it() {
    let mut chart = similarity_chart();
    chart.series[0].points[0] = (f64::NAN, 0.1);
    chart.series[1].points[0] = (0.2, f64::INFINITY);
    let svg = render_svg(&chart).unwrap();
    let circles = elements(&svg, "circle");
    assert_eq!(circles.len(), 5 * 40 - 2 + 5, "points plus legend dots");
    let texts = texts(&svg);
    for t in [
        "Instruction similarity vs. response similarity (Figure 5)",
        "instruction similarity to finetuning set",
        "response similarity (task - LIMA)",
        "GSM",
        "recipes",
    ] {
        assert!(texts.iter().any(|x| x == t), "{t}: {texts:?}");
    }
    // The legend dots come first; the points follow series by series, in order. Their centres
    // are an increasing affine map of x and a decreasing one of y: check it on every pair of
    // points far enough apart for the pixel rounding.
    let points: Vec<(f64, f64)> = (chart.series.iter())
        .flat_map(|s| s.points.iter().copied())
        .filter(|p| p.0.is_finite() && p.1.is_finite())
        .collect();
    let centres: Vec<(f64, f64)> = (circles[5..].iter())
        .map(|c| (attr(c, "cx"), attr(c, "cy")))
        .collect();
    assert_eq!(points.len(), centres.len());
    let (first, last) = (0, points.len() - 1);
    let sx = (centres[last].0 - centres[first].0) / (points[last].0 - points[first].0);
    let sy = (centres[last].1 - centres[first].1) / (points[last].1 - points[first].1);
    assert!(sx > 500.0 && sy < -500.0, "{sx} {sy}");
    for (p, c) in points.iter().zip(&centres) {
        let cx = centres[first].0 + (p.0 - points[first].0) * sx;
        let cy = centres[first].1 + (p.1 - points[first].1) * sy;
        assert!(
            (c.0 - cx).abs() <= 2.0 && (c.1 - cy).abs() <= 2.0,
            "{p:?} at {c:?}"
        );
    }
    // In the PNG the points are blended (75% opaque): many pixels are neither white nor grey.
    let img = Image::decode(&render_png(&chart, 800, 500).unwrap());
    let coloured = (img.rgb.chunks(3))
        .filter(|p| p[0].max(p[1]).max(p[2]) - p[0].min(p[1]).min(p[2]) > 60)
        .count();
    assert!(coloured > 198 * 20, "{coloured} coloured pixels");
}

#[test]
fn edge_cases_render_at_every_size() {
    let bar = |v: f64, e: Option<f64>| Bar::new("s", v, e);
    let group = |bars: Vec<Bar>| BarGroup {
        label: "g".into(),
        bars,
    };
    let cases = vec![
        BarChart::default(),
        BarChart {
            groups: vec![group(vec![])],
            ..Default::default()
        },
        BarChart {
            groups: vec![group(vec![
                bar(f64::NAN, Some(1.0)),
                bar(f64::INFINITY, None),
            ])],
            reference_line: Some((f64::NAN, "x".into())),
            ..Default::default()
        },
        BarChart {
            groups: vec![group(vec![bar(3.0, Some(f64::NAN))])],
            ..Default::default()
        },
        BarChart {
            groups: vec![group(vec![bar(-5.0, Some(2.0)), bar(12.0, Some(-1.0))])],
            ..Default::default()
        },
        BarChart {
            groups: vec![group(vec![bar(0.0, None); 4])],
            y_range: Some((f64::NAN, 3.0)),
            ..Default::default()
        },
        BarChart {
            title: "ünïcödé ☃ title \u{1} with <tags>".repeat(10),
            y_label: "y".repeat(500),
            groups: (0..300)
                .map(|i| group(vec![bar(i as f64, Some(1.0))]))
                .collect(),
            y_range: Some((50.0, 20.0)),
            reference_line: Some((1e9, "far away".into())),
        },
    ];
    for chart in &cases {
        for (w, h) in [(800, 500), (300, 200), (40, 30), (1, 1), (0, 0)] {
            let img = Image::decode(&render_png(chart, w, h).unwrap());
            let side = |s: u32| s.clamp(MIN_SIDE, MAX_SIDE);
            assert_eq!((img.width, img.height), (side(w), side(h)));
            let svg = render_svg_sized(chart, w, h).unwrap();
            assert!(svg.trim_end().ends_with("</svg>"));
        }
    }
    // Empty data says so.
    for svg in [
        render_svg(&BarChart::default()).unwrap(),
        render_svg(&ScatterChart::default()).unwrap(),
        render_svg(&cases[2]).unwrap(),
    ] {
        assert!(texts(&svg).contains(&"no data".to_string()));
    }
    assert!(!texts(&render_svg(&cases[3]).unwrap()).contains(&"no data".to_string()));
    // A negative bar hangs from the zero line, on which the positive one stands.
    let svg = render_svg(&cases[4]).unwrap();
    let b = rects_of(&svg, PALETTE[0]);
    assert_eq!(b.len(), 3, "{b:?}");
    let (neg, pos) = (b[1], b[2]);
    assert!((neg.1 - (pos.1 + pos.3)).abs() <= 1.0, "{neg:?} {pos:?}");
    assert!((neg.3 / pos.3 - 5.0 / 12.0).abs() < 0.02, "{neg:?} {pos:?}");
    assert!(texts(&svg).contains(&"-5".to_string()), "{:?}", texts(&svg));
    // Zero values with an invalid range: zero-height bars.
    let svg = render_svg(&cases[5]).unwrap();
    assert!(rects_of(&svg, PALETTE[0])[1..].iter().all(|b| b.3 <= 1.0));
    // A reversed y range is put in order and clips the bars to it: none reaches above the
    // tallest (value 50 and up, clipped) nor below the baseline.
    let svg = render_svg(&cases[6]).unwrap();
    let bars = &rects_of(&svg, PALETTE[0])[1..];
    assert_eq!(bars.len(), 300);
    let (top, bottom) = (bars[299].1, bars[299].1 + bars[299].3);
    assert!(bars.iter().all(|b| b.1 >= top && b.1 + b.3 <= bottom + 1.0));
    assert!(
        bars[0].3 <= 1.0 && bars[100].3 > 100.0,
        "{:?} {:?}",
        bars[0],
        bars[100]
    );

    let scatter_cases = [
        ScatterChart {
            series: vec![ScatterSeries {
                name: String::new(),
                points: vec![(1.0, 1.0)],
            }],
            ..Default::default()
        },
        ScatterChart {
            series: vec![ScatterSeries {
                name: "nan".into(),
                points: vec![(f64::NAN, f64::NAN); 3],
            }],
            ..Default::default()
        },
        ScatterChart {
            series: (0..40)
                .map(|i| ScatterSeries {
                    name: format!("series number {i}"),
                    points: vec![(-1e6 * i as f64, 3.0), (0.0, -2.0)],
                })
                .collect(),
            ..Default::default()
        },
    ];
    for chart in &scatter_cases {
        for (w, h) in [(800, 500), (200, 150), (3, 3)] {
            Image::decode(&render_png(chart, w, h).unwrap());
            render_svg_sized(chart, w, h).unwrap();
        }
    }
    // A legend too long for the canvas summarises its hidden entries.
    let svg = render_svg_sized(&scatter_cases[2], 200, 150).unwrap();
    assert!(texts(&svg)
        .iter()
        .any(|t| t.starts_with('+') && t.ends_with(" more")));
}

#[test]
fn tick_labels_are_short() {
    assert_eq!(frame::tick_label(20.0), "20");
    assert_eq!(frame::tick_label(0.1 + 0.2), "0.3");
    assert_eq!(frame::tick_label(-0.0), "0");
    assert_eq!(frame::tick_label(-0.05), "-0.05");
}

#[test]
fn writes_files_atomically_and_names_the_path() {
    let dir = std::env::temp_dir().join(format!("implicit-plot-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let chart = winrate_chart();
    write_svg(&chart, &dir.join("fig/winrate.svg")).unwrap();
    write_png(&chart, &dir.join("fig/winrate.png"), 400, 250).unwrap();
    let svg = std::fs::read_to_string(dir.join("fig/winrate.svg")).unwrap();
    assert_eq!(svg, render_svg(&chart).unwrap());
    let img = Image::decode(&std::fs::read(dir.join("fig/winrate.png")).unwrap());
    assert_eq!((img.width, img.height), (400, 250));
    let mut names: Vec<_> = std::fs::read_dir(dir.join("fig"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["winrate.png", "winrate.svg"]);
    // A file where a folder should be: the error names the target.
    let bad = dir.join("fig/winrate.svg/inner.png");
    let err = write_png(&chart, &bad, 10, 10).unwrap_err().to_string();
    assert!(err.contains(&bad.display().to_string()), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `cargo test --lib plot::tests::demo -- --ignored` writes the demo charts to /tmp.
#[test]
#[ignore]
fn demo() {
    let bars = winrate_chart();
    let scatter = similarity_chart();
    write_png(&bars, "/tmp/plot-demo.png".as_ref(), 800, 500).unwrap();
    write_svg(&bars, "/tmp/plot-demo.svg".as_ref()).unwrap();
    write_png(&scatter, "/tmp/plot-demo-scatter.png".as_ref(), 800, 500).unwrap();
    write_svg(&scatter, "/tmp/plot-demo-scatter.svg".as_ref()).unwrap();
    write_png(&bars, "/tmp/plot-demo-small.png".as_ref(), 400, 260).unwrap();
    let names = [
        "gsm8k with a very long descriptive name",
        "mbpp",
        "poetry-and-songs-v2",
        "x",
    ];
    let edge = BarChart {
        title: "Edge cases: negative, NaN, long labels".into(),
        y_label: "change in win rate (points)".into(),
        y_range: None,
        groups: (0..8)
            .map(|i| BarGroup {
                label: names[i % 4].to_string(),
                bars: vec![
                    Bar::new("a", (i as f64 - 3.5) * 4.0, Some(1.5)),
                    Bar::new("b", if i == 2 { f64::NAN } else { 3.0 }, None),
                ],
            })
            .collect(),
        reference_line: Some((0.0, "no change".into())),
    };
    write_png(&edge, "/tmp/plot-demo-edge.png".as_ref(), 800, 500).unwrap();
}
