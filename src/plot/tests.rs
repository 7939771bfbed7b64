//! Whole-chart tests: SVG content, PNG pixels at known bars, edge cases, file writing, and an
//! ignored demo that writes charts to /tmp for eyeballing.

use super::png::decode_png;
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

fn bars(scene: &Scene) -> Vec<(f64, f64, f64, f64, Rgb)> {
    (scene.shapes.iter())
        .filter_map(|s| match s {
            Shape::Rect {
                x,
                y,
                w,
                h,
                fill,
                class: Some("bar"),
                ..
            } => Some((*x, *y, *w, *h, *fill)),
            _ => None,
        })
        .collect()
}

#[test]
fn svg_has_escaped_labels_and_one_rect_per_bar() {
    let chart = winrate_chart();
    let svg = render_svg(&chart);
    assert!(svg.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<svg xmlns="));
    assert!(svg.trim_end().ends_with("</svg>"));
    assert!(
        svg.contains("Llama-2-13B &lt;base&gt; &amp; co"),
        "label not escaped"
    );
    assert!(!svg.contains("<base>"));
    assert!(svg.contains(">parity</text>"));
    assert!(svg.contains(">win rate (%)</text>"));
    assert!(svg.contains("rotate(-90"));
    assert!(svg.contains("stroke-dasharray"));
    for name in [
        "instruction tuning",
        "response tuning",
        "rule-based adapter",
    ] {
        assert!(svg.contains(&format!(">{name}</text>")), "legend {name}");
    }
    // 3 models x 4 settings, less the one NaN.
    assert_eq!(svg.matches("<rect class=\"bar\"").count(), 11);
    assert_eq!(bars(&chart.scene(800, 500)).len(), 11);
    // Every element is closed: as many opening tags as closing ones or self-closings.
    let opens = svg.matches('<').count() - svg.matches("</").count() - 1; // minus <?xml
    let closes = svg.matches("/>").count() + svg.matches("</").count();
    assert_eq!(opens, closes);
    // The same series has the same colour in every group.
    let scene = chart.scene(800, 500);
    let resp: Vec<Rgb> = bars(&scene).iter().map(|b| b.4).collect();
    assert_eq!(resp[1], PALETTE[1]);
    assert_eq!(resp[5], PALETTE[1]);
    assert_eq!(resp[0], PALETTE[0]);
}

#[test]
fn png_pixels_show_the_bars() {
    let chart = winrate_chart();
    let (w, h) = (800, 500);
    let png = render_png(&chart, w, h);
    let img = decode_png(&png).unwrap();
    assert_eq!((img.width, img.height), (w, h));
    assert_eq!(img.chunks, ["IHDR", "IDAT", "IEND"]);
    assert!(png.len() < 60_000, "chart PNG is {} bytes", png.len());
    for (x, y, bw, bh, fill) in bars(&chart.scene(w, h)) {
        // A quarter of the way across (clear of the error bar), half way down.
        let (px, py) = ((x + bw / 4.0) as u32, (y + bh / 2.0) as u32);
        assert_eq!(
            img.pixel(px, py),
            [fill.0, fill.1, fill.2],
            "bar at {x},{y}"
        );
    }
    // Corners are background.
    assert_eq!(img.pixel(0, 0), [255, 255, 255]);
    assert_eq!(img.pixel(w - 1, h - 1), [255, 255, 255]);

    // A known layout: one bar filling the whole y range sits in the middle of the plot.
    let one = BarChart {
        y_range: Some((0.0, 10.0)),
        groups: vec![BarGroup {
            label: String::new(),
            bars: vec![Bar::new("", 10.0, None)],
        }],
        ..Default::default()
    };
    let img = decode_png(&render_png(&one, 200, 100)).unwrap();
    let blue = [PALETTE[0].0, PALETTE[0].1, PALETTE[0].2];
    let (x, _, bw, bh, _) = bars(&one.scene(200, 100))[0];
    assert!(bw > 40.0 && bh > 40.0, "{bw} x {bh}");
    assert!(
        (x + bw / 2.0 - 110.0).abs() < 15.0,
        "bar centre {}",
        x + bw / 2.0
    );
    assert_eq!(img.pixel(110, 50), blue);
}

#[test]
fn python_zlib_reads_the_chart_idat() {
    let ok = std::process::Command::new("python3")
        .args(["-c", "import zlib"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("SKIPPED: python3 with zlib not available");
        return;
    }
    let img = decode_png(&render_png(&similarity_chart(), 640, 400)).unwrap();
    let path = std::env::temp_dir().join(format!("implicit-plot-idat-{}", std::process::id()));
    std::fs::write(&path, &img.idat).unwrap();
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import sys, zlib; print(len(zlib.decompress(open(sys.argv[1], 'rb').read())))",
        ])
        .arg(&path)
        .output()
        .unwrap();
    std::fs::remove_file(&path).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        (400 * (640 * 3 + 1)).to_string()
    );
}

