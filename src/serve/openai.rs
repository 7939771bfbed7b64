//! The OpenAI API's request side: validating `/v1/chat/completions` and `/v1/completions`
//! bodies, rendering chat messages (the model's own template or the paper's Tulu format, see
//! `io::chat_template`), and OpenAI-style errors.

use crate::io::chat_template::ChatMessage;
#[cfg(doc)]
use crate::io::chat_template::ChatTemplate;
use serde_json::{json, Map, Value};

/// An error answered as `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<String>,
}

impl ApiError {
    pub fn invalid(message: impl Into<String>, param: Option<&str>) -> ApiError {
        ApiError {
            status: 400,
            message: message.into(),
            kind: "invalid_request_error",
            param: param.map(str::to_string),
            code: None,
        }
    }
    pub fn with_code(mut self, code: &str) -> ApiError {
        self.code = Some(code.to_string());
        self
    }
    pub fn status(status: u16, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            kind: if status >= 500 {
                "server_error"
            } else {
                "invalid_request_error"
            },
            param: None,
            code: None,
        }
    }
    /// The server is at its limit (queued requests, connections): 429 or 503, to retry later.
    pub fn busy(status: u16, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            kind: if status == 429 {
                "rate_limit_exceeded"
            } else {
                "server_error"
            },
            param: None,
            code: Some(
                if status == 429 {
                    "rate_limit_exceeded"
                } else {
                    "server_overloaded"
                }
                .into(),
            ),
        }
    }
    pub fn to_json(&self) -> Value {
        json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }})
    }
}

type ApiResult<T> = std::result::Result<T, ApiError>;

/// Which endpoint a request came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Completions,
}

/// A prompt as text (tokenised with BOS by the server) or as token ids (used as they are).
#[derive(Clone, Debug, PartialEq)]
pub enum PromptInput {
    Text(String),
    Ids(Vec<u32>),
}

/// A validated generation request.
#[derive(Clone, Debug, PartialEq)]
pub struct GenParams {
    pub endpoint: Endpoint,
    /// One per choice (several only for `/v1/completions` with a list of prompts).
    pub prompts: Vec<PromptInput>,
    pub max_tokens: Option<usize>,
    pub temperature: f32,
    pub top_p: f32,
    pub seed: Option<u64>,
    pub stop: Vec<String>,
    pub stream: bool,
    pub include_usage: bool,
    /// None: no logprobs; Some(k): logprobs with the k most likely alternatives.
    pub logprobs: Option<usize>,
    /// The body's `rules` (this server's extension): decode through the rule adapter (true) or
    /// the plain model (false); None: the server's default (on when started with `--adapter`).
    pub rules: Option<bool>,
}

/// The most alternatives a request may ask for.
pub const MAX_TOP_LOGPROBS: usize = 20;

fn field<'a>(body: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    body.get(key).filter(|v| !v.is_null())
}

fn number(body: &Map<String, Value>, key: &str, lo: f64, hi: f64) -> ApiResult<Option<f64>> {
    match field(body, key) {
        None => Ok(None),
        Some(v) => match v.as_f64() {
            Some(x) if (lo..=hi).contains(&x) => Ok(Some(x)),
            _ => Err(ApiError::invalid(
                format!("'{key}' must be a number between {lo} and {hi}, not {v}"),
                Some(key),
            )),
        },
    }
}

fn count(body: &Map<String, Value>, key: &str, lo: u64, hi: u64) -> ApiResult<Option<usize>> {
    match field(body, key) {
        None => Ok(None),
        Some(v) => match v.as_u64() {
            Some(x) if (lo..=hi).contains(&x) => Ok(Some(x as usize)),
            _ => Err(ApiError::invalid(
                format!("'{key}' must be an integer between {lo} and {hi}, not {v}"),
                Some(key),
            )),
        },
    }
}

fn boolean(body: &Map<String, Value>, key: &str) -> ApiResult<bool> {
    match field(body, key) {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(v) => Err(ApiError::invalid(
            format!("'{key}' must be a boolean, not {v}"),
            Some(key),
        )),
    }
}

