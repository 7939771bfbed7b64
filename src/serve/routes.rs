//! Every request's way through the server: routed by method and path ([`dispatch`]); the
//! generation endpoints admitted under the limits, their bodies read and checked before
//! anything is tokenized ([`generate`]), then validated, tokenized and run on a blocking worker
//! thread ([`answer`]), whose answer becomes a JSON response, an OpenAI-style error, or a
//! stream of server-sent events.

use super::completion::{self, Answer, Ctx};
use super::events::{EventBody, Head, Reply};
use super::limits::{read_body, Admission};
use super::openai::{self, ApiError};
use super::server::{now_secs, State};
use axum::body::Body;
use axum::extract::{Request, State as AxumState};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::Response;
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

fn json_response(status: u16, body: &Value) -> Response {
    let mut r = Response::new(Body::from(body.to_string()));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn error_response(err: &ApiError) -> Response {
    let mut r = json_response(err.status, &err.to_json());
    if matches!(err.status, 429 | 503) {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    r
}

/// Every request: routed by method and path (a trailing slash ignored), logged on stderr.
pub(super) async fn dispatch(AxumState(state): AxumState<Arc<State>>, req: Request) -> Response {
    let t0 = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().trim_end_matches('/').to_string();
    let response = route(&state, req, &method, &path).await;
    eprintln!(
        "{method} {path} {} {:.2}s",
        response.status().as_u16(),
        t0.elapsed().as_secs_f64()
    );
    response
}

async fn route(state: &Arc<State>, req: Request, method: &Method, path: &str) -> Response {
    let model_json = |id: &str| json!({"id": id, "object": "model", "created": state.started, "owned_by": "implicit"});
    let result: std::result::Result<Value, ApiError> = match (method.as_str(), path) {
        ("GET", "/v1/models") => {
            Ok(json!({"object": "list", "data": [model_json(&state.model_id)]}))
        }
        ("GET", p) if p.starts_with("/v1/models/") => {
            let id = &p["/v1/models/".len()..];
            if id == state.model_id {
                Ok(model_json(id))
            } else {
                Err(
                    ApiError::status(404, format!("The model '{id}' does not exist"))
                        .with_code("model_not_found"),
                )
            }
        }
        ("GET", "/health") | ("GET", "") => Ok(json!({"status": "ok", "model": state.model_id})),
        ("POST", "/v1/chat/completions") | ("POST", "/v1/completions") => {
            return generate(state.clone(), req, path == "/v1/chat/completions").await;
        }
        (_, "/v1/chat/completions") | (_, "/v1/completions") => Err(ApiError::status(
            405,
            format!("{method} is not allowed on {path}; use POST"),
        )),
        (_, "/v1/models") => Err(ApiError::status(
            405,
            format!("{method} is not allowed on {path}"),
        )),
        _ => Err(ApiError::status(
            404,
            format!("no such endpoint: {method} {}", req.uri().path()),
        )),
    };
    match result {
        Ok(v) => json_response(200, &v),
        Err(e) => {
            let mut r = error_response(&e);
            if e.status == 405 {
                let allow = if path.starts_with("/v1/models") {
                    "GET"
                } else {
                    "POST"
                };
                r.headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static(allow));
            }
            r
        }
    }
}

async fn generate(state: Arc<State>, req: Request, chat: bool) -> Response {
    let Some(admission) = Admission::new(&state) else {
        return error_response(&ApiError::busy(
            429,
            format!(
                "{} generation requests are already running or queued (--max-requests); retry \
                 later",
                state.limits.max_requests
            ),
        ));
    };
    let bytes = match read_body(&state.limits, req).await {
        Ok(b) => b,
        Err(e) => return error_response(&e),
    };
    let body: Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(e) => {
            let err = ApiError::invalid(format!("the body is not valid JSON: {e}"), None);
            return error_response(&err);
        }
    };
    drop(bytes);
    if let Err(e) = openai::check_request(&body, &state.model_id)
        .and_then(|()| openai::check_prompt_bytes(&body, state.max_prompt_bytes, state.context_len))
    {
        return error_response(&e);
    }
    // Tokenizing and waiting on the scheduler block: a worker thread does them.
    let (mut reply, head) = Reply::new();
    let worker = tokio::task::spawn_blocking(move || {
        let _admission = admission;
        answer(&state, &body, chat, &mut reply);
    });
    match head.await {
        Ok(Head::Json(v)) => json_response(200, &v),
        Ok(Head::Error(e)) => error_response(&e),
        Ok(Head::Stream(chunks)) => {
            let mut r = Response::new(Body::from_stream(EventBody(chunks)));
            let h = r.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            );
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            r
        }
        Err(_) => {
            let why = match worker.await {
                Err(e) if e.is_panic() => "the request's worker panicked",
                _ => "the request's worker ended without an answer",
            };
            error_response(&ApiError::status(500, why))
        }
    }
}

/// Validates, tokenizes and runs a generation request (on a worker thread), answering through
/// `reply`.
fn answer(state: &State, body: &Value, chat: bool, reply: &mut Reply) {
    let parsed = if chat {
        openai::parse_chat(body, |turns| state.chat.encode(&state.tok, turns))
    } else {
        openai::parse_completion(body)
    };
    let params = match parsed {
        Ok(p) => p,
        Err(e) => return reply.send(Head::Error(e)),
    };
    let adjuster = match (
        params.rules.unwrap_or(state.rules_by_default),
        &state.adapter,
    ) {
        (false, _) => None,
        (true, Ok(a)) => Some(a.clone()),
        (true, Err(why)) => {
            return reply.send(Head::Error(ApiError::invalid(why.clone(), Some("rules"))));
        }
    };
    let n = state.requests.fetch_add(1, Ordering::Relaxed);
    let created = now_secs();
    let ctx = Ctx {
        tok: &state.tok,
        vocab: &state.vocab,
        model_id: &state.model_id,
        vocab_size: state.vocab_size,
        context_len: state.context_len,
        scheduler: &state.scheduler,
        adjuster,
        id: format!(
            "{}-{created:x}{n:06x}",
            if chat { "chatcmpl" } else { "cmpl" }
        ),
        created,
        default_seed: created ^ n.wrapping_mul(0x9E37_79B9),
    };
    match completion::run(&ctx, &params, reply) {
        Ok(Answer::Json(v)) => reply.send(Head::Json(v)),
        Ok(Answer::Streamed) => {}
        Err(e) => reply.send(Head::Error(e)),
    }
}
