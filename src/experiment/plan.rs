//! What an experiment grid costs before it runs: the training runs and tokens, the answers to
//! generate, the comparisons to judge and the sequences to rank, counted from the config, its
//! data and the model's tokenizer exactly as `experiment run` will use them; the GPU memory of
//! training (`train::plan`); and, given measured throughputs (`bench train`, `bench generate`
//! JSON, or figures on the command line), the GPU hours.
//!
//! The counts follow run.rs: per trained setting, one run per swept epoch count at the selection
//! seed (each answering the validation set), then one run per other seed at the selected count
//! (unknown before the sweep: reported for the smallest and the largest count); test answers for
//! every trained run and once for each untrained setting; every setting but "instruction"
//! judged against the instruction-tuned model at each seed; ranking for the base model once and
//! for each ranked trained setting at each seed. Output lengths are not known before
//! generating: they are estimated by the reference answers' lengths, capped at the limit.

use super::config::ExperimentConfig;
use super::layout::read_reference;
use crate::bail;
use crate::data::{build_task, encode_dataset, read_messages_jsonl, Mode};
use crate::error::{Context, Result};
use crate::generate::instructions::read_instructions;
use crate::io::tokenizer::{chat_prompt, Tokenizer};
use crate::model::ModelConfig;
use crate::train::plan::{Checkpointing, CheckpointingChoice, MemoryPlan};
use std::path::Path;

/// Throughputs to turn counts into hours (tokens per second on one GPU).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct Throughputs {
    pub train: Option<f64>,
    pub prefill: Option<f64>,
    pub decode: Option<f64>,
    /// How prefill and decode were read from `bench generate` (see `experiment::rates`).
    pub generation_basis: Option<String>,
}

/// The work of one phase.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Phase {
    pub name: String,
    /// Runs, answers, comparisons or sequences, as `unit` says.
    pub count: usize,
    pub unit: String,
    /// Tokens through the model: trained, or prompt (prefill) and generated (decode).
    pub train_tokens: u64,
    pub prefill_tokens: u64,
    pub decode_tokens: u64,
}

impl Phase {
    fn new(name: &str, count: usize, unit: &str) -> Phase {
        Phase {
            name: name.into(),
            count,
            unit: unit.into(),
            train_tokens: 0,
            prefill_tokens: 0,
            decode_tokens: 0,
        }
    }

    /// GPU seconds at `t`, None when a needed throughput is missing.
    pub fn seconds(&self, t: &Throughputs) -> Option<f64> {
        let part = |tokens: u64, speed: Option<f64>| match tokens {
            0 => Some(0.0),
            n => speed.map(|s| n as f64 / s),
        };
        Some(
            part(self.train_tokens, t.train)?
                + part(self.prefill_tokens, t.prefill)?
                + part(self.decode_tokens, t.decode)?,
        )
    }
}

/// The plan of one model of the grid.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ModelPlan {
    pub model: String,
    /// Tokens of one epoch of each trained setting's data (after cutting at max_len).
    pub epoch_tokens: Vec<(String, u64)>,
    /// The phases with the selected epoch count at its smallest and at its largest.
    pub phases_min: Vec<Phase>,
    pub phases_max: Vec<Phase>,
    pub memory: Option<MemoryPlan>,
}

/// Mean token length of `texts` (0 for none).
fn mean_tokens(tok: &Tokenizer, texts: &[String]) -> Result<f64> {
    let mut total = 0usize;
    for t in texts {
        total += tok.encode(t)?.len();
    }
    Ok(total as f64 / texts.len().max(1) as f64)
}

/// Prompt tokens of each instruction in the paper's chat format.
fn prompt_tokens(tok: &Tokenizer, rows: &[String]) -> Result<Vec<u64>> {
    rows.iter()
        .map(|r| Ok(tok.encode_prompt(&chat_prompt(r))?.len() as u64))
        .collect()
}

