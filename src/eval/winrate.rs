//! Win rates from AlpacaEval annotations (tatsu-lab/alpaca_eval, `metrics/winrate.py`,
//! `metrics/helpers.py` and `metrics/glm_winrate.py`).
//!
//! Raw win rate (`AbsoluteScoringRule.describe_head2head`): preferences of 0 (the legacy draw)
//! become 1.5, values outside [1, 2] and None are dropped ([`read_annotations`] refuses a file
//! with such values instead of letting them go unnoticed), and with x = preference - 1:
//! win_rate = mean(x) * 100, standard_error = sem(x) * 100 (sample standard deviation over
//! sqrt(n)), n_wins = #(x > 0.5), n_wins_base = #(x < 0.5), n_draws = #(preference in {0, 1.5}).
//! The discrete win rate rounds each preference first (1.5 stays a draw worth 0.5).
//!
//! Length-controlled win rate (`get_length_controlled_winrate`, GLM `length_controlled_v1`):
//! a logistic model of x on `np.tanh(std_delta_len) + instruction_difficulty +
//! not_gamed_baseline.astype(float) - 1`, where std_delta_len = (len(output_1) - len(output_2))
//! / std(...) over all rows (characters, pandas' ddof=1), not_gamed_baseline is 1 on the
//! model's rows (a per-model intercept) and instruction_difficulty a per-instruction value;
//! fitted by [`super::glm::fit_cv`] on the rows with a preference; the LC win rate is the mean
//! over all rows of the predicted probability with the length term at 0, times 100.
//!
//! Two inputs of the full AlpacaEval fit are not in the stored repository (they are downloaded
//! from the tatsu-lab/alpaca_eval dataset on Hugging Face): `instruction_difficulty.csv` (give
//! it, or any instruction -> difficulty table, with `--difficulty`) and `df_gamed.csv`, the
//! annotations of two "gamed" baselines mixed in with weight 0.2/2 to regularise towards the
//! baseline (`regularize_to_baseline_lambda`). Without them the fit has fewer terms, and the LC
//! value differs from the leaderboard's: on the stored alpaca-7b annotations we get 19.61 where
//! the leaderboard has 5.875. The length coefficient explains most of it: fitted on alpaca-7b's
//! rows alone it is -4.26 (alpaca-7b's outputs are far shorter than the reference's, and it
//! loses almost everywhere), while the pooled fit with the gamed baselines, which teach that
//! length alone moves the judge less, gives -2.21 (the stored weights
//! `metrics/weights/weighted_alpaca_eval_gpt4_turbo/length_controlled_v1/
//! baseline_gpt4_1106_preview.csv`); with that coefficient held fixed, an intercept-only fit gives
//! 9.93, and the per-instruction difficulty term accounts for the rest.

use super::glm::{default_cs, fit_cv, sigmoid, Data};
use super::read_json;
use crate::bail;
use crate::data::csv::{CsvRecord, CsvTable};
use crate::error::{Context, Result};
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::Value;
use std::collections::HashMap;
use std::path::Path;

/// What the win rates need from one annotation.
#[derive(Clone, Debug)]
pub struct Row {
    pub instruction: String,
    pub output_1: String,
    pub output_2: String,
    pub generator_1: Option<String>,
    pub generator_2: Option<String>,
    /// None when the judge gave no usable answer.
    pub preference: Option<f64>,
}

