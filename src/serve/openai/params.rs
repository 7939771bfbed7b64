//! The fields both endpoints share (sampling, stop strings, streaming, this server's `rules`),
//! read with their ranges checked: a field out of range is a 400 naming it. `null` counts as
//! absent, as in OpenAI's API.

use super::{ApiError, ApiResult, Endpoint, GenParams};
use serde_json::{Map, Value};

pub(super) fn field<'a>(body: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    body.get(key).filter(|v| !v.is_null())
}

pub(super) fn number(
    body: &Map<String, Value>,
    key: &str,
    lo: f64,
    hi: f64,
) -> ApiResult<Option<f64>> {
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

pub(super) fn count(
    body: &Map<String, Value>,
    key: &str,
    lo: u64,
    hi: u64,
) -> ApiResult<Option<usize>> {
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

pub(super) fn boolean(body: &Map<String, Value>, key: &str) -> ApiResult<bool> {
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
pub(super) fn common(body: &Map<String, Value>, endpoint: Endpoint) -> ApiResult<GenParams> {
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
