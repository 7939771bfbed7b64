//! Tables in the paper's layout, read back from a results folder's artifacts (so that
//! `implicit experiment report DIR` redraws them without recomputing anything): win rates
//! against the instruction-tuned model as mean ± standard deviation over seeds, response
//! ranking, and the epoch selection. Each table is written as Markdown and CSV; the CSV names
//! the artifact behind every number.

use super::config::{ExperimentConfig, Setting};
use super::layout;
use crate::error::{Context, Result};
use crate::eval::read_json;
use crate::eval::winrate::{raw_winrate, read_annotations};
use crate::io::atomic::write_atomic;
use std::fmt::Write as _;
use std::path::Path;

/// A number with the seeds it came from.
#[derive(Clone, Debug, Default)]
pub struct Cell {
    pub values: Vec<f64>,
    pub artifacts: Vec<String>,
}

impl Cell {
    pub fn mean(&self) -> Option<f64> {
        (!self.values.is_empty())
            .then(|| self.values.iter().sum::<f64>() / self.values.len() as f64)
    }

    /// Sample standard deviation over seeds (n − 1 in the denominator); 0 for one seed.
    pub fn std(&self) -> Option<f64> {
        let m = self.mean()?;
        let n = self.values.len();
        if n < 2 {
            return Some(0.0);
        }
        Some((self.values.iter().map(|v| (v - m).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt())
    }

    fn show(&self, digits: usize) -> String {
        match (self.mean(), self.std()) {
            (Some(m), Some(s)) if self.values.len() > 1 => format!("{m:.digits$} ± {s:.digits$}"),
            (Some(m), _) => format!("{m:.digits$}"),
            _ => "—".into(),
        }
    }
}

/// One table: a title, a caption, column headers and rows of cells.
pub struct Table {
    pub file: &'static str,
    pub title: String,
    pub caption: String,
    pub row_header: String,
    pub columns: Vec<String>,
    pub rows: Vec<(String, Vec<Cell>)>,
    pub digits: usize,
    /// Columns that hold counts (shown without decimals).
    pub integer_columns: Vec<usize>,
}

impl Table {
    pub fn markdown(&self) -> String {
        let mut s = format!("### {}\n\n", self.title);
        let _ = writeln!(s, "| {} | {} |", self.row_header, self.columns.join(" | "));
        let _ = writeln!(s, "|---|{}", "---:|".repeat(self.columns.len()));
        for (label, cells) in &self.rows {
            let shown: Vec<String> = cells
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let digits = if self.integer_columns.contains(&i) {
                        0
                    } else {
                        self.digits
                    };
                    c.show(digits)
                })
                .collect();
            let _ = writeln!(s, "| {label} | {} |", shown.join(" | "));
        }
        let _ = writeln!(s, "\n{}\n", self.caption);
        s
    }