/// Reads an annotations.json list; errors name the file, and the line where the entry at
/// fault starts. A preference must be null (no usable answer), 0 (the legacy draw) or in
/// [1, 2]: AlpacaEval drops any other value without a word, which would quietly shrink
/// `n_total`; here it is an error.
pub fn read_annotations(path: &Path) -> Result<Vec<Row>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    let invalid =
        |e: serde_json::Error| crate::Error(format!("{}: invalid JSON: {e}", path.display()));
    let document: &RawValue = serde_json::from_str(&text).map_err(invalid)?;
    if !document.get().starts_with('[') {
        bail!("{}: expected a JSON list of annotations", path.display());
    }
    let entries: Vec<&RawValue> = serde_json::from_str(document.get()).map_err(invalid)?;
    // Lines counted as the entries go, each from where the previous one started.
    let (mut offset, mut line) = (0, 1);
    entries
        .iter()
        .enumerate()
        .map(|(i, raw)| {
            // `raw` borrows from `text`: its address gives its place in the file.
            let start = (raw.get().as_ptr() as usize).saturating_sub(text.as_ptr() as usize);
            line += text
                .get(offset..start)
                .map_or(0, |t| t.matches('\n').count());
            offset = start;
            let at = format!("{} line {line} (entry {i})", path.display());
            let a: Value =
                serde_json::from_str(raw.get()).with_context(|| format!("{at}: invalid JSON"))?;
            let string = |name: &str| -> Result<Option<String>> {
                match a.get(name) {
                    None | Some(Value::Null) => Ok(None),
                    Some(Value::String(s)) => Ok(Some(s.clone())),
                    Some(v) => bail!("{at}: {name} is not a string ({v})"),
                }
            };
            let need = |name: &str| -> Result<String> {
                string(name)?.ok_or_else(|| crate::Error(format!("{at}: missing field {name}")))
            };
            let preference = match a.get("preference") {
                None => bail!("{at}: missing field preference"),
                Some(Value::Null) => None,
                Some(Value::Number(n)) => match n.as_f64() {
                    Some(p) if valid_preference(Some(p)).is_some() => Some(p),
                    _ => bail!(
                        "{at}: preference {n} is outside [1, 2] (0, the legacy draw, and null \
                         are the only other values)"
                    ),
                },
                Some(v) => bail!("{at}: preference is not a number ({v})"),
            };
            Ok(Row {
                instruction: need("instruction")?,
                output_1: need("output_1")?,
                output_2: need("output_2")?,
                generator_1: string("generator_1")?,
                generator_2: string("generator_2")?,
                preference,
            })
        })
        .collect()
}

/// `describe_head2head` of the absolute scoring rule.
#[derive(Clone, Debug, Serialize)]
pub struct WinRate {
    pub win_rate: f64,
    pub standard_error: f64,
    pub n_wins: usize,
    pub n_wins_base: usize,
    pub n_draws: usize,
    pub n_total: usize,
    pub discrete_win_rate: f64,
}

/// Preference as AlpacaEval reads it: 0 is the legacy draw (1.5); only [1, 2] counts.
fn valid_preference(p: Option<f64>) -> Option<f64> {
    let p = p.filter(|p| p.is_finite())?;
    let p = if p == 0.0 { 1.5 } else { p };
    (1.0..=2.0).contains(&p).then_some(p)
}

pub fn raw_winrate(preferences: &[Option<f64>]) -> WinRate {
    let n_draws = preferences
        .iter()
        .filter(|p| matches!(p, Some(v) if *v == 1.5 || *v == 0.0))
        .count();
    let x: Vec<f64> = preferences
        .iter()
        .filter_map(|&p| valid_preference(p))
        .map(|p| p - 1.0)
        .collect();
    // ZeroOneScoringRule: 1.5 -> draw, the rest rounded to 1 or 2.
    let discrete: Vec<f64> = x
        .iter()
        .map(|&v| if v == 0.5 { 0.5 } else { v.round() })
        .collect();
    WinRate {
        win_rate: mean(&x) * 100.0,
        standard_error: sem(&x) * 100.0,
        n_wins: x.iter().filter(|&&v| v > 0.5).count(),
        n_wins_base: x.iter().filter(|&&v| v < 0.5).count(),
        n_draws,
        n_total: x.len(),
        discrete_win_rate: mean(&discrete) * 100.0,
    }
}

fn mean(x: &[f64]) -> f64 {
    x.iter().sum::<f64>() / x.len() as f64
}

/// Sample standard deviation (ddof 1), as pandas' `std`.
fn std_dev(x: &[f64]) -> f64 {
    let m = mean(x);
    (x.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / (x.len() as f64 - 1.0)).sqrt()
}

/// pandas' `sem`: std (ddof 1) / sqrt(n).
fn sem(x: &[f64]) -> f64 {
    std_dev(x) / (x.len() as f64).sqrt()
}

