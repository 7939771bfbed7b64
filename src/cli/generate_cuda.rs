//! `implicit generate --device cuda`: the same prompts, decoding rules, EOS handling and
//! outputs as the CPU path, with the model's forward pass on the GPU
//! (`backend::cuda::CudaTransformer`). Logits come back to the host as f32 each step; the token
//! is chosen there exactly as `generate::engine` does (the same `Sampler`, `greedy_pick`, and
//! the rule adapter through its `ScoreAdjuster`). `--instructions` decodes with continuous
//! batching, as the CPU path does.

use super::{default_generator, load_adapter, GenerateArgs};
use crate::backend::cuda::{CudaAvailability, CudaBackend, CudaKvCache, CudaTransformer};
use crate::bail;
use crate::error::{Context, Result};
use crate::generate::detok::{decode_continuation, IncrementalDecoder};
use crate::generate::instructions::{read_instructions, write_model_outputs, ModelOutput};
use crate::generate::{adapted_log_probs, greedy_pick, Sampler, ScoreAdjuster, SequenceScores};
use crate::io::tokenizer::{chat_prompt, Tokenizer};
use crate::model::{Logits, ModelConfig};
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

/// Opens the GPU (or fails with the reason none can be used), loads the model onto it and runs
/// the prompt or the instruction set.
pub(super) fn run(args: &GenerateArgs) -> Result<()> {
    let gpu = match CudaBackend::open()? {
        CudaAvailability::Ready(gpu) => gpu,
        CudaAvailability::NoGpu(reason) => bail!("--device cuda: no usable GPU: {reason}"),
    };
    let t0 = Instant::now();
    let mut model = CudaTransformer::from_dir(&gpu, &args.model)?;
    let tok = Tokenizer::load(&args.model, &model.config)?;
    eprintln!(
        "loaded {} ({} parameters) onto {} in {:.2}s",
        args.model.display(),
        model.config.num_parameters(),
        gpu.device_name(),
        t0.elapsed().as_secs_f64(),
    );
    let adapter = load_adapter(args.adapter.as_deref(), args.rules, &tok)?;
    let adjuster = adapter
        .clone()
        .map(|a| Arc::new(a) as Arc<dyn ScoreAdjuster>);
    match (&args.prompt, &args.instructions, &args.out) {
        (Some(prompt), _, _) => run_prompt(args, prompt, &mut model, &tok, adjuster),
        (None, Some(set), Some(out)) => {
            let name = args.generator.clone().unwrap_or_else(|| {
                default_generator(&args.model, adapter.as_ref(), args.adapter.as_deref())
            });
            run_instructions(args, set, out, &name, &mut model, &tok, adjuster)
        }
        _ => bail!("give --prompt, or --instructions with --out"),
    }
}

/// One sequence being decoded on the GPU: `generate::engine::Sequence`'s rules (prompt checks,
/// token choice, stop and length conditions) with a GPU KV cache.
struct GpuSequence {
    cache: CudaKvCache,
    prompt: Vec<u32>,
    pending: Vec<u32>,
    generated: Vec<u32>,
    max_new_tokens: usize,
    context_len: usize,
    stop_tokens: Vec<u32>,
    sampler: Sampler,
    scores: Option<Box<dyn SequenceScores>>,
    done: bool,
}

impl GpuSequence {
    fn new(
        c: &ModelConfig,
        prompt: Vec<u32>,
        max_new_tokens: usize,
        stop_tokens: Vec<u32>,
        sampler: Sampler,
        adjuster: Option<&Arc<dyn ScoreAdjuster>>,
    ) -> Result<GpuSequence> {
        if prompt.is_empty() {
            bail!("the prompt has no tokens");
        }
        if let Some(&bad) = prompt.iter().find(|&&t| t as usize >= c.vocab_size) {
            bail!(
                "token id {bad} is outside the vocabulary of {} tokens",
                c.vocab_size
            );
        }
        if prompt.len() >= c.max_position_embeddings {
            bail!(
                "the prompt has {} tokens; the model's context is {} tokens",
                prompt.len(),
                c.max_position_embeddings
            );
        }
        Ok(GpuSequence {
            cache: CudaKvCache::new(c),
            scores: adjuster.map(|a| a.start(&prompt, c.vocab_size)),
            pending: prompt.clone(),
            prompt,
            generated: Vec::new(),
            done: max_new_tokens == 0,
            max_new_tokens,
            context_len: c.max_position_embeddings,
            stop_tokens,
            sampler,
        })
    }

