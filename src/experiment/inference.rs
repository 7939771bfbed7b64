//! The steps of a run that only run models forward: answering instructions, the local judge,
//! response ranking and Figure 5's embeddings, all on `[generate] device`. The device is opened
//! once per run ([`Runtime::open`], which fails at once, in one line, when a config asks for a
//! GPU that this binary or machine cannot give); each step loads its model onto it
//! ([`Runtime::load`]) and runs the generic code (`model::LanguageModel`) through
//! [`with_model!`].

use super::{Ctx, Instruction};
use crate::adapter::RuleAdapter;
use crate::backend::Device;
use crate::data::{read_messages_jsonl, Task};
use crate::error::{Context, Result};
use crate::eval::endpoint::EndpointJudge;
use crate::eval::judge::{run_judge, JudgeOptions, ANNOTATOR};
use crate::eval::judge_local::LocalJudge;
use crate::eval::ranking::{run_ranking, RankingOptions};
use crate::eval::winrate::raw_winrate;
use crate::eval::write_json_atomic;
use crate::experiment::config::JudgeSpec;
use crate::experiment::similarity::{similarity_report, Embedder};
use crate::generate::instructions::{answer_instructions, write_model_outputs, AnswerOptions};
use crate::generate::ScoreAdjuster;
use crate::io::tokenizer::Tokenizer;
use crate::model::{DeviceModel, DeviceRuntime, LanguageModel};
use serde_json::{json, Value};
use std::path::Path;
use std::sync::Arc;

/// The device of a run, opened once (`model::device`).
pub(super) struct Runtime(DeviceRuntime);

/// A model loaded onto a [`Runtime`]'s device (the GPU one borrows the runtime).
pub(super) type Loaded<'g> = DeviceModel<'g>;

impl Runtime {
    /// The CPU, or the GPU: a build without the `cuda` feature, or a machine without a usable
    /// GPU, is an error saying so.
    pub(super) fn open(device: Device) -> Result<Runtime> {
        let what = "[generate] device = \"cuda\"";
        let runtime = DeviceRuntime::open(device, what, ", or set device = \"cpu\"")?;
        if runtime.is_gpu() {
            eprintln!("{what}: {}", runtime.name());
        }
        Ok(Runtime(runtime))
    }

    /// Loads the model folder `dir` and its tokenizer.
    pub(super) fn load(&self, dir: &Path) -> Result<(Loaded<'_>, Tokenizer)> {
        let model = self.0.load(dir)?;
        let tok = Tokenizer::load(dir, model.config())?;
        Ok((model, tok))
    }
}

/// `with_model!(loaded, |m| body)`: `body` with `m` the loaded model as a
/// `model::LanguageModel` handle (`&mut DeviceModel`, on either device).
macro_rules! with_model {
    ($loaded:expr, |$m:ident| $body:expr) => {{
        let $m = &mut *$loaded;
        $body
    }};
}