/// Instruction difficulty, keyed by instruction text or by row position (as alpaca_eval's
/// `instruction_difficulty[index]`, the position in its 805 instructions).
#[derive(Clone, Debug)]
pub enum Difficulty {
    ByInstruction(HashMap<String, f64>),
    ByIndex(HashMap<usize, f64>),
}

impl Difficulty {
    /// Reads a JSON object {instruction: difficulty}, a JSON list (of numbers by position, or of
    /// objects with instruction or index and instruction_difficulty or difficulty), or a CSV
    /// with an instruction column (else the first column is the position) and an
    /// instruction_difficulty (or difficulty) column.
    pub fn read(path: &Path) -> Result<Difficulty> {
        let is_csv = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("csv"));
        if is_csv {
            return Self::read_csv(path);
        }
        let bad = |what: &str| crate::Error(format!("{}: {what}", path.display()));
        match read_json(path)? {
            Value::Object(map) => {
                let mut out = HashMap::new();
                for (k, v) in map {
                    let d = v
                        .as_f64()
                        .ok_or_else(|| bad(&format!("difficulty of {k:?} is not a number")))?;
                    out.insert(k, d);
                }
                Ok(Difficulty::ByInstruction(out))
            }
            Value::Array(items) => {
                let (mut by_text, mut by_index) = (HashMap::new(), HashMap::new());
                for (i, item) in items.iter().enumerate() {
                    if let Some(d) = item.as_f64() {
                        by_index.insert(i, d);
                        continue;
                    }
                    let d = ["instruction_difficulty", "difficulty"]
                        .iter()
                        .find_map(|k| item.get(*k).and_then(Value::as_f64))
                        .ok_or_else(|| bad(&format!("entry {i} has no numeric difficulty")))?;
                    if let Some(text) = item.get("instruction").and_then(Value::as_str) {
                        by_text.insert(text.to_string(), d);
                    } else if let Some(idx) = item.get("index").and_then(Value::as_u64) {
                        by_index.insert(idx as usize, d);
                    } else {
                        return Err(bad(&format!("entry {i} has neither instruction nor index")));
                    }
                }
                match (by_text.is_empty(), by_index.is_empty()) {
                    (false, true) => Ok(Difficulty::ByInstruction(by_text)),
                    (true, _) => Ok(Difficulty::ByIndex(by_index)),
                    (false, false) => Err(bad("mixes entries by instruction and by position")),
                }
            }
            _ => Err(bad("expected a JSON object or list of difficulties")),
        }
    }

    fn read_csv(path: &Path) -> Result<Difficulty> {
        let table = CsvTable::read(path)?;
        let value_col = ["instruction_difficulty", "difficulty"]
            .iter()
            .find_map(|c| table.header.iter().position(|h| h == c));
        let Some(value_col) = value_col else {
            bail!(
                "{} line 1: no instruction_difficulty (or difficulty) column",
                path.display()
            );
        };
        let key_col = table.header.iter().position(|h| h == "instruction");
        let number = |r: &CsvRecord| -> Result<f64> {
            let f = &r.fields[value_col];
            f.trim().parse::<f64>().map_err(|_| {
                crate::Error(format!(
                    "{} line {}: {f:?} is not a number",
                    path.display(),
                    r.line
                ))
            })
        };
        if let Some(k) = key_col {
            let mut out = HashMap::new();
            for r in &table.rows {
                out.insert(r.fields[k].clone(), number(r)?);
            }
            return Ok(Difficulty::ByInstruction(out));
        }
        let mut out = HashMap::new();
        for (pos, r) in table.rows.iter().enumerate() {
            let idx = if value_col == 0 {
                pos
            } else {
                let f = r.fields[0].trim();
                f.parse::<usize>().map_err(|_| {
                    crate::Error(format!(
                        "{} line {}: index {f:?} is not an integer",
                        path.display(),
                        r.line
                    ))
                })?
            };
            out.insert(idx, number(r)?);
        }
        Ok(Difficulty::ByIndex(out))
    }

    fn get(&self, index: usize, instruction: &str) -> Option<f64> {
        match self {
            Difficulty::ByInstruction(m) => m.get(instruction).copied(),
            Difficulty::ByIndex(m) => m.get(&index).copied(),
        }
    }
}

