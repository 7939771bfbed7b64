//! The evaluations: response ranking on real models and LIMA, the AlpacaEval judge against a mock
//! OpenAI endpoint and in-process, and win rates on AlpacaEval's real annotations.

mod common;

use implicit::data::{encode_example, read_messages_jsonl, Mode};
use implicit::eval::endpoint::EndpointJudge;
use implicit::eval::judge::{
    is_switched, preference_from_logprobs, run_judge, top_logprobs_of_choice, JudgeOptions,
    ANNOTATOR,
};
use implicit::eval::ranking::{draw_negatives, log_softmax_at, run_ranking, RankingOptions};
use implicit::eval::winrate::{length_controlled, raw_winrate, read_annotations, Difficulty, Row};
use implicit::io::convert::convert_gguf;
use implicit::io::tokenizer::Tokenizer;
use implicit::model::Transformer;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

fn stories260k(test: &str) -> Option<(PathBuf, PathBuf)> {
    let data = common::data_dir(test)?;
    let dir = common::temp_dir(&format!("{test}-model"));
    convert_gguf(&data.join("models/stories260k-f32.gguf"), &dir).unwrap();
    Some((data, dir))
}

fn smollm2(test: &str) -> Option<PathBuf> {
    let gguf = std::env::var_os("IMPLICIT_SMOLLM2_GGUF")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("models/SmolLM2-135M-Instruct.Q4_1.gguf")
        });
    if !gguf.is_file() {
        eprintln!(
            "SKIPPED {test}: {} is absent (run tools/fetch_smollm2.sh)",
            gguf.display()
        );
        return None;
    }
    let dir = common::temp_dir(&format!("{test}-smollm2"));
    convert_gguf(&gguf, &dir).unwrap();
    Some(dir)
}

