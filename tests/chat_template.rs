//! Chat templates: the project's renderer against transformers' `apply_chat_template` (fixtures
//! from tools/make_chat_template_fixture.py), which format a model folder selects, and
//! `implicit generate --chat` / `--model X.gguf` end to end.

mod common;

use implicit::io::chat_template::{
    render_tulu, ChatFormat, ChatMessage, ChatTemplate, ModelTemplate,
};
use implicit::io::tokenizer::{chat_prompt, Tokenizer};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A fixture file: a template, its special tokens, and transformers' renderings.
struct Fixture {
    template: ModelTemplate,
    cases: Vec<serde_json::Value>,
}

fn fixture(name: &str) -> Fixture {
    let path = common::fixtures().join("chat_template").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    let source = doc["chat_template"].as_str().unwrap();
    Fixture {
        template: ModelTemplate::new(source, &doc["special_tokens"], name).unwrap(),
        cases: doc["cases"].as_array().unwrap().clone(),
    }
}

fn messages(case: &serde_json::Value) -> Vec<ChatMessage> {
    case["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| ChatMessage::new(m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
        .collect()
}

/// Every case renders byte for byte as transformers rendered it, or fails with the message of
/// the template's `raise_exception` where transformers' did.
fn check_fixture(name: &str) -> usize {
    let f = fixture(name);
    assert!(!f.cases.is_empty(), "{name}: no cases");
    for case in &f.cases {
        let label = format!("{name}: {}", case["name"]);
        let add = case["add_generation_prompt"].as_bool().unwrap();
        let got = f.template.render(&messages(case), add);
        match (case.get("rendered"), case.get("error")) {
            (Some(want), _) => assert_eq!(got.unwrap(), want.as_str().unwrap(), "{label}"),
            (None, Some(error)) => {
                let err = got.expect_err(&label).to_string();
                assert!(err.contains(error.as_str().unwrap()), "{label}: {err}");
            }
            _ => panic!("{label}: neither rendered nor error"),
        }
    }
    f.cases.len()
}

#[test]
fn smollm2_template_renders_as_transformers_does() {
    assert_eq!(check_fixture("smollm2.json"), 7);
}

#[test]
fn template_features_render_as_transformers_does() {
    assert_eq!(check_fixture("features.json"), 4);
}

/// A model folder with a word-level tokenizer (`</s>` its EOS) and the given
/// tokenizer_config.json.
fn model_folder(test: &str, tokenizer_config: Option<serde_json::Value>) -> (PathBuf, Tokenizer) {
    let dir = common::temp_dir(test);
    let special = |id: u32, content: &str| {
        json!({"id": id, "content": content, "single_word": false, "lstrip": false,
               "rstrip": false, "normalized": false, "special": true})
    };
    let tokenizer = json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [special(0, "<unk>"), special(1, "</s>")],
        "normalizer": null, "pre_tokenizer": {"type": "WhitespaceSplit"},
        "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": {"<unk>": 0, "</s>": 1, "Hi": 2}, "unk_token": "<unk>"},
    });
    std::fs::write(dir.join("tokenizer.json"), tokenizer.to_string()).unwrap();
    if let Some(config) = tokenizer_config {
        std::fs::write(dir.join("tokenizer_config.json"), config.to_string()).unwrap();
    }
    let tok = Tokenizer::open(&dir.join("tokenizer.json"), None, vec![1]).unwrap();
    (dir, tok)
}

const CHATML: &str = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

