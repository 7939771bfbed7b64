//! The experiment config: a TOML file naming the models, the settings, the epoch sweep, seeds,
//! learning rates, data paths and the judge.
//!
//! ```toml
//! name = "smoke"
//! seeds = [0, 1]
//! epochs = [1, 2]             # the sweep; the paper's: [5, 7, 10, 15, 20]
//! settings = ["base", "instruction", "response", "gsm", "rules", "rules-no-eos"]
//! [data]                      # sources under `root`, limits for small runs
//! [train]                     # the recipe (`train::Recipe`, the paper's by default) and device
//! [generate]                  # max new tokens, batch, device (answers, ranking, judge, embedder)
//! [judge]                     # local = "model folder" | endpoint = "http://..." + model
//! [ranking]                   # which settings' models are ranked
//! [[model]]                   # name, path (folder or .gguf), lr, label
//! ```
//!
//! `[train]` takes the keys of [`Recipe`] (`batch_size`, `micro_batch`, `warmup`, `schedule`,
//! `weight_decay`, `max_grad_norm`, `max_len`, `precision`; the flags of `implicit train`, with
//! the same defaults) and `device`, `checkpointing`, `optimizer_state`.
//!
//! Relative paths are taken from the current directory, data sources from `[data] root`
//! (`$IMPLICIT_DATA` replaces it when set); a model, judge or embedder path may start with
//! `${data}/` to sit under that root too. Unknown keys, wrong types and a key given twice are
//! errors naming the line.

pub use super::setting::Setting;
use crate::backend::Device;
use crate::bail;
use crate::data::Task;
use crate::error::{Context, Result};
use crate::toml_file::{self, line_of, value_enum, DeTable, Fault, Spanned};
use crate::train::plan::{CheckpointingChoice, OptimizerPlacement};
use crate::train::Recipe;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// One pretrained model of the grid.
#[derive(Clone, Debug)]
pub struct ModelSpec {
    /// Folder name and table key (letters, digits, `-`, `_`, `.`).
    pub name: String,
    /// How tables print it (default: `name`).
    pub label: String,
    /// A model folder, or a GGUF file converted into the results folder on first use.
    pub path: PathBuf,
    /// Peak learning rate (the paper: 1e-5 Llama-2-7B, 3e-6 OLMo-7B).
    pub lr: f32,
}

#[derive(Clone, Debug)]
pub struct DataSpec {
    pub root: PathBuf,
    /// Per-task source overrides (file or folder), relative to `root`.
    pub sources: Vec<(Task, PathBuf)>,
    /// Training examples used per set (None: all the builder gives, the paper's 1000 rows).
    pub train_limit: Option<usize>,
    pub val: PathBuf,
    pub val_reference: PathBuf,
    pub val_limit: Option<usize>,
    pub test: PathBuf,
    pub test_limit: Option<usize>,
    pub ranking: PathBuf,
    pub ranking_limit: Option<usize>,
}

/// `[train]`: the recipe, and where it runs.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainSpec {
    /// The other keys of the table (see [`ExperimentConfig::parse`]).
    #[serde(skip)]
    pub recipe: Recipe,
    /// Where training runs (`device = "cpu" | "cuda"`).
    #[serde(deserialize_with = "value_enum")]
    pub device: Device,
    /// (cuda) `checkpointing = "auto" | "on" | "off"` (or `true` / `false` for on / off).
    #[serde(deserialize_with = "checkpointing_choice")]
    pub checkpointing: CheckpointingChoice,
    /// (cuda) `optimizer_state = "device" | "host" | "bf16"`.
    #[serde(deserialize_with = "value_enum")]
    pub optimizer_state: OptimizerPlacement,
}

