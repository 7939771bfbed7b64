//! `implicit serve` end to end, one module a concern (under tests/serve/): the official `openai`
//! Python client against the server (python_clients: tools/openai_client_check.py and
//! tools/serve_bench.py), raw HTTP for errors, keep-alive, the adapter and concurrent requests
//! (raw_http), and the body's `rules` per request, batched or not (rules). The server process
//! and the raw HTTP/1.1 client are tests/common/serve.rs's; harness computes the library's own
//! answers; http_client adds server-sent events and chat requests.

mod common;

#[path = "serve/harness.rs"]
mod harness;
#[path = "serve/http_client.rs"]
mod http_client;
#[path = "serve/python_clients.rs"]
mod python_clients;
#[path = "serve/raw_http.rs"]
mod raw_http;
#[path = "serve/rules.rs"]
mod rules;