/// Runs the CLI with a whitespace-separated argument line (the paths used have no spaces).
fn implicit(args: &str) -> std::process::Output {
    let args: Vec<&str> = args.split_whitespace().collect();
    Command::new(env!("CARGO_BIN_EXE_implicit"))
        .args(args)
        .output()
        .unwrap()
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

// ---------------------------------------------------------------- response ranking

#[test]
fn ranking_stories260k_on_lima() {
    let Some((data, dir)) = stories260k("ranking_stories260k_on_lima") else {
        return;
    };
    let model = Transformer::load(&dir).unwrap();
    let tok = Tokenizer::load(&dir, &model.config).unwrap();
    let examples = read_messages_jsonl(&data.join("lima/lima_data.jsonl")).unwrap();
    let opts = RankingOptions {
        max_examples: Some(8),
        max_len: 2048,
        batch_tokens: 4096,
        bootstrap: 2000,
        ..RankingOptions::default()
    };
    let r = run_ranking(&model, &tok, &examples, &opts).unwrap();
    // random.seed(0); [[random.randint(0, 7) for _ in range(5)] for _ in range(8)] gives
    // [[6,6,0,4,7], [6,4,7,5,3], [2,4,2,1,4], [2,4,1,1,5], [7,1,5,6,5], [3,7,7,4,0], [0,1,6,0,7],
    // [5,3,5,1,3]]: 4 self-draws (instruction 0 once, 2 twice, 6 once) leave 36 pairs.
    assert_eq!(
        (r.n_instructions, r.pairs, r.self_draws_dropped),
        (8, 36, 4)
    );
    let first: Vec<usize> = r.instructions[0]
        .negatives
        .iter()
        .map(|n| n.pool_index)
        .collect();
    assert_eq!(first, [6, 6, 4, 7]);
    assert_eq!(r.instructions[2].pairs, 3);
    // At 2048 tokens every response keeps some tokens: nothing is skipped.
    assert_eq!((r.skipped_pairs, r.skipped_instructions), (0, 0));
    assert!(r.ci95[0] <= r.fraction && r.fraction <= r.ci95[1]);
    assert!(r.wilson_ci95[0] <= r.fraction && r.fraction <= r.wilson_ci95[1]);
    assert_eq!(r.wins, r.instructions.iter().map(|i| i.wins).sum::<usize>());

    // The batched, prefix-sharing scores equal a plain full-sequence forward pass.
    for (index, neg) in [(0usize, None), (1, Some(2usize))] {
        let mut ex = examples[index].clone();
        if let Some(k) = neg {
            let p = r.instructions[index].negatives[k].pool_index;
            ex.messages[1] = examples[p].messages[1].clone();
        }
        let (enc, _) = encode_example(&tok, &ex, Mode::Instruction, 2048).unwrap();
        let logits = model.logits(&enc.ids).unwrap();
        let v = model.config.vocab_size;
        let (mut total, mut count) = (0.0f64, 0);
        for t in 1..enc.ids.len() {
            if enc.loss_mask[t] {
                total += log_softmax_at(&logits[(t - 1) * v..t * v], enc.ids[t] as usize);
                count += 1;
            }
        }
        let want = (total / count as f64).exp();
        let got = match neg {
            None => r.instructions[index].true_score,
            Some(k) => r.instructions[index].negatives[k].score,
        }
        .unwrap();
        assert!((got - want).abs() <= 1e-5 * want, "{got} vs {want}");
    }
    eprintln!(
        "stories260k on 8 LIMA instructions: {}/{} = {:.3}, 95% CI {:?}",
        r.wins, r.pairs, r.fraction, r.ci95
    );
}

/// Loss targets of an encoded sequence: positions t >= 1 whose token carries loss.
fn loss_targets(mask: &[bool]) -> usize {
    mask.iter().skip(1).filter(|&&m| m).count()
}

#[test]
fn ranking_skips_responses_cut_off_by_max_len() {
    // The GPU run's case (issue 13): 16 LIMA instructions at max_len 512. stories260k's
    // 512-token vocabulary spells LIMA's long instructions out in many tokens, so the prompts of
    // instructions 3 (634 tokens) and 9 (542) fill all 512 positions: no response token is left
    // to score, and their scores were NaN.
    let Some((data, dir)) = stories260k("ranking_skips_responses_cut_off_by_max_len") else {
        return;
    };
    let model = Transformer::load(&dir).unwrap();
    let tok = Tokenizer::load(&dir, &model.config).unwrap();
    let examples = read_messages_jsonl(&data.join("lima/lima_data.jsonl")).unwrap();
    let max_len = 512;
    // The token counts behind it (the cause, measured): the prompt is every token before the
    // first one carrying loss.
    for (i, ex) in examples[..16].iter().enumerate() {
        let (full, _) = encode_example(&tok, ex, Mode::Instruction, usize::MAX).unwrap();
        let (cut, _) = encode_example(&tok, ex, Mode::Instruction, max_len).unwrap();
        eprintln!(
            "instruction {i}: {} tokens ({} of them prompt), cut to {}: {} loss targets",
            full.ids.len(),
            full.loss_mask.iter().take_while(|&&m| !m).count(),
            cut.ids.len(),
            loss_targets(&cut.loss_mask)
        );
    }
    let opts = RankingOptions {
        max_examples: Some(16),
        max_len,
        bootstrap: 200,
        ..RankingOptions::default()
    };
    let r = run_ranking(&model, &tok, &examples, &opts).unwrap();

    // Which sequences have a loss target, found from the encodings alone.
    let draws = draw_negatives(&examples[..16], 5, 0).unwrap();
    let targets = |i: usize, pool: Option<usize>| {
        let mut ex = examples[i].clone();
        if let Some(p) = pool {
            ex.messages[1] = draws.pool[p].0.clone();
        }
        loss_targets(
            &encode_example(&tok, &ex, Mode::Instruction, max_len)
                .unwrap()
                .0
                .loss_mask,
        )
    };
    let cut_off: Vec<usize> = (0..16).filter(|&i| targets(i, None) == 0).collect();
    assert_eq!(cut_off, [3, 9], "instructions whose prompt fills max_len");
    let mut skipped_pairs = 0;
    for ins in &r.instructions {
        let i = ins.index;
        assert_eq!(ins.pairs + ins.skipped_pairs + ins.self_draws, 5);
        if cut_off.contains(&i) {
            // Skipped whole: nothing scored, nothing compared.
            assert_eq!(ins.true_score, None, "instruction {i}");
            assert!(ins
                .negatives
                .iter()
                .all(|n| n.score.is_none() && n.true_wins.is_none()));
            assert_eq!((ins.pairs, ins.wins), (0, 0));
        } else {
            let t = ins.true_score.unwrap();
            assert!(t > 0.0 && t <= 1.0, "instruction {i}: true score {t}");
            for n in &ins.negatives {
                let scored = targets(i, Some(n.pool_index)) > 0;
                assert_eq!(
                    n.score.is_some(),
                    scored,
                    "instruction {i}, {}",
                    n.pool_index
                );
                assert_eq!(n.true_wins, n.score.map(|s| t > s));
            }
        }
        skipped_pairs += ins.skipped_pairs;
    }
    assert_eq!(r.skipped_instructions, cut_off.len());
    assert_eq!(r.skipped_pairs, skipped_pairs);
    assert!(r.skipped_pairs > 0);
    assert_eq!(r.pairs + r.skipped_pairs + r.self_draws_dropped, 16 * 5);
    assert_eq!(
        r.pairs,
        r.instructions.iter().map(|i| i.pairs).sum::<usize>()
    );
    assert_eq!(r.fraction, r.wins as f64 / r.pairs as f64);
    assert_eq!(
        r.fraction_skipped_as_losses,
        r.wins as f64 / (r.pairs + r.skipped_pairs) as f64
    );
    for x in [r.fraction, r.fraction_skipped_as_losses]
        .iter()
        .chain(&r.ci95)
        .chain(&r.wilson_ci95)
    {
        assert!(x.is_finite(), "{x} in {:?} {:?}", r.ci95, r.wilson_ci95);
    }
    assert!(r.ci95[0] <= r.fraction && r.fraction <= r.ci95[1]);
    assert!(r.wilson_ci95[0] <= r.fraction && r.fraction <= r.wilson_ci95[1]);
    // The JSON says which were skipped (null scores), and every summary figure is a number.
    let v = serde_json::to_value(&r).unwrap();
    assert_eq!(v["instructions"][3]["true_score"], Value::Null);
    assert_eq!(v["skipped_instructions"], json!(2));
    for key in ["fraction", "fraction_skipped_as_losses"] {
        assert!(v[key].is_f64(), "{key}: {}", v[key]);
    }
    eprintln!(
        "stories260k on 16 LIMA instructions at max_len {max_len}: {}/{} = {:.3}, CI {:?}, \
         Wilson {:?}; skipped {} pairs of {} instructions ({} sequences); as losses {:.3}",
        r.wins,
        r.pairs,
        r.fraction,
        r.ci95,
        r.wilson_ci95,
        r.skipped_pairs,
        r.skipped_instructions,
        r.no_loss_sequences,
        r.fraction_skipped_as_losses
    );
}

#[test]
fn ranking_cli_writes_json() {
    let Some((data, dir)) = stories260k("ranking_cli_writes_json") else {
        return;
    };
    let out = common::temp_dir("ranking-cli").join("ranking.json");
    let lima = data.join("lima/lima_data.jsonl");
    let o = implicit(&format!(
        "eval ranking --model {} --data {} --max-examples 4 --max-len 256 --json {}",
        dir.display(),
        lima.display(),
        out.display()
    ));
    let stdout = String::from_utf8_lossy(&o.stdout);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(stdout.contains("response ranking:"), "{stdout}");
    assert!(
        stdout.contains("skipped: 9 pairs (2 instructions"),
        "{stdout}"
    );
    assert!(stderr.contains("ranking: [4/4] 100%"), "progress: {stderr}");
    let v = read_json(&out);
    // random.seed(0) over a pool of 4: [[3,3,0,2,3], [3,2,3,2,1], [1,2,1,0,2], [1,2,0,0,2]]
    // leaves 4 + 4 + 3 + 5 pairs; instructions 1 and 3 (405 and 634 prompt tokens) leave no
    // response token within 256, so their 4 + 5 pairs are skipped.
    assert_eq!(v["result"]["pairs"], json!(7));
    assert_eq!(v["result"]["skipped_pairs"], json!(9));
    assert_eq!(v["result"]["skipped_instructions"], json!(2));
    assert_eq!(v["result"]["instructions"].as_array().unwrap().len(), 4);
    let leftovers: Vec<_> = std::fs::read_dir(out.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");

    // Errors name the file at fault.
    let o = implicit(&format!(
        "eval ranking --model {} --data /nonexistent.jsonl",
        dir.display()
    ));
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("/nonexistent.jsonl"));
}

#[test]
fn ranking_smollm2_on_lima() {
    let Some(data) = common::data_dir("ranking_smollm2_on_lima") else {
        return;
    };
    let Some(dir) = smollm2("ranking_smollm2_on_lima") else {
        return;
    };
    let model = Transformer::load(&dir).unwrap();
    let tok = Tokenizer::load(&dir, &model.config).unwrap();
    let examples = read_messages_jsonl(&data.join("lima/lima_data.jsonl")).unwrap();
    let n = 4; // kept small for 2 cores; `implicit eval ranking` runs the real thing
    let opts = RankingOptions {
        max_examples: Some(n),
        max_len: 384,
        ..RankingOptions::default()
    };
    let r = run_ranking(&model, &tok, &examples, &opts).unwrap();
    eprintln!(
        "SmolLM2-135M-Instruct on {n} LIMA instructions: {}/{} = {:.3}, 95% CI {:?} (bootstrap), Wilson {:?}",
        r.wins, r.pairs, r.fraction, r.ci95, r.wilson_ci95
    );
    assert_eq!(r.n_instructions, n);
    assert_eq!(r.no_loss_sequences, 0);
    assert_eq!((r.skipped_pairs, r.skipped_instructions), (0, 0));
    assert!(r
        .instructions
        .iter()
        .all(|i| i.true_score.is_some_and(|s| s > 0.0 && s < 1.0)));
}

// ---------------------------------------------------------------- the judge

fn write_outputs(path: &Path, rows: &[(&str, &str, &str)]) {
    let v: Vec<Value> = rows
        .iter()
        .map(|(i, o, g)| json!({"instruction": i, "output": o, "generator": g, "dataset": "test"}))
        .collect();
    std::fs::write(path, serde_json::to_string(&v).unwrap()).unwrap();
}

/// A one-thread OpenAI-compatible server: the judge prefers the model's output (any output
/// containing "MODEL") with probability 0.9, whichever slot ("m" or "M") it is shown in.
/// Instructions containing "NOLABEL" get logprobs without m or M. Requests are recorded.
fn mock_server() -> (String, Arc<Mutex<Vec<Value>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let mut stream = stream.unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            reader.read_line(&mut request_line).unwrap();
            let mut length = 0;
            loop {
                let mut h = String::new();
                reader.read_line(&mut h).unwrap();
                if h.trim().is_empty() {
                    break;
                }
                if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap();
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            let req: Value = serde_json::from_slice(&body).unwrap();
            assert!(
                request_line.starts_with("POST /v1/chat/completions "),
                "{request_line}"
            );
            let user = req["messages"][1]["content"].as_str().unwrap().to_string();
            // Which output sits in the "m" slot: the text between the first pair of output quotes.
            let m_slot = user.split("\"output\": \"\"\"").nth(1).unwrap();
            let m_slot = m_slot.split("\"\"\"").next().unwrap();
            let p_m: f64 = if m_slot.contains("MODEL") { 0.9 } else { 0.1 };
            let top = if user.contains("NOLABEL") {
                json!([{"token": "The", "logprob": -0.1}, {"token": "A", "logprob": -3.0}])
            } else {
                json!([
                    {"token": "m", "logprob": p_m.ln()},
                    {"token": "M", "logprob": (1.0 - p_m).ln()},
                    {"token": "Based", "logprob": -20.0}
                ])
            };
            let first = if p_m > 0.5 { "m" } else { "M" };
            let response = json!({
                "id": "mock", "object": "chat.completion", "model": req["model"],
                "choices": [{
                    "index": 0, "finish_reason": "length",
                    "message": {"role": "assistant", "content": first},
                    "logprobs": {"content": [{"token": first, "logprob": -0.1, "top_logprobs": top}]}
                }],
                "usage": {"prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11}
            });
            record.lock().unwrap().push(req);
            let body = serde_json::to_vec(&response).unwrap();
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            stream.write_all(head.as_bytes()).unwrap();
            stream.write_all(&body).unwrap();
        }
    });
    (url, seen)
}