/// `checkpointing`: a choice by name, or a boolean as configs before `auto` wrote it.
fn checkpointing_choice<'de, D>(d: D) -> std::result::Result<CheckpointingChoice, D::Error>
where
    D: serde::Deserializer<'de>,
{
    struct Choice;
    impl serde::de::Visitor<'_> for Choice {
        type Value = CheckpointingChoice;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("\"auto\", \"on\", \"off\", true or false")
        }
        fn visit_bool<E: serde::de::Error>(self, on: bool) -> std::result::Result<Self::Value, E> {
            Ok(if on {
                CheckpointingChoice::On
            } else {
                CheckpointingChoice::Off
            })
        }
        fn visit_str<E: serde::de::Error>(self, name: &str) -> std::result::Result<Self::Value, E> {
            <CheckpointingChoice as clap::ValueEnum>::from_str(name, false)
                .map_err(|_| E::invalid_value(serde::de::Unexpected::Str(name), &self))
        }
    }
    d.deserialize_any(Choice)
}

/// The keys of `[train]` that [`TrainSpec`] reads itself; the others are the recipe's.
const TRAIN_SPEC_KEYS: [&str; 3] = ["device", "checkpointing", "optimizer_state"];

#[derive(Clone, Debug)]
pub struct GenerateSpec {
    pub max_new_tokens: usize,
    /// For rule settings without the EOS rule (the paper capped them at 512).
    pub max_new_tokens_no_eos: usize,
    pub batch_size: usize,
    /// Where answering, ranking, the local judge and the embedder run (`device = "cpu" |
    /// "cuda"`).
    pub device: Device,
}

#[derive(Clone, Debug)]
pub enum JudgeSpec {
    /// A model folder (or GGUF) run in-process.
    Local { path: PathBuf, max_len: usize },
    /// An OpenAI-compatible endpoint.
    Endpoint {
        url: String,
        model: String,
        api_key_env: Option<String>,
    },
}

#[derive(Clone, Debug)]
pub struct RankingSpec {
    pub settings: Vec<Setting>,
    pub negatives: usize,
    pub max_len: usize,
    pub bootstrap: usize,
}

#[derive(Clone, Debug)]
pub struct ExperimentConfig {
    pub name: String,
    pub seeds: Vec<u64>,
    /// The epoch counts tried on the validation set; each is its own run (linear decay to 0 at
    /// its own end), as the paper's finetune_{5,7,10,15,20}e.sh scripts are.
    pub epochs: Vec<usize>,
    /// The seed of the validation sweep (the paper ran it once, then the test seeds).
    pub selection_seed: u64,
    /// Keep every swept run's weights after selection (default: only the selected one's).
    pub keep_checkpoints: bool,
    pub settings: Vec<Setting>,
    pub models: Vec<ModelSpec>,
    pub data: DataSpec,
    pub train: TrainSpec,
    pub generate: GenerateSpec,
    pub judge: JudgeSpec,
    pub judge_batch: usize,
    pub ranking: RankingSpec,
    /// A model whose mean-pooled last hidden states embed texts for the paper's Figure 5.
    pub embedding_model: Option<PathBuf>,
    /// The config text as read (copied into the results folder and hashed in the manifest).
    pub text: String,
}

/// The file as written (defaults are filled in by [`ExperimentConfig::parse`]).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    name: Option<Spanned<String>>,
    seeds: Option<Spanned<Vec<u64>>>,
    epochs: Option<Spanned<Vec<usize>>>,
    selection_seed: Option<u64>,
    #[serde(default)]
    keep_checkpoints: bool,
    settings: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    data: DataTable,
    /// Read by [`read_train`] (the recipe and [`TrainSpec`] share the table); here it is only
    /// checked to be a table.
    #[serde(rename = "train")]
    _train: Option<toml::Table>,
    #[serde(default)]
    generate: GenerateTable,
    judge: Option<Spanned<JudgeTable>>,
    #[serde(default)]
    ranking: RankingTable,
    #[serde(default)]
    figure5: Figure5Table,
    #[serde(default)]
    model: Vec<Spanned<ModelTable>>,
}

#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct DataTable {
    root: Option<PathBuf>,
    train_limit: Option<usize>,
    val: Option<PathBuf>,
    val_reference: Option<PathBuf>,
    val_limit: Option<usize>,
    test: Option<PathBuf>,
    test_limit: Option<usize>,
    ranking: Option<PathBuf>,
    ranking_limit: Option<usize>,
    lima: Option<PathBuf>,
    gsm: Option<PathBuf>,
    mbpp: Option<PathBuf>,
    poetry: Option<PathBuf>,
    recipes: Option<PathBuf>,
    chess: Option<PathBuf>,
}

