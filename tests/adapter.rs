//! The rule adapter: resolution of the paper's token lists (Llama-2 ids exactly), the EOS
//! schedule, the diversity penalty, rule subsets, rules files and their errors, and its effect
//! on a real model's greedy output.

mod common;

use implicit::adapter::{AdapterSpec, EosSchedule, RuleAdapter, RuleSet, PAPER_RULES_TOML};
use implicit::generate::{
    generate_adjusted, generate_batch_adjusted, GenerateOptions, Sampler, ScoreAdjuster,
};
use implicit::io::convert::convert_gguf;
use implicit::io::tokenizer::{chat_prompt, Tokenizer};
use implicit::model::Transformer;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The paper's Rule 2 on Llama-2 (Listing 1): ids and scores, in order.
const PAPER_LLAMA2: [(u32, f32); 15] = [
    (29966, -4.0),
    (529, -4.0),
    (29989, -4.0),
    (306, -5.0),
    (29902, -5.0),
    (1334, -3.0),
    (5618, -5.0),
    (881, -6.0),
    (334, 1.0),
    (448, 1.0),
    (1678, 1.0),
    (396, 1.0),
    (444, 1.0),
    (13, 1.0),
    (29991, 1.0),
];

fn llama2(test: &str) -> Option<Tokenizer> {
    let data = common::data_dir(test)?;
    Some(
        Tokenizer::open(
            &data.join("tokenizers/llama2-tokenizer.json"),
            Some(1),
            vec![2],
        )
        .unwrap(),
    )
}

fn rules(list: &str) -> RuleSet {
    list.parse().unwrap()
}

#[test]
fn llama2_resolves_to_the_papers_15_ids_and_tags() {
    let Some(tok) = llama2("llama2_resolves_to_the_papers_15_ids_and_tags") else {
        return;
    };
    let adapter = RuleAdapter::paper(RuleSet::all(), &tok).unwrap();
    assert_eq!(adapter.uniform_biases(), &PAPER_LLAMA2[..]);
    let ids: Vec<u32> = adapter.uniform_biases().iter().map(|b| b.0).collect();
    assert_eq!(
        ids,
        [29966, 529, 29989, 306, 29902, 1334, 5618, 881, 334, 448, 1678, 396, 444, 13, 29991]
    );
    assert!(adapter.unresolved().is_empty());
    // The paper's tokenizer(f"\n{TAG}\n")["input_ids"][-5:].
    assert_eq!(adapter.user_tag(), [29989, 1792, 29989, 29958, 13]);
    assert_eq!(adapter.assistant_tag(), [465, 22137, 29989, 29958, 13]);
}

#[test]
fn eos_schedule_is_15_l_over_250_strictly_inside_the_window() {
    let s = EosSchedule::paper();
    assert_eq!(
        s.score(0),
        None,
        "nothing on the first response token (0 < L fails)"
    );
    assert!((s.score(1).unwrap() - 0.06).abs() < 1e-6);
    assert!((s.score(125).unwrap() - 7.5).abs() < 1e-6);
    assert!((s.score(249).unwrap() - 14.94).abs() < 1e-5);
    assert_eq!(s.score(250), None, "nothing from L = 250 on");
    assert_eq!(s.score(2000), None);
}

/// Scores after a Llama-2 chat prompt, then after `extra` generated tokens.
fn scores_after(adapter: &RuleAdapter, prompt: &[u32], extra: &[u32]) -> Vec<f32> {
    let mut state = adapter.start(prompt, 32000);
    for &t in extra {
        state.accept(t);
    }
    state.scores().to_vec()
}