/// The parameters both endpoints share.
fn common(body: &Map<String, Value>, endpoint: Endpoint) -> ApiResult<GenParams> {
    match field(body, "model") {
        Some(Value::String(_)) | None => {}
        Some(v) => {
            return Err(ApiError::invalid(
                format!("'model' must be a string, not {v}"),
                Some("model"),
            ))
        }
    }
    if let Some(n) = count(body, "n", 1, 128)? {
        if n != 1 {
            return Err(ApiError::invalid("only n = 1 is supported", Some("n")));
        }
    }
    let stop = match field(body, "stop") {
        None => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) if items.len() <= 4 => items
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| ApiError::invalid("'stop' must hold strings", Some("stop")))?,
        Some(_) => {
            return Err(ApiError::invalid(
                "'stop' must be a string or a list of up to 4 strings",
                Some("stop"),
            ))
        }
    };
    let stop: Vec<String> = stop.into_iter().filter(|s| !s.is_empty()).collect();
    // Sampling adjustments this server does not apply: their neutral values are accepted, any
    // other is a 400 rather than an answer silently sampled without it.
    for key in ["presence_penalty", "frequency_penalty"] {
        if number(body, key, -2.0, 2.0)?.is_some_and(|x| x != 0.0) {
            return Err(ApiError::invalid(
                format!("'{key}' is not supported (only 0)"),
                Some(key),
            ));
        }
    }
    match field(body, "logit_bias") {
        None => {}
        Some(Value::Object(m)) if m.is_empty() => {}
        Some(_) => {
            return Err(ApiError::invalid(
                "'logit_bias' is not supported (only {})",
                Some("logit_bias"),
            ))
        }
    }
    let max_tokens = match count(body, "max_completion_tokens", 1, u32::MAX as u64)? {
        Some(m) => Some(m),
        None => count(body, "max_tokens", 1, u32::MAX as u64)?,
    };
    let stream = boolean(body, "stream")?;
    let rules = match field(body, "rules") {
        None => None,
        Some(_) => Some(boolean(body, "rules")?),
    };
    let include_usage = match field(body, "stream_options") {
        None => false,
        Some(Value::Object(o)) => boolean(o, "include_usage")?,
        Some(_) => {
            return Err(ApiError::invalid(
                "'stream_options' must be an object",
                Some("stream_options"),
            ))
        }
    };
    Ok(GenParams {
        endpoint,
        prompts: Vec::new(),
        max_tokens,
        // OpenAI's default temperature is 1; 0 is greedy.
        temperature: number(body, "temperature", 0.0, 2.0)?.unwrap_or(1.0) as f32,
        top_p: number(body, "top_p", 0.0, 1.0)?.unwrap_or(1.0) as f32,
        seed: match field(body, "seed") {
            None => None,
            Some(v) => Some(
                v.as_i64()
                    .map(|s| s as u64)
                    .ok_or_else(|| ApiError::invalid("'seed' must be an integer", Some("seed")))?,
            ),
        },
        stop,
        stream,
        include_usage,
        logprobs: None,
        rules,
    })
}

/// What is checked before any tokenizing: the model asked for is the one served (404
/// `model_not_found` otherwise, as OpenAI answers), and no tools or structured output, which
/// this server cannot honour (400 rather than silently ignoring them). `response_format`
/// `{"type": "text"}` is plain text, what every answer is, so it is accepted.
pub fn check_request(body: &Value, model_id: &str) -> ApiResult<()> {
    let Some(body) = body.as_object() else {
        return Ok(()); // parse_chat/parse_completion say why
    };
    if let Some(Value::String(m)) = field(body, "model") {
        if m != model_id {
            return Err(ApiError::status(
                404,
                format!("The model '{m}' does not exist; this server serves '{model_id}'"),
            )
            .with_code("model_not_found"));
        }
    }
    for key in ["tools", "functions", "tool_choice", "function_call"] {
        if field(body, key).is_some_and(|v| v.as_array().is_none_or(|a| !a.is_empty())) {
            return Err(ApiError::invalid(
                format!("'{key}' is not supported: this server has no tool calling"),
                Some(key),
            ));
        }
    }
    match field(body, "response_format") {
        None => Ok(()),
        Some(f) if f.get("type").and_then(Value::as_str) == Some("text") => Ok(()),
        Some(f) => Err(ApiError::invalid(
            format!(
                "'response_format' {f} is not supported: only {{\"type\": \"text\"}} (no JSON \
                 mode or schemas)"
            ),
            Some("response_format"),
        )),
    }
}

