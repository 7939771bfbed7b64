//! What every test here uses: the `implicit serve` process (started on a free port, killed when
//! dropped), the model it serves, and the library's own greedy answers the server's must equal.

use implicit::generate::detok::decode_continuation;
use implicit::generate::{generate_adjusted, GenerateOptions, Sampler, ScoreAdjuster};
use implicit::io::tokenizer::Tokenizer;
use implicit::model::Transformer;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc};
use std::time::Duration;

/// The server process; killed when dropped, so also when a test fails.
pub(crate) struct ServerGuard {
    child: Child,
    pub(crate) port: u16,
    pub(crate) log: PathBuf,
}

impl Drop for ServerGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn start_server(model: &Path, extra: &[&str], log: PathBuf) -> ServerGuard {
    let mut child = Command::new(env!("CARGO_BIN_EXE_implicit"))
        .arg("serve")
        .arg("--model")
        .arg(model)
        .args(["--port", "0"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("start implicit serve");
    let stdout = child.stdout.take().unwrap();
    let mut guard = ServerGuard {
        child,
        port: 0,
        log,
    };
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(Duration::from_secs(120))
        .unwrap_or_default();
    let port = line
        .trim()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| {
            let log = std::fs::read_to_string(&guard.log).unwrap_or_default();
            panic!("no port in the server's first line {line:?}; its log:\n{log}")
        });
    assert!(line.starts_with("listening on http://127.0.0.1:"), "{line}");
    guard.port = port;
    guard
}

pub(crate) fn load(dir: &Path) -> (Transformer, Tokenizer) {
    let model = Transformer::load(dir).unwrap();
    let tok = Tokenizer::load(dir, &model.config).unwrap();
    (model, tok)
}

/// The library's own greedy decoding: (token ids without EOS, log-probabilities, text).
pub(crate) fn greedy(
    model: &Transformer,
    tok: &Tokenizer,
    prompt: &[u32],
    max: usize,
    adapter: Option<Arc<dyn ScoreAdjuster>>,
) -> (Vec<u32>, Vec<f32>, String) {
    let opts = GenerateOptions {
        max_new_tokens: max,
        stop_tokens: tok.eos.clone(),
    };
    let mut logprobs = Vec::new();
    let out = generate_adjusted(model, prompt, &opts, &mut Sampler::greedy(), adapter, |c| {
        logprobs.push(c.logprob);
        Ok(())
    })
    .unwrap();
    let body: Vec<u32> = out.iter().copied().filter(|&t| !tok.is_eos(t)).collect();
    logprobs.truncate(body.len());
    let text = decode_continuation(tok, prompt, &body).unwrap();
    (body, logprobs, text)
}

pub(crate) fn user(text: &str) -> Value {
    json!([{"role": "user", "content": text}])
}