/// One term of the GLM: what a reader calls it, the patsy column AlpacaEval's formula names,
/// and the fitted coefficient.
#[derive(Clone, Debug, Serialize)]
pub struct GlmTerm {
    pub name: &'static str,
    pub patsy: &'static str,
    pub coefficient: f64,
}

/// The GLM's terms in column order: (readable name, patsy column).
const LENGTH_TERM: (&str, &str) = (
    "length (tanh of standardised length difference)",
    "np.tanh(std_delta_len)",
);
const DIFFICULTY_TERM: (&str, &str) = ("instruction difficulty", "instruction_difficulty");
const MODEL_TERM: (&str, &str) = (
    "model intercept (its log-odds of winning at equal length)",
    "not_gamed_baseline.astype(float)",
);

/// The length-controlled win rate and the fit behind it.
#[derive(Clone, Debug, Serialize)]
pub struct LengthControlled {
    pub length_controlled_winrate: f64,
    /// Coefficient names (patsy's column names) and values; `terms` has the same with
    /// readable names.
    pub coefficients: Vec<(String, f64)>,
    pub terms: Vec<GlmTerm>,
    pub best_c: f64,
    pub cv_cs: Vec<f64>,
    pub cv_scores: Vec<f64>,
    pub n_train: usize,
    pub with_difficulty: bool,
}

impl LengthControlled {
    /// Why this LC win rate is not AlpacaEval's published one, as a short clause to print next
    /// to it; None for the baseline against itself (50 by construction in both).
    pub fn comparability_note(&self) -> Option<&'static str> {
        if self.terms.is_empty() {
            None
        } else if self.with_difficulty {
            Some("without AlpacaEval's gamed-baseline rows, so it can differ from its published LC figures")
        } else {
            Some("no --difficulty: not comparable to AlpacaEval's published LC figures")
        }
    }
}