/// What is checked before tokenizing: a prompt's text of more than `max_bytes` bytes cannot fit
/// the model's context of `context_len` tokens (see [`max_prompt_bytes`]), so it is refused
/// without being tokenized (400 `context_length_exceeded`): a 7 MB prompt costs its bytes, not
/// a tokenizer run over them. Chat messages count together (they become one prompt); each of
/// `/v1/completions`' prompts counts alone. Malformed fields are left to the parsers.
pub fn check_prompt_bytes(body: &Value, max_bytes: usize, context_len: usize) -> ApiResult<()> {
    let Some(body) = body.as_object() else {
        return Ok(());
    };
    let text_len = |v: &Value| -> usize {
        match v {
            Value::String(s) => s.len(),
            Value::Array(parts) => parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .map(str::len)
                .sum(),
            _ => 0,
        }
    };
    let (param, longest) = match (field(body, "messages"), field(body, "prompt")) {
        (Some(Value::Array(messages)), _) => (
            "messages",
            messages
                .iter()
                .filter_map(|m| m.get("content"))
                .map(text_len)
                .sum(),
        ),
        (_, Some(Value::String(s))) => ("prompt", s.len()),
        (_, Some(Value::Array(prompts))) => (
            "prompt",
            prompts
                .iter()
                .map(|p| p.as_str().map_or(0, str::len))
                .max()
                .unwrap_or(0),
        ),
        _ => return Ok(()),
    };
    if longest > max_bytes {
        return Err(ApiError::invalid(
            format!(
                "This model's maximum context length is {context_len} tokens, which hold at most \
                 {max_bytes} bytes of text; the {param} has {longest} bytes (refused before \
                 tokenizing)."
            ),
            Some(param),
        )
        .with_code("context_length_exceeded"));
    }
    Ok(())
}

/// The most bytes of text that `context_len` tokens can stand for, when no token stands for
/// more than `longest_token_bytes` bytes of its vocabulary string: one token covers at most
/// its string's bytes of normalised text, and normalising (NFKC, in some tokenizers) shrinks
/// text by at most 4x (a 4-byte UTF-8 character to a 1-byte one), hence the factor 4. A looser
/// bound than needed, never a prompt refused that could fit.
pub fn max_prompt_bytes(context_len: usize, longest_token_bytes: usize) -> usize {
    context_len
        .saturating_mul(longest_token_bytes.max(1))
        .saturating_mul(4)
}

fn object(body: &Value) -> ApiResult<&Map<String, Value>> {
    body.as_object()
        .ok_or_else(|| ApiError::invalid("the request body must be a JSON object", None))
}

/// A message's text: a string, or a list of `{"type": "text", "text": ...}` parts.
fn content_text(content: Option<&Value>, i: usize) -> ApiResult<String> {
    let param = format!("messages[{i}].content");
    match content {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => parts
            .iter()
            .map(
                |p| match (p.get("type").and_then(Value::as_str), p.get("text")) {
                    (Some("text"), Some(Value::String(t))) => Ok(t.as_str()),
                    _ => Err(ApiError::invalid(
                        "only text content parts are supported",
                        Some(&param),
                    )),
                },
            )
            .collect::<ApiResult<Vec<&str>>>()
            .map(|t| t.concat()),
        None | Some(Value::Null) => Err(ApiError::invalid(
            format!("'{param}' is required"),
            Some(&param),
        )),
        Some(_) => Err(ApiError::invalid(
            format!("'{param}' must be a string or a list of text parts"),
            Some(&param),
        )),
    }
}