/// Plans every model of `cfg`. `tokenizer` replaces each model folder's tokenizer, `shape` its
/// config.json (for models not on this machine).
pub fn plan(
    cfg: &ExperimentConfig,
    tokenizer: Option<&Path>,
    shape: Option<&Path>,
    scratch: &Path,
) -> Result<Vec<ModelPlan>> {
    let read = |p: &Path, n: Option<usize>| -> Result<Vec<String>> {
        let mut rows: Vec<String> = read_instructions(p)?
            .into_iter()
            .map(|r| r.instruction)
            .collect();
        if let Some(n) = n {
            rows.truncate(n);
        }
        Ok(rows)
    };
    let val = read(&cfg.data_file(&cfg.data.val), cfg.data.val_limit)?;
    let test = read(&cfg.data_file(&cfg.data.test), cfg.data.test_limit)?;
    let outputs = |p: &Path, n: Option<usize>| -> Result<Vec<String>> {
        let mut rows: Vec<String> = read_reference(p)?.into_iter().map(|r| r.output).collect();
        if let Some(n) = n {
            rows.truncate(n);
        }
        Ok(rows)
    };
    let val_ref = outputs(&cfg.data_file(&cfg.data.val_reference), cfg.data.val_limit)?;
    // AlpacaEval's reference file holds the test instructions with GPT-4-turbo's answers.
    let test_ref = outputs(&cfg.data_file(&cfg.data.test), cfg.data.test_limit).unwrap_or_default();
    let mut ranking = read_messages_jsonl(&cfg.data_file(&cfg.data.ranking))?;
    if let Some(n) = cfg.data.ranking_limit {
        ranking.truncate(n);
    }

    // Each trained setting's data, built as run.rs builds it.
    std::fs::create_dir_all(scratch)
        .with_context(|| format!("{}: cannot create", scratch.display()))?;
    let mut built = Vec::new();
    for setting in cfg.trained_settings() {
        let task = setting
            .training_task()
            .context("a trained setting has a task")?;
        let out = scratch.join(format!("{task}.jsonl"));
        if !out.is_file() {
            build_task(task, &cfg.source(task), &out)?;
        }
        let mut rows = read_messages_jsonl(&out)?;
        if let Some(n) = cfg.data.train_limit {
            rows.truncate(n);
        }
        built.push((setting, rows));
    }

    // A tokenizer given as a file (e.g. the shared folder's llama2-tokenizer.json) is copied
    // into a folder under the loader's names, with its "-tokenizer_config.json" sibling.
    let tokenizer_dir;
    let tokenizer = match tokenizer {
        Some(file) if file.is_file() => {
            tokenizer_dir = scratch.join("tokenizer");
            std::fs::create_dir_all(&tokenizer_dir)
                .with_context(|| format!("{}: cannot create", tokenizer_dir.display()))?;
            std::fs::copy(file, tokenizer_dir.join("tokenizer.json"))
                .with_context(|| format!("{}: cannot copy", file.display()))?;
            let name = file.file_name().map(|n| n.to_string_lossy().to_string());
            if let Some(sibling) = name
                .filter(|n| n.ends_with("tokenizer.json"))
                .map(|n| file.with_file_name(n.replace("tokenizer.json", "tokenizer_config.json")))
                .filter(|p| p.is_file())
            {
                std::fs::copy(&sibling, tokenizer_dir.join("tokenizer_config.json"))
                    .with_context(|| format!("{}: cannot copy", sibling.display()))?;
            }
            Some(tokenizer_dir.as_path())
        }
        other => other,
    };
    let mut plans = Vec::new();
    for m in &cfg.models {
        // A GGUF model is converted, as `experiment run` does (into the scratch folder here).
        let folder = if m.path.extension().is_some_and(|e| e == "gguf") && m.path.is_file() {
            let dir = scratch.join("models").join(&m.name);
            if !dir.join("config.json").is_file() {
                crate::io::convert::convert_gguf(&m.path, &dir)?;
            }
            dir
        } else {
            m.path.clone()
        };
        let tok_dir = tokenizer.unwrap_or(&folder);
        let config_path = match shape {
            Some(p) => p.to_path_buf(),
            None => folder.join("config.json"),
        };
        let config = ModelConfig::from_file(&config_path).with_context(|| {
            format!(
                "model {}: give its config.json with --shape when the model is not here",
                m.name
            )
        })?;
        let tok = Tokenizer::load(tok_dir, &config).with_context(|| {
            format!(
                "model {}: give a tokenizer folder with --tokenizer when the model is not here",
                m.name
            )
        })?;
        let mut epoch_tokens = Vec::new();
        for (setting, rows) in &built {
            let data = encode_dataset(&tok, rows, Mode::Instruction, cfg.train.recipe.max_len)?;
            let tokens: u64 = data.examples.iter().map(|e| e.ids.len() as u64).sum();
            epoch_tokens.push((setting.name(), tokens));
        }
        let val_prompts: u64 = prompt_tokens(&tok, &val)?.iter().sum();
        let test_prompts: u64 = prompt_tokens(&tok, &test)?.iter().sum();
        let cap = cfg.generate.max_new_tokens as f64;
        let val_out = mean_tokens(&tok, &val_ref)?.min(cap);
        let test_out = if test_ref.is_empty() {
            cap
        } else {
            mean_tokens(&tok, &test_ref)?.min(cap)
        };
        let rank_seq: u64 = {
            let responses: Vec<String> = ranking
                .iter()
                .filter_map(|e| e.messages.last().map(|m| m.content.clone()))
                .collect();
            let mean_response = mean_tokens(&tok, &responses)?;
            let mut total = 0u64;
            for e in &ranking {
                let prompt = e
                    .messages
                    .first()
                    .map_or(String::new(), |m| m.content.clone());
                let len = tok.encode_prompt(&chat_prompt(&prompt))?.len() as f64 + mean_response;
                total += len.min(cfg.ranking.max_len as f64) as u64;
            }
            total * (1 + cfg.ranking.negatives) as u64
        };
        let memory = (cfg.train.device == crate::backend::Device::Cuda).then(|| {
            MemoryPlan::new(
                &config,
                cfg.train.recipe.max_len,
                cfg.train.recipe.micro_batch,
                // `auto` depends on the free memory at run time; the plan shows the smallest
                // plan it can fall back to, full checkpointing.
                match cfg.train.checkpointing {
                    CheckpointingChoice::Off => Checkpointing::Off,
                    CheckpointingChoice::On | CheckpointingChoice::Auto => Checkpointing::On,
                },
                cfg.train.optimizer_state,
            )
        });
        let phases = |selected: usize| -> Vec<Phase> {
            phases_for(
                cfg,
                &epoch_tokens,
                selected,
                (val.len(), val_prompts, val_out),
                (test.len(), test_prompts, test_out),
                (ranking.len(), rank_seq),
            )
        };
        let (lo, hi) = (
            cfg.epochs.iter().copied().min().unwrap_or(0),
            cfg.epochs.iter().copied().max().unwrap_or(0),
        );
        let (phases_min, phases_max) = (phases(lo), phases(hi));
        plans.push(ModelPlan {
            model: m.name.clone(),
            epoch_tokens,
            phases_min,
            phases_max,
            memory,
        });
    }
    if plans.is_empty() {
        bail!("the config names no model");
    }
    Ok(plans)
}