#[test]
fn judge_against_mock_endpoint() {
    let dir = common::temp_dir("judge-mock");
    let (a, b, out) = (
        dir.join("a.json"),
        dir.join("b.json"),
        dir.join("annotations.json"),
    );
    // Real AlpacaEval instructions with known switches: random.Random("is_switched_outputs" +
    // instruction + "0").choices([False, True]) is True for the first two, False for the next.
    let inst = [
        "How did US states get their names?",
        "What are the names of some famous actors that started their careers on Broadway?",
        "What is some cool music from the 1920s?",
        "How do I wrap a present neatly?",
    ];
    assert_eq!(inst.map(|i| is_switched(i, 0)), [true, true, false, false]);
    write_outputs(
        &a,
        &[
            (inst[0], "MODEL answer 0", "my-model"),
            (inst[1], "MODEL answer 1", "my-model"),
            (inst[2], "MODEL answer 2", "my-model"),
            (inst[3], "same text", "my-model"),
            ("NOLABEL question", "MODEL answer 4", "my-model"),
        ],
    );
    write_outputs(
        &b,
        &[
            ("NOLABEL question", "reference 4", "ref"),
            (inst[3], "same text", "ref"),
            (inst[2], "reference 2", "ref"),
            (inst[1], "reference 1", "ref"),
            (inst[0], "reference 0", "ref"),
        ],
    );
    let (url, seen) = mock_server();
    let mut judge = EndpointJudge::new(&format!("{url}/v1"), "mock-judge", None).unwrap();
    let opts = JudgeOptions {
        max_examples: None,
        seed: 0,
        batch: 2,
        annotator: ANNOTATOR.into(),
    };
    let annotations = run_judge(&a, &b, &mut judge, &opts, &out).unwrap();
    assert_eq!(annotations.len(), 5);
    // The model wins with 0.9 whichever slot it was shown in: preference 2 - 0.1 = 1.9.
    for a in &annotations[..3] {
        assert!(
            (a.preference.unwrap() - 1.9).abs() < 1e-12,
            "{:?}",
            a.preference
        );
        assert_eq!(
            (a.generator_1.as_str(), a.generator_2.as_str()),
            ("ref", "my-model")
        );
        assert!(a.output_2.starts_with("MODEL") && a.output_1.starts_with("reference"));
    }
    // Identical outputs: a draw, no request. No m/M in the top logprobs: no preference.
    assert_eq!(annotations[3].preference, Some(1.5));
    assert!(annotations[3].raw_completion.is_null());
    assert_eq!(annotations[4].preference, None);

    let requests = seen.lock().unwrap().clone();
    assert_eq!(requests.len(), 4);
    for (req, (k, switched)) in requests.iter().zip([(0, true), (1, true), (2, false)]) {
        assert_eq!(req["model"], json!("mock-judge"));
        let settings = ["max_tokens", "logprobs", "top_logprobs", "temperature"].map(|k| &req[k]);
        assert_eq!(settings, [&json!(1), &json!(true), &json!(5), &json!(0)]);
        assert_eq!(req["messages"][0]["role"], json!("system"));
        let user = req["messages"][1]["content"].as_str().unwrap();
        assert!(user.contains(&format!("\"instruction\": \"\"\"{}\"\"\"", inst[k])));
        let m_pos = user.find(&format!("answer {k}")).unwrap();
        let ref_pos = user.find(&format!("reference {k}")).unwrap();
        // Switched: the model's output comes first, in the "m" slot.
        assert_eq!(m_pos < ref_pos, switched, "instruction {k}");
    }

    // annotations.json on disk: AlpacaEval's fields, in its order.
    let v = read_json(&out);
    let first = v[0].as_object().unwrap();
    let keys: Vec<&str> = first.keys().map(|k| k.as_str()).collect();
    let fields = "instruction output_1 generator_1 dataset output_2 generator_2 annotator \
                  preference raw_completion";
    for k in fields.split_whitespace() {
        assert!(keys.contains(&k), "{k} missing from {keys:?}");
    }
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(text.find("\"output_1\"").unwrap() < text.find("\"output_2\"").unwrap());
    assert_eq!(v[0]["annotator"], json!(ANNOTATOR));
    assert_eq!(v[0]["raw_completion"]["total_tokens"], json!(11));

    // A reference file without one of the instructions: an error naming it.
    write_outputs(&b, &[(inst[0], "reference 0", "ref")]);
    let err = run_judge(&a, &b, &mut judge, &opts, &dir.join("x.json"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("What are the names of some famous actors"),
        "{err}"
    );
    assert!(!dir.join("x.json").exists());
}

#[test]
fn judge_parser_and_switch_reproduce_alpaca_eval_annotations() {
    let Some(data) = common::data_dir("judge_parser_and_switch_reproduce_alpaca_eval_annotations")
    else {
        return;
    };
    for name in ["alpaca-7b", "text_davinci_003"] {
        let path = data.join(format!("alpaca_eval/annotations/{name}.json"));
        let v = read_json(&path);
        let mut checked = 0;
        for a in v.as_array().unwrap() {
            let stored = a["preference"].as_f64().unwrap();
            if a["raw_completion"].is_null() {
                assert_eq!(a["output_1"], a["output_2"]); // identical outputs: a draw
                assert_eq!(stored, 1.5);
                continue;
            }
            let top = top_logprobs_of_choice(&a["raw_completion"]).unwrap();
            let shown = preference_from_logprobs(&top).unwrap();
            let instruction = a["instruction"].as_str().unwrap();
            let ours = if is_switched(instruction, 0) {
                3.0 - shown
            } else {
                shown
            };
            assert!(
                (ours - stored).abs() < 1e-9,
                "{name}: {instruction:?}: {ours} vs {stored}"
            );
            checked += 1;
        }
        eprintln!("{name}: {checked} stored preferences reproduced from their raw completions");
        assert!(checked >= 800);
    }
}

#[test]
fn judge_local_stories260k_end_to_end() {
    let Some((data, dir)) = stories260k("judge_local_stories260k_end_to_end") else {
        return;
    };
    let tmp = common::temp_dir("judge-local");
    let (a, out) = (tmp.join("a.json"), tmp.join("annotations.json"));
    let reference = data.join("alpaca_eval/gpt4_turbo_reference.json");
    let refs = read_json(&reference);
    let rows: Vec<(String, String)> = refs.as_array().unwrap()[..3]
        .iter()
        .map(|r| {
            let i = r["instruction"].as_str().unwrap().to_string();
            (i.clone(), format!("Once upon a time, someone asked: {i}"))
        })
        .collect();
    let rows: Vec<(&str, &str, &str)> = rows
        .iter()
        .map(|(i, o)| (i.as_str(), o.as_str(), "stories"))
        .collect();
    write_outputs(&a, &rows);
    let o = implicit(&format!(
        "eval judge --outputs {} --reference {} --judge-local {} --out {} --max-examples 3",
        a.display(),
        reference.display(),
        dir.display(),
        out.display()
    ));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(stderr.contains("judge: [3/3] 100%"), "progress: {stderr}");
    let v = read_json(&out);
    let list = v.as_array().unwrap();
    assert_eq!(list.len(), 3);
    for (k, ann) in list.iter().enumerate() {
        let p = ann["preference"].as_f64().unwrap();
        assert!((1.0..=2.0).contains(&p), "{p}");
        assert_eq!(ann["generator_1"], json!("gpt4_1106_preview"));
        assert_eq!(ann["generator_2"], json!("stories"));
        assert_eq!(ann["output_2"], json!(rows[k].1));
        // The stored completion re-parses to the stored preference (after the switch).
        let top = top_logprobs_of_choice(&ann["raw_completion"]).unwrap();
        let shown = preference_from_logprobs(&top).unwrap();
        let inst = ann["instruction"].as_str().unwrap();
        let again = if is_switched(inst, 0) {
            3.0 - shown
        } else {
            shown
        };
        assert!((again - p).abs() < 1e-12);
    }
    eprintln!(
        "stories260k as judge: preferences {:?}",
        list.iter()
            .map(|a| a["preference"].clone())
            .collect::<Vec<_>>()
    );

    // Neither judge given: a usage error.
    let o = implicit("eval judge --outputs a --reference b --out c");
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--judge-local"));
}

// ---------------------------------------------------------------- win rates

#[test]
fn winrate_matches_alpaca_eval_on_real_annotations() {
    let Some(data) = common::data_dir("winrate_matches_alpaca_eval_on_real_annotations") else {
        return;
    };
    let path = data.join("alpaca_eval/annotations/alpaca-7b.json");
    let rows = read_annotations(&path).unwrap();
    let prefs: Vec<Option<f64>> = rows.iter().map(|r| r.preference).collect();
    let w = raw_winrate(&prefs);
    // AlpacaEval 2's leaderboard (weighted_alpaca_eval_gpt4_turbo_leaderboard.csv), alpaca-7b:
    // win_rate 2.591450540223603, standard_error 0.4870855382635108, n_wins 17, n_wins_base 785,
    // n_draws 3, n_total 805, discrete_win_rate 2.298136645962733.
    assert!((w.win_rate - 2.5915).abs() < 1e-3, "{}", w.win_rate);
    assert!((w.win_rate - 2.591450540223603).abs() < 1e-9);
    assert!((w.standard_error - 0.4870855382635108).abs() < 1e-9);
    assert_eq!(
        (w.n_wins, w.n_wins_base, w.n_draws, w.n_total),
        (17, 785, 3, 805)
    );
    assert!((w.discrete_win_rate - 2.298136645962733).abs() < 1e-9);

    let difficulty = std::env::var_os("IMPLICIT_ALPACA_DIFFICULTY").map(PathBuf::from);
    for name in ["alpaca-7b", "text_davinci_003"] {
        let path = data.join(format!("alpaca_eval/annotations/{name}.json"));
        let rows = read_annotations(&path).unwrap();
        let prefs: Vec<Option<f64>> = rows.iter().map(|r| r.preference).collect();
        let w = raw_winrate(&prefs);
        let lc = length_controlled(&rows, None).unwrap();
        eprintln!(
            "{name}: win rate {:.4} ± {:.4}; LC {:.4} without instruction difficulty (C {}, {:?})",
            w.win_rate, w.standard_error, lc.length_controlled_winrate, lc.best_c, lc.coefficients
        );
        // Length control raises both (their outputs are far shorter than the reference's).
        assert!(lc.length_controlled_winrate > w.win_rate);
        assert!(lc.length_controlled_winrate < 30.0);
        if let Some(d) = &difficulty {
            let d = Difficulty::read(d).unwrap();
            let lc = length_controlled(&rows, Some(&d)).unwrap();
            eprintln!(
                "{name}: LC {:.4} with instruction difficulty ({:?})",
                lc.length_controlled_winrate, lc.coefficients
            );
        }
    }

    // The CLI prints both and writes --json atomically.
    let out = common::temp_dir("winrate-cli").join("metrics.json");
    let o = implicit(&format!(
        "eval winrate --annotations {} --json {}",
        path.display(),
        out.display()
    ));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("win rate 2.5915"), "{stdout}");
    assert!(stdout.contains("length-controlled win rate"), "{stdout}");
    let v = read_json(&out);
    assert_eq!(v["n_total"], json!(805));
}

