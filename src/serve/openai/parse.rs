//! Each endpoint's body into [`GenParams`]: chat messages rendered into one prompt by the
//! server's chat template, completions' prompts as text or token ids.

use super::params::{boolean, common, count, field};
use super::{ApiError, ApiResult, Endpoint, GenParams, PromptInput, MAX_TOP_LOGPROBS};
use crate::io::chat_template::ChatMessage;
#[cfg(doc)]
use crate::io::chat_template::ChatTemplate;
use serde_json::{Map, Value};

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
    use serde_json::json;

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