/// The phases of one model when every trained setting selects `selected` epochs.
/// `val` and `test` are (instructions, their prompt tokens, mean output tokens); `ranking` is
/// (examples, tokens of all their scored sequences).
fn phases_for(
    cfg: &ExperimentConfig,
    epoch_tokens: &[(String, u64)],
    selected: usize,
    val: (usize, u64, f64),
    test: (usize, u64, f64),
    ranking: (usize, u64),
) -> Vec<Phase> {
    let trained = epoch_tokens.len();
    let sweep: usize = cfg.epochs.iter().sum();
    let other_seeds = cfg
        .seeds
        .iter()
        .filter(|&&s| s != cfg.selection_seed)
        .count();
    let per_epoch: u64 = epoch_tokens.iter().map(|(_, t)| t).sum();

    let mut sweep_train = Phase::new("train: epoch sweep", trained * cfg.epochs.len(), "runs");
    sweep_train.train_tokens = per_epoch * sweep as u64;
    let mut seed_train = Phase::new("train: other seeds", trained * other_seeds, "runs");
    seed_train.train_tokens = per_epoch * (selected * other_seeds) as u64;

    let answers = |name: &str, runs: usize, (n, prompts, out): (usize, u64, f64)| {
        let mut p = Phase::new(name, runs * n, "answers");
        p.prefill_tokens = prompts * runs as u64;
        p.decode_tokens = (out * (runs * n) as f64) as u64;
        p
    };
    let untrained = cfg.settings.iter().filter(|s| !s.trains()).count();
    let val_answers = answers("generate: validation", trained * cfg.epochs.len(), val);
    let test_answers = answers(
        "generate: test",
        trained * cfg.seeds.len() + untrained,
        test,
    );
    let judged = cfg.settings.len().saturating_sub(1);
    let judge = Phase::new(
        "judge (API calls)",
        trained * cfg.epochs.len() * val.0 + judged * cfg.seeds.len() * test.0,
        "comparisons",
    );
    let ranked_trained = cfg
        .ranking
        .settings
        .iter()
        .filter(|s| s.trains() && cfg.settings.contains(s))
        .count();
    let ranked = usize::from(cfg.ranking.settings.iter().any(|s| !s.trains()))
        + ranked_trained * cfg.seeds.len();
    let mut rank = Phase::new(
        "rank",
        ranked * ranking.0 * (1 + cfg.ranking.negatives),
        "sequences",
    );
    rank.prefill_tokens = ranking.1 * ranked as u64;
    vec![
        sweep_train,
        seed_train,
        val_answers,
        test_answers,
        judge,
        rank,
    ]
}