/// Fits AlpacaEval's GLM (without its gamed-baseline rows) and predicts at zero length
/// difference.
pub fn length_controlled(
    rows: &[Row],
    difficulty: Option<&Difficulty>,
) -> Result<LengthControlled> {
    if rows.len() < 2 {
        bail!(
            "length-controlled win rate: needs at least 2 annotations, got {}",
            rows.len()
        );
    }
    for key in ["generator_1", "generator_2"] {
        let names: std::collections::BTreeSet<Option<&str>> = rows
            .iter()
            .map(|r| {
                if key == "generator_1" {
                    &r.generator_1
                } else {
                    &r.generator_2
                }
                .as_deref()
            })
            .collect();
        if names.len() > 1 {
            bail!("length-controlled win rate: the annotations mix several {key}: {names:?}");
        }
    }
    if rows[0].generator_1.is_some() && rows[0].generator_1 == rows[0].generator_2 {
        // The baseline against itself: 50 by construction, as alpaca_eval returns.
        return Ok(LengthControlled {
            length_controlled_winrate: 50.0,
            coefficients: Vec::new(),
            terms: Vec::new(),
            best_c: f64::NAN,
            cv_cs: Vec::new(),
            cv_scores: Vec::new(),
            n_train: 0,
            with_difficulty: difficulty.is_some(),
        });
    }
    let delta: Vec<f64> = rows
        .iter()
        .map(|r| r.output_1.chars().count() as f64 - r.output_2.chars().count() as f64)
        .collect();
    let sd = std_dev(&delta);
    if !(sd > 0.0 && sd.is_finite()) {
        bail!("length-controlled win rate: every length difference is the same (std 0)");
    }
    let mut names = vec![LENGTH_TERM];
    if difficulty.is_some() {
        names.push(DIFFICULTY_TERM);
    }
    names.push(MODEL_TERM);
    let mut test_x = Vec::with_capacity(rows.len());
    let (mut x, mut p) = (Vec::new(), Vec::new());
    for (i, (r, d)) in rows.iter().zip(&delta).enumerate() {
        let mut features = vec![(d / sd).tanh()];
        if let Some(diff) = difficulty {
            let Some(v) = diff.get(i, &r.instruction) else {
                let shown: String = r.instruction.chars().take(200).collect();
                bail!("--difficulty has no value for annotation {i} (instruction {shown:?})");
            };
            features.push(v);
        }
        features.push(1.0);
        let mut at_zero = features.clone();
        at_zero[0] = 0.0;
        test_x.push(at_zero);
        if let Some(pref) = valid_preference(r.preference) {
            x.push(features);
            p.push(pref - 1.0);
        }
    }
    let data = Data::new(x, p, None)?;
    let cv = fit_cv(&data, &default_cs(), 5)?;
    let lc = test_x
        .iter()
        .map(|f| sigmoid(f.iter().zip(&cv.beta).map(|(a, b)| a * b).sum()))
        .sum::<f64>()
        / test_x.len() as f64;
    Ok(LengthControlled {
        length_controlled_winrate: lc * 100.0,
        coefficients: names
            .iter()
            .zip(&cv.beta)
            .map(|(&(_, patsy), &b)| (patsy.to_string(), b))
            .collect(),
        terms: names
            .iter()
            .zip(&cv.beta)
            .map(|(&(name, patsy), &coefficient)| GlmTerm {
                name,
                patsy,
                coefficient,
            })
            .collect(),
        best_c: cv.best_c,
        cv_cs: cv.cs,
        cv_scores: cv.scores,
        n_train: data.rows(),
        with_difficulty: difficulty.is_some(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annotation_errors_name_the_line_the_entry_starts_on() {
        let dir = std::env::temp_dir().join(format!("implicit-annotations-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.json");
        let entry = |p: &str| {
            format!(
                r#"{{"instruction": "i", "output_1": "a", "output_2": "b", "preference": {p}}}"#
            )
        };
        let read = |text: String| {
            std::fs::write(&path, text).unwrap();
            read_annotations(&path).map_err(|e| e.to_string())
        };
        let name = path.display().to_string();
        // All on one line, after leading blank lines.
        let one_line = format!("\n\n [{}, {}]", entry("1.5"), entry("2.5"));
        assert_eq!(
            read(one_line).unwrap_err(),
            format!(
                "{name} line 3 (entry 1): preference 2.5 is outside [1, 2] (0, the legacy draw, \
                 and null are the only other values)"
            )
        );
        let spread = format!(
            "[\n{},\n\n{},\n{}\n]",
            entry("0"),
            entry("null"),
            entry("1e-3")
        );
        assert!(read(spread)
            .unwrap_err()
            .starts_with(&format!("{name} line 5 (entry 2): preference 0.001")));
        let good = format!("[{},\n{},\n{}]", entry("0"), entry("null"), entry("2"));
        let prefs: Vec<_> = read(good).unwrap().iter().map(|r| r.preference).collect();
        assert_eq!(prefs, [Some(0.0), None, Some(2.0)]);
        assert_eq!(
            read("{}".into()).unwrap_err(),
            format!("{name}: expected a JSON list of annotations")
        );
        assert!(read("[1,".into())
            .unwrap_err()
            .starts_with(&format!("{name}: invalid JSON")));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn raw_winrate_counts() {
        let prefs = [
            Some(2.0),
            Some(1.0),
            Some(1.5),
            Some(0.0),
            None,
            Some(1.75),
            Some(7.0),
        ];
        let w = raw_winrate(&prefs);
        // x = [1, 0, 0.5, 0.5, 0.75]
        assert_eq!(
            (w.n_total, w.n_wins, w.n_wins_base, w.n_draws),
            (5, 2, 1, 2)
        );
        assert!((w.win_rate - 55.0).abs() < 1e-12);
        let sd = ((0.45f64.powi(2) + 0.55f64.powi(2) + 2.0 * 0.05f64.powi(2) + 0.2f64.powi(2))
            / 4.0)
            .sqrt();
        assert!((w.standard_error - sd / 5f64.sqrt() * 100.0).abs() < 1e-12);
        // discrete: [1, 0, 0.5, 0.5, 1]
        assert!((w.discrete_win_rate - 60.0).abs() < 1e-12);
    }
}