    pub fn csv(&self) -> String {
        let mut s = String::from("table,row,column,mean,std,n,values,artifacts\n");
        for (label, cells) in &self.rows {
            for (col, c) in self.columns.iter().zip(cells) {
                let values: Vec<String> = c.values.iter().map(|v| format!("{v}")).collect();
                let _ = writeln!(
                    s,
                    "{},{},{},{},{},{},{},{}",
                    self.file,
                    csv_field(label),
                    csv_field(col),
                    c.mean().map_or(String::new(), |m| format!("{m}")),
                    c.std().map_or(String::new(), |m| format!("{m}")),
                    c.values.len(),
                    csv_field(&values.join(";")),
                    csv_field(&c.artifacts.join(";")),
                );
            }
        }
        s
    }
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// Win rate (AlpacaEval's, in percent) of an annotations file, if it exists.
fn win_rate(root: &Path, rel: &str) -> Result<Option<f64>> {
    let path = root.join(rel);
    if !path.exists() {
        return Ok(None);
    }
    let rows = read_annotations(&path)?;
    let prefs: Vec<Option<f64>> = rows.iter().map(|r| r.preference).collect();
    Ok(Some(raw_winrate(&prefs).win_rate))
}

fn selected_epochs(root: &Path, model: &str, setting: Setting) -> Result<Option<usize>> {
    let path = root.join(layout::selection(model, setting));
    if !path.exists() {
        return Ok(None);
    }
    let v = read_json(&path)?;
    Ok(v["selected_epochs"].as_u64().map(|e| e as usize))
}

/// The win rates over seeds of one setting of one model against instruction tuning.
pub fn vs_instruction(
    cfg: &ExperimentConfig,
    root: &Path,
    model: &str,
    setting: Setting,
) -> Result<Cell> {
    let mut cell = Cell::default();
    let epochs = if setting.trains() {
        match selected_epochs(root, model, setting)? {
            Some(e) => Some(e),
            None => return Ok(cell),
        }
    } else {
        None
    };
    for &seed in &cfg.seeds {
        let rel = match epochs {
            Some(e) => format!(
                "{}/vs_instruction.json",
                layout::run_dir(model, setting, seed, e)
            ),
            None => layout::untrained_vs_instruction(model, setting, seed),
        };
        if let Some(w) = win_rate(root, &rel)? {
            cell.values.push(w);
            cell.artifacts.push(rel);
        }
    }
    Ok(cell)
}

pub fn ranking_cell(
    cfg: &ExperimentConfig,
    root: &Path,
    model: &str,
    setting: Setting,
) -> Result<Cell> {
    let mut cell = Cell::default();
    let rels: Vec<String> = if setting == Setting::Base {
        vec![layout::base_ranking(model)]
    } else {
        let Some(e) = selected_epochs(root, model, setting)? else {
            return Ok(cell);
        };
        cfg.seeds
            .iter()
            .map(|&s| format!("{}/ranking.json", layout::run_dir(model, setting, s, e)))
            .collect()
    };
    for rel in rels {
        let path = root.join(&rel);
        if path.exists() {
            let v = read_json(&path)?;
            let f = v["result"]["fraction"]
                .as_f64()
                .with_context(|| format!("{}: no result.fraction", path.display()))?;
            cell.values.push(100.0 * f);
            cell.artifacts.push(rel);
        }
    }
    Ok(cell)
}

/// All tables of a grid, from what its results folder holds.
pub fn tables(cfg: &ExperimentConfig, root: &Path) -> Result<Vec<Table>> {
    let models: Vec<(&str, &str)> = cfg
        .models
        .iter()
        .map(|m| (m.name.as_str(), m.label.as_str()))
        .collect();
    let labels: Vec<String> = models.iter().map(|(_, l)| l.to_string()).collect();
    let n_test = cfg
        .data
        .test_limit
        .map_or("all".to_string(), |n| n.to_string());
    let judge = match &cfg.judge {
        super::config::JudgeSpec::Local { path, .. } => {
            format!("the local model {}", path.display())
        }
        super::config::JudgeSpec::Endpoint { model, .. } => model.clone(),
    };
    let seeds = cfg
        .seeds
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let vs_caption = format!(
        "AlpacaEval win rate (%) against the instruction-tuned model of the same seed, on {n_test} test instructions of {}; judge: {judge}; mean ± sample standard deviation over seeds {seeds}. 50 is parity.",
        cfg.data.test.display()
    );
    let mut out = Vec::new();
    type CellFn = fn(&ExperimentConfig, &Path, &str, Setting) -> Result<Cell>;
    // Models as rows, settings as columns.
    let by_model = |settings: &[Setting], cell: CellFn| -> Result<Vec<(String, Vec<Cell>)>> {
        let mut rows = Vec::new();
        for (name, label) in &models {
            let cells = settings
                .iter()
                .map(|&s| cell(cfg, root, name, s))
                .collect::<Result<Vec<_>>>()?;
            rows.push((label.to_string(), cells));
        }
        Ok(rows)
    };

    let has = |s: Setting| cfg.settings.contains(&s);
    let mut cols = Vec::new();
    for s in [Setting::Base, Setting::Response] {
        if has(s) {
            cols.push(s);
        }
    }
    if !cols.is_empty() {
        let rows = by_model(&cols, vs_instruction)?;
        out.push(Table {
            file: "response_tuning",
            title: "Response tuning: win rate against instruction tuning".into(),
            caption: vs_caption.clone(),
            row_header: "Model".into(),
            columns: cols
                .iter()
                .map(|s| format!("{} vs IT", s.label()))
                .collect(),
            rows,
            digits: 1,
            integer_columns: Vec::new(),
        });
    }

    // Settings as rows, models as columns.
    let by_setting = |keep: fn(&Setting) -> bool,
                      row: fn(&Setting) -> String|
     -> Result<Vec<(String, Vec<Cell>)>> {
        let mut rows = Vec::new();
        for s in cfg.settings.iter().filter(|s| keep(s)) {
            let cells = models
                .iter()
                .map(|(name, _)| vs_instruction(cfg, root, name, *s))
                .collect::<Result<Vec<_>>>()?;
            rows.push((row(s), cells));
        }
        Ok(rows)
    };
    let single = by_setting(
        |s| matches!(s, Setting::SingleTask(_)),
        |s| format!("{} finetuning", s.label()),
    )?;
    if !single.is_empty() {
        out.push(Table {
            file: "single_task",
            title: "Single-task finetuning: win rate against instruction tuning".into(),
            caption: vs_caption.clone(),
            row_header: "Finetuning".into(),
            columns: labels.clone(),
            rows: single,
            digits: 1,
            integer_columns: Vec::new(),
        });
    }
    let rules = by_setting(|s| matches!(s, Setting::Rules(_)), Setting::label)?;
    if !rules.is_empty() {
        out.push(Table {
            file: "rule_adapter",
            title: "Rule-based adapter and its ablations: win rate against instruction tuning"
                .into(),
            caption: format!(
                "{vs_caption} Rules without EOS answer with at most {} new tokens, the others with {}.",
                cfg.generate.max_new_tokens_no_eos, cfg.generate.max_new_tokens
            ),
            row_header: "Adapter".into(),
            columns: labels.clone(),
            rows: rules,
            digits: 1,
            integer_columns: Vec::new(),
        });
    }

    if !cfg.ranking.settings.is_empty() {
        let rows = by_model(&cfg.ranking.settings, ranking_cell)?;
        out.push(Table {
            file: "response_ranking",
            title: "Response ranking: how often an instruction's own response is the more likely".into(),
            caption: format!(
                "Percent of (true, random) response pairs where the true response has the higher likelihood given the instruction ({} negatives each, {} examples of {}, sequences cut at {} tokens); tuned models: mean ± standard deviation over seeds.",
                cfg.ranking.negatives,
                cfg.data.ranking_limit.map_or("all".into(), |n| n.to_string()),
                cfg.data.ranking.display(),
                cfg.ranking.max_len
            ),
            row_header: "Model".into(),
            columns: cfg.ranking.settings.iter().map(|s| s.label()).collect(),
            rows,
            digits: 1,
            integer_columns: Vec::new(),
        });
    }

    let trained = cfg.trained_settings();
    if !trained.is_empty() {
        let mut rows = Vec::new();
        for (name, label) in &models {
            for &s in &trained {
                let mut cells = Vec::new();
                for &e in &cfg.epochs {
                    let rel = format!(
                        "{}/val_annotations.json",
                        layout::run_dir(name, s, cfg.selection_seed, e)
                    );
                    let mut c = Cell::default();
                    if let Some(w) = win_rate(root, &rel)? {
                        c.values.push(w);
                        c.artifacts.push(rel);
                    }
                    cells.push(c);
                }
                let mut chosen = Cell::default();
                if let Some(e) = selected_epochs(root, name, s)? {
                    chosen.values.push(e as f64);
                    chosen.artifacts.push(layout::selection(name, s));
                }
                cells.push(chosen);
                rows.push((format!("{label}: {}", s.label()), cells));
            }
        }
        let mut columns: Vec<String> = cfg
            .epochs
            .iter()
            .map(|e| format!("{e} epoch{}", if *e == 1 { "" } else { "s" }))
            .collect();
        columns.push("selected".into());
        out.push(Table {
            file: "epoch_selection",
            title: "Epoch selection: validation win rate against the reference answers".into(),
            caption: format!(
                "Win rate (%) on {} validation instructions of {} against {} (seed {}); the highest is selected, the fewest epochs on ties.",
                cfg.data.val_limit.map_or("all".into(), |n| n.to_string()),
                cfg.data.val.display(),
                cfg.data.val_reference.display(),
                cfg.selection_seed
            ),
            row_header: "Model: setting".into(),
            integer_columns: vec![columns.len() - 1],
            columns,
            rows,
            digits: 1,
        });
    }
    Ok(out)
}

/// Writes tables/ (Markdown, CSV, one all-in-one tables.md) and figures/ for a results folder.
pub fn write_report(cfg: &ExperimentConfig, root: &Path) -> Result<Vec<String>> {
    let tables = tables(cfg, root)?;
    let mut all = format!(
        "# {}: results\n\nEvery number links back to its artifacts in tables/*.csv; manifest.json holds the commit, the config and the input hashes.\n\n",
        cfg.name
    );
    let mut written = Vec::new();
    for t in &tables {
        let md = t.markdown();
        all.push_str(&md);
        for (ext, text) in [("md", md.clone()), ("csv", t.csv())] {
            let rel = format!("tables/{}.{ext}", t.file);
            write_atomic(&root.join(&rel), text.as_bytes())?;
            written.push(rel);
        }
    }
    let figures = super::figures::write_figures(cfg, root)?;
    if !figures.is_empty() {
        all.push_str("### Figures\n\n");
        for f in figures.iter().filter(|f| f.ends_with(".svg")) {
            let _ = writeln!(all, "![{f}](../{f})\n");
        }
    }
    write_atomic(&root.join("tables/tables.md"), all.as_bytes())?;
    written.push("tables/tables.md".into());
    written.extend(figures);
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_show_mean_and_sample_std() {
        let c = Cell {
            values: vec![40.0, 50.0, 60.0],
            artifacts: vec![],
        };
        assert_eq!(c.mean(), Some(50.0));
        assert_eq!(c.std(), Some(10.0));
        assert_eq!(c.show(1), "50.0 ± 10.0");
        let one = Cell {
            values: vec![12.345],
            artifacts: vec![],
        };
        assert_eq!(one.show(1), "12.3");
        assert_eq!(Cell::default().show(1), "—");
    }

    #[test]
    fn csv_quotes_what_needs_it() {
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("plain"), "plain");
    }
}
