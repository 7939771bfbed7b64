//! The generic entry points (`model::LanguageModel`) on the GPU model against the CPU model:
//! greedy decoding through the shared engine (`generate`, `run_batched`) and response ranking
//! (`run_ranking`) on stories260k. The GPU runs bf16 weights and activations, so tokens agree
//! with the CPU's for a while rather than for ever (as tests/cuda_model.rs's own greedy check
//! allows), while the engine on the GPU must give exactly what a plain greedy loop over
//! `CudaTransformer::forward` gives. Without a GPU each test prints "SKIPPED (no GPU): reason"
//! and passes.
#![cfg(feature = "cuda")]

mod common;

use common::gpu::gpu;
use implicit::backend::cpu::ops;
use implicit::data::read_messages_jsonl;
use implicit::eval::ranking::{run_ranking, RankingOptions};
use implicit::generate::{
    generate, greedy_pick, run_batched, Finished, GenerateOptions, Sampler, SequenceRequest,
};
use implicit::io::tokenizer::Tokenizer;
use implicit::model::cuda::CudaTransformer;
use implicit::model::{LanguageModel, Logits, Transformer};
use std::path::Path;

/// Greedy tokens must agree with the CPU's on at least this many leading tokens.
const AGREE: usize = 10;

/// Each request's tokens, decoded 2 at a time by the shared engine on any model.
fn decode_batched<M: LanguageModel>(model: M, requests: &[SequenceRequest]) -> Vec<Vec<u32>> {
    let mut outs = vec![Vec::new(); requests.len()];
    let done = |i: usize, f: Finished| {
        outs[i] = f.tokens;
        Ok(())
    };
    run_batched(model, requests.to_vec(), 2, |_, _| Ok(()), done).unwrap();
    outs
}

