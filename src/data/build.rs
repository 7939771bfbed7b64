//! Builds the paper's training sets as Tulu `messages` JSONL, each exactly as the paper's own
//! script does (john-hewitt/implicit-ins @ fe1c2d8):
//!
//! | task | paper's script | user -> assistant |
//! | --- | --- | --- |
//! | lima | new_lima/lima_data.jsonl (used as is) | LIMA instruction -> response |
//! | lima-response | data/processed/lima/remove_instructions.py | "" -> response |
//! | gsm | data/processed/gsm_train/make_gsm.py | question -> answer (first 1000 train rows) |
//! | mbpp | data/processed/mbpp/make_mbpp.py | text -> code (HF train split: task_id 601..=974) |
//! | poetry | data/processed/poetry/make_poetry.py | "Write a poem called {title}" -> poem |
//! | recipes | data/processed/kaggle_food_recipes/make_kfr.py | "Recipe for {title}" -> ingredients, steps |
//! | chess | data/processed/pgn/make_pgn.py | WhiteElo/BlackElo tag lines -> movetext |
//!
//! Dataset names and ids (`gsm8k_0`, `kfr_0`, ...) are the paper's, even where our source file
//! stands in for the one it downloaded (poetry, recipes, chess).

use super::csv::CsvTable;
use super::jsonl::{jsonl_values, str_field, write_jsonl_atomic, Message, Record};
use super::pgn::parse_pgn;
use crate::bail;
use crate::error::{Context, Result};
use std::fmt;
use std::path::{Path, PathBuf};

/// The paper's single-task sets stop after this many source rows (`if i == 1000: break`).
pub const PAPER_ROW_LIMIT: usize = 1000;

/// MBPP's train split, the one `load_dataset('google-research-datasets/mbpp')['train']` gives.
pub const MBPP_TRAIN_TASK_IDS: std::ops::RangeInclusive<u64> = 601..=974;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Task {
    Lima,
    LimaResponse,
    Gsm,
    Mbpp,
    Poetry,
    Recipes,
    Chess,
}

impl Task {
    pub const ALL: [Task; 7] = [
        Task::Lima,
        Task::LimaResponse,
        Task::Gsm,
        Task::Mbpp,
        Task::Poetry,
        Task::Recipes,
        Task::Chess,
    ];

    /// The CLI name: lima, lima-response, gsm, ...
    pub fn name(self) -> &'static str {
        match self {
            Task::Lima => "lima",
            Task::LimaResponse => "lima-response",
            Task::Gsm => "gsm",
            Task::Mbpp => "mbpp",
            Task::Poetry => "poetry",
            Task::Recipes => "recipes",
            Task::Chess => "chess",
        }
    }

    /// Where the source sits under the data folder (../shared/data or $IMPLICIT_DATA).
    pub fn default_source(self) -> &'static str {
        match self {
            Task::Lima | Task::LimaResponse => "lima/lima_data.jsonl",
            Task::Gsm => "gsm8k/train.jsonl",
            Task::Mbpp => "mbpp/mbpp.jsonl",
            Task::Poetry => "poetry/public_domain_poems.csv",
            Task::Recipes => "recipes/recipes_en.jsonl",
            Task::Chess => "chess/lichess_games.pgn",
        }
    }

    /// `source` itself when it is a file; for a folder, the task's file under it (the data
    /// folder, or the task's own subfolder).
    pub fn resolve_source(self, source: &Path) -> PathBuf {
        if !source.is_dir() {
            return source.to_path_buf();
        }
        let under_root = source.join(self.default_source());
        if under_root.exists() {
            return under_root;
        }
        let file_name = Path::new(self.default_source())
            .file_name()
            .unwrap_or_default();
        source.join(file_name)
    }
}

impl fmt::Display for Task {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A source row left out, with its line (1-based) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skip {
    pub line: usize,
    pub reason: String,
}

#[derive(Debug, Clone)]
pub struct BuildReport {
    pub task: Task,
    pub source: PathBuf,
    pub out: PathBuf,
    pub rows_read: usize,
    pub rows_written: usize,
    pub skipped: Vec<Skip>,
}

impl fmt::Display for BuildReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: read {} rows of {}, wrote {} to {}, skipped {}",
            self.task,
            self.rows_read,
            self.source.display(),
            self.rows_written,
            self.out.display(),
            self.skipped.len()
        )?;
        if !self.skipped.is_empty() {
            write!(f, " ({})", skip_reasons(&self.skipped))?;
        }
        Ok(())
    }
}

/// The reasons rows were skipped, counted, in the order first seen: "3 empty poem_title; ...".
fn skip_reasons(skipped: &[Skip]) -> String {
    let mut reasons: Vec<(&str, usize)> = Vec::new();
    for s in skipped {
        match reasons.iter_mut().find(|(r, _)| *r == s.reason) {
            Some((_, n)) => *n += 1,
            None => reasons.push((&s.reason, 1)),
        }
    }
    let parts: Vec<String> = reasons.iter().map(|(r, n)| format!("{n} {r}")).collect();
    parts.join("; ")
}