fn synthetic_rows(n: usize, preference: impl Fn(usize, f64) -> f64) -> Vec<Row> {
    (0..n)
        .map(|i| {
            // Lengths spread over a wide range, deterministic.
            let len_1 = 50 + (i * 37) % 400;
            let len_2 = 50 + (i * 91) % 400;
            let delta = len_1 as f64 - len_2 as f64;
            Row {
                instruction: format!("instruction {i}"),
                output_1: "a".repeat(len_1),
                output_2: "b".repeat(len_2),
                generator_1: Some("base".into()),
                generator_2: Some("model".into()),
                preference: Some(1.0 + preference(i, delta)),
            }
        })
        .collect()
}

#[test]
fn length_control_on_synthetic_annotations() {
    // Preferences driven only by length (a longer model output wins), with no per-model
    // advantage: the LC win rate is 50 while the raw one is not.
    let rows = synthetic_rows(400, |_, delta| {
        let z = -2.0 * (delta / 150.0).tanh();
        1.0 / (1.0 + (-z).exp())
    });
    let lc = length_controlled(&rows, None).unwrap();
    assert!((lc.length_controlled_winrate - 50.0).abs() < 1.0, "{lc:?}");
    // Preferences independent of length: LC equals the raw win rate's logistic mean.
    let rows = synthetic_rows(400, |i, _| if i % 4 == 0 { 0.8 } else { 0.2 });
    let prefs: Vec<Option<f64>> = rows.iter().map(|r| r.preference).collect();
    let raw = raw_winrate(&prefs).win_rate;
    let lc = length_controlled(&rows, None).unwrap();
    assert!(
        (lc.length_controlled_winrate - raw).abs() < 1.0,
        "{} vs {raw}",
        lc.length_controlled_winrate
    );
    // A difficulty table missing an instruction: an error naming it.
    let dir = common::temp_dir("difficulty");
    let path = dir.join("difficulty.json");
    std::fs::write(&path, r#"{"instruction 0": 0.5}"#).unwrap();
    let d = Difficulty::read(&path).unwrap();
    let err = length_controlled(&rows, Some(&d)).unwrap_err().to_string();
    assert!(err.contains("instruction 1"), "{err}");
    // By position from a CSV, as alpaca_eval's instruction_difficulty.csv.
    let csv = dir.join("difficulty.csv");
    let body: String = (0..400)
        .map(|i| format!("{i},{}\n", (i % 7) as f64 / 7.0))
        .collect();
    std::fs::write(&csv, format!(",instruction_difficulty\n{body}")).unwrap();
    let d = Difficulty::read(&csv).unwrap();
    let lc = length_controlled(&rows, Some(&d)).unwrap();
    assert_eq!(lc.coefficients.len(), 3);
}
