//! The body's `rules` on a server started without `--adapter`: each request decodes through
//! the paper's rule adapter or the plain model as it asks, alone or batched with others that
//! ask the opposite.

use super::harness::{greedy, load, user};
use super::http_client::request;
use crate::common;
use crate::common::serve::{post, start_server};
use implicit::adapter::{RuleAdapter, RuleSet};
use implicit::generate::ScoreAdjuster;
use implicit::io::tokenizer::chat_prompt;
use serde_json::{json, Value};
use std::sync::Arc;

#[test]
fn rules_on_or_off_per_request_even_when_decoded_in_one_batch() {
    let Some(dir) = common::stories260k("serve-rules") else {
        return;
    };
    let (model, tok) = load(&dir);
    // No --adapter: requests decode the plain model unless they ask for the paper's rules.
    let server = start_server(&dir, &[], dir.join("../server.log"));
    let port = server.port;
    let adapter: Arc<dyn ScoreAdjuster> =
        Arc::new(RuleAdapter::paper(RuleSet::all(), &tok).unwrap());
    let max = 100;
    let messages = ["Tell me a story about a dog.", "Who was Lily?"];
    let body = |m: &str, rules: Option<bool>| {
        let mut b = json!({"messages": user(m), "max_tokens": max, "temperature": 0});
        if let Some(r) = rules {
            b["rules"] = json!(r);
        }
        post("/v1/chat/completions", &b.to_string())
    };
    let text = |raw: &str| {
        let (status, _, v) = request(port, raw);
        assert_eq!(status, 200, "{v}");
        v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .to_string()
    };
    // Alone, each request's answer is the library's greedy text with or without the adapter.
    let mut cases = Vec::new();
    for m in messages {
        let prompt = tok.encode_prompt(&chat_prompt(m)).unwrap();
        let (_, _, plain) = greedy(&model, &tok, &prompt, max, None);
        let (_, _, ruled) = greedy(&model, &tok, &prompt, max, Some(adapter.clone()));
        assert_ne!(plain, ruled, "the adapter changes {m:?}");
        assert_eq!(text(&body(m, None)), plain, "{m:?} without \"rules\"");
        assert_eq!(text(&body(m, Some(false))), plain, "{m:?} with rules false");
        assert_eq!(text(&body(m, Some(true))), ruled, "{m:?} with rules true");
        cases.push((m, false, plain));
        cases.push((m, true, ruled));
    }
    // Together (one thread each, released at once, so that their sequences share the steps):
    // each is still its single-request answer.
    let barrier = Arc::new(std::sync::Barrier::new(2 * cases.len()));
    let handles: Vec<_> = cases
        .iter()
        .chain(cases.iter())
        .map(|(m, rules, _)| {
            let raw = body(m, Some(*rules));
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                let (status, _, v) = request(port, &raw);
                assert_eq!(status, 200, "{v}");
                v["choices"][0]["message"]["content"].clone()
            })
        })
        .collect();
    let together: Vec<Value> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    for (i, (m, rules, want)) in cases.iter().chain(cases.iter()).enumerate() {
        assert_eq!(together[i], want.as_str(), "{m:?} rules {rules} in a batch");
    }
    let log = std::fs::read_to_string(&server.log).unwrap();
    assert!(log.contains("rules off for requests without"), "{log}");
}