#[test]
fn a_model_folder_selects_its_own_template_or_tulu() {
    let hi = [ChatMessage::new("user", "Hi")];
    let chatml = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n";

    // No tokenizer_config.json, or one without a chat_template: Tulu under auto.
    for config in [None, Some(json!({"eos_token": "</s>"}))] {
        let (dir, tok) = model_folder("chat-no-template", config);
        let chat = ChatTemplate::load(&dir, &tok, ChatFormat::Auto).unwrap();
        assert!(chat.is_tulu(), "{}", chat.describe());
        assert!(chat.describe().contains("no chat template"));
        assert_eq!(chat.render(&hi).unwrap(), chat_prompt("Hi"));
        let err = ChatTemplate::load(&dir, &tok, ChatFormat::Model)
            .err()
            .expect("--chat-format model without a template")
            .to_string();
        assert!(err.contains("--chat-format tulu"), "{err}");
    }

    // A chat_template: the model's own under auto and model; Tulu when asked.
    let (dir, tok) = model_folder(
        "chat-template",
        Some(json!({"eos_token": "</s>", "chat_template": CHATML})),
    );
    for format in [ChatFormat::Auto, ChatFormat::Model] {
        let chat = ChatTemplate::load(&dir, &tok, format).unwrap();
        assert!(!chat.is_tulu());
        assert!(chat.describe().contains("model's own template"));
        assert_eq!(chat.render(&hi).unwrap(), chatml);
    }
    let tulu = ChatTemplate::load(&dir, &tok, ChatFormat::Tulu).unwrap();
    assert!(tulu.is_tulu() && tulu.describe().contains("--chat-format tulu"));
    assert_eq!(tulu.render(&hi).unwrap(), chat_prompt("Hi"));
    // Earlier assistant turns end with the EOS text in Tulu.
    let turns = [
        ChatMessage::new("user", "Hi"),
        ChatMessage::new("assistant", "Hello"),
        ChatMessage::new("user", "Hi"),
    ];
    assert_eq!(tulu.render(&turns).unwrap(), render_tulu(&turns, "</s>"));

    // Named templates: the "default" one; chat_template.jinja wins over tokenizer_config.json.
    let (dir, tok) = model_folder(
        "chat-named",
        Some(json!({"chat_template": [
            {"name": "tool_use", "template": "tools"},
            {"name": "default", "template": CHATML},
        ]})),
    );
    let chat = ChatTemplate::load(&dir, &tok, ChatFormat::Auto).unwrap();
    assert_eq!(chat.render(&hi).unwrap(), chatml);
    std::fs::write(
        dir.join("chat_template.jinja"),
        "[{{ messages[0].content }}]",
    )
    .unwrap();
    let chat = ChatTemplate::load(&dir, &tok, ChatFormat::Auto).unwrap();
    assert_eq!(chat.render(&hi).unwrap(), "[Hi]");
    assert!(chat.describe().contains("chat_template.jinja"));
}

#[test]
fn a_model_template_is_encoded_without_an_added_bos() {
    // The template writes BOS itself (as Llama's do): apply_chat_template encodes its text
    // without special tokens, so BOS must not come twice.
    let (dir, mut tok) = model_folder(
        "chat-bos",
        Some(
            json!({"bos_token": "</s>", "chat_template": "{{ bos_token }}{{ messages[0].content }}"}),
        ),
    );
    tok.bos = Some(1);
    let hi = [ChatMessage::new("user", "Hi")];
    let chat = ChatTemplate::load(&dir, &tok, ChatFormat::Auto).unwrap();
    assert_eq!(chat.encode(&tok, &hi).unwrap(), vec![1, 2]);
    let tulu = ChatTemplate::load(&dir, &tok, ChatFormat::Tulu).unwrap();
    let ids = tulu.encode(&tok, &hi).unwrap();
    assert_eq!(ids, tok.encode_prompt(&chat_prompt("Hi")).unwrap());
    assert_eq!(ids[0], 1);
}

/// Runs `implicit generate` with `args`; returns (stdout, stderr), failing on a non-zero exit.
fn generate(args: &[&str]) -> (String, String) {
    let out = Command::new(common::implicit_bin())
        .arg("generate")
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{args:?} failed:\n{stderr}");
    (stdout, stderr)
}

fn line_with<'a>(stderr: &'a str, start: &str) -> &'a str {
    stderr
        .lines()
        .find(|l| l.starts_with(start))
        .unwrap_or_else(|| panic!("no line starting {start:?} in:\n{stderr}"))
}