/// Validates a `/v1/chat/completions` body; the prompt is `prompt_of(conversation)`, the
/// server's [`ChatTemplate::encode`] (the model's own template or the paper's Tulu format). A
/// conversation that the template refuses (its `raise_exception`) is a 400.
pub fn parse_chat(
    body: &Value,
    prompt_of: impl FnOnce(&[ChatMessage]) -> crate::error::Result<Vec<u32>>,
) -> ApiResult<GenParams> {
    let body = object(body)?;
    let mut params = common(body, Endpoint::Chat)?;
    let messages = match field(body, "messages") {
        Some(Value::Array(m)) if !m.is_empty() => m,
        Some(Value::Array(_)) => {
            return Err(ApiError::invalid(
                "'messages' must not be empty",
                Some("messages"),
            ))
        }
        Some(_) => {
            return Err(ApiError::invalid(
                "'messages' must be a list",
                Some("messages"),
            ))
        }
        None => {
            return Err(ApiError::invalid(
                "'messages' is a required property",
                Some("messages"),
            ))
        }
    };
    let mut turns = Vec::with_capacity(messages.len());
    for (i, m) in messages.iter().enumerate() {
        let role = m.get("role").and_then(Value::as_str).unwrap_or("");
        let role = match role {
            "system" | "developer" => "system",
            "user" | "assistant" => role,
            other => {
                return Err(ApiError::invalid(
                    format!(
                        "messages[{i}].role {other:?} is not supported (system, user, assistant)"
                    ),
                    Some(&format!("messages[{i}].role")),
                ))
            }
        };
        turns.push(ChatMessage::new(role, &content_text(m.get("content"), i)?));
    }
    let logprobs = boolean(body, "logprobs")?;
    let top = count(body, "top_logprobs", 0, MAX_TOP_LOGPROBS as u64)?;
    if top.is_some() && !logprobs {
        return Err(ApiError::invalid(
            "'top_logprobs' needs 'logprobs' set to true",
            Some("top_logprobs"),
        ));
    }
    params.logprobs = logprobs.then_some(top.unwrap_or(0));
    let prompt =
        prompt_of(&turns).map_err(|e| ApiError::invalid(e.to_string(), Some("messages")))?;
    params.prompts = vec![PromptInput::Ids(prompt)];
    Ok(params)
}

