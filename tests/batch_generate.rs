//! Batched generation: the same tokens as one sequence at a time, continuous batching, and
//! `implicit generate --instructions` writing AlpacaEval's model_outputs.json.

mod common;

use implicit::generate::detok::decode_continuation;
use implicit::generate::instructions::{read_instructions, read_model_outputs};
use implicit::generate::{
    generate, generate_batch, generate_batch_adjusted, run_batched, GenerateOptions, Sampler,
    SequenceRequest,
};
use implicit::io::convert::convert_gguf;
use implicit::io::tokenizer::{chat_prompt, Tokenizer};
use implicit::model::Transformer;
use std::path::{Path, PathBuf};
use std::process::Command;

fn stories260k(test: &str) -> Option<(PathBuf, Transformer, Tokenizer)> {
    let data = common::data_dir(test)?;
    let dir = common::temp_dir(test).join("stories");
    convert_gguf(&data.join("models/stories260k-f32.gguf"), &dir).unwrap();
    let model = Transformer::load(&dir).unwrap();
    let tok = Tokenizer::load(&dir, &model.config).unwrap();
    Some((dir, model, tok))
}

const INSTRUCTIONS: [&str; 5] = [
    "Hi",
    "Tell me a story about a little dog who wanted to fly over the big hill.",
    "Once upon a time",
    "What is the color of the sky on a sunny day when Lily goes to the park with her mom?",
    "Why?",
];

#[test]
fn batched_greedy_equals_one_by_one() {
    let Some((_, model, tok)) = stories260k("batch-equal") else {
        return;
    };
    let mut prompts: Vec<Vec<u32>> = INSTRUCTIONS
        .iter()
        .map(|i| tok.encode_prompt(&chat_prompt(i)).unwrap())
        .collect();
    // A raw prompt too (BOS only), and lengths from 1 to ~50 tokens.
    prompts.push(tok.encode_prompt("").unwrap());
    let lens: Vec<usize> = prompts.iter().map(|p| p.len()).collect();
    assert!(
        lens.iter().max().unwrap() > &(4 * lens.iter().min().unwrap()),
        "{lens:?}"
    );
    let opts = GenerateOptions {
        max_new_tokens: 24,
        stop_tokens: tok.eos.clone(),
    };
    let one_by_one: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| generate(&model, p, &opts, &mut Sampler::greedy(), |_| Ok(())).unwrap())
        .collect();
    let all_at_once =
        generate_batch(&model, &prompts, &opts, &mut Sampler::greedy(), |_, _| {}).unwrap();
    assert_eq!(all_at_once, one_by_one);
    // Continuous batching: 2 slots for 6 prompts, each finished slot refilled at once.
    let mut order = Vec::new();
    let two_slots = generate_batch_adjusted(
        &model,
        &prompts,
        &opts,
        &mut Sampler::greedy(),
        None,
        2,
        |i, _| order.push(i),
    )
    .unwrap();
    assert_eq!(two_slots, one_by_one);
    order.sort();
    assert_eq!(order, (0..prompts.len()).collect::<Vec<_>>());

    // run_batched reports every token, and the finish of each sequence.
    let mut streamed: Vec<Vec<u32>> = vec![Vec::new(); prompts.len()];
    let requests = prompts
        .iter()
        .map(|p| SequenceRequest::greedy(p.clone(), 24, tok.eos.clone()));
    run_batched(
        &model,
        requests,
        3,
        |i, c| {
            streamed[i].push(c.token);
            assert!(c.logprob <= 0.0);
            Ok(())
        },
        |i, f| {
            assert_eq!(f.tokens, one_by_one[i]);
            Ok(())
        },
    )
    .unwrap();
    assert_eq!(streamed, one_by_one);
}

