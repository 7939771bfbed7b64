//! Chat prompts: the model's own `chat_template` (tokenizer_config.json's, rendered with
//! minijinja as transformers' `apply_chat_template` renders it with Jinja2), or the paper's Tulu
//! format (`<|user|>\n{instruction}\n<|assistant|>\n`), which the experiments always use.

mod pyjson;

use crate::bail;
use crate::data::encode::py_strip;
use crate::error::{Context, Result};
use crate::io::tokenizer::Tokenizer;
use minijinja::value::{Kwargs, Serde};
use minijinja::{Environment, ErrorKind, Value};
use std::collections::BTreeMap;
use std::path::Path;

/// Which chat format `generate --chat` and `serve` use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ChatFormat {
    /// The model's own chat template when its folder has one, else Tulu.
    Auto,
    /// The model's own chat template (an error when there is none).
    Model,
    /// The paper's Tulu format.
    Tulu,
}

/// One turn of a conversation: role ("system", "user", "assistant") and its text; a template
/// sees it as the dict `{"role": ..., "content": ...}`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: &str, content: &str) -> ChatMessage {
        ChatMessage {
            role: role.to_string(),
            content: content.to_string(),
        }
    }
}

/// The paper's Tulu chat text of `messages`, as its evaluation renders them
/// (`create_prompt_with_tulu_chat_format` in eval/templates.py): `<|system|>\n{c}\n`,
/// `<|user|>\n{c}\n`, `<|assistant|>\n{c.strip()}{eos}\n`, then `<|assistant|>\n` to answer.
/// BOS is added by the tokenizer. One user message gives `chat_prompt(instruction)`.
pub fn render_tulu(messages: &[ChatMessage], eos_text: &str) -> String {
    let mut text = String::new();
    for m in messages {
        let content = &m.content;
        match m.role.as_str() {
            "system" => text.push_str(&format!("<|system|>\n{content}\n")),
            "user" => text.push_str(&format!("<|user|>\n{content}\n")),
            _ => text.push_str(&format!("<|assistant|>\n{}{eos_text}\n", py_strip(content))),
        }
    }
    text.push_str("<|assistant|>\n");
    text
}

/// A model's own Jinja chat template, in an environment set up as transformers sets up its
/// own: `trim_blocks` and `lstrip_blocks`, loop controls, `raise_exception`, a `tojson` that is
/// Python's `json.dumps` (not Jinja's HTML-escaping one), Python string and dict methods
/// (`strip`, `startswith`, `split`, `items`, ...), and the tokenizer's special tokens
/// (`bos_token`, `eos_token`, ...) as variables.
pub struct ModelTemplate {
    env: Environment<'static>,
    /// Where the template came from, for messages.
    origin: String,
    /// `bos_token`, `eos_token`, ... as transformers' `special_tokens_map` passes them.
    special_tokens: Vec<(String, Value)>,
}

const TEMPLATE_NAME: &str = "chat_template";

