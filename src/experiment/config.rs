//! The experiment config: a TOML file (the subset in `adapter::toml`) naming the models, the
//! settings, the epoch sweep, seeds, learning rates, data paths and the judge.
//!
//! ```toml
//! name = "smoke"
//! seeds = [0, 1]
//! epochs = [1, 2]             # the sweep; the paper's: [5, 7, 10, 15, 20]
//! settings = ["base", "instruction", "response", "gsm", "rules", "rules-no-eos"]
//! [data]                      # sources under `root`, limits for small runs
//! [train]                     # batch, lengths, precision, device (the paper's defaults)
//! [generate]                  # max new tokens, batch, device (answers, ranking, judge, embedder)
//! [judge]                     # local = "model folder" | endpoint = "http://..." + model
//! [ranking]                   # which settings' models are ranked
//! [[model]]                   # name, path (folder or .gguf), lr, label
//! ```
//!
//! Relative paths are taken from the current directory, data sources from `[data] root`
//! (`$IMPLICIT_DATA` replaces it when set); a model, judge or embedder path may start with
//! `${data}/` to sit under that root too. Unknown keys are errors naming the line.

use super::keys::Keys;
pub use super::setting::Setting;
use crate::adapter::toml::{self, Section};
use crate::backend::Device;
use crate::bail;
use crate::data::Task;
use crate::error::{Context, Result};
use crate::train::plan::OptimizerPlacement;
use crate::train::Precision;
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

#[derive(Clone, Debug)]
pub struct TrainSpec {
    pub batch_size: usize,
    pub micro_batch: usize,
    pub max_len: usize,
    pub warmup: f32,
    pub weight_decay: f32,
    pub max_grad_norm: f32,
    pub precision: Precision,
    /// Where training runs (`device = "cpu" | "cuda"`).
    pub device: Device,
    /// (cuda) `checkpointing = true`: activation checkpointing.
    pub checkpointing: bool,
    /// (cuda) `optimizer_state = "device" | "host" | "bf16"`.
    pub optimizer_state: OptimizerPlacement,
}

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