#[test]
fn generate_chat_says_which_format_and_why_it_stopped() {
    let Some(data) = common::data_dir("generate_chat_says_which_format_and_why_it_stopped") else {
        return;
    };
    let gguf = data.join("models/stories260k-f32.gguf");
    let gguf = gguf.to_str().unwrap();
    // The GGUF itself is a --model (converted for the run); it has no chat template.
    let base = [
        "--model",
        gguf,
        "--chat",
        "--prompt",
        "Hi",
        "--max-new-tokens",
        "5",
    ];
    let (tulu_out, stderr) = generate(&base);
    assert!(
        stderr.contains("(to skip this step: implicit convert-gguf"),
        "{stderr}"
    );
    let format = line_with(&stderr, "chat format:");
    assert!(
        format.contains("Tulu") && format.contains("no chat template"),
        "{format}"
    );
    let stopped = line_with(&stderr, "stopped at");
    assert!(
        stopped == "stopped at the --max-new-tokens limit (5)"
            || stopped.starts_with("stopped at EOS"),
        "{stopped}"
    );

    // The same model as a folder, with a chat template added: the model's own is used.
    let dir = common::temp_dir("generate-chat-template").join("stories");
    implicit::io::convert::convert_gguf(Path::new(gguf), &dir).unwrap();
    let config_path = dir.join("tokenizer_config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    let template = "{% for m in messages %}User: {{ m.content }}\n{% endfor %}Assistant:";
    config["chat_template"] = json!(template);
    std::fs::write(&config_path, config.to_string()).unwrap();
    let dir_s = dir.to_str().unwrap();
    let with_dir = |extra: &[&'static str]| {
        let mut args = vec![
            "--model",
            dir_s,
            "--chat",
            "--prompt",
            "Hi",
            "--max-new-tokens",
            "5",
        ];
        args.extend_from_slice(extra);
        generate(&args)
    };
    let (_, stderr) = with_dir(&[]);
    assert!(
        line_with(&stderr, "chat format:").contains("model's own template"),
        "{stderr}"
    );
    let model = implicit::model::Transformer::load(&dir).unwrap();
    let tok = Tokenizer::load(&dir, &model.config).unwrap();
    let want = tok.encode("User: Hi\nAssistant:").unwrap().len();
    assert_eq!(
        line_with(&stderr, "prompt of"),
        format!("prompt of {want} tokens")
    );

    // --chat-format tulu: the paper's prompt, the same answer as from the GGUF.
    let (out, stderr) = with_dir(&["--chat-format", "tulu"]);
    assert!(line_with(&stderr, "chat format:").contains("--chat-format tulu"));
    let want = tok.encode_prompt(&chat_prompt("Hi")).unwrap().len();
    assert_eq!(
        line_with(&stderr, "prompt of"),
        format!("prompt of {want} tokens")
    );
    assert_eq!(out, tulu_out);
}

fn smollm2_gguf() -> Option<PathBuf> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    if path.is_file() {
        Some(path)
    } else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI fetches SmolLM2 (tools/fetch_smollm2.sh)"
        );
        eprintln!(
            "SKIPPED smollm2 chat: no {} (bash tools/fetch_smollm2.sh)",
            path.display()
        );
        None
    }
}

/// SmolLM2-Instruct, given as its GGUF, answers in its own (ChatML) template; its prompt is
/// transformers' rendering (the fixture's) encoded without added special tokens.
#[test]
fn smollm2_chats_in_its_own_template() {
    let Some(gguf) = smollm2_gguf() else {
        return;
    };
    let question = "What is the capital of France?";
    let (out, stderr) = generate(&[
        "--model",
        gguf.to_str().unwrap(),
        "--chat",
        "--prompt",
        question,
        "--max-new-tokens",
        "32",
    ]);
    let format = line_with(&stderr, "chat format:");
    assert!(format.contains("model's own template"), "{format}");
    // transformers' text for this conversation (tools/make_chat_template_fixture.py), in
    // SmolLM2's vocabulary: ChatML with SmolLM's default system prompt.
    let f = fixture("smollm2.json");
    let case = f
        .cases
        .iter()
        .find(|c| c["name"] == "user only, generation prompt")
        .unwrap();
    assert_eq!(messages(case), vec![ChatMessage::new("user", question)]);
    let dir = common::temp_dir("smollm2-chat").join("smollm2");
    implicit::io::convert::convert_gguf(&gguf, &dir).unwrap();
    let config = implicit::model::ModelConfig::from_file(&dir.join("config.json")).unwrap();
    let tok = Tokenizer::load(&dir, &config).unwrap();
    let want = tok
        .encode(case["rendered"].as_str().unwrap())
        .unwrap()
        .len();
    assert_eq!(
        line_with(&stderr, "prompt of"),
        format!("prompt of {want} tokens")
    );
    assert_eq!(
        line_with(&stderr, "stopped at"),
        "stopped at EOS (<|im_end|>)"
    );
    assert!(out.contains("Paris"), "{out}");
    std::fs::remove_dir_all(dir.parent().unwrap()).unwrap();
}