    /// Chooses the next token from this step's logits and records it (as `Sequence::choose`
    /// with no top logprobs).
    fn choose(&mut self, logits: &[f32]) -> u32 {
        let scores = self.scores.as_mut().map(|s| s.scores());
        let token = if self.sampler.is_greedy() {
            greedy_pick(logits, scores).token
        } else {
            let lp = adapted_log_probs(logits, scores);
            self.sampler.sample(&lp)
        };
        if let Some(s) = self.scores.as_mut() {
            s.accept(token);
        }
        self.generated.push(token);
        self.pending = vec![token];
        if self.stop_tokens.contains(&token)
            || self.generated.len() >= self.max_new_tokens
            || self.cache.len() + 1 >= self.context_len
        {
            self.done = true;
        }
        token
    }
}

/// Decodes every sequence with continuous batching, as `generate::run_batched`: at most
/// `max_batch` together, one forward per step over all their pending tokens (new prompts'
/// prefill and the others' decode tokens alike); a sequence is made (its prompt checked, the
/// adjuster's state started) when it joins the batch. `on_token(i, token)` sees each token as it
/// is chosen, `on_done(i, seq)` each sequence as it ends.
fn decode_batched(
    model: &mut CudaTransformer<'_>,
    sequences: impl IntoIterator<Item = Result<GpuSequence>>,
    max_batch: usize,
    mut on_token: impl FnMut(usize, u32) -> Result<()>,
    mut on_done: impl FnMut(usize, GpuSequence) -> Result<()>,
) -> Result<()> {
    let mut queue = sequences.into_iter().enumerate();
    let mut live: Vec<(usize, GpuSequence)> = Vec::new();
    let max_batch = max_batch.max(1);
    loop {
        while live.len() < max_batch {
            let Some((i, seq)) = queue.next() else {
                break;
            };
            let seq = seq.map_err(|e| crate::Error(format!("prompt {i}: {e}")))?;
            if seq.done {
                on_done(i, seq)?;
            } else {
                live.push((i, seq));
            }
        }
        if live.is_empty() {
            return Ok(());
        }
        let pending: Vec<Vec<u32>> = live
            .iter_mut()
            .map(|(_, s)| std::mem::take(&mut s.pending))
            .collect();
        let logits = {
            let mut batch: Vec<(&[u32], &mut CudaKvCache)> = live
                .iter_mut()
                .zip(&pending)
                .map(|((_, s), p)| (p.as_slice(), &mut s.cache))
                .collect();
            model.forward(&mut batch, Logits::Last)?
        };
        for ((i, seq), l) in live.iter_mut().zip(&logits) {
            let token = seq.choose(l);
            on_token(*i, token)?;
        }
        let mut still = Vec::with_capacity(live.len());
        for (i, seq) in live.drain(..) {
            if seq.done {
                on_done(i, seq)?;
            } else {
                still.push((i, seq));
            }
        }
        live = still;
    }
}

fn run_prompt(
    args: &GenerateArgs,
    prompt_text: &str,
    model: &mut CudaTransformer<'_>,
    tok: &Tokenizer,
    adjuster: Option<Arc<dyn ScoreAdjuster>>,
) -> Result<()> {
    let text = if args.chat {
        chat_prompt(prompt_text)
    } else {
        prompt_text.to_string()
    };
    let prompt = tok.encode_prompt(&text)?;
    eprintln!("prompt of {} tokens", prompt.len());
    let seq = GpuSequence::new(
        &model.config,
        prompt.clone(),
        args.max_new_tokens,
        tok.eos.clone(),
        Sampler::new(args.temperature, args.seed),
        adjuster.as_ref(),
    )?;
    let mut stream = IncrementalDecoder::new(&prompt);
    let mut stdout = std::io::stdout().lock();
    if !args.chat {
        write!(stdout, "{prompt_text}").context("stdout")?;
    }
    let t1 = Instant::now();
    let mut first_token_s = None;
    let mut count = 0usize;
    decode_batched(
        model,
        [Ok(seq)],
        1,
        |_, token| {
            first_token_s.get_or_insert(t1.elapsed().as_secs_f64());
            count += 1;
            if !tok.is_eos(token) {
                write!(stdout, "{}", stream.push(tok, token)?).context("stdout")?;
                stdout.flush().context("stdout")?;
            }
            Ok(())
        },
        |_, _| Ok(()),
    )?;
    writeln!(stdout, "{}", stream.flush(tok)?).context("stdout")?;
    let total = t1.elapsed().as_secs_f64();
    let prefill = first_token_s.unwrap_or(total);
    eprintln!(
        "{count} tokens; prefill {:.1} tokens/s, decode {:.1} tokens/s",
        prompt.len() as f64 / prefill.max(1e-9),
        count.saturating_sub(1) as f64 / (total - prefill).max(1e-9)
    );
    Ok(())
}