/// What a builder produced, before it is written.
struct Built {
    rows_read: usize,
    records: Vec<Record>,
    skipped: Vec<Skip>,
}

/// Builds `task` from `source` (a file, or a folder holding it) into `out` as `messages` JSONL,
/// written atomically. Malformed source input is an error naming the file and line; a source
/// that yields no rows is an error naming it, and nothing is written.
pub fn build_task(task: Task, source: &Path, out: &Path) -> Result<BuildReport> {
    let source = task.resolve_source(source);
    if !source.is_file() {
        bail!("{}: source for task {task} not found", source.display());
    }
    let built = match task {
        Task::Lima => build_lima(&source, false)?,
        Task::LimaResponse => build_lima(&source, true)?,
        Task::Gsm => build_gsm(&source)?,
        Task::Mbpp => build_mbpp(&source)?,
        Task::Poetry => build_poetry(&source)?,
        Task::Recipes => build_recipes(&source)?,
        Task::Chess => build_chess(&source)?,
    };
    // An empty file, or the wrong one (another task's source), would otherwise leave an empty
    // training set behind and exit 0.
    if built.records.is_empty() {
        let why = match built.skipped.len() {
            0 => String::new(),
            n => format!(", skipped {n}: {}", skip_reasons(&built.skipped)),
        };
        bail!(
            "{}: no {task} rows (read {}{why}); nothing written to {}",
            source.display(),
            built.rows_read,
            out.display()
        );
    }
    write_jsonl_atomic(out, &built.records)?;
    Ok(BuildReport {
        task,
        source,
        out: out.to_path_buf(),
        rows_read: built.rows_read,
        rows_written: built.records.len(),
        skipped: built.skipped,
    })
}

fn pair(dataset: &str, id: String, user: String, assistant: String) -> Record {
    Record {
        dataset: dataset.to_string(),
        id,
        messages: vec![
            Message::new("user", user),
            Message::new("assistant", assistant),
        ],
    }
}

/// LIMA as is (multi-turn rows included); for response tuning every user turn's content becomes
/// "" (remove_instructions.py), tags and assistant turns untouched.
fn build_lima(path: &Path, remove_instructions: bool) -> Result<Built> {
    let rows = jsonl_values(path, None)?;
    let mut records = Vec::with_capacity(rows.len());
    for (line, v) in &rows {
        let mut rec: Record = serde_json::from_value(v.clone())
            .with_context(|| format!("{} line {line}", path.display()))?;
        if remove_instructions {
            for m in rec.messages.iter_mut().filter(|m| m.role == "user") {
                m.content.clear();
            }
        }
        records.push(rec);
    }
    Ok(Built {
        rows_read: rows.len(),
        records,
        skipped: Vec::new(),
    })
}

/// make_gsm.py: question -> answer, first 1000 rows, ids gsm8k_{i}.
fn build_gsm(path: &Path) -> Result<Built> {
    let rows = jsonl_values(path, Some(PAPER_ROW_LIMIT))?;
    let mut records = Vec::with_capacity(rows.len());
    for (i, (line, v)) in rows.iter().enumerate() {
        let question = str_field(v, "question", path, *line)?;
        let answer = str_field(v, "answer", path, *line)?;
        records.push(pair(
            "gsm8k",
            format!("gsm8k_{i}"),
            question.into(),
            answer.into(),
        ));
    }
    Ok(Built {
        rows_read: rows.len(),
        records,
        skipped: Vec::new(),
    })
}

/// make_mbpp.py: text -> code over the HF train split (task_id 601..=974, in file order), ids
/// mbpp_{i} counted within the split; the split has 374 rows, under the 1000 limit.
fn build_mbpp(path: &Path) -> Result<Built> {
    let rows = jsonl_values(path, None)?;
    let mut records = Vec::new();
    let mut skipped = Vec::new();
    for (line, v) in &rows {
        let Some(task_id) = v.get("task_id").and_then(|t| t.as_u64()) else {
            bail!(
                "{} line {line}: missing field task_id (an integer)",
                path.display()
            );
        };
        let text = str_field(v, "text", path, *line)?;
        let code = str_field(v, "code", path, *line)?;
        if !MBPP_TRAIN_TASK_IDS.contains(&task_id) {
            let reason = "outside the train split (task_id 601..=974)".to_string();
            skipped.push(Skip {
                line: *line,
                reason,
            });
            continue;
        }
        if records.len() == PAPER_ROW_LIMIT {
            break;
        }
        let id = format!("mbpp_{}", records.len());
        records.push(pair("mbpp", id, text.into(), code.into()));
    }
    Ok(Built {
        rows_read: rows.len(),
        records,
        skipped,
    })
}

