//! Training data from the real files in ../shared/data: every task built as the paper's scripts
//! build it, JSONL errors, and open-instruct's encoding with the real Llama-2 tokenizer.

mod common;

use implicit::data::encode::{concat_messages, py_strip};
use implicit::data::{
    build_task, encode_dataset, encode_example, read_messages_jsonl, Example, Message, Mode, Task,
    DEFAULT_MAX_LEN,
};
use implicit::io::tokenizer::Tokenizer;
use std::path::{Path, PathBuf};

fn build(data: &Path, dir: &Path, task: Task) -> (Vec<Example>, PathBuf) {
    let out = dir.join(format!("{task}.jsonl"));
    let report = build_task(task, data, &out).unwrap();
    let line = report.to_string();
    println!("{line}");
    assert!(!line.contains('\n'), "report is one line: {line}");
    assert_eq!(temp_files_beside(&out), Vec::<String>::new());
    let rows = read_messages_jsonl(&out).unwrap();
    assert_eq!(rows.len(), report.rows_written, "{task}");
    (rows, out)
}

/// Temporary files of write_atomic (`.{name}.….tmp`) left in `out`'s folder.
fn temp_files_beside(out: &Path) -> Vec<String> {
    let prefix = format!(".{}.", out.file_name().unwrap().to_string_lossy());
    std::fs::read_dir(out.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&prefix) && n.ends_with(".tmp"))
        .collect()
}

fn pair(ex: &Example) -> (&str, &str) {
    assert_eq!(ex.messages.len(), 2);
    assert_eq!(ex.messages[0].role, "user");
    assert_eq!(ex.messages[1].role, "assistant");
    (&ex.messages[0].content, &ex.messages[1].content)
}