fn leading_agreement(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

#[test]
fn engine_on_the_gpu_decodes_greedy_as_the_cpu() {
    let Some(gpu) = gpu() else { return };
    let Some(dir) = common::stories260k("cuda-generate-engine") else {
        return;
    };
    let cpu = Transformer::load(&dir).unwrap();
    let mut model = CudaTransformer::from_dir(gpu, &dir).unwrap();
    let bos = cpu.config.bos_token_id.unwrap_or(1);
    let n = 30;
    let opts = GenerateOptions {
        max_new_tokens: n,
        stop_tokens: vec![],
    };
    let want = generate(&cpu, &[bos], &opts, &mut Sampler::greedy(), |_| Ok(())).unwrap();
    let got = generate(
        &mut model,
        &[bos],
        &opts,
        &mut Sampler::greedy(),
        |_| Ok(()),
    )
    .unwrap();
    assert_eq!(got.len(), n);

    // The engine adds nothing to the GPU's arithmetic: a plain greedy loop gives the same.
    let mut cache = model.new_cache();
    let mut plain = Vec::new();
    let mut next = vec![bos];
    for _ in 0..n {
        let logits = model
            .forward(&mut [(&next, &mut cache)], Logits::Last)
            .unwrap()
            .remove(0);
        let token = ops::argmax(&logits) as u32;
        plain.push(token);
        next = vec![token];
    }
    assert_eq!(
        got, plain,
        "the engine's greedy tokens differ from a plain loop"
    );
    let same = leading_agreement(&got, &want);
    eprintln!("greedy: the first {same} of {n} tokens agree\n cpu {want:?}\n gpu {got:?}");
    assert!(same >= AGREE, "only the first {same} greedy tokens agree");

    // Continuous batching on the GPU (ragged prompts, 2 slots for 3 sequences, EOS stops).
    let tok = Tokenizer::load(&dir, &cpu.config).unwrap();
    let prompts: Vec<Vec<u32>> = [
        "Once upon a time",
        "The cat",
        "Lily and Tom went to the park",
    ]
    .iter()
    .map(|p| tok.encode_prompt(p).unwrap())
    .collect();
    let requests: Vec<SequenceRequest> = prompts
        .iter()
        .map(|p| SequenceRequest::greedy(p.clone(), 20, tok.eos.clone()))
        .collect();
    let cpu_out = decode_batched(&cpu, &requests);
    let gpu_out = decode_batched(&mut model, &requests);
    for (i, (c, g)) in cpu_out.iter().zip(&gpu_out).enumerate() {
        let same = leading_agreement(c, g);
        eprintln!("prompt {i}: the first {same} tokens agree\n cpu {c:?}\n gpu {g:?}");
        assert!(
            same >= AGREE.min(c.len()),
            "prompt {i}: only {same} tokens agree"
        );
    }
}

#[test]
fn ranking_on_the_gpu_matches_the_cpu() {
    let Some(gpu) = gpu() else { return };
    let Some(dir) = common::stories260k("cuda-generate-ranking") else {
        return;
    };
    let data = common::data_dir("cuda-generate-ranking").unwrap();
    let cpu = Transformer::load(&dir).unwrap();
    let tok = Tokenizer::load(&dir, &cpu.config).unwrap();
    let examples = read_messages_jsonl(&data.join("lima/lima_data.jsonl")).unwrap();
    let opts = RankingOptions {
        max_examples: Some(16),
        max_len: 512,
        bootstrap: 200,
        ..RankingOptions::default()
    };
    let want = run_ranking(&cpu, &tok, &examples, &opts).unwrap();
    let mut model = CudaTransformer::from_dir(gpu, &dir).unwrap();
    let got = run_ranking(&mut model, &tok, &examples, &opts).unwrap();
    eprintln!(
        "ranking: cpu {}/{} = {:.3}, gpu {}/{} = {:.3}",
        want.wins, want.pairs, want.fraction, got.wins, got.pairs, got.fraction
    );
    // The same draws and pairs; scores within bf16's reach; the accuracy alike. Which pairs are
    // skipped (no response token within max_len: instructions 3 and 9 here) depends on the
    // encodings alone, so both sides skip the same ones, and only scored ones are compared.
    assert_eq!(
        (
            got.n_instructions,
            got.pairs,
            got.self_draws_dropped,
            got.skipped_pairs,
            got.skipped_instructions,
            got.no_loss_sequences
        ),
        (
            want.n_instructions,
            want.pairs,
            want.self_draws_dropped,
            want.skipped_pairs,
            want.skipped_instructions,
            want.no_loss_sequences
        )
    );
    let rel = |a: f64, b: f64| (a - b).abs() / b.abs().max(1e-12);
    let mut flipped = 0;
    for (g, w) in got.instructions.iter().zip(&want.instructions) {
        assert_eq!(
            (g.pairs, g.skipped_pairs, g.true_score.is_some()),
            (w.pairs, w.skipped_pairs, w.true_score.is_some()),
            "instruction {}: skipped differently",
            w.index
        );
        if let (Some(gt), Some(wt)) = (g.true_score, w.true_score) {
            assert!(
                rel(gt, wt) < 0.05,
                "instruction {}: true score {gt} on the GPU, {wt} on the CPU",
                w.index
            );
        }
        for (gn, wn) in g.negatives.iter().zip(&w.negatives) {
            assert_eq!(gn.pool_index, wn.pool_index);
            assert_eq!(gn.score.is_some(), wn.score.is_some());
            if let (Some(gs), Some(ws)) = (gn.score, wn.score) {
                assert!(rel(gs, ws) < 0.05, "{gs} vs {ws}");
            }
            flipped += usize::from(gn.true_wins != wn.true_wins);
        }
    }
    assert!(
        flipped * 10 <= want.pairs,
        "{flipped} of {} pairs change their winner",
        want.pairs
    );
    assert!(
        (got.fraction - want.fraction).abs() <= 0.1,
        "accuracy {:.3} on the GPU, {:.3} on the CPU",
        got.fraction,
        want.fraction
    );
}

/// BOS then `n − 1` ids spread over stories260k's vocabulary (512), varied by `salt`.
fn made_up_prompt(bos: u32, n: usize, salt: u32) -> Vec<u32> {
    std::iter::once(bos)
        .chain((1..n as u32).map(|i| 3 + (i * 37 + salt * 11) % 450))
        .collect()
}

/// [`decode_schedule`]'s prompts for the model in `dir`: BOS alone, then 5, 60 and 3 tokens.
fn schedule_prompts(dir: &Path) -> [Vec<u32>; 4] {
    let bos = Transformer::load(dir)
        .unwrap()
        .config
        .bos_token_id
        .unwrap_or(1);
    let ids = |n, salt| made_up_prompt(bos, n, salt);
    [vec![bos], ids(5, 1), ids(60, 2), ids(3, 3)]
}

/// Asserts that every logits row of `got` equals `want`'s (`whose`: whose logits those are)
/// bit for bit.
fn assert_same_bits(got: &[Vec<f32>], want: &[Vec<f32>], whose: &str) {
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let differ = g
            .iter()
            .zip(w)
            .filter(|(a, b)| a.to_bits() != b.to_bits())
            .count();
        assert_eq!(
            differ, 0,
            "logits row {i}: {differ} values differ from {whose}"
        );
    }
}

