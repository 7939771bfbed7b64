//! The grid, step by step, as the paper ran it (john-hewitt/implicit-ins, README and
//! scripts/iclr2025): per model and trained setting, one run per swept epoch count at the
//! selection seed, each judged on the validation instructions against gpt-3.5-turbo's answers;
//! the best epoch count is then trained at every seed, answers the test instructions and is
//! judged against the instruction-tuned model of the same seed. The base model and the rule
//! adapter answer once (greedy decoding does not depend on the seed) and are judged against
//! every seed's instruction-tuned model. Response ranking scores the base and tuned models.
//!
//! Folder layout (relative to the results folder):
//! - `data/<task>.jsonl`, `data/val_reference.json`; `models/<name>/` for converted GGUF files
//! - `<model>/<setting>/seed<S>-e<E>/`: `train/epoch-E/` (weights), `val_outputs.json`,
//!   `val_annotations.json`, `test_outputs.json`, `vs_instruction.json`, `ranking.json`,
//!   `similarity.json`
//! - `<model>/<setting>/selection.json` (the sweep's win rates and the chosen epochs)
//! - `<model>/<base|rules...>/test_outputs.json`, `vs_instruction-seed<S>.json`,
//!   `base/ranking.json`
//!
//! Answering, ranking, the local judge and the embedder run on `[generate] device`
//! (inference.rs): the CPU, or one GPU opened once for the run.

#[path = "inference.rs"]
mod inference;

use super::config::{ExperimentConfig, JudgeSpec, Setting};
use super::layout::{self, read_reference};
use super::store::Store;
use crate::backend::Device;
use crate::bail;
use crate::data::{build_task, Mode, Task};
use crate::error::{Context, Result};
use crate::eval::write_json_atomic;
use crate::generate::instructions::{read_instructions, write_model_outputs, Instruction};
use crate::io::convert::convert_gguf_with;
use crate::optim::Schedule;
use crate::train::{train, TrainOptions};
use inference::{with_device, JudgeHandle, Runtime};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// Where a run goes and what it may skip.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub results: PathBuf,
}

struct Ctx<'a> {
    cfg: &'a ExperimentConfig,
    /// Where answering, ranking, judging and embedding run.
    rt: &'a Runtime,
    store: Store,
    judge: Option<JudgeHandle<'a>>,
    judge_id: Value,
    val: Vec<Instruction>,
    test: Vec<Instruction>,
    val_reference: String,
}

/// Runs (or continues) the whole grid, then writes the tables and figures.
pub fn run_experiment(cfg: &ExperimentConfig, opts: &RunOptions) -> Result<Store> {
    // First, so that a config asking for a GPU that is not there fails before any work.
    let rt = Runtime::open(cfg.generate.device)?;
    let store = Store::open(&opts.results, &cfg.name, &cfg.text)?;
    let mut ctx = Ctx {
        cfg,
        rt: &rt,
        store,
        judge: None,
        judge_id: Value::Null,
        val: Vec::new(),
        test: Vec::new(),
        val_reference: "data/val_reference.json".into(),
    };
    ctx.prepare_inputs()?;
    for m in 0..cfg.models.len() {
        ctx.model(m)?;
    }
    super::report::write_report(cfg, &ctx.store.root)?;
    Ok(ctx.store)
}

/// A trained model is identified by its training step (whose own fingerprint holds the base
/// model, data and hyperparameters), not by its weights, which selection may delete.
fn trained_id(run_dir: &str) -> Value {
    json!({"trained_by": format!("{run_dir}/train")})
}

fn limit(mut rows: Vec<Instruction>, n: Option<usize>) -> Vec<Instruction> {
    if let Some(n) = n {
        rows.truncate(n);
    }
    rows
}