/// Validates a `/v1/completions` body: `prompt` is a string, a list of strings, a list of token
/// ids or a list of such lists (one choice per prompt).
pub fn parse_completion(body: &Value) -> ApiResult<GenParams> {
    let body = object(body)?;
    let mut params = common(body, Endpoint::Completions)?;
    let ids = |v: &Value| -> Option<Vec<u32>> {
        v.as_array()?
            .iter()
            .map(|t| {
                t.as_u64()
                    .filter(|&x| x <= u32::MAX as u64)
                    .map(|x| x as u32)
            })
            .collect()
    };
    let bad = || {
        ApiError::invalid(
            "'prompt' must be a string, a list of strings, or token ids",
            Some("prompt"),
        )
    };
    params.prompts = match field(body, "prompt") {
        None => {
            return Err(ApiError::invalid(
                "'prompt' is a required property",
                Some("prompt"),
            ))
        }
        Some(Value::String(s)) => vec![PromptInput::Text(s.clone())],
        Some(Value::Array(items)) if items.is_empty() => return Err(bad()),
        Some(Value::Array(items)) if items.iter().all(Value::is_string) => items
            .iter()
            .map(|s| PromptInput::Text(s.as_str().unwrap_or_default().to_string()))
            .collect(),
        Some(Value::Array(items)) if items.iter().all(Value::is_number) => {
            vec![PromptInput::Ids(
                ids(&Value::Array(items.clone())).ok_or_else(bad)?,
            )]
        }
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| ids(v).map(PromptInput::Ids).ok_or_else(bad))
            .collect::<ApiResult<_>>()?,
        Some(_) => return Err(bad()),
    };
    if params.prompts.len() > 64 {
        return Err(ApiError::invalid(
            "at most 64 prompts per request",
            Some("prompt"),
        ));
    }
    if boolean(body, "echo")? {
        return Err(ApiError::invalid("'echo' is not supported", Some("echo")));
    }
    if field(body, "suffix").is_some() {
        return Err(ApiError::invalid(
            "'suffix' is not supported",
            Some("suffix"),
        ));
    }
    count(body, "best_of", 1, 1)?;
    params.logprobs = count(body, "logprobs", 0, MAX_TOP_LOGPROBS as u64)?;
    Ok(params)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_requests_name_the_parameter() {
        let ids = |turns: &[ChatMessage]| Ok(vec![turns.len() as u32]);
        let err = parse_chat(&json!({"model": "m"}), ids).unwrap_err();
        assert_eq!(err.param.as_deref(), Some("messages"));
        let err = parse_chat(
            &json!({"messages": [{"role": "tool", "content": "x"}]}),
            ids,
        );
        assert_eq!(err.unwrap_err().param.as_deref(), Some("messages[0].role"));
        let ok = json!({"messages": [{"role": "user", "content": "x"}], "temperature": 3});
        assert_eq!(
            parse_chat(&ok, ids).unwrap_err().param.as_deref(),
            Some("temperature")
        );
        let err = parse_completion(&json!({"prompt": "x", "logprobs": 99})).unwrap_err();
        assert_eq!(err.param.as_deref(), Some("logprobs"));
        for (key, bad) in [
            ("presence_penalty", json!(0.5)),
            ("presence_penalty", json!(7)),
            ("frequency_penalty", json!("x")),
            ("logit_bias", json!({"50256": -100})),
            ("max_tokens", json!(0)),
            ("max_tokens", json!(-3)),
            ("top_p", json!(1.5)),
            ("n", json!(2)),
            ("seed", json!(1.5)),
        ] {
            let mut body = json!({"prompt": "x"});
            body[key] = bad;
            let err = parse_completion(&body).unwrap_err();
            assert_eq!(
                (err.status, err.param.as_deref()),
                (400, Some(key)),
                "{body}"
            );
        }
        let err = parse_completion(&json!({"prompt": "x", "rules": "yes"})).unwrap_err();
        assert_eq!((err.status, err.param.as_deref()), (400, Some("rules")));
        let rules = |body: Value| parse_completion(&body).unwrap().rules;
        assert_eq!(rules(json!({"prompt": "x"})), None);
        assert_eq!(rules(json!({"prompt": "x", "rules": null})), None);
        assert_eq!(rules(json!({"prompt": "x", "rules": false})), Some(false));
        assert_eq!(rules(json!({"prompt": "x", "rules": true})), Some(true));
        let neutral = json!({"prompt": "x", "presence_penalty": 0, "frequency_penalty": 0.0, "logit_bias": {}});
        assert!(parse_completion(&neutral).is_ok());
        let p = parse_completion(&json!({"prompt": [[1, 2], [3]], "stop": "\n"})).unwrap();
        assert_eq!(p.prompts.len(), 2);
        assert_eq!(p.stop, vec!["\n".to_string()]);
        assert_eq!(p.temperature, 1.0);
    }

    #[test]
    fn prompts_too_long_in_bytes_are_refused_before_tokenizing() {
        let max = max_prompt_bytes(4, 3);
        assert_eq!(max, 48);
        let long = "x".repeat(49);
        let err = check_prompt_bytes(&json!({"prompt": long}), max, 4).unwrap_err();
        assert_eq!(
            (err.status, err.param.as_deref(), err.code.as_deref()),
            (400, Some("prompt"), Some("context_length_exceeded"))
        );
        assert!(err.message.contains("49 bytes"), "{}", err.message);
        let list = json!({"prompt": ["short", long]});
        assert!(check_prompt_bytes(&list, max, 4).is_err());
        // Chat messages add up: two of 25 bytes are over 48.
        let half = "y".repeat(25);
        let chat = json!({"messages": [
            {"role": "system", "content": half},
            {"role": "user", "content": [{"type": "text", "text": half}]},
        ]});
        let err = check_prompt_bytes(&chat, max, 4).unwrap_err();
        assert_eq!(err.param.as_deref(), Some("messages"));
        assert!(check_prompt_bytes(&json!({"prompt": "x".repeat(48)}), max, 4).is_ok());
        assert!(check_prompt_bytes(&json!({"prompt": [1, 2, 3]}), max, 4).is_ok());
    }

    #[test]
    fn chat_messages_reach_the_template_in_order_and_its_refusal_is_a_400() {
        let body = json!({"messages": [
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "H"}, {"type": "text", "text": "i"}]},
        ]});
        let mut seen = Vec::new();
        let p = parse_chat(&body, |turns| {
            seen = turns.to_vec();
            Ok(vec![7, 8])
        })
        .unwrap();
        assert_eq!(
            seen,
            vec![
                ChatMessage::new("system", "Be brief."),
                ChatMessage::new("user", "Hi")
            ]
        );
        assert_eq!(p.prompts, vec![PromptInput::Ids(vec![7, 8])]);
        let err = parse_chat(&body, |_| {
            Err(crate::Error::msg("roles must alternate user/assistant"))
        })
        .unwrap_err();
        assert_eq!((err.status, err.param.as_deref()), (400, Some("messages")));
        assert!(
            err.message.contains("roles must alternate"),
            "{}",
            err.message
        );
    }
}