#[test]
fn llama2_scores_follow_listing_1() {
    let Some(tok) = llama2("llama2_scores_follow_listing_1") else {
        return;
    };
    let adapter = RuleAdapter::paper(RuleSet::all(), &tok).unwrap();
    let prompt = tok
        .encode_prompt(&chat_prompt("Give me a recipe for tiramisu"))
        .unwrap();
    let recipe = *tok.encode(" tiramisu").unwrap().last().unwrap();
    let s = scores_after(&adapter, &prompt, &[]);
    assert_eq!(s[2], 0.0, "EOS: nothing at L = 0");
    assert_eq!(s[recipe as usize], -1.5, "instruction tokens are penalised");
    assert_eq!(
        s[13],
        1.0 - 1.5,
        "\\n: +1 (rule 2) and used since the user tag"
    );
    assert_eq!(
        s[29966],
        -4.0 - 1.5,
        "`<` of the assistant tag is after the user tag"
    );
    assert_eq!(s[529], -4.0, "`▁<` only opens the user tag: not penalised");
    assert_eq!(s[1], 0.0, "BOS is before the user tag");
    assert_eq!(s[306], -5.0);
    let others = s.iter().filter(|&&v| v != 0.0).count();
    assert!(others < 40, "sparse: {others} non-zero scores");

    let sure = tok.token_id("▁Sure").unwrap();
    let s = scores_after(&adapter, &prompt, &[sure]);
    assert!((s[2] - 15.0 / 250.0).abs() < 1e-6, "L = 1");
    assert_eq!(
        s[sure as usize], -1.5,
        "a generated token is penalised at once"
    );
    let long: Vec<u32> = std::iter::repeat_n(sure, 249).collect();
    let s = scores_after(&adapter, &prompt, &long);
    assert!(
        (s[2] - 15.0 * 249.0 / 250.0).abs() < 1e-4,
        "L = 249: {}",
        s[2]
    );
    let longer: Vec<u32> = std::iter::repeat_n(sure, 250).collect();
    assert_eq!(
        scores_after(&adapter, &prompt, &longer)[2],
        0.0,
        "L = 250: off"
    );
    // EOS is set, not added: a penalised EOS still gets exactly the schedule's value.
    let mut with_eos = vec![2];
    with_eos.extend(std::iter::repeat_n(sure, 9));
    let s = scores_after(&adapter, &prompt, &with_eos);
    assert!((s[2] - 15.0 * 10.0 / 250.0).abs() < 1e-6, "{}", s[2]);
}

#[test]
fn diversity_counts_from_the_first_user_tag() {
    let Some(tok) = llama2("diversity_counts_from_the_first_user_tag") else {
        return;
    };
    let adapter = RuleAdapter::paper(rules("diversity"), &tok).unwrap();
    // A system turn before the user tag is not penalised; both user turns and the assistant's
    // earlier answer are (Listing 1 searches the first tag with next(...)).
    let text = "<|system|>\nZebra\n<|user|>\nApple\n<|assistant|>\nBanana</s>\n<|user|>\nCherry\n<|assistant|>\n";
    let prompt = tok.encode_prompt(text).unwrap();
    let s = scores_after(&adapter, &prompt, &[]);
    let tag = adapter.user_tag();
    let tags: Vec<usize> = (0..prompt.len() - tag.len())
        .filter(|&i| prompt[i..i + tag.len()] == *tag)
        .map(|i| i + tag.len())
        .collect();
    assert_eq!(tags.len(), 2, "two user turns: {prompt:?}");
    let (before, after) = prompt.split_at(tags[0]);
    for &t in after {
        assert_eq!(s[t as usize], -1.5, "token {t} after the first user tag");
    }
    let only_before: Vec<u32> = before
        .iter()
        .copied()
        .filter(|t| !after.contains(t))
        .collect();
    assert!(
        only_before.len() >= 3,
        "the system turn has tokens of its own"
    );
    for &t in &only_before {
        assert_eq!(s[t as usize], 0.0, "token {t} before the first user tag");
    }
    let used = s.iter().filter(|&&v| v != 0.0).count();
    let distinct: std::collections::HashSet<u32> = after.iter().copied().collect();
    assert_eq!(
        used,
        distinct.len(),
        "exactly the distinct tokens since the first tag"
    );
    assert!(
        after.contains(&2),
        "</s> of the first answer counts (no EOS rule)"
    );
    // Each distinct token once: repeats do not stack.
    let apple = after[0];
    let s = scores_after(&adapter, &prompt, &[apple; 3]);
    assert_eq!(s[apple as usize], -1.5);

    // Without any user tag, every token of the input is penalised (idlist[None:]), BOS too.
    let raw = tok.encode_prompt("Plain text").unwrap();
    let s = scores_after(&adapter, &raw, &[]);
    assert_eq!(s[1], -1.5);
    assert!(raw.iter().all(|&t| s[t as usize] == -1.5));
}