impl Ctx<'_> {
    fn prepare_inputs(&mut self) -> Result<()> {
        let cfg = self.cfg;
        // Training sets, built once for every model.
        let mut tasks: Vec<Task> = cfg
            .settings
            .iter()
            .filter_map(Setting::training_task)
            .collect();
        tasks.dedup();
        for task in tasks {
            let source = cfg.source(task);
            let hash = self.store.hash_input(&source)?;
            let rel = format!("data/{task}.jsonl");
            self.store.step(
                &format!("data/{task}"),
                json!({"source": source.display().to_string(), "sha512": hash}),
                &[&rel],
                |root| {
                    let report = build_task(task, &source, &root.join(&rel))?;
                    eprintln!("{report}");
                    Ok(json!({"summary": report.to_string()}))
                },
            )?;
        }
        // Instruction sets and the validation reference.
        let val_path = cfg.data_file(&cfg.data.val);
        let test_path = cfg.data_file(&cfg.data.test);
        let ref_path = cfg.data_file(&cfg.data.val_reference);
        for p in [&val_path, &test_path, &ref_path] {
            self.store.hash_input(p)?;
        }
        self.val = limit(read_instructions(&val_path)?, cfg.data.val_limit);
        self.test = limit(read_instructions(&test_path)?, cfg.data.test_limit);
        let reference = read_reference(&ref_path)?;
        let rel = self.val_reference.clone();
        let fp = json!({"source": ref_path.display().to_string(), "sha512": self.store.hash_input(&ref_path)?});
        self.store.step("data/val_reference", fp, &[&rel], |root| {
            write_model_outputs(&root.join(&rel), &reference)?;
            Ok(json!({"rows": reference.len()}))
        })?;
        // Models given as GGUF files become folders under models/.
        let mut converted = Vec::new();
        for m in &cfg.models {
            converted.push(self.model_folder(&m.name, &m.path)?);
        }
        self.judge_id = match &cfg.judge {
            JudgeSpec::Local { path, max_len } => {
                let dir = self.model_folder("judge", path)?;
                let id = json!({"local": dir.display().to_string(), "weights": self.weights_hash(&dir)?, "max_len": max_len});
                with_device(id, cfg.generate.device)
            }
            JudgeSpec::Endpoint { url, model, .. } => json!({"endpoint": url, "model": model}),
        };
        if let Some(path) = &cfg.embedding_model {
            self.model_folder("embedding", path)?;
        }
        Ok(())
    }

    /// A model folder for `path`: itself, or for a `.gguf` file its conversion under models/.
    fn model_folder(&mut self, name: &str, path: &Path) -> Result<PathBuf> {
        if path.extension().is_none_or(|e| e != "gguf") {
            if !path.join("config.json").is_file() {
                bail!(
                    "{}: not a model folder (no config.json) or .gguf file",
                    path.display()
                );
            }
            return Ok(path.to_path_buf());
        }
        let hash = self.store.hash_input(path)?;
        let rel = format!("models/{name}");
        self.store.step(
            &format!("models/{name}/convert"),
            json!({"gguf": path.display().to_string(), "sha512": hash}),
            &[&format!("{rel}/config.json")],
            |root| {
                // The store redoes this step when the GGUF changed: the folder is its own.
                let report = convert_gguf_with(path, &root.join(&rel), true)?;
                Ok(json!({"summary": report.to_string()}))
            },
        )?;
        Ok(self.store.path(&rel))
    }

    fn weights_hash(&mut self, dir: &Path) -> Result<Value> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .with_context(|| format!("{}: cannot list", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension()
                    .is_some_and(|e| e == "safetensors" || e == "json")
            })
            .collect();
        files.sort();
        let mut out = serde_json::Map::new();
        for f in files {
            let h = self.store.hash_input(&f)?;
            out.insert(
                f.file_name().unwrap_or_default().to_string_lossy().into(),
                h.into(),
            );
        }
        Ok(Value::Object(out))
    }

    fn model(&mut self, m: usize) -> Result<()> {
        let cfg = self.cfg;
        let spec = &cfg.models[m];
        let base = self.model_folder(&spec.name, &spec.path)?;
        let base_id = self.weights_hash(&base)?;
        // 1. The validation sweep and the selection, per trained setting.
        let mut selected = Vec::new();
        for setting in cfg.trained_settings() {
            let mut sweep = Vec::new();
            for &e in &cfg.epochs {
                self.train_run(m, &base, &base_id, setting, cfg.selection_seed, e)?;
                let win = self.validate(m, setting, cfg.selection_seed, e)?;
                sweep.push((e, win));
            }
            let e = self.select(m, setting, &sweep)?;
            selected.push((setting, e));
        }
        // 2. Test outputs: trained settings at each seed, then base and rules once.
        for &seed in &cfg.seeds {
            for &(setting, e) in &selected {
                self.train_run(m, &base, &base_id, setting, seed, e)?;
                let dir = layout::run_dir(&spec.name, setting, seed, e);
                let ckpt = self
                    .store
                    .path(&layout::checkpoint(&spec.name, setting, seed, e));
                let id = trained_id(&dir);
                self.answer(
                    &format!("{dir}/test_outputs"),
                    &ckpt,
                    id,
                    None,
                    &self.test.clone(),
                    "test",
                )?;
            }
        }
        for &setting in cfg.settings.iter().filter(|s| !s.trains()) {
            let rel = layout::untrained_outputs(&spec.name, setting);
            let key = rel.trim_end_matches(".json").to_string();
            let rules = match setting {
                Setting::Rules(r) => Some(r),
                _ => None,
            };
            self.answer(
                &key,
                &base,
                base_id.clone(),
                rules,
                &self.test.clone(),
                "test",
            )?;
        }
        // 3. Judge everything against the instruction-tuned model of the same seed.
        let it_epochs = selected
            .iter()
            .find(|(s, _)| *s == Setting::Instruction)
            .map(|(_, e)| *e)
            .context("no instruction-tuned model (\"instruction\" must be in settings)")?;
        for &seed in &cfg.seeds {
            let reference = format!(
                "{}/test_outputs.json",
                layout::run_dir(&spec.name, Setting::Instruction, seed, it_epochs)
            );
            for &setting in &cfg.settings {
                let (outputs, out) = match selected.iter().find(|(s, _)| *s == setting) {
                    Some((Setting::Instruction, _)) => continue,
                    Some((_, e)) => {
                        let dir = layout::run_dir(&spec.name, setting, seed, *e);
                        (
                            format!("{dir}/test_outputs.json"),
                            format!("{dir}/vs_instruction.json"),
                        )
                    }
                    None => (
                        layout::untrained_outputs(&spec.name, setting),
                        layout::untrained_vs_instruction(&spec.name, setting, seed),
                    ),
                };
                self.judge_step(&out, &outputs, &reference)?;
            }
        }
        // 4. Response ranking.
        for &setting in &cfg.ranking.settings {
            if setting == Setting::Base {
                self.ranking(&layout::base_ranking(&spec.name), &base, base_id.clone())?;
                continue;
            }
            let Some(&(_, e)) = selected.iter().find(|(s, _)| *s == setting) else {
                continue;
            };
            for &seed in &cfg.seeds {
                let dir = layout::run_dir(&spec.name, setting, seed, e);
                let ckpt = self
                    .store
                    .path(&layout::checkpoint(&spec.name, setting, seed, e));
                self.ranking(&format!("{dir}/ranking.json"), &ckpt, trained_id(&dir))?;
            }
        }
        // 5. Figure 5's similarities, for single-task models at the first seed.
        if let Some(emb) = &cfg.embedding_model {
            let emb = self.model_folder("embedding", emb)?;
            let seed = cfg.seeds[0];
            for &(setting, e) in &selected {
                let Setting::SingleTask(task) = setting else {
                    continue;
                };
                let dir = layout::run_dir(&spec.name, setting, seed, e);
                self.similarity(&emb, &dir, task)?;
            }
        }
        Ok(())
    }

    /// Trains (or continues training) one (setting, seed, epochs) run; keeps only its final
    /// checkpoint's weights.
    fn train_run(
        &mut self,
        m: usize,
        base: &Path,
        base_id: &Value,
        setting: Setting,
        seed: u64,
        epochs: usize,
    ) -> Result<()> {
        let cfg = self.cfg;
        let spec = &cfg.models[m];
        let task = setting.training_task().context("setting does not train")?;
        let data = self.store.path(&format!("data/{task}.jsonl"));
        let dir = layout::run_dir(&spec.name, setting, seed, epochs);
        let t = &cfg.train;
        let r = &t.recipe;
        let fp = json!({
            "model": base_id, "data": self.store.hash_input(&data)?, "train_limit": cfg.data.train_limit,
            "lr": spec.lr, "epochs": epochs, "seed": seed, "batch_size": r.batch_size,
            "micro_batch": r.micro_batch, "max_len": r.max_len, "warmup": r.warmup,
            "weight_decay": r.weight_decay, "max_grad_norm": r.max_grad_norm,
            "precision": format!("{:?}", r.precision),
        });
        // Added only off the CPU and off the linear schedule, so that runs made before these
        // keys existed stay valid.
        let mut fp = fp;
        if t.device != Device::Cpu {
            fp["device"] = json!(format!("{:?}", t.device));
        }
        if r.schedule != Schedule::Linear {
            fp["schedule"] = json!(format!("{:?}", r.schedule));
        }
        let ckpt = layout::checkpoint(&spec.name, setting, seed, epochs);
        self.store
            .step(&format!("{dir}/train"), fp, &[&ckpt], |root| {
                let out = root.join(&dir).join("train");
                let opts = TrainOptions {
                    model: base.to_path_buf(),
                    data,
                    mode: Mode::Instruction,
                    epochs,
                    lr: spec.lr,
                    recipe: t.recipe,
                    max_examples: cfg.data.train_limit,
                    seed,
                    device: t.device,
                    checkpointing: t.checkpointing,
                    optimizer_state: t.optimizer_state,
                    memory_report: false,
                    data_parallel: None,
                    out: out.clone(),
                    resume: true,
                    progress: true,
                };
                let summary = train(&opts)?;
                // Earlier epochs' checkpoints served resumption only; the optimizer state too.
                for e in 1..epochs {
                    let d = out.join(format!("epoch-{e}"));
                    if d.is_dir() {
                        std::fs::remove_dir_all(&d)
                            .with_context(|| format!("{}: cannot remove", d.display()))?;
                    }
                }
                let _ =
                    std::fs::remove_file(out.join(format!("epoch-{epochs}/optimizer.safetensors")));
                Ok(json!({"steps": summary.steps, "final_loss": summary.final_loss}))
            })?;
        Ok(())
    }

    fn validate(&mut self, m: usize, setting: Setting, seed: u64, epochs: usize) -> Result<f64> {
        let name = self.cfg.models[m].name.clone();
        let dir = layout::run_dir(&name, setting, seed, epochs);
        let ckpt = self
            .store
            .path(&layout::checkpoint(&name, setting, seed, epochs));
        let id = trained_id(&dir);
        self.answer(
            &format!("{dir}/val_outputs"),
            &ckpt,
            id,
            None,
            &self.val.clone(),
            "val",
        )?;
        let r = self.judge_step(
            &format!("{dir}/val_annotations.json"),
            &format!("{dir}/val_outputs.json"),
            &self.val_reference.clone(),
        )?;
        r["win_rate"]
            .as_f64()
            .context("validation step recorded no win rate")
    }

    /// The paper's choice: the swept epoch count with the highest validation win rate (the
    /// smallest on ties).
    fn select(&mut self, m: usize, setting: Setting, sweep: &[(usize, f64)]) -> Result<usize> {
        let name = &self.cfg.models[m].name;
        let best = sweep
            .iter()
            .fold(None::<(usize, f64)>, |best, &(e, w)| match best {
                Some((_, bw)) if bw >= w => best,
                _ => Some((e, w)),
            })
            .context("empty epoch sweep")?;
        let rel = layout::selection(name, setting);
        let fp = json!({"sweep": sweep});
        let keep = self.cfg.keep_checkpoints;
        let seeds = self.cfg.seeds.clone();
        let selection_seed = self.cfg.selection_seed;
        self.store.step(&rel.replace(".json", ""), fp, &[&rel], |root| {
            let value = json!({
                "setting": setting.name(),
                "selection_seed": selection_seed,
                "validation_win_rates": sweep.iter().map(|(e, w)| json!({"epochs": e, "win_rate": w})).collect::<Vec<_>>(),
                "selected_epochs": best.0,
            });
            write_json_atomic(&root.join(&rel), &value)?;
            // The swept runs that lost give their weights back (their outputs stay), unless a
            // test seed is the selection seed and needs them.
            if !keep {
                for &(e, _) in sweep.iter().filter(|(e, _)| *e != best.0) {
                    let ckpt = root.join(layout::checkpoint(name, setting, selection_seed, e));
                    let weights = ckpt.join("model.safetensors");
                    if weights.exists() && !seeds.is_empty() {
                        std::fs::remove_file(&weights)
                            .with_context(|| format!("{}: cannot remove", weights.display()))?;
                        std::fs::write(ckpt.join("PRUNED"), "weights removed after epoch selection\n")
                            .with_context(|| format!("{}: cannot write", ckpt.display()))?;
                    }
                }
            }
            Ok(json!({"selected_epochs": best.0, "validation_win_rate": best.1}))
        })?;
        Ok(best.0)
    }
}
