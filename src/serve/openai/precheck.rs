//! What is refused before any tokenizing, so that a request the server cannot honour costs no
//! tokenizer run: another model than the one served, tools or structured output, and prompts
//! with more bytes of text than the context can hold.

use super::params::field;
use super::{ApiError, ApiResult};
use serde_json::Value;

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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
}