/// A fixed schedule of forwards over GPU caches, greedy tokens fed back, every step's logits
/// kept: a 1-token prompt alone (a decode-shaped first step on an empty cache), two prompts
/// joining it (ragged, eager), 70 steps of 3 sequences (the 60-token prompt's cache grows past
/// its first 64 positions, and moves), one sequence leaving (batch 2), a new one joining, 10
/// steps of 3 sequences with a different set of caches than before, then wider batches: 12
/// rows (over 8, so the products take kernels/gemm_skinny.cu rather than the gemv one) and
/// 140 rows (140 × 8 heads ≥ 8 × 132 pairs: on an H100 the attention takes one warp per pair
/// instead of splitting keys over a block).
fn decode_schedule(model: &mut CudaTransformer, prompts: &[Vec<u32>; 4]) -> Vec<Vec<f32>> {
    let bos = prompts[0][0];
    let (wide, wider) = (4..16, 16..156);
    let mut next: Vec<Vec<u32>> = prompts.to_vec();
    next.extend((4..wider.end).map(|i| made_up_prompt(bos, 2 + i % 5, i as u32)));
    let mut caches: Vec<_> = next.iter().map(|_| model.new_cache()).collect();
    let mut all = Vec::new();
    let mut run = |model: &mut CudaTransformer, seqs: &[usize], caches: &mut Vec<_>| {
        let mut taken: Vec<(usize, implicit::backend::cuda::CudaKvCache)> = seqs
            .iter()
            .map(|&s| (s, std::mem::replace(&mut caches[s], model.new_cache())))
            .collect();
        let logits = {
            let mut batch: Vec<(&[u32], &mut _)> = taken
                .iter_mut()
                .map(|(s, c)| (next[*s].as_slice(), c))
                .collect();
            model.forward(&mut batch, Logits::Last).unwrap()
        };
        for ((s, cache), l) in taken.into_iter().zip(logits) {
            next[s] = vec![ops::argmax(&l) as u32];
            caches[s] = cache;
            all.push(l);
        }
    };
    run(model, &[0], &mut caches);
    run(model, &[0, 1, 2], &mut caches);
    for _ in 0..70 {
        run(model, &[0, 1, 2], &mut caches);
    }
    for _ in 0..10 {
        run(model, &[0, 2], &mut caches);
    }
    run(model, &[0, 2, 3], &mut caches);
    for _ in 0..10 {
        run(model, &[3, 0, 2], &mut caches);
    }
    for seqs in [wide, wider] {
        let seqs: Vec<usize> = seqs.collect();
        for _ in 0..4 {
            run(model, &seqs, &mut caches);
        }
    }
    assert!(
        caches[2].capacity() > 64,
        "the long prompt's cache never grew"
    );
    all
}

#[test]
fn decode_graphs_give_the_eager_logits_bit_for_bit() {
    let Some(gpu) = gpu() else { return };
    let Some(dir) = common::stories260k("cuda-decode-graphs") else {
        return;
    };
    let prompts = schedule_prompts(&dir);

    // The eager reference first, so that nothing the graphs might leave behind in the shared
    // backend reaches it.
    let mut model = CudaTransformer::from_dir(gpu, &dir).unwrap();
    model.decode_graphs = false;
    let eager = decode_schedule(&mut model, &prompts);
    assert!(model.captured_batch_sizes().is_empty());
    model.decode_graphs = true;
    let graphed = decode_schedule(&mut model, &prompts);
    assert_eq!(
        model.captured_batch_sizes(),
        vec![1, 2, 3, 12, 140],
        "every decode step of batch 1, 2, 3, 12 and 140 should have gone through a graph"
    );
    assert_same_bits(&graphed, &eager, "the eager step's");
}