impl ModelTemplate {
    /// Compiles `source`; the special tokens (`bos_token`, ...) come from `config`, a
    /// tokenizer_config.json document (or any object with those keys); `origin` names the
    /// template in messages.
    pub fn new(source: &str, config: &serde_json::Value, origin: &str) -> Result<ModelTemplate> {
        let mut env = Environment::new();
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| crate::Error(format!("{origin}: chat template syntax: {e}")))?;
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_filter("tojson", tojson);
        env.add_template_owned(TEMPLATE_NAME, without_generation_tags(source))
            .map_err(|e| crate::Error(format!("{origin}: invalid chat template: {e:#}")))?;
        Ok(ModelTemplate {
            env,
            origin: origin.to_string(),
            special_tokens: special_tokens(config),
        })
    }

    /// The chat template of a model folder: `chat_template.jinja` when present (transformers
    /// prefers that file), else tokenizer_config.json's `chat_template` (a string, or a list of
    /// named templates of which "default" is used). None when the folder has neither.
    pub fn from_dir(dir: &Path) -> Result<Option<ModelTemplate>> {
        let config_path = dir.join("tokenizer_config.json");
        let config: serde_json::Value = if config_path.is_file() {
            let text = std::fs::read_to_string(&config_path)
                .with_context(|| format!("{}: cannot read", config_path.display()))?;
            serde_json::from_str(&text)
                .with_context(|| format!("{}: invalid JSON", config_path.display()))?
        } else {
            serde_json::Value::Null
        };
        let jinja = dir.join("chat_template.jinja");
        if jinja.is_file() {
            let source = std::fs::read_to_string(&jinja)
                .with_context(|| format!("{}: cannot read", jinja.display()))?;
            return ModelTemplate::new(&source, &config, &jinja.display().to_string()).map(Some);
        }
        let origin = format!("{} chat_template", config_path.display());
        let source = match config.get("chat_template") {
            None | Some(serde_json::Value::Null) => return Ok(None),
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(serde_json::Value::Array(named)) => {
                let pick = named
                    .iter()
                    .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"));
                match pick
                    .and_then(|t| t.get("template"))
                    .and_then(|t| t.as_str())
                {
                    Some(s) => s.to_string(),
                    None => bail!("{origin}: a list of named templates without a \"default\" one"),
                }
            }
            Some(_) => bail!("{origin}: neither a string nor a list of named templates"),
        };
        ModelTemplate::new(&source, &config, &origin).map(Some)
    }

    /// Where the template came from.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Names the template's origin anew in messages (e.g. the GGUF that a temporary folder
    /// was converted from).
    pub fn set_origin(&mut self, origin: &str) {
        self.origin = origin.to_string();
    }

    /// The template's text for `messages`; `add_generation_prompt` appends the assistant's
    /// header, as in `apply_chat_template(..., tokenize=False)`.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        // Serialized, so that each message keeps Python's key order (role, then content).
        let mut vars: BTreeMap<String, Value> = self.special_tokens.iter().cloned().collect();
        vars.extend([
            ("messages".to_string(), Value::from(Serde(messages))),
            ("tools".to_string(), Value::from(())),
            ("documents".to_string(), Value::from(())),
            (
                "add_generation_prompt".to_string(),
                Value::from(add_generation_prompt),
            ),
        ]);
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| crate::Error(format!("{}: {e}", self.origin)))?;
        template
            .render(Value::from(vars))
            .map_err(|e| crate::Error(format!("{}: cannot render: {}", self.origin, describe(&e))))
    }
}

/// An error's message with its causes, without minijinja's multi-line debug view.
fn describe(e: &minijinja::Error) -> String {
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        text.push_str(&format!(": {c}"));
        cause = c.source();
    }
    text
}

/// transformers' `raise_exception(message)`: the template refuses the conversation.
fn raise_exception(message: String) -> std::result::Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
}

/// transformers' `tojson`: Python's `json.dumps(x, ensure_ascii=False, indent=None,
/// separators=None, sort_keys=False)`.
fn tojson(value: &Value, kwargs: Kwargs) -> std::result::Result<String, minijinja::Error> {
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    let indent: Option<Value> = kwargs.get("indent")?;
    let separators: Option<Vec<String>> = kwargs.get("separators")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    let indent = match indent {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) => match (v.as_i64(), v.as_str()) {
            (Some(n), _) => Some(" ".repeat(n.max(0) as usize)),
            (None, Some(s)) => Some(s.to_string()),
            _ => {
                return Err(minijinja::Error::new(
                    ErrorKind::InvalidOperation,
                    "tojson: indent must be an integer or a string",
                ))
            }
        },
    };
    let separators = match separators.as_deref() {
        None => None,
        Some([item, key]) => Some((item.clone(), key.clone())),
        Some(_) => {
            return Err(minijinja::Error::new(
                ErrorKind::InvalidOperation,
                "tojson: separators must be a pair (item, key)",
            ))
        }
    };
    let opts = pyjson::DumpOptions {
        ensure_ascii: ensure_ascii.unwrap_or(false),
        indent,
        separators,
        sort_keys: sort_keys.unwrap_or(false),
    };
    pyjson::dumps(value, &opts)
}

