//! The judge behind an OpenAI-compatible server: `POST {URL}/v1/chat/completions` with the
//! AlpacaEval request (`max_tokens: 1, logprobs: true, top_logprobs: 5`, as
//! weighted_alpaca_eval_gpt4_turbo's `completions_kwargs`; temperature 0, where AlpacaEval sets 1
//! and notes that it has no effect on the returned logprobs).

use super::http::{post_json, Url};
use super::judge::{top_logprobs_of_choice, ChatMessage, Judge, JudgeReply};
use crate::bail;
use crate::error::{Context, Result};
use serde_json::{json, Value};
use std::time::Duration;

pub struct EndpointJudge {
    url: Url,
    /// The URL as given, for messages.
    shown: String,
    model: String,
    headers: Vec<(String, String)>,
    timeout: Duration,
    /// Attempts per request (connection errors, 429 and 5xx are retried with backoff).
    attempts: usize,
}

impl EndpointJudge {
    /// `endpoint` is the server's base URL (`http://host:port`, with or without a trailing
    /// `/v1`); `api_key` goes out as a bearer token when given.
    pub fn new(endpoint: &str, model: &str, api_key: Option<String>) -> Result<EndpointJudge> {
        let mut url = Url::parse(endpoint)?;
        if let Some(base) = url.path.strip_suffix("/v1") {
            url.path = base.to_string();
        }
        let headers = api_key
            .map(|k| vec![("Authorization".to_string(), format!("Bearer {k}"))])
            .unwrap_or_default();
        Ok(EndpointJudge {
            url,
            shown: endpoint.to_string(),
            model: model.to_string(),
            headers,
            timeout: Duration::from_secs(300),
            attempts: 4,
        })
    }

    fn complete(&self, messages: &[ChatMessage]) -> Result<JudgeReply> {
        let body = json!({
            "model": self.model,
            "messages": messages,
            "max_tokens": 1,
            "temperature": 0,
            "logprobs": true,
            "top_logprobs": 5,
        });
        let body = serde_json::to_vec(&body).context("cannot serialize the request")?;
        let mut last_error = String::new();
        for attempt in 0..self.attempts {
            if attempt > 0 {
                std::thread::sleep(Duration::from_millis(500 << attempt));
            }
            let response = match post_json(
                &self.url,
                "/v1/chat/completions",
                &body,
                &self.headers,
                self.timeout,
            ) {
                Ok(r) => r,
                Err(e) => {
                    last_error = e.to_string();
                    continue;
                }
            };
            let text = String::from_utf8_lossy(&response.body);
            if response.status == 429 || response.status >= 500 {
                last_error = format!("HTTP {}: {}", response.status, excerpt(&text));
                continue;
            }
            if !(200..300).contains(&response.status) {
                bail!(
                    "{}: HTTP {}: {}",
                    self.shown,
                    response.status,
                    excerpt(&text)
                );
            }
            let value: Value = serde_json::from_str(&text).with_context(|| {
                format!("{}: response is not JSON: {}", self.shown, excerpt(&text))
            })?;
            let Some(choice) = value.pointer("/choices/0") else {
                bail!(
                    "{}: response has no choices: {}",
                    self.shown,
                    excerpt(&text)
                );
            };
            let top_logprobs = top_logprobs_of_choice(choice)
                .with_context(|| format!("{} (is logprobs supported?)", self.shown))?;
            let mut raw = choice.clone();
            if let (Some(obj), Some(total)) = (
                raw.as_object_mut(),
                value.pointer("/usage/total_tokens").cloned(),
            ) {
                obj.insert("total_tokens".into(), total);
            }
            return Ok(JudgeReply {
                top_logprobs,
                raw_completion: raw,
            });
        }
        bail!(
            "{}: no answer after {} attempts: {last_error}",
            self.shown,
            self.attempts
        )
    }
}

impl Judge for EndpointJudge {
    fn name(&self) -> String {
        self.model.clone()
    }

    fn judge(&mut self, prompts: &[Vec<ChatMessage>]) -> Result<Vec<JudgeReply>> {
        prompts.iter().map(|p| self.complete(p)).collect()
    }
}

fn excerpt(text: &str) -> String {
    let t: String = text.chars().take(300).collect();
    if t.len() < text.len() {
        format!("{t}...")
    } else {
        t
    }
}
