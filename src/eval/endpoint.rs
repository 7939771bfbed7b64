//! The judge behind an OpenAI-compatible server (`http://` or `https://`):
//! `POST {URL}/v1/chat/completions` with the AlpacaEval request (`max_tokens: 1, logprobs: true,
//! top_logprobs: 5`, as weighted_alpaca_eval_gpt4_turbo's `completions_kwargs`; temperature 0,
//! where AlpacaEval sets 1 and notes that it has no effect on the returned logprobs).

use super::http::{excerpt, Client, ClientOptions};
use super::judge::{top_logprobs_of_choice, ChatMessage, Judge, JudgeReply};
use crate::bail;
use crate::error::{Context, Result};
use serde_json::{json, Value};

pub struct EndpointJudge {
    /// `{base}/v1/chat/completions`.
    url: String,
    model: String,
    /// Sent as `Authorization: Bearer {key}`; never shown.
    api_key: Option<String>,
    client: Client,
}

impl EndpointJudge {
    /// `endpoint` is the server's base URL (`http[s]://host[:port][/path]`, with or without a
    /// trailing `/v1`); `api_key` goes out as a bearer token when given. Default client
    /// settings ([`ClientOptions::default`]).
    pub fn new(endpoint: &str, model: &str, api_key: Option<String>) -> Result<EndpointJudge> {
        EndpointJudge::with_options(endpoint, model, api_key, ClientOptions::default())
    }

    pub fn with_options(
        endpoint: &str,
        model: &str,
        api_key: Option<String>,
        opts: ClientOptions,
    ) -> Result<EndpointJudge> {
        let uri: ureq::http::Uri = endpoint
            .parse()
            .with_context(|| format!("{endpoint}: not a URL"))?;
        let host = match (uri.scheme_str(), uri.host()) {
            (Some("http" | "https"), Some(host)) if !host.is_empty() => host.to_string(),
            (Some("http" | "https"), _) => bail!("{endpoint}: no host"),
            _ => bail!("{endpoint}: not an http:// or https:// URL"),
        };
        if uri.query().is_some() {
            bail!("{endpoint}: the base URL takes no query");
        }
        let trimmed = endpoint.trim_end_matches('/');
        let base = trimmed.strip_suffix("/v1").unwrap_or(trimmed).to_string();
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let loopback = host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        if api_key.is_some() && uri.scheme_str() == Some("http") && !loopback {
            eprintln!("warning: {endpoint} is plain http: the API key travels unencrypted");
        }
        Ok(EndpointJudge {
            url: format!("{base}/v1/chat/completions"),
            model: model.to_string(),
            api_key,
            client: Client::new(opts)?,
        })
    }

    fn request_settings() -> Value {
        json!({"max_tokens": 1, "temperature": 0, "logprobs": true, "top_logprobs": 5})
    }

    fn complete(&self, messages: &[ChatMessage]) -> Result<JudgeReply> {
        let mut body = Self::request_settings();
        body["model"] = json!(self.model);
        body["messages"] = json!(messages);
        let body = serde_json::to_vec(&body).context("cannot serialize the request")?;
        let headers: Vec<(&str, String)> = self
            .api_key
            .iter()
            .map(|k| ("Authorization", format!("Bearer {k}")))
            .collect();
        let response = self.client.post_json(&self.url, &body, &headers)?;
        let text = String::from_utf8_lossy(&response.body);
        if !(200..300).contains(&response.status) {
            bail!(
                "{}: HTTP {} (attempt {}): {}",
                self.url,
                response.status,
                response.attempts,
                excerpt(&text, 300)
            );
        }
        let value: Value = serde_json::from_str(&text).with_context(|| {
            format!(
                "{}: response is not JSON: {}",
                self.url,
                excerpt(&text, 300)
            )
        })?;
        let Some(choice) = value.pointer("/choices/0") else {
            bail!(
                "{}: response has no choices: {}",
                self.url,
                excerpt(&text, 300)
            );
        };
        let top_logprobs = top_logprobs_of_choice(choice)
            .with_context(|| format!("{} (is logprobs supported?)", self.url))?;
        let mut raw = choice.clone();
        if let (Some(obj), Some(total)) = (
            raw.as_object_mut(),
            value.pointer("/usage/total_tokens").cloned(),
        ) {
            obj.insert("total_tokens".into(), total);
        }
        Ok(JudgeReply {
            top_logprobs,
            raw_completion: raw,
        })
    }
}

impl Judge for EndpointJudge {
    fn name(&self) -> String {
        self.model.clone()
    }

    fn judge(&mut self, prompts: &[Vec<ChatMessage>]) -> Result<Vec<JudgeReply>> {
        prompts.iter().map(|p| self.complete(p)).collect()
    }

    /// One prompt at a time, so that each paid-for reply reaches the journal as it arrives.
    fn max_batch(&self) -> usize {
        1
    }

    /// The model and the request settings: what besides the prompt decides the reply. Not the
    /// URL: the same model behind another address (a restarted local server on a new port, a
    /// proxy) is the same judge.
    fn journal_fingerprint(&self) -> Option<String> {
        Some(json!({"model": self.model, "request": Self::request_settings()}).to_string())
    }
}
