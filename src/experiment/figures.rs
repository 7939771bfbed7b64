//! Figures of a results folder, as PNG and SVG: win rates against instruction tuning (one bar
//! per setting and model, ± the standard deviation over seeds, a dashed line at parity), the
//! response-ranking fractions, and the paper's Figure 5 scatter per model when similarities
//! were computed.

use super::config::{ExperimentConfig, Setting};
use super::layout;
use super::report::{ranking_cell, vs_instruction};
use crate::error::Result;
use crate::eval::read_json;
use crate::plot::{
    write_png, write_svg, Bar, BarChart, BarGroup, Chart, ScatterChart, ScatterSeries,
};
use std::path::Path;

const PNG_SIZE: (u32, u32) = (1000, 560);

fn write_both<C: Chart>(chart: &C, root: &Path, name: &str, out: &mut Vec<String>) -> Result<()> {
    let png = format!("figures/{name}.png");
    let svg = format!("figures/{name}.svg");
    write_png(chart, &root.join(&png), PNG_SIZE.0, PNG_SIZE.1)?;
    write_svg(chart, &root.join(&svg))?;
    out.push(png);
    out.push(svg);
    Ok(())
}

fn bar(series: String, cell: &super::report::Cell) -> Option<Bar> {
    Some(Bar::new(
        series,
        cell.mean()?,
        cell.std().filter(|s| *s > 0.0),
    ))
}

/// Writes figures/*.png and *.svg; returns their paths relative to `root`.
pub fn write_figures(cfg: &ExperimentConfig, root: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let compared: Vec<Setting> = cfg
        .settings
        .iter()
        .copied()
        .filter(|s| *s != Setting::Instruction)
        .collect();
    let mut groups = Vec::new();
    for m in &cfg.models {
        let mut bars = Vec::new();
        for &s in &compared {
            if let Some(b) = bar(s.label(), &vs_instruction(cfg, root, &m.name, s)?) {
                bars.push(b);
            }
        }
        groups.push(BarGroup {
            label: m.label.clone(),
            bars,
        });
    }
    if groups.iter().any(|g| !g.bars.is_empty()) {
        let seeds = cfg.seeds.len();
        let chart = BarChart {
            title: format!(
                "Win rate against instruction tuning ({seeds} seed{})",
                if seeds == 1 { "" } else { "s" }
            ),
            y_label: "AlpacaEval win rate (%)".into(),
            y_range: Some((0.0, 100.0)),
            groups,
            reference_line: Some((50.0, "parity".into())),
        };
        write_both(&chart, root, "winrates", &mut out)?;
    }

    let mut groups = Vec::new();
    for m in &cfg.models {
        let mut bars = Vec::new();
        for &s in &cfg.ranking.settings {
            if let Some(b) = bar(s.label(), &ranking_cell(cfg, root, &m.name, s)?) {
                bars.push(b);
            }
        }
        groups.push(BarGroup {
            label: m.label.clone(),
            bars,
        });
    }
    if groups.iter().any(|g| !g.bars.is_empty()) {
        let chart = BarChart {
            title: "Response ranking: true response more likely than a random one".into(),
            y_label: "pairs won (%)".into(),
            y_range: Some((0.0, 100.0)),
            groups,
            reference_line: Some((50.0, "chance".into())),
        };
        write_both(&chart, root, "ranking", &mut out)?;
    }

    // Figure 5: one scatter per model, a series per single-task setting.
    for m in &cfg.models {
        let mut series = Vec::new();
        for &s in &cfg.settings {
            let Setting::SingleTask(_) = s else {
                continue;
            };
            let sel = root.join(layout::selection(&m.name, s));
            if !sel.exists() {
                continue;
            }
            let Some(e) = read_json(&sel)?["selected_epochs"].as_u64() else {
                continue;
            };
            let path = root
                .join(layout::run_dir(&m.name, s, cfg.seeds[0], e as usize))
                .join("similarity.json");
            if !path.exists() {
                continue;
            }
            let v = read_json(&path)?;
            let points = v["points"]
                .as_array()
                .map(|ps| {
                    ps.iter()
                        .filter_map(|p| Some((p["x"].as_f64()?, p["y"].as_f64()?)))
                        .collect()
                })
                .unwrap_or_default();
            series.push(ScatterSeries {
                name: s.label(),
                points,
            });
        }
        if !series.is_empty() {
            let chart = ScatterChart {
                title: format!(
                    "{}: finetuning-task vs general instruction similarity",
                    m.label
                ),
                x_label: "instruction similarity to the finetuning instructions".into(),
                y_label: "response similarity: task minus LIMA".into(),
                series,
            };
            write_both(&chart, root, &format!("similarity-{}", m.name), &mut out)?;
        }
    }
    Ok(out)
}