/// The norms fused into the products of batches of at most 8 rows change no bit over the whole
/// decode schedule (batches 1, 2, 3 fused; 12 and 140 take the separate norms either way).
#[test]
fn fused_norms_give_the_separate_norms_logits_over_the_decode_schedule() {
    let Some(gpu) = gpu() else { return };
    let Some(dir) = common::stories260k("cuda-fused-norms") else {
        return;
    };
    let prompts = schedule_prompts(&dir);
    let mut model = CudaTransformer::from_dir(gpu, &dir).unwrap();
    model.set_fused_norms(false);
    let separate = decode_schedule(&mut model, &prompts);
    model.set_fused_norms(true);
    assert!(
        model.captured_batch_sizes().is_empty(),
        "switching the fusion drops the graphs"
    );
    let fused = decode_schedule(&mut model, &prompts);
    assert_same_bits(&fused, &separate, "the separate norms'");
}

#[test]
fn decode_graphs_over_their_memory_budget_drop_the_least_recently_used() {
    let Some(gpu) = gpu() else { return };
    let Some(dir) = common::stories260k("cuda-decode-graph-budget") else {
        return;
    };
    let bos = Transformer::load(&dir)
        .unwrap()
        .config
        .bos_token_id
        .unwrap_or(1);
    // Decode steps of these batch sizes (the first sequences of 3, each fed its greedy token).
    let sizes = [3, 2, 3, 1, 1, 2];
    let run = |model: &mut CudaTransformer, after_step: &mut dyn FnMut(&CudaTransformer, usize)| {
        let mut caches: Vec<_> = (0..3).map(|_| model.new_cache()).collect();
        let mut next = vec![vec![bos]; 3];
        let mut all = Vec::new();
        for &n in &sizes {
            let logits = {
                let mut batch: Vec<(&[u32], &mut _)> = next[..n]
                    .iter()
                    .map(Vec::as_slice)
                    .zip(caches.iter_mut())
                    .collect();
                model.forward(&mut batch, Logits::Last).unwrap()
            };
            for (s, l) in logits.into_iter().enumerate() {
                next[s] = vec![ops::argmax(&l) as u32];
                all.push(l);
            }
            after_step(model, n);
        }
        all
    };
    let mut model = CudaTransformer::from_dir(gpu, &dir).unwrap();
    model.decode_graphs = false;
    let eager = run(&mut model, &mut |_, _| {});

    // No budget: only the graph of the step just run is kept.
    model.decode_graphs = true;
    model.decode_graph_budget = 0;
    let graphed = run(&mut model, &mut |model, n| {
        assert_eq!(
            model.captured_batch_sizes(),
            vec![n],
            "budget 0, after a step of {n}"
        );
    });
    // The default budget holds all three.
    model.decode_graph_budget = 1 << 30;
    run(&mut model, &mut |_, _| {});
    assert_eq!(model.captured_batch_sizes(), vec![1, 2, 3]);

    let bits =
        |rows: &[Vec<f32>]| -> Vec<u32> { rows.concat().iter().map(|x| x.to_bits()).collect() };
    assert!(
        bits(&graphed) == bits(&eager),
        "steps recaptured after eviction give other logits than the eager path"
    );
}

#[test]
fn greedy_picks_on_the_gpu_are_the_hosts_argmax() {
    let Some(gpu) = gpu() else { return };
    let Some(dir) = common::stories260k("cuda-greedy-picks") else {
        return;
    };
    let cpu = Transformer::load(&dir).unwrap();
    let bos = cpu.config.bos_token_id.unwrap_or(1);
    let ids = |n, salt| made_up_prompt(bos, n, salt);
    let mut model = CudaTransformer::from_dir(gpu, &dir).unwrap();
    let mut next = [vec![bos], ids(7, 1), ids(40, 2)];
    let mut with_logits: Vec<_> = (0..3).map(|_| model.new_cache()).collect();
    let mut with_picks: Vec<_> = (0..3).map(|_| model.new_cache()).collect();
    // A ragged prefill (eager), 20 graphed decode steps, then 5 eager ones.
    for step in 0..26 {
        model.decode_graphs = step <= 20;
        let logits = {
            let mut batch: Vec<(&[u32], &mut _)> = next
                .iter()
                .map(Vec::as_slice)
                .zip(with_logits.iter_mut())
                .collect();
            model.forward(&mut batch, Logits::Last).unwrap()
        };
        let picks = {
            let mut batch: Vec<(&[u32], &mut _)> = next
                .iter()
                .map(Vec::as_slice)
                .zip(with_picks.iter_mut())
                .collect();
            model.forward_greedy(&mut batch).unwrap()
        };
        for (s, (l, &(token, logprob))) in logits.iter().zip(&picks).enumerate() {
            let want = greedy_pick(l, None);
            assert_eq!(token, want.token, "step {step}, sequence {s}: token");
            assert!(
                (logprob - want.logprob).abs() <= 1e-4 * want.logprob.abs().max(1.0),
                "step {step}, sequence {s}: log-probability {logprob} on the GPU, {} on the host",
                want.logprob
            );
            next[s] = vec![token];
        }
    }
    assert_eq!(model.captured_batch_sizes(), vec![3]);
}