#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct GenerateTable {
    max_new_tokens: Option<usize>,
    max_new_tokens_no_eos: Option<usize>,
    batch_size: Option<usize>,
    #[serde(deserialize_with = "value_enum")]
    device: Device,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JudgeTable {
    local: Option<PathBuf>,
    endpoint: Option<String>,
    model: Option<String>,
    api_key_env: Option<String>,
    max_len: Option<usize>,
    batch: Option<usize>,
}

#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RankingTable {
    settings: Option<Spanned<Vec<Spanned<String>>>>,
    negatives: Option<usize>,
    max_len: Option<usize>,
    bootstrap: Option<usize>,
}

#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Figure5Table {
    embedding_model: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelTable {
    name: Spanned<String>,
    path: PathBuf,
    lr: Option<Spanned<f32>>,
    label: Option<String>,
}

/// "line N: ..." (the caller adds the file).
fn at(line: usize, message: impl std::fmt::Display) -> crate::Error {
    match line {
        0 => crate::Error(message.to_string()),
        n => crate::Error(format!("line {n}: {message}")),
    }
}

fn fault((line, message): Fault) -> crate::Error {
    at(line, message)
}

/// `[train]`: [`TrainSpec`]'s own keys, and the rest read as the [`Recipe`] (one table, two
/// structs: split by key before reading, so that each key's error keeps its line).
fn read_train(doc: &Spanned<DeTable<'_>>, text: &str) -> Result<TrainSpec> {
    let Some(table) = doc.get_ref().get("train") else {
        return Ok(TrainSpec::default());
    };
    let span = table.span();
    let toml::de::DeValue::Table(entries) = table.get_ref() else {
        // ConfigFile has already said that `train` must be a table.
        return Ok(TrainSpec::default());
    };
    let (own, recipe): (DeTable, DeTable) = entries
        .clone()
        .into_iter()
        .partition(|(key, _)| TRAIN_SPEC_KEYS.contains(&key.get_ref().as_ref()));
    let line = toml_file::line_of(text, span.start);
    let mut spec: TrainSpec =
        toml_file::read(Spanned::new(span.clone(), own), text, &["train"], &[]).map_err(fault)?;
    let recipe: Recipe = toml_file::read(
        Spanned::new(span, recipe),
        text,
        &["train"],
        &TRAIN_SPEC_KEYS,
    )
    .map_err(fault)?;
    // The check `implicit train` makes of its flags (named as flags: key batch_size is
    // --batch-size).
    recipe
        .validate()
        .map_err(|e| at(line, format_args!("[train]: {e}")))?;
    spec.recipe = recipe;
    Ok(spec)
}

/// Settings by name; an unknown one is an error naming its line.
fn parse_settings(names: &[Spanned<String>], text: &str) -> Result<Vec<Setting>> {
    names
        .iter()
        .map(|s| {
            Setting::parse(s.get_ref()).ok_or_else(|| {
                at(
                    line_of(text, s.span().start),
                    format!(
                        "unknown setting {:?} (known: base, instruction, response, gsm, mbpp, poetry, recipes, chess, rules, rules-no-eos, rules-no-uniform, rules-no-diversity)",
                        s.get_ref()
                    ),
                )
            })
        })
        .collect()
}