fn implicit(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_implicit"))
        .args(args)
        .output()
        .unwrap()
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn generate_instructions_writes_alpaca_eval_model_outputs() {
    let Some((dir, model, tok)) = stories260k("batch-cli") else {
        return;
    };
    let work = dir.parent().unwrap();
    let set = work.join("set.jsonl");
    let lines: Vec<String> = INSTRUCTIONS
        .iter()
        .map(|i| serde_json::json!({ "instruction": i }).to_string())
        .collect();
    std::fs::write(&set, lines.join("\n") + "\n").unwrap();
    let out = work.join("results/model_outputs.json");
    let run = implicit(&[
        "generate",
        "--model",
        path(&dir),
        "--instructions",
        path(&set),
        "--out",
        path(&out),
        "--max-new-tokens",
        "12",
        "--batch-size",
        "2",
    ]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    assert!(
        stderr.contains("[5/5]") && stderr.contains("tokens/s") && stderr.contains("ETA"),
        "{stderr}"
    );

    // A JSON list of exactly {instruction, output, generator, dataset}, in input order.
    let raw: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let rows = raw.as_array().unwrap();
    assert_eq!(rows.len(), INSTRUCTIONS.len());
    for row in rows {
        let mut keys: Vec<&String> = row.as_object().unwrap().keys().collect();
        keys.sort();
        assert_eq!(keys, ["dataset", "generator", "instruction", "output"]);
    }
    let outputs = read_model_outputs(&out).unwrap();
    let opts = GenerateOptions {
        max_new_tokens: 12,
        stop_tokens: tok.eos.clone(),
    };
    for (row, instruction) in outputs.iter().zip(INSTRUCTIONS) {
        assert_eq!(row.instruction, instruction);
        assert_eq!(row.generator, "stories");
        assert_eq!(row.dataset, "set");
        let prompt = tok.encode_prompt(&chat_prompt(instruction)).unwrap();
        let ids = generate(&model, &prompt, &opts, &mut Sampler::greedy(), |_| Ok(())).unwrap();
        let body: Vec<u32> = ids.into_iter().filter(|&t| !tok.is_eos(t)).collect();
        assert_eq!(
            row.output,
            decode_continuation(&tok, &prompt, &body).unwrap()
        );
    }
    let leftovers: Vec<_> = std::fs::read_dir(out.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "no temporary file left: {leftovers:?}");

    // With the adapter, the generator says so and the outputs change.
    let ruled = work.join("ruled.json");
    let run = implicit(&[
        "generate",
        "--model",
        path(&dir),
        "--instructions",
        path(&set),
        "--out",
        path(&ruled),
        "--max-new-tokens",
        "12",
        "--adapter",
        "rules",
        "--rules",
        "uniform,diversity",
        "--generator",
        "stories-ablation",
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let ruled = read_model_outputs(&ruled).unwrap();
    assert!(ruled.iter().all(|r| r.generator == "stories-ablation"));
    assert_ne!(
        ruled.iter().map(|r| &r.output).collect::<Vec<_>>(),
        outputs.iter().map(|r| &r.output).collect::<Vec<_>>()
    );

    // A broken instruction file is an error naming the file and line; nothing is written.
    let bad = work.join("bad.jsonl");
    std::fs::write(
        &bad,
        "{\"instruction\": \"ok\"}\n{\"prompt\": \"no instruction\"}\n",
    )
    .unwrap();
    let none = work.join("none.json");
    let run = implicit(&[
        "generate",
        "--model",
        path(&dir),
        "--instructions",
        path(&bad),
        "--out",
        path(&none),
    ]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("bad.jsonl line 2: missing \"instruction\""),
        "{stderr}"
    );
    assert!(!none.exists());
}

#[test]
fn val_jsonl_and_the_805_reference_parse_and_run() {
    let Some((dir, _, _)) = stories260k("batch-real-sets") else {
        return;
    };
    let data = common::data_dir("batch-real-sets").unwrap();
    let val = data.join("val/val.jsonl");
    let reference = data.join("alpaca_eval/gpt4_turbo_reference.json");
    let val_rows = read_instructions(&val).unwrap();
    assert_eq!(val_rows.len(), 56);
    assert!(val_rows
        .iter()
        .all(|r| r.dataset.is_none() && !r.instruction.is_empty()));
    let ref_rows = read_instructions(&reference).unwrap();
    assert_eq!(ref_rows.len(), 805);
    assert!(ref_rows.iter().all(|r| r.dataset.is_some()));

    for (set, name) in [(&val, "val"), (&reference, "ref")] {
        let out = dir.parent().unwrap().join(format!("{name}.json"));
        let run = implicit(&[
            "generate",
            "--model",
            path(&dir),
            "--instructions",
            path(set),
            "--out",
            path(&out),
            "--limit",
            "3",
            "--max-new-tokens",
            "4",
        ]);
        assert!(
            run.status.success(),
            "{}",
            String::from_utf8_lossy(&run.stderr)
        );
        let rows = read_model_outputs(&out).unwrap();
        assert_eq!(rows.len(), 3);
        let source = if name == "val" { &val_rows } else { &ref_rows };
        for (row, src) in rows.iter().zip(source) {
            assert_eq!(row.instruction, src.instruction);
            let want = src.dataset.clone().unwrap_or_else(|| "val".into());
            assert_eq!(row.dataset, want);
        }
    }
}