/// `implicit serve --device cuda` on stories260k: the models list, a greedy completion whose
/// text is the engine's greedy decoding on the GPU (`generate` over `CudaTransformer`, the same
/// single-sequence forward as the server's scheduler), the same text streamed, an unknown
/// model's 404, and concurrent requests all answered (their batches differ, and bf16 sums
/// with them, so only the single-sequence text is compared).
#[test]
fn serve_on_the_gpu_answers_as_the_engine_on_the_gpu() {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpStream;
    use std::process::{Command, Stdio};
    use std::time::Duration;

    let Some(gpu) = gpu() else { return };
    let Some(dir) = common::stories260k("cuda-serve") else {
        return;
    };
    let tok = Tokenizer::load(&dir, &Transformer::load(&dir).unwrap().config).unwrap();
    let mut model = CudaTransformer::from_dir(gpu, &dir).unwrap();
    let prompt = tok.encode_prompt("Once upon a time").unwrap();
    let opts = GenerateOptions {
        max_new_tokens: 30,
        stop_tokens: tok.eos.clone(),
    };
    let want = generate(&mut model, &prompt, &opts, &mut Sampler::greedy(), |_| {
        Ok(())
    })
    .unwrap();
    let want: Vec<u32> = want.into_iter().filter(|&t| !tok.is_eos(t)).collect();
    let want = implicit::generate::detok::decode_continuation(&tok, &prompt, &want).unwrap();

    let mut child = Command::new(common::implicit_bin())
        .args([
            "serve",
            "--device",
            "cuda",
            "--port",
            "0",
            "--model-name",
            "stories",
        ])
        .arg("--model")
        .arg(&dir)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _server = Kill(child);
    let port: u16 = line
        .trim()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {line:?}"));
    let exchange = move |method: &str, path: &str, body: &str| -> (u16, String) {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
        let raw = format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(raw.as_bytes()).unwrap();
        let mut all = String::new();
        s.read_to_string(&mut all).unwrap();
        let (head, rest) = all.split_once("\r\n\r\n").unwrap();
        (head[9..12].parse().unwrap(), rest.to_string())
    };

    let (status, body) = exchange("GET", "/v1/models", "");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"stories\""), "{body}");
    let request = serde_json::json!({"model": "stories", "prompt": "Once upon a time",
                                     "max_tokens": 30, "temperature": 0});
    let (status, body) = exchange("POST", "/v1/completions", &request.to_string());
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["choices"][0]["text"], want.as_str());
    let mut streamed = request.clone();
    streamed["stream"] = serde_json::json!(true);
    let (status, body) = exchange("POST", "/v1/completions", &streamed.to_string());
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("data: [DONE]"), "{body}");
    let mut unknown = request.clone();
    unknown["model"] = serde_json::json!("gpt-4o");
    let (status, body) = exchange("POST", "/v1/completions", &unknown.to_string());
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("model_not_found"), "{body}");
    let handles: Vec<_> = ["Tom had a cat.", "The sun", "Lily went", "Once"]
        .iter()
        .map(|p| {
            let body = serde_json::json!({"prompt": p, "max_tokens": 20, "temperature": 0});
            std::thread::spawn(move || exchange("POST", "/v1/completions", &body.to_string()))
        })
        .collect();
    for h in handles {
        let (status, body) = h.join().unwrap();
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("\"finish_reason\""), "{body}");
    }
    println!("serve --device cuda: greedy text as the engine's: {want:?}");
}