impl ExperimentConfig {
    pub fn from_file(path: &Path) -> Result<ExperimentConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read the experiment config", path.display()))?;
        ExperimentConfig::parse(&text).map_err(|e| crate::Error(format!("{}: {e}", path.display())))
    }

    pub fn parse(text: &str) -> Result<ExperimentConfig> {
        let doc = toml_file::parse(text).map_err(fault)?;
        let train = read_train(&doc, text)?;
        let file: ConfigFile = toml_file::read(doc, text, &[], &[]).map_err(fault)?;
        let line = |s: std::ops::Range<usize>| line_of(text, s.start);

        let name = match file.name {
            Some(n) => {
                check_name(n.get_ref(), line(n.span()))?;
                n.into_inner()
            }
            None => "experiment".into(),
        };
        let seeds = match file.seeds {
            Some(s) if s.get_ref().is_empty() => bail!("line {}: `seeds` is empty", line(s.span())),
            Some(s) => s.into_inner(),
            None => vec![1, 2, 3, 4, 5],
        };
        let epochs = match file.epochs {
            Some(e) if e.get_ref().is_empty() || e.get_ref().contains(&0) => bail!(
                "line {}: `epochs` must list positive epoch counts",
                line(e.span())
            ),
            Some(e) => e.into_inner(),
            None => vec![5, 7, 10, 15, 20],
        };
        let selection_seed = file.selection_seed.unwrap_or(seeds[0]);
        let (settings, settings_line) = match &file.settings {
            Some(s) => (parse_settings(s.get_ref(), text)?, line(s.span())),
            None => (
                vec![Setting::Base, Setting::Instruction, Setting::Response],
                0,
            ),
        };
        let mut unique: Vec<Setting> = Vec::new();
        for s in settings {
            if !unique.contains(&s) {
                unique.push(s);
            }
        }
        let settings = unique;
        if settings.iter().any(|s| *s != Setting::Instruction)
            && !settings.contains(&Setting::Instruction)
        {
            bail!(
                "line {settings_line}: every setting is judged against the instruction-tuned model: add \"instruction\" to `settings`"
            );
        }

        let d = file.data;
        let root = match std::env::var_os("IMPLICIT_DATA") {
            Some(dir) => PathBuf::from(dir),
            None => d.root.unwrap_or_else(|| PathBuf::from("../shared/data")),
        };
        let mut sources = Vec::new();
        for (given, tasks) in [
            (d.lima, &[Task::Lima, Task::LimaResponse][..]),
            (d.gsm, &[Task::Gsm]),
            (d.mbpp, &[Task::Mbpp]),
            (d.poetry, &[Task::Poetry]),
            (d.recipes, &[Task::Recipes]),
            (d.chess, &[Task::Chess]),
        ] {
            if let Some(p) = given {
                for t in tasks {
                    sources.push((*t, p.clone()));
                }
            }
        }
        let data = DataSpec {
            root,
            sources,
            train_limit: d.train_limit,
            val: d.val.unwrap_or_else(|| "val/val.jsonl".into()),
            val_reference: d
                .val_reference
                .unwrap_or_else(|| "val/val-gpt-3.5-turbo-ref.json".into()),
            val_limit: d.val_limit,
            test: d
                .test
                .unwrap_or_else(|| "alpaca_eval/gpt4_turbo_reference.json".into()),
            test_limit: d.test_limit,
            ranking: d.ranking.unwrap_or_else(|| "lima/lima_data.jsonl".into()),
            ranking_limit: d.ranking_limit,
        };

        let g = file.generate;
        let max_new_tokens = g.max_new_tokens.unwrap_or(2048).max(1);
        let generate = GenerateSpec {
            max_new_tokens,
            max_new_tokens_no_eos: g
                .max_new_tokens_no_eos
                .unwrap_or(512.min(max_new_tokens))
                .max(1),
            batch_size: g.batch_size.unwrap_or(16).max(1),
            device: g.device,
        };

        let Some(judge) = file.judge else {
            bail!("missing [judge]: local = \"MODEL_FOLDER\", or endpoint = \"http://...\" with model = \"NAME\"");
        };
        let judge_line = line(judge.span());
        let j = judge.into_inner();
        let judge_batch = j.batch.unwrap_or(8).max(1);
        let judge = match (j.local, j.endpoint) {
            (Some(path), None) => JudgeSpec::Local {
                path,
                max_len: j.max_len.unwrap_or(16_384),
            },
            (None, Some(url)) => JudgeSpec::Endpoint {
                url,
                model: j.model.with_context(|| {
                    format!("line {judge_line}: [judge] endpoint needs model = \"NAME\"")
                })?,
                api_key_env: j.api_key_env,
            },
            _ => bail!(
                "line {judge_line}: [judge] needs exactly one of local = \"MODEL_FOLDER\" and endpoint = \"URL\""
            ),
        };

        let r = file.ranking;
        let mut rank_settings = Vec::new();
        let ranked = match &r.settings {
            Some(s) => s
                .get_ref()
                .iter()
                .map(|n| (n.get_ref().as_str(), line(n.span())))
                .collect(),
            None => vec![("base", 0), ("instruction", 0), ("response", 0)],
        };
        for (s, at_line) in ranked {
            match Setting::parse(s) {
                Some(st @ (Setting::Base | Setting::Instruction | Setting::Response | Setting::SingleTask(_))) => {
                    if settings.contains(&st) || st == Setting::Base {
                        rank_settings.push(st)
                    }
                }
                _ => bail!(
                    "line {at_line}: [ranking] settings: {s:?} is not a model (base, instruction, response or a single task)"
                ),
            }
        }
        let ranking = RankingSpec {
            settings: rank_settings,
            negatives: r.negatives.unwrap_or(5),
            max_len: r.max_len.unwrap_or(1024).max(2),
            bootstrap: r.bootstrap.unwrap_or(1000),
        };
        let embedding_model = file.figure5.embedding_model;

        let mut models: Vec<ModelSpec> = Vec::new();
        for table in file.model {
            let table_line = line(table.span());
            let m = table.into_inner();
            let name_line = line(m.name.span());
            let name = m.name.into_inner();
            check_name(&name, name_line)?;
            if models.iter().any(|x| x.name == name) {
                bail!("line {table_line}: model {name:?} is listed twice");
            }
            // The paper's for Llama-2-7B.
            let lr = match m.lr {
                Some(lr) if !(*lr.get_ref() > 0.0 && lr.get_ref().is_finite()) => {
                    bail!("line {}: lr must be positive", line(lr.span()))
                }
                Some(lr) => lr.into_inner(),
                None => 1e-5,
            };
            models.push(ModelSpec {
                label: m.label.unwrap_or_else(|| name.clone()),
                name,
                path: m.path,
                lr,
            });
        }
        if models.is_empty() {
            bail!("no [[model]]: give at least one with name, path and lr");
        }
        // `${data}/...` in a model path means under the data root.
        let expand = |p: &mut PathBuf| {
            if let Ok(rest) = p.strip_prefix("${data}") {
                *p = data.root.join(rest);
            }
        };
        for m in &mut models {
            expand(&mut m.path);
        }
        let mut judge = judge;
        if let JudgeSpec::Local { path, .. } = &mut judge {
            expand(path);
        }
        let mut embedding_model = embedding_model;
        if let Some(p) = &mut embedding_model {
            expand(p);
        }
        Ok(ExperimentConfig {
            name,
            seeds,
            epochs,
            selection_seed,
            keep_checkpoints: file.keep_checkpoints,
            settings,
            models,
            data,
            train,
            generate,
            judge,
            judge_batch,
            ranking,
            embedding_model,
            text: text.to_string(),
        })
    }

    /// The source file of a training task.
    pub fn source(&self, task: Task) -> PathBuf {
        let given = self
            .data
            .sources
            .iter()
            .find(|(t, _)| *t == task)
            .map(|(_, p)| self.data.root.join(p));
        task.resolve_source(&given.unwrap_or_else(|| self.data.root.clone()))
    }

    pub fn data_file(&self, rel: &Path) -> PathBuf {
        self.data.root.join(rel)
    }

    /// The settings that train, in config order.
    pub fn trained_settings(&self) -> Vec<Setting> {
        self.settings
            .iter()
            .copied()
            .filter(Setting::trains)
            .collect()
    }
}

fn check_name(name: &str, line: usize) -> Result<()> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        || name.starts_with('.')
    {
        bail!("line {line}: name {name:?} must be letters, digits, '-', '_' or '.' (it names a folder)");
    }
    Ok(())
}

#[cfg(test)]
mod tests;