fn run_instructions(
    args: &GenerateArgs,
    set: &Path,
    out: &Path,
    generator: &str,
    model: &mut CudaTransformer<'_>,
    tok: &Tokenizer,
    adjuster: Option<Arc<dyn ScoreAdjuster>>,
) -> Result<()> {
    let mut rows = read_instructions(set)?;
    if let Some(n) = args.limit {
        rows.truncate(n);
    }
    let dataset_default = set
        .file_stem()
        .map_or("instructions".into(), |s| s.to_string_lossy().into_owned());
    eprintln!(
        "{} instructions from {}, batch size {}, at most {} new tokens each (GPU)",
        rows.len(),
        set.display(),
        args.batch_size,
        args.max_new_tokens
    );
    let sampler = Sampler::new(args.temperature, args.seed);
    let prompts = rows
        .iter()
        .map(|r| tok.encode_prompt(&chat_prompt(&r.instruction)))
        .collect::<Result<Vec<_>>>()?;
    let config = model.config.clone();
    let sequences = prompts.iter().enumerate().map(|(i, prompt)| {
        GpuSequence::new(
            &config,
            prompt.clone(),
            args.max_new_tokens,
            tok.eos.clone(),
            sampler.for_sequence(i),
            adjuster.as_ref(),
        )
    });
    let total = rows.len();
    let mut texts: Vec<Option<String>> = vec![None; total];
    let start = Instant::now();
    let mut last_report: Option<Instant> = None;
    let tokens = std::cell::Cell::new(0usize);
    let mut done = 0usize;
    // done/total, tokens/s and ETA on stderr, at most twice a second (and once at the end).
    let mut report = |done: usize, force: bool| {
        let now = Instant::now();
        if !force && last_report.is_some_and(|t| (now - t).as_secs_f64() < 0.5) {
            return;
        }
        last_report = Some(now);
        let secs = start.elapsed().as_secs_f64();
        let eta = if done > 0 {
            format!("{:.0}s", secs / done as f64 * (total - done) as f64)
        } else {
            "?".into()
        };
        eprintln!(
            "[{done}/{total}] {} tokens, {:.1} tokens/s, elapsed {secs:.0}s, ETA {eta}",
            tokens.get(),
            tokens.get() as f64 / secs.max(1e-9)
        );
    };
    decode_batched(
        model,
        sequences,
        args.batch_size as usize,
        |_, _| {
            tokens.set(tokens.get() + 1);
            Ok(())
        },
        |i, seq| {
            let body: Vec<u32> = seq
                .generated
                .iter()
                .copied()
                .filter(|&t| !tok.is_eos(t))
                .collect();
            texts[i] = Some(decode_continuation(tok, &seq.prompt, &body)?);
            done += 1;
            report(done, false);
            Ok(())
        },
    )?;
    report(done, true);
    let outputs: Vec<ModelOutput> = rows
        .iter()
        .zip(texts)
        .map(|(r, text)| ModelOutput {
            instruction: r.instruction.clone(),
            output: text.unwrap_or_default(),
            generator: generator.to_string(),
            dataset: r.dataset.clone().unwrap_or_else(|| dataset_default.clone()),
        })
        .collect();
    write_model_outputs(out, &outputs)?;
    eprintln!("wrote {} outputs to {}", outputs.len(), out.display());
    Ok(())
}