#[test]
fn scatter_draws_every_finite_point() {
    let mut chart = similarity_chart();
    chart.series[0].points.push((f64::NAN, 0.1));
    chart.series[1].points.push((0.2, f64::INFINITY));
    let scene = chart.scene(800, 500);
    let circles = scene
        .shapes
        .iter()
        .filter(|s| matches!(s, Shape::Circle { .. }))
        .count();
    assert_eq!(circles, 5 * 40 + 5, "points plus round legend swatches");
    let svg = scene.to_svg();
    assert!(svg.contains(">instruction similarity to finetuning set</text>"));
    assert!(svg.contains(">recipes</text>"));
    let img = decode_png(&scene.to_png()).unwrap();
    // A point's centre carries its series colour (blended at 0.75 over white or other points).
    let (cx, cy, fill) = scene
        .shapes
        .iter()
        .rev()
        .find_map(|s| match s {
            Shape::Circle { cx, cy, fill, .. } => Some((*cx, *cy, *fill)),
            _ => None,
        })
        .unwrap();
    let p = img.pixel(cx as u32, cy as u32);
    let expect = |c: u8| (255.0 + (c as f64 - 255.0) * 0.75).round() as i32;
    assert!(
        (p[0] as i32 - expect(fill.0)).abs() <= 40,
        "{p:?} vs {fill:?}"
    );
}

#[test]
fn edge_cases_render_without_panics() {
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
            groups: vec![group(vec![bar(7.0, None), bar(7.0, None)]); 3],
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
            let img = decode_png(&render_png(chart, w, h)).unwrap();
            assert_eq!((img.width, img.height), (w.max(1), h.max(1)));
            let svg = render_svg_sized(chart, w, h);
            assert!(!svg.contains('\u{1}') && svg.ends_with("</svg>\n"));
        }
    }
    // Empty data says so.
    assert!(render_svg(&BarChart::default()).contains(">no data</text>"));
    assert!(render_svg(&ScatterChart::default()).contains(">no data</text>"));
    // A negative bar hangs from the zero line, which sits between the ticks.
    let neg = &cases[4];
    let scene = neg.scene(800, 500);
    let b = bars(&scene);
    assert_eq!(b.len(), 2);
    assert!(
        (b[0].1 - b[1].1 - b[1].3).abs() < 1.0,
        "negative bar starts at zero: {b:?}"
    );
    assert!(render_svg(neg).contains(">-10</text>"));
    // All-equal values: equal bars with a real height.
    let eq = bars(&cases[5].scene(800, 500));
    assert!(eq.iter().all(|b| b.3 == eq[0].3 && b.3 > 100.0), "{eq:?}");
    // Zero values with an invalid range: zero-height bars, no panic.
    assert!(bars(&cases[6].scene(800, 500)).iter().all(|b| b.3 == 0.0));
    // A reversed y range is put in order and clips the bars to it.
    let scene = cases[7].scene(800, 500);
    assert!(bars(&scene).iter().all(|b| b.1 >= 0.0 && b.3 >= 0.0));
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
            series: (0..12)
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
            decode_png(&render_png(chart, w, h)).unwrap();
            render_svg_sized(chart, w, h);
        }
    }
}

#[test]
fn writes_files_atomically_and_names_the_path() {
    let dir = std::env::temp_dir().join(format!("implicit-plot-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let chart = winrate_chart();
    write_svg(&chart, &dir.join("fig/winrate.svg")).unwrap();
    write_png(&chart, &dir.join("fig/winrate.png"), 400, 250).unwrap();
    let svg = std::fs::read_to_string(dir.join("fig/winrate.svg")).unwrap();
    assert_eq!(svg, render_svg(&chart));
    let img = decode_png(&std::fs::read(dir.join("fig/winrate.png")).unwrap()).unwrap();
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