#[test]
fn rule_subsets_turn_rules_off() {
    let Some(tok) = llama2("rule_subsets_turn_rules_off") else {
        return;
    };
    let prompt = tok.encode_prompt(&chat_prompt("Name a fruit")).unwrap();
    let fruit = tok.token_id("▁fruit").unwrap() as usize;
    let sure = tok.token_id("▁Sure").unwrap();
    let after = |list: &str| {
        let a = RuleAdapter::paper(rules(list), &tok).unwrap();
        scores_after(&a, &prompt, &[sure; 5])
    };
    let eos = after("eos");
    assert!((eos[2] - 15.0 * 5.0 / 250.0).abs() < 1e-6);
    assert_eq!(eos[fruit], 0.0);
    assert_eq!(eos[29966], 0.0);
    let uniform = after("uniform");
    assert_eq!(uniform[2], 0.0);
    assert_eq!(uniform[fruit], 0.0);
    assert_eq!(uniform[29966], -4.0);
    assert_eq!(uniform.iter().filter(|&&v| v != 0.0).count(), 15);
    let no_eos = after("uniform,diversity");
    assert_eq!(no_eos[2], 0.0);
    assert_eq!(no_eos[fruit], -1.5);
    assert_eq!(no_eos[29966], -5.5);
    assert_eq!(rules("all"), RuleSet::all());
    assert_eq!(rules(" diversity , eos ").names(), "eos,diversity");
    for bad in ["", "eos,length", "Rule1"] {
        assert!(bad.parse::<RuleSet>().is_err(), "{bad:?}");
    }
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn rules_files_parse_and_errors_name_file_and_line() {
    let dir = common::temp_dir("adapter-rules");
    let paper = write(&dir, "paper.toml", PAPER_RULES_TOML);
    let spec = AdapterSpec::from_file(&paper).unwrap();
    let builtin = AdapterSpec::paper();
    assert_eq!(spec.eos, builtin.eos);
    assert_eq!(spec.diversity, builtin.diversity);
    assert_eq!(spec.user_tag, builtin.user_tag);
    let pairs = |s: &AdapterSpec| {
        s.uniform
            .iter()
            .map(|b| (b.token.clone(), b.score))
            .collect::<Vec<_>>()
    };
    assert_eq!(pairs(&spec), pairs(&builtin));

    let json = write(
        &dir,
        "custom.json",
        r#"{"eos": {"weight": 30, "end": 100}, "token": [{"token": "▁I", "score": -2.5}, {"id": 881, "score": -1}]}"#,
    );
    let spec = AdapterSpec::from_file(&json).unwrap();
    assert_eq!(
        spec.eos,
        Some(EosSchedule {
            weight: 30.0,
            start: 0,
            end: 100
        })
    );
    assert_eq!(spec.diversity, None);
    assert_eq!(spec.defined().names(), "eos,uniform");

    let custom = "# a comment\n[[token]]\ntoken = '▁I'  # literal string\nscore = -2.5\n\n[[token]]\nid = 881\nscore = -1_0\n[[token]]\ntext = \"\\u0021\"\nscore = 2e0\n";
    let spec = AdapterSpec::parse(custom, Path::new("c.toml"), false).unwrap();
    assert_eq!(spec.uniform.len(), 3);
    assert_eq!(spec.uniform[1].score, -10.0);
    assert_eq!(spec.uniform[2].line, Some(9));
    if let Some(tok) = llama2("rules_files_parse") {
        let a = RuleAdapter::new(&spec, rules("uniform"), &tok).unwrap();
        assert_eq!(
            a.uniform_biases(),
            [(306, -2.5), (881, -10.0), (29991, 2.0)]
        );
        assert!(
            RuleAdapter::new(&spec, rules("eos"), &tok).is_err(),
            "no [eos] in the file"
        );
        let missing = "[[token]]\ntext = \"zzqqxx\"\nscore = 1\n";
        let spec = AdapterSpec::parse(missing, Path::new("m.toml"), false).unwrap();
        let err = RuleAdapter::new(&spec, rules("uniform"), &tok);
        let msg = err.unwrap_err().to_string();
        assert!(
            msg.starts_with("m.toml:1:") && msg.contains("zzqqxx"),
            "{msg}"
        );
    }

    let cases: &[(&str, &str)] = &[
        (
            "[eos]\nweight = \"high\"\n",
            "bad.toml:2: `weight` must be a finite number",
        ),
        (
            "[eos]\nweight = 1\nwieght = 2\n",
            "bad.toml:3: unknown key `wieght`",
        ),
        (
            "[eos]\nstart = -1\n",
            "bad.toml:2: `start` must be a non-negative integer",
        ),
        (
            "[eos]\nstart = 9\nend = 3\n",
            "bad.toml:1: [eos]: start must be below end",
        ),
        ("[lenght]\nx = 1\n", "bad.toml:1: unknown table [lenght]"),
        (
            "[diversity]\nscore = -1\nscore = -2\n",
            "bad.toml:3: key `score` is already set on line 2",
        ),
        ("[diversity]\n", "bad.toml:1: [diversity] needs `score`"),
        (
            "\n\n[[token]]\nscore = 1\n",
            "bad.toml:3: [[token]] needs exactly one of text",
        ),
        (
            "[[token]]\ntext = \"a\"\nid = 3\nscore = 1\n",
            "bad.toml:1: [[token]] needs exactly one",
        ),
        (
            "[[token]]\ntext = \"unterminated\nscore = 1\n",
            "bad.toml:2: invalid basic string, expected `\"`",
        ),
        (
            "[[token]]\ntext = \"\\q\"\n",
            "bad.toml:2: missing escaped value",
        ),
        (
            "[eos]\nweight = { a = 1 }\n",
            "bad.toml:2: `weight` must be a finite number, not a table",
        ),
        (
            "[eos]\nweight = fifteen\n",
            "bad.toml:2: invalid value `fifteen`",
        ),
        (
            "eos.wieght = 3\n",
            "bad.toml:1: unknown key `wieght` in [eos]",
        ),
        (
            "[[token]]\nid = 3\nscore = 1\nscore = 2\n",
            "bad.toml:4: key `score` is already set on line 3",
        ),
        (
            "[[token]]\nid = 3\nscore = nan\n",
            "bad.toml:3: `score` must be a finite number, not NaN",
        ),
        (
            "[[token]]\nid = 5000000000\nscore = 1\n",
            "bad.toml:2: `id` must be an integer from 0 to 4294967295",
        ),
        (
            "[eos]\nweight = 1\n[diversity]\nscore = 1\n[eos]\nstart = 2\n",
            "bad.toml:5: table [eos] is already defined on line 1",
        ),
        (
            "[eos]\n[eos]\n",
            "bad.toml:2: table [eos] is already defined on line 1",
        ),
        ("[eos\n", "bad.toml:1: unclosed table, expected `]`"),
        ("user_tag = \"<|u|>\"\n", "bad.toml: no rules"),
    ];
    for (text, want) in cases {
        let err = AdapterSpec::parse(text, Path::new("bad.toml"), false).unwrap_err();
        assert!(err.to_string().starts_with(want), "{text:?}: {err}");
    }
    let err = AdapterSpec::parse("{\"eos\": [1, 2", Path::new("bad.json"), true).unwrap_err();
    assert!(
        err.to_string().starts_with("bad.json:1: invalid JSON"),
        "{err}"
    );
    // JSON says what TOML does, errors without a line (a key given twice has serde_json's).
    let json_cases: &[(&str, &str)] = &[
        (
            "{\"diversity\": {\"score\": -1,\n \"score\": -2}}",
            "bad.json:2: invalid JSON: key `score` is given twice",
        ),
        (
            "{\"eos\": {\"wieght\": 3}}",
            "bad.json: unknown key `wieght` in [eos]",
        ),
        (
            "{\"eos\": {\"weight\": null}}",
            "bad.json:1: invalid JSON: invalid type: null",
        ),
        (
            "{\"token\": [{\"id\": 3}]}",
            "bad.json: [[token]] needs `score`",
        ),
        ("[1]", "bad.json:1: expected a JSON object"),
    ];
    for (text, want) in json_cases {
        let err = AdapterSpec::parse(text, Path::new("bad.json"), true).unwrap_err();
        assert!(err.to_string().starts_with(want), "{text:?}: {err}");
    }
    // A dotted key is a table's key, as TOML says.
    let dotted = AdapterSpec::parse("eos.weight = 3\n", Path::new("d.toml"), false).unwrap();
    let table = AdapterSpec::parse("[eos]\nweight = 3\n", Path::new("d.toml"), false).unwrap();
    assert_eq!(dotted.eos, table.eos);
    assert_eq!(dotted.eos.unwrap().weight, 3.0);
    let err = AdapterSpec::from_file(&dir.join("absent.toml")).unwrap_err();
    assert!(
        err.to_string().contains("absent.toml: cannot read"),
        "{err}"
    );
}

fn stories260k(test: &str) -> Option<(Transformer, Tokenizer)> {
    let data = common::data_dir(test)?;
    let dir = common::temp_dir(test);
    convert_gguf(&data.join("models/stories260k-f32.gguf"), &dir).unwrap();
    let model = Transformer::load(&dir).unwrap();
    let tok = Tokenizer::load(&dir, &model.config).unwrap();
    Some((model, tok))
}

fn greedy(
    model: &Transformer,
    prompt: &[u32],
    eos: &[u32],
    max: usize,
    adapter: Option<Arc<dyn ScoreAdjuster>>,
) -> Vec<u32> {
    let opts = GenerateOptions {
        max_new_tokens: max,
        stop_tokens: eos.to_vec(),
    };
    generate_adjusted(
        model,
        prompt,
        &opts,
        &mut Sampler::greedy(),
        adapter,
        |_| Ok(()),
    )
    .unwrap()
}

#[test]
fn the_adapter_steers_stories260k_greedy_output() {
    let Some((model, tok)) = stories260k("adapter-stories260k") else {
        return;
    };
    let prompt = tok
        .encode_prompt(&chat_prompt("Tell me a story about a cat"))
        .unwrap();
    let plain = greedy(&model, &prompt, &tok.eos, 60, None);
    println!("plain: {:?}", tok.decode(&plain).unwrap());
    assert_eq!(
        plain.len(),
        60,
        "the story runs past 60 tokens without the adapter"
    );

    // Only a large EOS schedule: the response ends at the first step where it applies (L = 1).
    let dir = common::temp_dir("adapter-eos-only");
    let file = write(
        &dir,
        "eos.toml",
        "[eos]\nweight = 25000\nstart = 0\nend = 250\n",
    );
    let spec = AdapterSpec::from_file(&file).unwrap();
    let eos_only = RuleAdapter::new(&spec, rules("eos"), &tok).unwrap();
    let out = greedy(&model, &prompt, &tok.eos, 60, Some(Arc::new(eos_only)));
    assert_eq!(out.len(), 2, "{out:?}");
    assert_eq!(out[0], plain[0], "L = 0: the first token is untouched");
    assert!(tok.is_eos(out[1]));

    // A strong diversity penalty: no token is used twice, nor any token of the instruction.
    let spec =
        AdapterSpec::parse("[diversity]\nscore = -100\n", Path::new("d.toml"), false).unwrap();
    let diverse = RuleAdapter::new(&spec, rules("diversity"), &tok).unwrap();
    let tag = diverse.user_tag().to_vec();
    let user_end = prompt.windows(tag.len()).position(|w| w == tag).unwrap() + tag.len();
    let out = greedy(&model, &prompt, &tok.eos, 40, Some(Arc::new(diverse)));
    println!("diverse: {:?}", tok.decode(&out).unwrap());
    let mut seen = std::collections::HashSet::new();
    let instruction = &prompt[user_end..];
    for t in &out {
        assert!(seen.insert(*t), "{t} repeated in {out:?}");
        assert!(
            !instruction.contains(t) || tok.is_eos(*t),
            "{t} is in the instruction"
        );
    }
    let plain_distinct: std::collections::HashSet<_> = plain[..40].iter().collect();
    assert!(plain_distinct.len() < 40, "the plain story repeats tokens");

    // The paper's full adapter changes the greedy text, identically one by one and batched.
    let paper: Arc<dyn ScoreAdjuster> = Arc::new(RuleAdapter::paper(RuleSet::all(), &tok).unwrap());
    let one = greedy(&model, &prompt, &tok.eos, 30, Some(paper.clone()));
    assert_ne!(one, plain[..one.len()]);
    let opts = GenerateOptions {
        max_new_tokens: 30,
        stop_tokens: tok.eos.clone(),
    };
    let other = tok.encode_prompt(&chat_prompt("Hi")).unwrap();
    let batch = generate_batch_adjusted(
        &model,
        &[other.clone(), prompt.clone()],
        &opts,
        &mut Sampler::greedy(),
        Some(paper.clone()),
        2,
        |_, _| {},
    )
    .unwrap();
    assert_eq!(batch[1], one);
    assert_eq!(batch[0], greedy(&model, &other, &tok.eos, 30, Some(paper)));
}

/// SmolLM2-135M-Instruct's GGUF, as tools/fetch_smollm2.sh places it.
fn smollm2(test: &str) -> Option<(Transformer, Tokenizer)> {
    let gguf = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    if !gguf.is_file() {
        eprintln!(
            "SKIPPED {test}: {} is absent (run tools/fetch_smollm2.sh)",
            gguf.display()
        );
        return None;
    }
    let dir = common::temp_dir(test);
    convert_gguf(&gguf, &dir).unwrap();
    let model = Transformer::load(&dir).unwrap();
    let tok = Tokenizer::load(&dir, &model.config).unwrap();
    Some((model, tok))
}

#[test]
fn the_adapter_resolves_and_steers_smollm2() {
    let Some((model, tok)) = smollm2("adapter-smollm2") else {
        return;
    };
    // A byte-level vocabulary: every one of the paper's 15 texts is a single token there too.
    let paper = RuleAdapter::paper(RuleSet::all(), &tok).unwrap();
    assert!(paper.unresolved().is_empty(), "{:?}", paper.unresolved());
    assert_eq!(paper.uniform_biases().len(), 15);
    let id = |t: &str| tok.token_id(t).unwrap();
    assert_eq!(paper.uniform_biases()[3], (id("ĠI"), -5.0));
    assert_eq!(paper.uniform_biases()[13], (id("Ċ"), 1.0));
    assert_eq!(paper.uniform_biases()[10], (id("ĠĠĠ"), 1.0));

    let prompt = tok
        .encode_prompt(&chat_prompt("Give me three tips for staying healthy."))
        .unwrap();
    let plain = greedy(&model, &prompt, &tok.eos, 12, None);
    let ruled = greedy(&model, &prompt, &tok.eos, 12, Some(Arc::new(paper)));
    println!(
        "plain: {:?}\nrules: {:?}",
        tok.decode(&plain).unwrap(),
        tok.decode(&ruled).unwrap()
    );
    assert_eq!(plain.len(), 12, "SmolLM2 answers at length");
    assert_ne!(plain, ruled, "the paper's rules change the greedy answer");

    let spec = AdapterSpec::parse("[eos]\nweight = 25000\n", Path::new("e.toml"), false).unwrap();
    let eos_only = RuleAdapter::new(&spec, rules("eos"), &tok).unwrap();
    let out = greedy(&model, &prompt, &tok.eos, 12, Some(Arc::new(eos_only)));
    assert_eq!(
        out.len(),
        2,
        "a large EOS bias ends the answer at L = 1: {out:?}"
    );
    assert_eq!(out[0], plain[0]);
}

#[test]
fn olmo_resolves_the_papers_tokens_by_text() {
    let Some(data) = common::data_dir("olmo_resolves_the_papers_tokens_by_text") else {
        return;
    };
    let path = data.join("tokenizers/olmo-tokenizer.json");
    let probe = Tokenizer::open(&path, None, vec![]).unwrap();
    let eos = probe.token_id("|||IP_ADDRESS|||").unwrap();
    let tok = Tokenizer::open(&path, Some(eos), vec![eos]).unwrap();
    let adapter = RuleAdapter::paper(RuleSet::all(), &tok).unwrap();
    let spelled: Vec<String> = adapter
        .uniform_biases()
        .iter()
        .map(|&(id, _)| tok.id_to_token(id).unwrap())
        .collect();
    println!("OLMo: {spelled:?}, unresolved {:?}", adapter.unresolved());
    assert!(
        adapter.unresolved().is_empty(),
        "{:?}",
        adapter.unresolved()
    );
    assert_eq!(
        spelled,
        [
            "<", "Ġ<", "|", "ĠI", "I", "ĠWe", "What", "Ġshould", "Ġ*", "Ġ-", "ĠĠĠ", "Ġ#", "Ġ##",
            "Ċ", "!"
        ]
    );
    assert!(!adapter.user_tag().is_empty() && !adapter.assistant_tag().is_empty());
}