/// A loaded judge, reused across steps.
pub(super) enum JudgeHandle<'g> {
    /// The model, its tokenizer, its folder (the judge's name) and the prompt length limit.
    Local(Box<(Loaded<'g>, Tokenizer)>, String, usize),
    Endpoint(String, String, Option<String>),
}

/// Fingerprints name the generation device only off the CPU, so that CPU runs made before the
/// key existed stay valid (as `[train] device`).
pub(super) fn with_device(mut fp: Value, device: Device) -> Value {
    if device != Device::Cpu {
        fp["device"] = json!(format!("{device:?}"));
    }
    fp
}

impl Ctx<'_> {
    /// Answers `rows` with the model in `dir` (optionally through the rule adapter) into
    /// `{key}.json`.
    pub(super) fn answer(
        &mut self,
        key: &str,
        dir: &Path,
        model_id: Value,
        rules: Option<crate::adapter::RuleSet>,
        rows: &[Instruction],
        split: &str,
    ) -> Result<()> {
        let g = &self.cfg.generate;
        let max_new_tokens = match rules {
            Some(r) if !r.eos => g.max_new_tokens_no_eos,
            _ => g.max_new_tokens,
        };
        let instructions: Vec<&str> = rows.iter().map(|r| r.instruction.as_str()).collect();
        let fp = json!({
            "model": model_id,
            "instructions": crate::io::digest::hex(&crate::eval::sha512::sha512(
                serde_json::to_string(&instructions).unwrap_or_default().as_bytes()
            )),
            "rules": rules.map(|r| r.names()),
            "max_new_tokens": max_new_tokens,
            "batch_size": g.batch_size,
        });
        let fp = with_device(fp, g.device);
        let rel = format!("{key}.json");
        let generator = key.replace('/', "_");
        let rt = self.rt;
        self.store.step(key, fp, &[&rel], |root| {
            let (mut model, tok) = rt.load(dir)?;
            let adjuster = match rules {
                Some(r) => {
                    let adapter = RuleAdapter::paper(r, &tok)?;
                    eprintln!("{}", adapter.describe());
                    Some(Arc::new(adapter) as Arc<dyn ScoreAdjuster>)
                }
                None => None,
            };
            let opts = AnswerOptions {
                max_new_tokens,
                batch_size: g.batch_size,
                temperature: 0.0,
                seed: 0,
                generator,
                dataset: split.into(),
            };
            let outputs = with_model!(&mut model, |m| {
                answer_instructions(m, &tok, rows, &opts, adjuster)
            })?;
            write_model_outputs(&root.join(&rel), &outputs)?;
            let tokens: usize = outputs
                .iter()
                .map(|o| tok.encode(&o.output).map_or(0, |t| t.len()))
                .sum();
            Ok(json!({"outputs": outputs.len(), "mean_output_tokens": tokens as f64 / outputs.len().max(1) as f64}))
        })?;
        Ok(())
    }

    /// Annotates `outputs` against `reference` (both relative) into `out`; returns the win
    /// rate figures.
    pub(super) fn judge_step(
        &mut self,
        out: &str,
        outputs: &str,
        reference: &str,
    ) -> Result<Value> {
        let (o, r) = (self.store.path(outputs), self.store.path(reference));
        let fp = json!({
            "outputs": self.store.hash_input(&o)?,
            "reference": self.store.hash_input(&r)?,
            "judge": self.judge_id,
        });
        let key = out.trim_end_matches(".json").to_string();
        if self.store.done(&key, &fp)?.is_none() {
            self.load_judge()?;
        }
        let judge = self.judge.as_mut();
        let batch = self.cfg.judge_batch;
        self.store.step(&key, fp, &[out], |root| {
            let opts = JudgeOptions {
                max_examples: None,
                seed: 0,
                batch,
                annotator: ANNOTATOR.into(),
            };
            let annotations = match judge.context("judge not loaded")? {
                JudgeHandle::Local(mt, name, max_len) => {
                    let (model, tok) = &mut **mt;
                    with_model!(model, |m| {
                        let mut j = LocalJudge::with_name(m, name.clone(), tok, *max_len)?;
                        run_judge(&o, &r, &mut j, &opts, &root.join(out))?
                    })
                }
                JudgeHandle::Endpoint(url, model, key_env) => {
                    let key = match key_env.as_deref() {
                        Some(var) => Some(std::env::var(var).map_err(|_| {
                            crate::Error(format!(
                                "[judge] api_key_env {var}: the variable is not set"
                            ))
                        })?),
                        None => None,
                    };
                    let mut j = EndpointJudge::new(url, model, key)?;
                    run_judge(&o, &r, &mut j, &opts, &root.join(out))?
                }
            };
            let prefs: Vec<Option<f64>> = annotations.iter().map(|a| a.preference).collect();
            let w = raw_winrate(&prefs);
            eprintln!(
                "{outputs} vs {reference}: win rate {:.2} ± {:.2}",
                w.win_rate, w.standard_error
            );
            serde_json::to_value(&w).context("win rate")
        })
    }

    pub(super) fn load_judge(&mut self) -> Result<()> {
        if self.judge.is_some() {
            return Ok(());
        }
        self.judge = Some(match &self.cfg.judge {
            JudgeSpec::Local { path, max_len } => {
                let dir = self.model_folder("judge", path)?;
                let loaded = self.rt.load(&dir)?;
                JudgeHandle::Local(Box::new(loaded), dir.display().to_string(), *max_len)
            }
            JudgeSpec::Endpoint {
                url,
                model,
                api_key_env,
            } => JudgeHandle::Endpoint(url.clone(), model.clone(), api_key_env.clone()),
        });
        Ok(())
    }

    pub(super) fn ranking(&mut self, out: &str, dir: &Path, model_id: Value) -> Result<()> {
        let cfg = self.cfg;
        let data = cfg.data_file(&cfg.data.ranking);
        let fp = json!({
            "model": model_id,
            "data": self.store.hash_input(&data)?,
            "limit": cfg.data.ranking_limit,
            "negatives": cfg.ranking.negatives,
            "max_len": cfg.ranking.max_len,
            "bootstrap": cfg.ranking.bootstrap,
        });
        let fp = with_device(fp, cfg.generate.device);
        let key = out.trim_end_matches(".json").to_string();
        let rt = self.rt;
        self.store.step(&key, fp, &[out], |root| {
            let (mut model, tok) = rt.load(dir)?;
            let examples = read_messages_jsonl(&data)?;
            let opts = RankingOptions {
                negatives: cfg.ranking.negatives,
                seed: 0,
                max_examples: cfg.data.ranking_limit,
                max_len: cfg.ranking.max_len,
                batch_tokens: 2048,
                bootstrap: cfg.ranking.bootstrap,
            };
            let report = with_model!(&mut model, |m| run_ranking(m, &tok, &examples, &opts))
                .map_err(|e| crate::Error(format!("{}: {e}", data.display())))?;
            write_json_atomic(&root.join(out), &json!({"model": dir.display().to_string(), "data": data.display().to_string(), "result": report}))?;
            Ok(json!({"fraction": report.fraction, "ci95": report.ci95, "pairs": report.pairs}))
        })?;
        Ok(())
    }

    /// Figure 5's points for the single-task run in `dir` (its test outputs), embedded with
    /// the model folder `emb`.
    pub(super) fn similarity(&mut self, emb: &Path, dir: &str, task: Task) -> Result<()> {
        let cfg = self.cfg;
        let out = format!("{dir}/similarity.json");
        let outputs = self.store.path(&format!("{dir}/test_outputs.json"));
        let task_data = self.store.path(&format!("data/{task}.jsonl"));
        let lima = self.store.path("data/lima.jsonl");
        let fp = json!({
            "embedder": self.weights_hash(emb)?,
            "outputs": self.store.hash_input(&outputs)?,
            "task_data": self.store.hash_input(&task_data)?,
            "lima": if lima.exists() { self.store.hash_input(&lima)? } else { "absent".into() },
            "train_limit": cfg.data.train_limit,
        });
        let rt = self.rt;
        let fp = with_device(fp, cfg.generate.device);
        self.store
            .step(&out.replace(".json", ""), fp, &[&out], |root| {
                let (mut loaded, tok) = rt.load(emb)?;
                with_model!(&mut loaded, |m| {
                    let mut e = Embedder {
                        model: m,
                        tok: &tok,
                    };
                    let limit = cfg.data.train_limit;
                    let out = root.join(&out);
                    similarity_report(&mut e, emb, &outputs, &task_data, &lima, limit, &out)
                })
            })?;
        Ok(())
    }
}