impl ExperimentConfig {
    pub fn from_file(path: &Path) -> Result<ExperimentConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read the experiment config", path.display()))?;
        ExperimentConfig::parse(&text).map_err(|e| crate::Error(format!("{}: {e}", path.display())))
    }

    pub fn parse(text: &str) -> Result<ExperimentConfig> {
        let doc =
            toml::parse(text).map_err(|(line, m)| crate::Error(format!("line {line}: {m}")))?;
        let mut top = None;
        let (mut data, mut train, mut generate, mut judge, mut ranking, mut figure5) =
            (None, None, None, None, None, None);
        let mut model_sections = Vec::new();
        for s in &doc.sections {
            let slot = match (s.name.as_deref(), s.array) {
                (None, _) => &mut top,
                (Some("model"), true) => {
                    model_sections.push(s);
                    continue;
                }
                (Some("data"), false) => &mut data,
                (Some("train"), false) => &mut train,
                (Some("generate"), false) => &mut generate,
                (Some("judge"), false) => &mut judge,
                (Some("ranking"), false) => &mut ranking,
                (Some("figure5"), false) => &mut figure5,
                (Some(other), array) => bail!(
                    "line {}: unknown table {}{other}{} (known: [data], [train], [generate], [judge], [ranking], [figure5], [[model]])",
                    s.line,
                    if array { "[[" } else { "[" },
                    if array { "]]" } else { "]" }
                ),
            };
            *slot = Some(s);
        }
        let empty = Section {
            name: None,
            array: false,
            line: 0,
            entries: Vec::new(),
        };
        let top = Keys::new(
            top.unwrap_or(&empty),
            &[
                "name",
                "seeds",
                "epochs",
                "selection_seed",
                "keep_checkpoints",
                "settings",
            ],
        )?;
        let name = top.string("name")?.unwrap_or_else(|| "experiment".into());
        check_name(&name, top.line("name"))?;
        let seeds: Vec<u64> = match top.ints("seeds")? {
            Some(v) => v.into_iter().map(|x| x as u64).collect(),
            None => vec![1, 2, 3, 4, 5],
        };
        if seeds.is_empty() {
            bail!("line {}: `seeds` is empty", top.line("seeds"));
        }
        let epochs: Vec<usize> = match top.ints("epochs")? {
            Some(v) => v.into_iter().map(|x| x as usize).collect(),
            None => vec![5, 7, 10, 15, 20],
        };
        if epochs.is_empty() || epochs.contains(&0) {
            bail!(
                "line {}: `epochs` must list positive epoch counts",
                top.line("epochs")
            );
        }
        let selection_seed = top.int("selection_seed")?.map_or(seeds[0], |s| s as u64);
        let keep_checkpoints = top.bool("keep_checkpoints")?.unwrap_or(false);
        let mut settings = Vec::new();
        for s in top
            .strings("settings")?
            .unwrap_or_else(|| vec!["base".into(), "instruction".into(), "response".into()])
        {
            let Some(setting) = Setting::parse(&s) else {
                bail!(
                    "line {}: unknown setting {s:?} (known: base, instruction, response, gsm, mbpp, poetry, recipes, chess, rules, rules-no-eos, rules-no-uniform, rules-no-diversity)",
                    top.line("settings")
                );
            };
            if !settings.contains(&setting) {
                settings.push(setting);
            }
        }
        if settings.iter().any(|s| *s != Setting::Instruction)
            && !settings.contains(&Setting::Instruction)
        {
            bail!(
                "line {}: every setting is judged against the instruction-tuned model: add \"instruction\" to `settings`",
                top.line("settings")
            );
        }

        let d = Keys::new(
            data.unwrap_or(&empty),
            &[
                "root",
                "train_limit",
                "val",
                "val_reference",
                "val_limit",
                "test",
                "test_limit",
                "ranking",
                "ranking_limit",
                "lima",
                "gsm",
                "mbpp",
                "poetry",
                "recipes",
                "chess",
            ],
        )?;
        let root = match std::env::var_os("IMPLICIT_DATA") {
            Some(dir) => PathBuf::from(dir),
            None => d
                .path("root")?
                .unwrap_or_else(|| PathBuf::from("../shared/data")),
        };
        let mut sources = Vec::new();
        for (key, tasks) in [
            ("lima", &[Task::Lima, Task::LimaResponse][..]),
            ("gsm", &[Task::Gsm]),
            ("mbpp", &[Task::Mbpp]),
            ("poetry", &[Task::Poetry]),
            ("recipes", &[Task::Recipes]),
            ("chess", &[Task::Chess]),
        ] {
            if let Some(p) = d.path(key)? {
                for t in tasks {
                    sources.push((*t, p.clone()));
                }
            }
        }
        let data = DataSpec {
            root,
            sources,
            train_limit: d.count("train_limit")?,
            val: d.path("val")?.unwrap_or_else(|| "val/val.jsonl".into()),
            val_reference: d
                .path("val_reference")?
                .unwrap_or_else(|| "val/val-gpt-3.5-turbo-ref.json".into()),
            val_limit: d.count("val_limit")?,
            test: d
                .path("test")?
                .unwrap_or_else(|| "alpaca_eval/gpt4_turbo_reference.json".into()),
            test_limit: d.count("test_limit")?,
            ranking: d
                .path("ranking")?
                .unwrap_or_else(|| "lima/lima_data.jsonl".into()),
            ranking_limit: d.count("ranking_limit")?,
        };

        let t = Keys::new(
            train.unwrap_or(&empty),
            &[
                "batch_size",
                "micro_batch",
                "max_len",
                "warmup",
                "weight_decay",
                "max_grad_norm",
                "precision",
                "device",
                "checkpointing",
                "optimizer_state",
            ],
        )?;
        let precision = match t.string("precision")?.as_deref() {
            None | Some("bf16") => Precision::Bf16,
            Some("f32") => Precision::F32,
            Some(other) => bail!(
                "line {}: precision {other:?}: use \"bf16\" or \"f32\"",
                t.line("precision")
            ),
        };
        let device = parse_device(&t)?;
        let optimizer_state = match t.string("optimizer_state")?.as_deref() {
            None | Some("device") => OptimizerPlacement::Device,
            Some("host") => OptimizerPlacement::Host,
            Some("bf16") => OptimizerPlacement::Bf16,
            Some(other) => bail!(
                "line {}: optimizer_state {other:?}: use \"device\", \"host\" or \"bf16\"",
                t.line("optimizer_state")
            ),
        };
        let train = TrainSpec {
            batch_size: t.count("batch_size")?.unwrap_or(64).max(1),
            micro_batch: t.count("micro_batch")?.unwrap_or(1).max(1),
            max_len: t.count("max_len")?.unwrap_or(2048).max(2),
            warmup: t.float("warmup")?.unwrap_or(0.03) as f32,
            weight_decay: t.float("weight_decay")?.unwrap_or(0.0) as f32,
            max_grad_norm: t.float("max_grad_norm")?.unwrap_or(1.0) as f32,
            precision,
            device,
            checkpointing: t.bool("checkpointing")?.unwrap_or(false),
            optimizer_state,
        };

        let g = Keys::new(
            generate.unwrap_or(&empty),
            &[
                "max_new_tokens",
                "max_new_tokens_no_eos",
                "batch_size",
                "device",
            ],
        )?;
        let max_new_tokens = g.count("max_new_tokens")?.unwrap_or(2048).max(1);
        let generate = GenerateSpec {
            max_new_tokens,
            max_new_tokens_no_eos: g
                .count("max_new_tokens_no_eos")?
                .unwrap_or(512.min(max_new_tokens))
                .max(1),
            batch_size: g.count("batch_size")?.unwrap_or(16).max(1),
            device: parse_device(&g)?,
        };

        let Some(judge) = judge else {
            bail!("missing [judge]: local = \"MODEL_FOLDER\", or endpoint = \"http://...\" with model = \"NAME\"");
        };
        let j = Keys::new(
            judge,
            &[
                "local",
                "endpoint",
                "model",
                "api_key_env",
                "max_len",
                "batch",
            ],
        )?;
        let judge_batch = j.count("batch")?.unwrap_or(8).max(1);
        let judge = match (j.path("local")?, j.string("endpoint")?) {
            (Some(path), None) => JudgeSpec::Local {
                path,
                max_len: j.count("max_len")?.unwrap_or(16_384),
            },
            (None, Some(url)) => JudgeSpec::Endpoint {
                url,
                model: j.string("model")?.with_context(|| {
                    format!("line {}: [judge] endpoint needs model = \"NAME\"", judge.line)
                })?,
                api_key_env: j.string("api_key_env")?,
            },
            _ => bail!(
                "line {}: [judge] needs exactly one of local = \"MODEL_FOLDER\" and endpoint = \"URL\"",
                judge.line
            ),
        };

        let r = Keys::new(
            ranking.unwrap_or(&empty),
            &["settings", "negatives", "max_len", "bootstrap"],
        )?;
        let mut rank_settings = Vec::new();
        for s in r
            .strings("settings")?
            .unwrap_or_else(|| vec!["base".into(), "instruction".into(), "response".into()])
        {
            match Setting::parse(&s) {
                Some(st @ (Setting::Base | Setting::Instruction | Setting::Response | Setting::SingleTask(_))) => {
                    if settings.contains(&st) || st == Setting::Base {
                        rank_settings.push(st)
                    }
                }
                _ => bail!(
                    "line {}: [ranking] settings: {s:?} is not a model (base, instruction, response or a single task)",
                    r.line("settings")
                ),
            }
        }
        let ranking = RankingSpec {
            settings: rank_settings,
            negatives: r.count("negatives")?.unwrap_or(5),
            max_len: r.count("max_len")?.unwrap_or(1024).max(2),
            bootstrap: r.count("bootstrap")?.unwrap_or(1000),
        };
        let f = Keys::new(figure5.unwrap_or(&empty), &["embedding_model"])?;
        let embedding_model = f.path("embedding_model")?;

        let mut models: Vec<ModelSpec> = Vec::new();
        for s in model_sections {
            let m = Keys::new(s, &["name", "path", "lr", "label"])?;
            let name = m
                .string("name")?
                .with_context(|| format!("line {}: [[model]] needs name = \"...\"", s.line))?;
            check_name(&name, s.line)?;
            if models.iter().any(|x| x.name == name) {
                bail!("line {}: model {name:?} is listed twice", s.line);
            }
            let path = m.path("path")?.with_context(|| {
                format!("line {}: [[model]] {name:?} needs path = \"...\"", s.line)
            })?;
            let lr = m.float("lr")?.unwrap_or(1e-5) as f32;
            if !(lr > 0.0 && lr.is_finite()) {
                bail!("line {}: lr must be positive", m.line("lr"));
            }
            models.push(ModelSpec {
                label: m.string("label")?.unwrap_or_else(|| name.clone()),
                name,
                path,
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
            keep_checkpoints,
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

/// A section's `device = "cpu" | "cuda"` (cpu when absent).
fn parse_device(keys: &Keys) -> Result<Device> {
    Ok(match keys.string("device")?.as_deref() {
        None | Some("cpu") => Device::Cpu,
        Some("cuda") => Device::Cuda,
        Some(other) => bail!(
            "line {}: device {other:?}: use \"cpu\" or \"cuda\"",
            keys.line("device")
        ),
    })
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
mod tests {
    use super::*;

    const SMALL: &str = r#"
name = "t"
seeds = [0, 1]
epochs = [1, 2]
settings = ["base", "instruction", "response", "gsm", "rules", "rules-no-eos"]
[data]
root = "/data"
train_limit = 8
gsm = "gsm8k/test.jsonl"
[judge]
local = "models/judge"
[[model]]
name = "tiny"
path = "models/tiny"
lr = 1e-3
"#;

    #[test]
    fn parses_a_grid() {
        let c = ExperimentConfig::parse(SMALL).unwrap();
        assert_eq!(c.seeds, vec![0, 1]);
        assert_eq!(c.epochs, vec![1, 2]);
        assert_eq!(c.selection_seed, 0);
        assert_eq!(c.settings.len(), 6);
        assert_eq!(c.settings[5].name(), "rules-no-eos");
        assert_eq!(
            c.trained_settings(),
            vec![
                Setting::Instruction,
                Setting::Response,
                Setting::SingleTask(Task::Gsm)
            ]
        );
        assert_eq!(c.models[0].lr, 1e-3);
        assert_eq!(c.train.batch_size, 64);
        if std::env::var_os("IMPLICIT_DATA").is_none() {
            assert_eq!(c.source(Task::Gsm), PathBuf::from("/data/gsm8k/test.jsonl"));
        }
        assert!(matches!(c.judge, JudgeSpec::Local { .. }));
    }

    #[test]
    fn setting_names_round_trip() {
        for name in [
            "base",
            "instruction",
            "response",
            "gsm",
            "mbpp",
            "poetry",
            "recipes",
            "chess",
            "rules",
            "rules-no-eos",
            "rules-no-uniform",
            "rules-no-diversity",
        ] {
            assert_eq!(Setting::parse(name).unwrap().name(), name);
        }
        assert!(Setting::parse("lima").is_none());
    }

    #[test]
    fn errors_name_the_line() {
        let bad = SMALL.replace("lr = 1e-3", "lr = 1e-3\nepochz = 3");
        let e = ExperimentConfig::parse(&bad).unwrap_err().to_string();
        assert!(e.contains("line 16") && e.contains("epochz"), "{e}");
        let bad = SMALL.replace("\"gsm\", ", "\"gsmm\", ");
        let e = ExperimentConfig::parse(&bad).unwrap_err().to_string();
        assert!(e.contains("line 5") && e.contains("gsmm"), "{e}");
        let bad = SMALL.replace("\"instruction\", ", "");
        assert!(ExperimentConfig::parse(&bad)
            .unwrap_err()
            .to_string()
            .contains("instruction"));
        let bad = SMALL.replace("local = \"models/judge\"", "");
        assert!(ExperimentConfig::parse(&bad)
            .unwrap_err()
            .to_string()
            .contains("[judge]"));
    }

    #[test]
    fn optimizer_state_choices() {
        let with = |value: &str| {
            let text = SMALL.replace(
                "[data]",
                &format!("[train]\noptimizer_state = \"{value}\"\n[data]"),
            );
            ExperimentConfig::parse(&text)
        };
        assert_eq!(
            ExperimentConfig::parse(SMALL)
                .unwrap()
                .train
                .optimizer_state,
            OptimizerPlacement::Device
        );
        for (value, placement) in [
            ("device", OptimizerPlacement::Device),
            ("host", OptimizerPlacement::Host),
            ("bf16", OptimizerPlacement::Bf16),
        ] {
            assert_eq!(with(value).unwrap().train.optimizer_state, placement);
        }
        let e = with("fp8").unwrap_err().to_string();
        assert!(
            e.contains("line 7") && e.contains("\"fp8\"") && e.contains("\"bf16\""),
            "{e}"
        );
    }
}