/// `implicit serve` on `dir` with `extra` flags: (the prompt_tokens of a one-message chat
/// request, the server's stderr).
fn serve_chat_prompt_tokens(dir: &Path, extra: &[&str], log: &Path) -> (u64, String) {
    use std::io::{BufRead, BufReader, Read, Write};
    let mut child = Command::new(common::implicit_bin())
        .args(["serve", "--port", "0", "--model"])
        .arg(dir)
        .args(extra)
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let result = (|| {
        let addr = line
            .trim()
            .strip_prefix("listening on http://")?
            .to_string();
        let body = json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2});
        let body = body.to_string();
        let mut s = std::net::TcpStream::connect(&addr).ok()?;
        let head = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).ok()?;
        s.write_all(body.as_bytes()).ok()?;
        let mut response = String::new();
        s.read_to_string(&mut response).ok()?;
        let (_, json_text) = response.split_once("\r\n\r\n")?;
        let v: serde_json::Value = serde_json::from_str(json_text).ok()?;
        v["usage"]["prompt_tokens"].as_u64()
    })();
    let _ = child.kill();
    let _ = child.wait();
    let stderr = std::fs::read_to_string(log).unwrap();
    let tokens = result.unwrap_or_else(|| panic!("no answer from the server:\n{line}\n{stderr}"));
    (tokens, stderr)
}

#[test]
fn serve_renders_chats_in_the_models_template_unless_told_tulu() {
    let Some(data) = common::data_dir("serve_renders_chats_in_the_models_template") else {
        return;
    };
    let dir = common::temp_dir("serve-chat-template").join("stories");
    implicit::io::convert::convert_gguf(&data.join("models/stories260k-f32.gguf"), &dir).unwrap();
    let config_path = dir.join("tokenizer_config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    config["chat_template"] = json!(
        "{{ bos_token }}{% for m in messages %}User: {{ m.content }}\n{% endfor %}Assistant:"
    );
    std::fs::write(&config_path, config.to_string()).unwrap();
    let model = implicit::model::Transformer::load(&dir).unwrap();
    let tok = Tokenizer::load(&dir, &model.config).unwrap();
    let log = dir.parent().unwrap().join("serve.log");

    let (tokens, stderr) = serve_chat_prompt_tokens(&dir, &[], &log);
    assert!(
        stderr.contains("chat format: the model's own template"),
        "{stderr}"
    );
    // The template writes BOS itself; the server must not add another.
    let bos = config["bos_token"].as_str().unwrap();
    let want = tok.encode(&format!("{bos}User: Hi\nAssistant:")).unwrap();
    assert_eq!(want.iter().filter(|&&t| Some(t) == tok.bos).count(), 1);
    assert_eq!(tokens, want.len() as u64);

    let (tokens, stderr) = serve_chat_prompt_tokens(&dir, &["--chat-format", "tulu"], &log);
    assert!(stderr.contains("chat format: the paper's Tulu"), "{stderr}");
    let want = tok.encode_prompt(&chat_prompt("Hi")).unwrap();
    assert_eq!(tokens, want.len() as u64);
}

#[test]
fn generate_names_a_gguf_it_cannot_read() {
    let dir = common::temp_dir("generate-bad-gguf");
    let bad = dir.join("broken.gguf");
    std::fs::write(&bad, b"GGUF\x03\x00\x00\x00 not a real file").unwrap();
    let out = Command::new(common::implicit_bin())
        .args(["generate", "--prompt", "Hi", "--model"])
        .arg(&bad)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("broken.gguf"), "{stderr}");
}