/// A Markdown report of the plans.
pub fn describe(plans: &[ModelPlan], t: &Throughputs) -> String {
    let hours = |p: &Phase| {
        p.seconds(t)
            .map_or("-".to_string(), |s| format!("{:.2}", s / 3600.0))
    };
    let mut s = String::new();
    for mp in plans {
        s += &format!("## {}\n\n", mp.model);
        s += "Tokens per epoch: ";
        s += &mp
            .epoch_tokens
            .iter()
            .map(|(n, t)| format!("{n} {t}"))
            .collect::<Vec<_>>()
            .join(", ");
        s += "\n\n| phase | count (smallest / largest selected epochs) | trained tokens | prompt tokens | generated tokens (est.) | GPU hours |\n|---|---|---|---|---|---|\n";
        let (mut lo_total, mut hi_total) = (Some(0.0), Some(0.0));
        for (lo, hi) in mp.phases_min.iter().zip(&mp.phases_max) {
            let both = |a: u64, b: u64| {
                if a == b {
                    a.to_string()
                } else {
                    format!("{a} / {b}")
                }
            };
            s += &format!(
                "| {} | {} {} | {} | {} | {} | {} / {} |\n",
                lo.name,
                both(lo.count as u64, hi.count as u64),
                lo.unit,
                both(lo.train_tokens, hi.train_tokens),
                both(lo.prefill_tokens, hi.prefill_tokens),
                both(lo.decode_tokens, hi.decode_tokens),
                hours(lo),
                hours(hi)
            );
            lo_total = lo_total.zip(lo.seconds(t)).map(|(a, b)| a + b);
            hi_total = hi_total.zip(hi.seconds(t)).map(|(a, b)| a + b);
        }
        match lo_total.zip(hi_total) {
            Some((a, b)) => {
                s += &format!(
                    "\nGPU hours in all: {:.1} to {:.1} (train {} tokens/s, prefill {} tokens/s, decode {} tokens/s)\n",
                    a / 3600.0,
                    b / 3600.0,
                    t.train.map_or("-".into(), |v| format!("{v:.0}")),
                    t.prefill.map_or("-".into(), |v| format!("{v:.0}")),
                    t.decode.map_or("-".into(), |v| format!("{v:.0}"))
                );
            }
            None => {
                s += "\nGPU hours: give measured throughputs (--bench-train, --bench-generate or --train/--prefill/--decode-tokens-per-s).\n"
            }
        }
        if let Some(basis) = &t.generation_basis {
            s += &format!("Generation rates from bench generate, {basis}.\n");
        }
        if let Some(m) = &mp.memory {
            s += &format!("\nTraining memory: {}\n", m.describe(None, None));
        }
        s += "\n";
    }
    s
}