/// transformers' `{% generation %}...{% endgeneration %}` marks assistant text for its masks
/// and renders its body unchanged: the same as `{% if true %}...{% endif %}`, which minijinja
/// knows (whitespace control `-`/`+` kept).
fn without_generation_tags(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(start) = rest.find("{%") {
        out.push_str(&rest[..start]);
        let tag = &rest[start..];
        let Some(end) = tag.find("%}") else {
            break;
        };
        let inner = &tag[2..end];
        let body = inner
            .trim_start_matches(['-', '+'])
            .trim_end_matches(['-', '+']);
        let replacement = match body.trim() {
            "generation" => Some("if true"),
            "endgeneration" => Some("endif"),
            _ => None,
        };
        match replacement {
            Some(r) => {
                let lead = &inner[..inner.len() - inner.trim_start_matches(['-', '+']).len()];
                let trail = &inner[inner.trim_end_matches(['-', '+']).len()..];
                out.push_str(&format!("{{%{lead} {r} {trail}%}}"));
            }
            None => out.push_str(&tag[..end + 2]),
        }
        rest = &tag[end + 2..];
    }
    out.push_str(rest);
    out
}

/// transformers' `special_tokens_map` from tokenizer_config.json: each of bos/eos/unk/sep/pad/
/// cls/mask_token that is set (a string, or an added token `{"content": ...}`), and
/// `additional_special_tokens` when not empty.
fn special_tokens(config: &serde_json::Value) -> Vec<(String, Value)> {
    let text = |v: &serde_json::Value| -> Option<String> {
        match v {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
            _ => None,
        }
    };
    let mut out = Vec::new();
    for name in [
        "bos_token",
        "eos_token",
        "unk_token",
        "sep_token",
        "pad_token",
        "cls_token",
        "mask_token",
    ] {
        if let Some(t) = config.get(name).and_then(text) {
            out.push((name.to_string(), Value::from(t)));
        }
    }
    if let Some(serde_json::Value::Array(extra)) = config.get("additional_special_tokens") {
        let extra: Vec<Value> = extra.iter().filter_map(text).map(Value::from).collect();
        if !extra.is_empty() {
            out.push(("additional_special_tokens".into(), Value::from(extra)));
        }
    }
    out
}

/// How a chat is turned into a prompt: the model's template or the paper's Tulu format.
pub enum ChatTemplate {
    /// `eos_text` ends earlier assistant turns; `reason` says why Tulu was chosen.
    Tulu {
        eos_text: String,
        reason: &'static str,
    },
    /// Boxed: an environment is large beside Tulu's string.
    Model(Box<ModelTemplate>),
}

impl ChatTemplate {
    /// The paper's format, chosen explicitly.
    pub fn tulu(tok: &Tokenizer) -> ChatTemplate {
        ChatTemplate::Tulu {
            eos_text: crate::data::encode::eos_text(tok).unwrap_or_default(),
            reason: "--chat-format tulu",
        }
    }

    /// The format that `format` selects for the model folder `dir`.
    pub fn load(dir: &Path, tok: &Tokenizer, format: ChatFormat) -> Result<ChatTemplate> {
        if format == ChatFormat::Tulu {
            return Ok(ChatTemplate::tulu(tok));
        }
        match (ModelTemplate::from_dir(dir)?, format) {
            (Some(t), _) => Ok(ChatTemplate::Model(Box::new(t))),
            (None, ChatFormat::Model) => bail!(
                "{}: the model has no chat template (no chat_template in tokenizer_config.json, \
                 no chat_template.jinja); use --chat-format tulu for the paper's format",
                dir.display()
            ),
            (None, _) => Ok(ChatTemplate::Tulu {
                eos_text: crate::data::encode::eos_text(tok).unwrap_or_default(),
                reason: "the model has no chat template",
            }),
        }
    }

    pub fn is_tulu(&self) -> bool {
        matches!(self, ChatTemplate::Tulu { .. })
    }