/// make_poetry.py on merve/poetry ('poem name', 'content'); our CSV's poem_title and poem_text
/// stand in. First 1000 rows; a row with no title is skipped (the paper's `is None` check) but
/// still counts towards the 1000 and keeps its index in the ids.
fn build_poetry(path: &Path) -> Result<Built> {
    let table = CsvTable::read(path)?;
    let title_col = table.column("poem_title", path)?;
    let text_col = table.column("poem_text", path)?;
    let mut records = Vec::new();
    let mut skipped = Vec::new();
    let rows = &table.rows[..table.rows.len().min(PAPER_ROW_LIMIT)];
    for (i, row) in rows.iter().enumerate() {
        let title = &row.fields[title_col];
        let poem = &row.fields[text_col];
        // An empty CSV field is what pandas (hence `datasets`) reads as None.
        if title.is_empty() {
            skipped.push(Skip {
                line: row.line,
                reason: "empty poem_title".into(),
            });
            continue;
        }
        if poem.is_empty() {
            skipped.push(Skip {
                line: row.line,
                reason: "empty poem_text".into(),
            });
            continue;
        }
        let user = format!("Write a poem called {title}");
        records.push(pair(
            "merve_poetry",
            format!("merve_poetry_{i}"),
            user,
            poem.clone(),
        ));
    }
    Ok(Built {
        rows_read: rows.len(),
        records,
        skipped,
    })
}

/// make_kfr.py: "Recipe for {title}" -> "".join(" - " + x + "\n" for ingredients) + "\n\n" +
/// instructions. kaggle_food_recipes keeps the steps as one newline-separated string; ours are
/// a list, joined with "\n" to match. First 1000 rows, ids kfr_{i}.
fn build_recipes(path: &Path) -> Result<Built> {
    let rows = jsonl_values(path, Some(PAPER_ROW_LIMIT))?;
    let mut records = Vec::with_capacity(rows.len());
    for (i, (line, v)) in rows.iter().enumerate() {
        let title = str_field(v, "title", path, *line)?;
        let ingredients = str_list(v, "ingredients", path, *line)?;
        let steps = str_list(v, "instructions", path, *line)?;
        let mut recipe: String = ingredients.iter().map(|x| format!(" - {x}\n")).collect();
        recipe.push_str("\n\n");
        recipe.push_str(&steps.join("\n"));
        records.push(pair(
            "kfr",
            format!("kfr_{i}"),
            format!("Recipe for {title}"),
            recipe,
        ));
    }
    Ok(Built {
        rows_read: rows.len(),
        records,
        skipped: Vec::new(),
    })
}

/// A list of strings; a single string is taken as one item per line (one row of our recipes file
/// stores its ingredients that way; kaggle_food_recipes keeps its steps as one such string).
fn str_list<'a>(
    v: &'a serde_json::Value,
    name: &str,
    path: &Path,
    line: usize,
) -> Result<Vec<&'a str>> {
    let list = match v.get(name) {
        None => bail!("{} line {line}: missing field {name}", path.display()),
        Some(serde_json::Value::String(s)) => {
            Some(s.lines().filter(|l| !l.trim().is_empty()).collect())
        }
        Some(serde_json::Value::Array(items)) => items.iter().map(|x| x.as_str()).collect(),
        Some(_) => None,
    };
    list.with_context(|| {
        format!(
            "{} line {line}: field {name} is not a list of strings",
            path.display()
        )
    })
}

/// make_pgn.py: the WhiteElo and BlackElo tag lines, verbatim, each followed by "\n" -> the
/// movetext line, verbatim (result included; the paper strips nothing from it). Ids are
/// pgn-patrickfrank1-{i} with i the 0-based line of the movetext, as the paper's dataset has one
/// row per PGN line. Stops after 1000 games written.
fn build_chess(path: &Path) -> Result<Built> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    let games = parse_pgn(&text, path)?;
    let mut records = Vec::new();
    let mut skipped = Vec::new();
    let mut rows_read = 0;
    for game in &games {
        if records.len() == PAPER_ROW_LIMIT {
            break;
        }
        rows_read += 1;
        // The paper asserts both tags are there; a game without them is left out instead.
        let (Some(white), Some(black)) = (game.tag("WhiteElo"), game.tag("BlackElo")) else {
            skipped.push(Skip {
                line: game.line,
                reason: "no WhiteElo/BlackElo tags".into(),
            });
            continue;
        };
        let user = format!("{}\n{}\n", white.raw, black.raw);
        let id = format!("pgn-patrickfrank1-{}", game.movetext_line - 1);
        records.push(pair("pgn-patrickfrank1", id, user, game.movetext.clone()));
    }
    Ok(Built {
        rows_read,
        records,
        skipped,
    })
}