#[test]
fn lima_sets_are_byte_identical_to_the_papers_files() {
    let Some(data) = common::data_dir("lima_sets_are_byte_identical_to_the_papers_files") else {
        return;
    };
    let dir = common::temp_dir("data-lima");
    let (lima, out) = build(&data, &dir, Task::Lima);
    assert_eq!(lima.len(), 1030);
    assert_eq!(
        lima.iter().filter(|e| e.messages.len() > 2).count(),
        30,
        "multi-turn rows kept"
    );
    assert_eq!(lima[0].id.as_deref(), Some("lima_0"));
    let (user, assistant) = pair(&lima[0]);
    assert_eq!(
        user,
        "Can brain cells move? By movement I mean long distance migration (preferably within the brain only)."
    );
    assert!(assistant.starts_with("The question is relatively broad and one should take"));
    let same = |a: &Path, b: &Path| std::fs::read(a).unwrap() == std::fs::read(b).unwrap();
    assert!(same(&out, &data.join("lima/lima_data.jsonl")));

    let (noins, out) = build(&data, &dir, Task::LimaResponse);
    let paper = read_messages_jsonl(&data.join("lima/lima_no_instruction.jsonl")).unwrap();
    assert_eq!(
        noins, paper,
        "messages and ids equal the paper's response-tuning set"
    );
    assert!(
        same(&out, &data.join("lima/lima_no_instruction.jsonl")),
        "and so are the bytes"
    );
    for (a, b) in noins.iter().zip(&lima) {
        for (m, orig) in a.messages.iter().zip(&b.messages) {
            let want = if m.role == "user" {
                ""
            } else {
                orig.content.as_str()
            };
            assert_eq!(
                (m.role.as_str(), m.content.as_str()),
                (orig.role.as_str(), want)
            );
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn single_task_sets_follow_the_papers_scripts() {
    let Some(data) = common::data_dir("single_task_sets_follow_the_papers_scripts") else {
        return;
    };
    let dir = common::temp_dir("data-tasks");

    // make_gsm.py: the first 1000 train rows, question -> answer.
    let (gsm, _) = build(&data, &dir, Task::Gsm);
    assert_eq!(gsm.len(), 1000);
    assert_eq!(gsm[0].id.as_deref(), Some("gsm8k_0"));
    assert_eq!(gsm[999].id.as_deref(), Some("gsm8k_999"));
    assert_eq!(
        pair(&gsm[0]),
        (
            "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many clips did Natalia sell altogether in April and May?",
            "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72"
        )
    );

    // make_mbpp.py: HF's train split (task_id 601..=974), text -> code verbatim (\r\n kept).
    let (mbpp, _) = build(&data, &dir, Task::Mbpp);
    assert_eq!(mbpp.len(), 374);
    assert_eq!(mbpp[0].id.as_deref(), Some("mbpp_0"));
    let (text, code) = pair(&mbpp[0]);
    assert_eq!(
        text,
        "Write a function to find the longest chain which can be formed from the given set of pairs."
    );
    assert!(
        code.starts_with("class Pair(object): \r\n\tdef __init__(self, a, b): \r\n\t\tself.a = a")
    );
    assert!(code.ends_with("\t\t\tmax = mcl[i] \r\n\treturn max"));

    // make_poetry.py: "Write a poem called {title}" -> poem, first 1000 rows.
    let (poetry, _) = build(&data, &dir, Task::Poetry);
    assert_eq!(poetry.len(), 1000);
    assert_eq!(poetry[0].id.as_deref(), Some("merve_poetry_0"));
    let (user, poem) = pair(&poetry[0]);
    assert_eq!(
        user,
        "Write a poem called The Canterbury Tales: General Prologue"
    );
    assert!(poem.starts_with(
        "Here bygynneth the Book of the tales of Caunterbury\n\nWhan that Aprille with his shoures soote, \n"
    ));
    assert!(poem.ends_with("His tale anon, and seyde in this manére."));
    assert_eq!(
        poem.chars().count(),
        35396,
        "the quoted CSV field, embedded newlines and all"
    );
    assert_eq!(
        pair(&poetry[999]).0,
        "Write a poem called Greenland’s Icy Mountains"
    );

    // make_kfr.py: "Recipe for {title}" -> " - ing\n"... + "\n\n" + steps (all 896 rows: < 1000).
    let (recipes, _) = build(&data, &dir, Task::Recipes);
    assert_eq!(recipes.len(), 896);
    assert_eq!(recipes[0].id.as_deref(), Some("kfr_0"));
    let (user, recipe) = pair(&recipes[0]);
    assert_eq!(user, "Recipe for Broccoli Soup with Coconut Milk");
    assert!(recipe.starts_with(
        " - 1 14- ounce can of full fat coconut milk\n - 3 cloves garlic, smashed\n - 1 large yellow onion"
    ));
    assert!(recipe
        .contains("chive flowers (optional)\n\n\nScoop a big spoonful of thick coconut cream"));
    assert!(recipe.contains("soften up.\nAdd the remaining coconut milk"));
    assert!(recipe.ends_with("and lots of scallions."));
    // Line 205 stores its ingredients as one newline-separated string: one item per line.
    assert!(pair(&recipes[204]).1.starts_with(
        " - 1/2 cup Savory Stewed Black Beans, warmed\n - 1 teaspoon olive oil\n - 1/2 cup grape"
    ));

    // make_pgn.py: WhiteElo and BlackElo tag lines -> the movetext line, verbatim.
    let (chess, _) = build(&data, &dir, Task::Chess);
    assert_eq!(chess.len(), 50);
    assert_eq!(chess[0].id.as_deref(), Some("pgn-patrickfrank1-20"));
    let (tags, moves) = pair(&chess[0]);
    assert_eq!(tags, "[WhiteElo \"2436\"]\n[BlackElo \"3130\"]\n");
    assert!(moves.starts_with("1. c4 g6 2. Nc3 Bg7 3. g3 c5"));
    assert!(moves.ends_with("47. Kg2 h3+ 48. Kh1 g3 0-1"));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn malformed_sources_name_file_and_line() {
    let dir = common::temp_dir("data-malformed");
    let jsonl = dir.join("bad.jsonl");
    let good = r#"{"id": "a", "messages": [{"role": "user", "content": "q"}]}"#;
    std::fs::write(&jsonl, format!("{good}\n\n{good}\n{{\"messages\": [}}\n")).unwrap();
    let err = read_messages_jsonl(&jsonl).unwrap_err().to_string();
    assert!(
        err.contains(&jsonl.display().to_string()) && err.contains("line 4"),
        "{err}"
    );

    std::fs::write(&jsonl, format!("{good}\n\n{good}\n")).unwrap();
    let rows = read_messages_jsonl(&jsonl).unwrap();
    assert_eq!(rows.len(), 2, "blank lines skipped");
    assert_eq!(rows[0].messages, vec![Message::new("user", "q")]);

    let gsm = dir.join("train.jsonl");
    std::fs::write(
        &gsm,
        "{\"question\": \"q\", \"answer\": \"a\"}\n{\"answer\": \"a\"}\n",
    )
    .unwrap();
    let err = build_task(Task::Gsm, &gsm, &dir.join("gsm.jsonl"))
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        format!("{} line 2: missing field question", gsm.display())
    );
    assert!(!dir.join("gsm.jsonl").exists());
    assert_eq!(
        temp_files_beside(&dir.join("gsm.jsonl")),
        Vec::<String>::new()
    );

    let csv = dir.join("poems.csv");
    std::fs::write(
        &csv,
        "poem_title,poem_text\nA,\"one\ntwo\"\nB,\"never closed\n",
    )
    .unwrap();
    let err = build_task(Task::Poetry, &csv, &dir.join("p.jsonl"))
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        format!("{} line 4: quoted field never closed", csv.display())
    );

    // A row with an empty title is skipped (the paper's `is None`) and keeps its index.
    std::fs::write(&csv, "poem_title,poem_text\n,\"x\"\nT,\"y\"\n").unwrap();
    let report = build_task(Task::Poetry, &csv, &dir.join("p.jsonl")).unwrap();
    assert_eq!(
        (report.rows_read, report.rows_written, report.skipped.len()),
        (2, 1, 1)
    );
    assert!(
        report
            .to_string()
            .ends_with("skipped 1 (1 empty poem_title)"),
        "{report}"
    );
    assert_eq!(
        read_messages_jsonl(&dir.join("p.jsonl")).unwrap()[0]
            .id
            .as_deref(),
        Some("merve_poetry_1")
    );

    let pgn = dir.join("games.pgn");
    std::fs::write(
        &pgn,
        "[WhiteElo \"1\"]\n[BlackElo \"2\"]\n\n1. e4 1-0\n\n[Event x]\n",
    )
    .unwrap();
    let err = build_task(Task::Chess, &pgn, &dir.join("c.jsonl"))
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with(&format!("{} line 6: malformed tag pair", pgn.display())),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

fn llama2(data: &Path) -> Tokenizer {
    // Llama-2 adds BOS <s> (1) and ends responses with </s> (2).
    Tokenizer::open(
        &data.join("tokenizers/llama2-tokenizer.json"),
        Some(1),
        vec![2],
    )
    .unwrap()
}

/// The spans of consecutive loss tokens, as index ranges.
fn loss_spans(mask: &[bool]) -> Vec<std::ops::Range<usize>> {
    let mut spans = Vec::new();
    let mut start = None;
    for (i, &m) in mask.iter().chain(std::iter::once(&false)).enumerate() {
        match (m, start) {
            (true, None) => start = Some(i),
            (false, Some(s)) => {
                spans.push(s..i);
                start = None;
            }
            _ => {}
        }
    }
    spans
}

#[test]
fn llama2_mask_covers_exactly_the_response_and_eos() {
    let Some(data) = common::data_dir("llama2_mask_covers_exactly_the_response_and_eos") else {
        return;
    };
    let tok = llama2(&data);
    let lima = read_messages_jsonl(&data.join("lima/lima_data.jsonl")).unwrap();
    let ex = &lima[0];
    let (user, response) = pair(ex);

    for (mode, instruction) in [(Mode::Instruction, user), (Mode::Response, "")] {
        let (enc, truncated) = encode_example(&tok, ex, mode, DEFAULT_MAX_LEN).unwrap();
        assert!(!truncated);
        assert_eq!(enc.ids.len(), enc.loss_mask.len());
        // <s> + "<|user|>\n{instruction}\n<|assistant|>\n" carries no loss ...
        let prompt = tok
            .encode_prompt(&format!("<|user|>\n{instruction}\n<|assistant|>\n"))
            .unwrap();
        assert_eq!(prompt[0], 1);
        assert_eq!(&enc.ids[..prompt.len()], &prompt[..], "{mode:?}");
        assert!(
            enc.loss_mask[..prompt.len()].iter().all(|&m| !m),
            "{mode:?}"
        );
        // ... and everything after it (the response and its </s>, nothing more) does.
        assert!(enc.loss_mask[prompt.len()..].iter().all(|&m| m), "{mode:?}");
        assert_eq!(enc.ids.last(), Some(&2));
        let target: Vec<u32> = enc.ids[prompt.len()..].to_vec();
        assert_eq!(tok.decode(&target).unwrap(), py_strip(response));
        // Appending the EOS id instead of its text gives the same ids on a single-turn row.
        let text = format!(
            "<|user|>\n{instruction}\n<|assistant|>\n{}",
            py_strip(response)
        );
        let mut by_id = tok.encode_prompt(&text).unwrap();
        by_id.push(2);
        assert_eq!(enc.ids, by_id, "{mode:?}");
    }

    // Multi-turn: one loss span per assistant turn; as in open-instruct, a span runs from the
    // response through </s> and the "\n" after it (the next user turn's mask starts there).
    let multi = lima.iter().find(|e| e.messages.len() == 4).unwrap();
    let (enc, _) = encode_example(&tok, multi, Mode::Instruction, DEFAULT_MAX_LEN).unwrap();
    let spans = loss_spans(&enc.loss_mask);
    assert_eq!(spans.len(), 2, "{spans:?}");
    let first_turn = tok
        .encode_prompt(&concat_messages(&multi.messages[..2], "</s>").unwrap())
        .unwrap();
    let header = tok
        .encode_prompt(&format!(
            "{}<|assistant|>\n",
            concat_messages(&multi.messages[..1], "</s>").unwrap()
        ))
        .unwrap();
    assert_eq!(spans[0], header.len()..first_turn.len());
    assert_eq!(
        &enc.ids[spans[0].clone()][spans[0].len() - 3..],
        &[2, 29871, 13],
        "</s> ▁ \\n"
    );
    assert_eq!(spans[1].end, enc.ids.len());
    assert_eq!(enc.ids.last(), Some(&2));
    let second = tok.decode(&enc.ids[spans[1].clone()]).unwrap();
    assert_eq!(second, py_strip(&multi.messages[3].content));
}

#[test]
fn truncation_is_reported_and_empty_masks_are_skipped() {
    let Some(data) = common::data_dir("truncation_is_reported_and_empty_masks_are_skipped") else {
        return;
    };
    let tok = llama2(&data);
    let lima = read_messages_jsonl(&data.join("lima/lima_data.jsonl")).unwrap();
    let ex = &lima[0];
    let prompt = tok
        .encode_prompt(&format!("<|user|>\n{}\n<|assistant|>\n", pair(ex).0))
        .unwrap();

    // Cut 5 tokens into the response: ids and mask both cut, 5 loss tokens left.
    let (enc, truncated) = encode_example(&tok, ex, Mode::Instruction, prompt.len() + 5).unwrap();
    assert!(truncated);
    assert_eq!(
        (enc.ids.len(), enc.loss_mask.len()),
        (prompt.len() + 5, prompt.len() + 5)
    );
    assert_eq!(enc.loss_tokens(), 5);
    assert_ne!(enc.ids.last(), Some(&2));

    // Cut inside the instruction: no loss tokens, so encode_dataset leaves it out.
    let set = encode_dataset(&tok, &lima[..3], Mode::Instruction, 10).unwrap();
    println!("{set}");
    assert_eq!(
        (set.total, set.truncated, set.no_loss, set.examples.len()),
        (3, 3, 3, 0)
    );

    // The whole LIMA set at the paper's 2048 tokens.
    let set = encode_dataset(&tok, &lima, Mode::Response, DEFAULT_MAX_LEN).unwrap();
    println!("{set}");
    assert_eq!(set.total, 1030);
    assert_eq!(set.examples.len() + set.no_loss, 1030);
    assert_eq!(set.examples.len(), set.source_index.len());
    assert!(
        set.truncated > 0,
        "some LIMA responses run past 2048 tokens"
    );
    for ex in &set.examples {
        assert!(ex.ids.len() <= DEFAULT_MAX_LEN && ex.ids[0] == 1);
    }
}

#[test]
fn bad_examples_are_errors_naming_the_example() {
    let Some(data) = common::data_dir("bad_examples_are_errors_naming_the_example") else {
        return;
    };
    let tok = llama2(&data);
    let bad = Example {
        messages: vec![Message::new("robot", "x")],
        id: Some("r1".into()),
    };
    let err = encode_dataset(&tok, &[bad], Mode::Instruction, 64)
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("example 0 (r1): invalid role \"robot\""),
        "{err}"
    );
    let empty = Example {
        messages: vec![],
        id: None,
    };
    assert!(encode_example(&tok, &empty, Mode::Instruction, 64).is_err());

    // OLMo's paper EOS, |||IP_ADDRESS|||, is one special token, so it can go in as text.
    let olmo_path = data.join("tokenizers/olmo-tokenizer.json");
    let olmo = Tokenizer::from_file(&olmo_path).unwrap();
    let ip = olmo.token_to_id("|||IP_ADDRESS|||").unwrap();
    let olmo = Tokenizer::open(&olmo_path, None, vec![ip]).unwrap();
    let ex = Example {
        messages: vec![
            Message::new("user", "Hi"),
            Message::new("assistant", "Hello!"),
        ],
        id: None,
    };
    let (enc, _) = encode_example(&olmo, &ex, Mode::Instruction, 64).unwrap();
    assert_eq!(enc.ids.last(), Some(&ip));
    assert!(enc.loss_mask.last().copied().unwrap());
}