    /// One line saying which format is used, for stderr.
    pub fn describe(&self) -> String {
        match self {
            ChatTemplate::Tulu { reason, .. } => {
                format!(
                    "chat format: the paper's Tulu (<|user|>\\n...\\n<|assistant|>\\n; {reason})"
                )
            }
            ChatTemplate::Model(t) => {
                format!("chat format: the model's own template ({})", t.origin)
            }
        }
    }

    /// The prompt text of `messages`, ready for the assistant's answer.
    pub fn render(&self, messages: &[ChatMessage]) -> Result<String> {
        match self {
            ChatTemplate::Tulu { eos_text, .. } => Ok(render_tulu(messages, eos_text)),
            ChatTemplate::Model(t) => t.render(messages, true),
        }
    }

    /// The prompt's token ids. Tulu text follows BOS (when the tokenizer adds one), as the
    /// paper's code encodes it; a model's template writes its own BOS where it wants one, so
    /// its text is encoded without special tokens added, as `apply_chat_template` does.
    pub fn encode(&self, tok: &Tokenizer, messages: &[ChatMessage]) -> Result<Vec<u32>> {
        let text = self.render(messages)?;
        match self {
            ChatTemplate::Tulu { .. } => tok.encode_prompt(&text),
            ChatTemplate::Model(_) => tok.encode(&text),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> serde_json::Value {
        serde_json::json!({"bos_token": "<s>", "eos_token": "</s>"})
    }

    #[test]
    fn tulu_renders_the_paper_format() {
        let turns = [
            ChatMessage::new("system", "Be brief."),
            ChatMessage::new("user", "Hi"),
            ChatMessage::new("assistant", " Hello! \n"),
            ChatMessage::new("user", "Bye"),
        ];
        assert_eq!(
            render_tulu(&turns, "</s>"),
            "<|system|>\nBe brief.\n<|user|>\nHi\n<|assistant|>\nHello!</s>\n<|user|>\nBye\n<|assistant|>\n"
        );
        let one = [ChatMessage::new("user", "Hi")];
        assert_eq!(
            render_tulu(&one, "</s>"),
            crate::io::tokenizer::chat_prompt("Hi")
        );
    }

    #[test]
    fn generation_tags_render_their_body() {
        let src = "{% for m in messages %}{%- generation -%} {{ m.content }} {%+ endgeneration %}{% endfor %}";
        assert_eq!(
            without_generation_tags(src),
            "{% for m in messages %}{%- if true -%} {{ m.content }} {%+ endif %}{% endfor %}"
        );
        let t = ModelTemplate::new(src, &tokens(), "test").unwrap();
        let text = t.render(&[ChatMessage::new("user", "a")], false).unwrap();
        assert_eq!(text, "a ");
    }

    #[test]
    fn raise_exception_is_an_error_naming_the_template() {
        let src = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('Conversation must start with the user') }}{% endif %}{{ bos_token }}";
        let t = ModelTemplate::new(src, &tokens(), "folder/tokenizer_config.json").unwrap();
        assert_eq!(
            t.render(&[ChatMessage::new("user", "x")], true).unwrap(),
            "<s>"
        );
        let err = t
            .render(&[ChatMessage::new("assistant", "x")], true)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("folder/tokenizer_config.json")
                && err.contains("Conversation must start with the user"),
            "{err}"
        );
    }

    #[test]
    fn a_syntax_error_names_the_template() {
        let err = ModelTemplate::new("{% for %}", &tokens(), "x/chat_template.jinja")
            .err()
            .expect("invalid template")
            .to_string();
        assert!(err.contains("x/chat_template.jinja"), "{err}");
    }

    #[test]
    fn special_tokens_come_as_strings_or_added_tokens() {
        let config = serde_json::json!({
            "bos_token": {"content": "<s>", "lstrip": false},
            "eos_token": "</s>",
            "pad_token": null,
            "additional_special_tokens": [],
        });
        let got: Vec<(String, String)> = special_tokens(&config)
            .into_iter()
            .map(|(k, v)| (k, v.to_string()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("bos_token".to_string(), "<s>".to_string()),
                ("eos_token".to_string(), "</s>".to_string())
            ]
        );
    }
}
