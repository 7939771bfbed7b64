//! The judge's HTTP(S) client against fake judges on 127.0.0.1: hostile responses (a huge
//! Content-Length, a huge chunk size, bodies without end), 429s with Retry-After, the retry
//! deadline, https with a self-signed certificate, the API key, and resuming from the journal
//! after a kill and after a failure.

mod common;
#[path = "judge_client/fake_judge.rs"]
mod fake_judge;

use fake_judge::{answer, endless, fake_judge, p_model, pair_of, self_signed, write_response};
use implicit::eval::endpoint::EndpointJudge;
use implicit::eval::http::ClientOptions;
use implicit::eval::judge::{judge_messages, run_judge, Judge, JudgeOptions, ANNOTATOR};
use serde_json::{json, Value};
use std::io::Write;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

fn fast_retries(max_retry_seconds: f64) -> ClientOptions {
    ClientOptions {
        max_retry_time: Duration::from_secs_f64(max_retry_seconds),
        first_backoff: Duration::from_millis(50),
        request_timeout: Duration::from_secs(20),
        ..ClientOptions::default()
    }
}

/// Asks `url` once for a judgement of pair 0; the error's text.
fn judge_error(url: &str, opts: ClientOptions) -> String {
    let mut judge = EndpointJudge::with_options(url, "judge-model", None, opts).unwrap();
    let prompt = judge_messages("question 0", "MODEL answer 0", "reference 0");
    match judge.judge(&[prompt]) {
        Ok(_) => panic!("{url}: the judge answered"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn huge_content_length_is_an_error_not_an_abort() {
    // Claims u64::MAX bytes and keeps sending: stopped at the 16 MiB cap.
    let hung_up = Arc::new(AtomicBool::new(false));
    let head = "HTTP/1.1 200 OK\r\nContent-Length: 18446744073709551615\r\n\r\n";
    let (url, seen) = fake_judge(1, None, endless(head, hung_up.clone()));
    let t0 = Instant::now();
    let err = judge_error(&url, fast_retries(5.0));
    println!(
        "u64::MAX Content-Length: {err} ({:.2}s)",
        t0.elapsed().as_secs_f64()
    );
    assert!(err.contains(&url) && err.contains("16 MiB cap"), "{err}");
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        hung_up.load(Ordering::SeqCst),
        "the client read on past the cap"
    );
    assert_eq!(seen.lock().unwrap().len(), 1, "a cap error is not retried");

    // A length beyond u64: a malformed response, at once.
    let (url, seen) = fake_judge(
        1,
        None,
        Box::new(|_, _, w| {
            w.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\n{}")
        }),
    );
    let err = judge_error(&url, fast_retries(5.0));
    println!("Content-Length beyond u64: {err}");
    assert!(
        err.contains(&url) && err.contains("malformed response"),
        "{err}"
    );
    assert_eq!(seen.lock().unwrap().len(), 1);

    // A huge length, then the connection closes after 2 bytes: a cut connection, retried until
    // the deadline.
    let (url, seen) = fake_judge(
        100,
        None,
        Box::new(|_, _, w| {
            w.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000000\r\n\r\n{}")
        }),
    );
    let t0 = Instant::now();
    let err = judge_error(&url, fast_retries(0.6));
    let seconds = t0.elapsed().as_secs_f64();
    let attempts = seen.lock().unwrap().len();
    println!("truncated huge body: {err} ({seconds:.2}s, {attempts} requests)");
    assert!(
        err.contains("gave up after") && err.contains(&format!("{attempts} attempts")),
        "{err}"
    );
    assert!(
        attempts >= 2 && seconds < 3.0,
        "{attempts} attempts in {seconds}s"
    );
}

#[test]
fn huge_chunk_size_is_an_error_not_a_panic() {
    // A chunk size beyond usize: malformed, at once.
    let (url, seen) = fake_judge(
        1,
        None,
        Box::new(|_, _, w| {
            w.write_all(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffffffff\r\n{}",
            )
        }),
    );
    let err = judge_error(&url, fast_retries(5.0));
    println!("chunk size beyond usize: {err}");
    assert!(
        err.contains(&url) && err.contains("malformed response"),
        "{err}"
    );
    assert_eq!(seen.lock().unwrap().len(), 1);

    // A chunk of 2^63 - 1 bytes that keeps coming: stopped at the cap.
    let hung_up = Arc::new(AtomicBool::new(false));
    let head = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n7fffffffffffffff\r\n";
    let (url, seen) = fake_judge(1, None, endless(head, hung_up.clone()));
    let err = judge_error(&url, fast_retries(5.0));
    println!("chunk of 2^63 - 1 bytes: {err}");
    assert!(err.contains(&url) && err.contains("16 MiB cap"), "{err}");
    std::thread::sleep(Duration::from_millis(200));
    assert!(hung_up.load(Ordering::SeqCst));
    assert_eq!(seen.lock().unwrap().len(), 1);
}

#[test]
fn never_ending_body_stops_at_the_cap() {
    // No length, no chunks: the body ends when the connection does, which it never does. The
    // same from a 503, which would otherwise be retried.
    for status in ["200 OK", "503 Service Unavailable"] {
        let hung_up = Arc::new(AtomicBool::new(false));
        let head: &'static str = Box::leak(
            format!("HTTP/1.1 {status}\r\nContent-Type: application/json\r\n\r\n").into(),
        );
        let (url, seen) = fake_judge(1, None, endless(head, hung_up.clone()));
        let t0 = Instant::now();
        let err = judge_error(&url, fast_retries(5.0));
        println!(
            "endless {status}: {err} ({:.2}s)",
            t0.elapsed().as_secs_f64()
        );
        assert!(err.contains(&url) && err.contains("16 MiB cap"), "{err}");
        std::thread::sleep(Duration::from_millis(200));
        assert!(
            hung_up.load(Ordering::SeqCst),
            "{status}: read on past the cap"
        );
        assert_eq!(seen.lock().unwrap().len(), 1);
    }
}

fn write_outputs(path: &Path, rows: &[(String, String, &str)]) {
    let v: Vec<Value> = rows
        .iter()
        .map(|(i, o, g)| json!({"instruction": i, "output": o, "generator": g, "dataset": "test"}))
        .collect();
    std::fs::write(path, serde_json::to_string(&v).unwrap()).unwrap();
}

/// `n` pairs "question i" (model "MODEL answer i", reference "reference i"), and one more with
/// identical outputs (a draw, never sent). Returns (outputs, reference) paths.
fn write_pairs(dir: &Path, n: usize) -> (std::path::PathBuf, std::path::PathBuf) {
    let q = |i: usize| format!("question {i}");
    let mut model: Vec<_> = (0..n)
        .map(|i| (q(i), format!("MODEL answer {i}"), "my-model"))
        .collect();
    let mut reference: Vec<_> = (0..n)
        .map(|i| (q(i), format!("reference {i}"), "ref"))
        .collect();
    model.push((q(n), "same".into(), "my-model"));
    reference.push((q(n), "same".into(), "ref"));
    let (a, b) = (dir.join("outputs.json"), dir.join("reference.json"));
    write_outputs(&a, &model);
    write_outputs(&b, &reference);
    (a, b)
}

/// The preferences of annotations.json, pair `i` expected at 1 + p_model(i).
fn check_preferences(out: &Path, n: usize) -> Vec<f64> {
    let v: Value = serde_json::from_str(&std::fs::read_to_string(out).unwrap()).unwrap();
    let prefs: Vec<f64> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["preference"].as_f64().unwrap())
        .collect();
    assert_eq!(prefs.len(), n + 1);
    for (i, p) in prefs[..n].iter().enumerate() {
        // Both routes (switched or not) go through a log and an exp: a few ulps.
        assert!((p - (1.0 + p_model(i))).abs() < 1e-12, "pair {i}: {p}");
    }
    assert_eq!(prefs[n], 1.5);
    prefs
}

#[test]
fn retry_after_is_honoured_and_the_annotation_arrives() {
    let dir = common::temp_dir("judge-client-429");
    let (a, b) = write_pairs(&dir, 1);
    let (url, seen) = fake_judge(
        10,
        None,
        Box::new(|n, req, w| match n {
            0 | 1 => write_response(
                w,
                "429 Too Many Requests",
                "Retry-After: 1\r\n",
                b"slow down",
            ),
            _ => answer(n, req, w),
        }),
    );
    let mut judge =
        EndpointJudge::with_options(&url, "judge-model", None, fast_retries(30.0)).unwrap();
    let opts = JudgeOptions {
        max_examples: None,
        seed: 0,
        batch: 8,
        annotator: ANNOTATOR.into(),
    };
    let out = dir.join("annotations.json");
    let t0 = Instant::now();
    let annotations = run_judge(&a, &b, &mut judge, &opts, &out).unwrap();
    let seconds = t0.elapsed().as_secs_f64();
    let seen = seen.lock().unwrap();
    let gaps: Vec<f64> = seen
        .windows(2)
        .map(|w| (w[1].arrived - w[0].answered).as_secs_f64())
        .collect();
    println!("429, 429, 200: waits {gaps:?}, {seconds:.2}s in all");
    assert_eq!(seen.len(), 3);
    // Retry-After 1 twice, where the backoff alone would have waited 25-50 and 50-100 ms.
    assert!(gaps.iter().all(|&g| g >= 1.0), "{gaps:?}");
    assert!(seconds < 4.0, "{seconds}");
    assert_eq!(annotations.len(), 2);
    assert!((annotations[0].preference.unwrap() - (1.0 + p_model(0))).abs() < 1e-12);
    check_preferences(&out, 1);
}

#[test]
fn retries_stop_at_the_deadline_saying_what_happened() {
    // Always 503: attempts until the deadline; the error has their count and the last body.
    let (url, seen) = fake_judge(
        1000,
        None,
        Box::new(|_, _, w| {
            write_response(w, "503 Service Unavailable", "", b"overloaded, try later")
        }),
    );
    let t0 = Instant::now();
    let err = judge_error(&url, fast_retries(1.5));
    let seconds = t0.elapsed().as_secs_f64();
    let attempts = seen.lock().unwrap().len();
    println!("always 503: {err} ({seconds:.2}s)");
    assert!(
        err.contains(&format!("gave up after {attempts} attempts")),
        "{err}"
    );
    assert!(err.contains("HTTP 503: overloaded, try later"), "{err}");
    // The k-th wait is drawn from [25, 50] ms x 2^(k-1): after 5 waits at least 775 ms have
    // passed and the 6th is at least 800 ms, past the 1.5 s deadline, so at most 6 attempts;
    // 5 waits take at most 1550 ms, so at least 5 (4 if requests took over 350 ms).
    assert!((4..=6).contains(&attempts), "{attempts}");
    assert!(seconds <= 2.5, "{seconds}");

    // A Retry-After beyond the deadline: no point waiting, an error after one attempt.
    let (url, seen) = fake_judge(
        10,
        None,
        Box::new(|_, _, w| {
            write_response(
                w,
                "429 Too Many Requests",
                "Retry-After: 3600\r\n",
                b"quota",
            )
        }),
    );
    let t0 = Instant::now();
    let err = judge_error(&url, fast_retries(60.0));
    println!("Retry-After 3600: {err}");
    assert!(
        err.contains("gave up after 1 attempt ") && err.contains("wait 3600s"),
        "{err}"
    );
    assert!(t0.elapsed() < Duration::from_secs(2));
    assert_eq!(seen.lock().unwrap().len(), 1);

    // Nobody listening: connection errors are retried, then reported.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = judge_error(&format!("http://127.0.0.1:{port}"), fast_retries(0.5));
    println!("connection refused: {err}");
    assert!(
        err.contains("gave up after") && err.contains("attempts"),
        "{err}"
    );
}

#[test]
fn a_stalled_response_times_out() {
    // Headers, 2 of 100 promised bytes, then nothing for 5 s: the whole-request timeout (0.5 s)
    // ends the attempt, and the retry deadline (0.3 s) is already past.
    let (url, seen) = fake_judge(
        1,
        None,
        Box::new(|_, _, w| {
            w.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"")?;
            w.flush()?;
            std::thread::sleep(Duration::from_secs(5));
            Ok(())
        }),
    );
    let opts = ClientOptions {
        request_timeout: Duration::from_millis(500),
        ..fast_retries(0.3)
    };
    let t0 = Instant::now();
    let err = judge_error(&url, opts);
    let seconds = t0.elapsed().as_secs_f64();
    println!("stalled body: {err} ({seconds:.2}s)");
    assert!(
        err.contains("gave up after 1 attempt ") && err.contains("timeout"),
        "{err}"
    );
    assert!((0.5..2.0).contains(&seconds), "{seconds}");
    assert!(
        seen.lock().unwrap().is_empty(),
        "the response was still being written"
    );
}

fn implicit(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(common::implicit_bin());
    cmd.args(args).env_remove("SSL_CERT_FILE");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

#[test]
fn https_with_a_self_signed_certificate() {
    let dir = common::temp_dir("judge-client-tls");
    let (a, b) = write_pairs(&dir, 2);
    let (pem, config) = self_signed();
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, &pem).unwrap();
    let (url, seen) = fake_judge(10, Some(config), Box::new(answer));
    let secret = "sk-test-5ecret-never-shown";
    let (a, b, ca) = (
        a.to_str().unwrap(),
        b.to_str().unwrap(),
        ca.to_str().unwrap(),
    );
    let judge_cli = |out: &Path, extra: &[&str], env: &[(&str, &str)]| {
        let out = out.to_str().unwrap().to_string();
        let mut args = vec![
            "eval",
            "judge",
            "--outputs",
            a,
            "--reference",
            b,
            "--out",
            &out,
        ];
        args.extend(["--endpoint", &url, "--judge-model", "gpt-4-turbo"]);
        args.extend([
            "--api-key-env",
            "TEST_JUDGE_KEY",
            "--max-retry-seconds",
            "5",
        ]);
        args.extend(extra);
        let mut env = env.to_vec();
        env.push(("TEST_JUDGE_KEY", secret));
        implicit(&args, &env)
    };

    // Not trusted: an error at once, naming the remedies; the key never shown.
    let o = judge_cli(&dir.join("untrusted.json"), &[], &[]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    println!("untrusted: {}", stderr.trim());
    assert!(!o.status.success());
    assert!(
        stderr.contains("--ca-cert") && stderr.contains("SSL_CERT_FILE"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("gave up") && !stderr.contains(secret),
        "{stderr}"
    );
    assert!(seen.lock().unwrap().is_empty());

    // --ca-cert, then SSL_CERT_FILE: the judge answers over TLS.
    let out = dir.join("annotations.json");
    let o = judge_cli(&out, &["--ca-cert", ca], &[]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    println!("--ca-cert: {}", stdout.trim());
    assert!(o.status.success(), "{stderr}");
    assert!(!stdout.contains(secret) && !stderr.contains(secret));
    check_preferences(&out, 2);
    let out2 = dir.join("env/annotations.json");
    let o = judge_cli(&out2, &[], &[("SSL_CERT_FILE", ca)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    check_preferences(&out2, 2);

    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 4);
    for s in seen.iter() {
        assert!(
            s.request.line.starts_with("POST /v1/chat/completions "),
            "{}",
            s.request.line
        );
        assert_eq!(
            s.request.header("authorization"),
            Some(&*format!("Bearer {secret}"))
        );
        assert_eq!(s.request.body["model"], json!("gpt-4-turbo"));
    }
}

#[test]
fn a_rerun_resumes_from_the_journal() {
    const N: usize = 6;
    let dir = common::temp_dir("judge-client-journal");
    let (a, b) = write_pairs(&dir, N);
    let out = dir.join("annotations.json");
    let journal = dir.join("annotations.journal.jsonl");
    let run = |url: &str| {
        let args = [
            "eval",
            "judge",
            "--outputs",
            a.to_str().unwrap(),
            "--reference",
            b.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--endpoint",
            url,
            "--judge-model",
            "judge-model",
            "--max-retry-seconds",
            "2",
        ];
        let mut cmd = Command::new(common::implicit_bin());
        cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
        cmd
    };
    let lines = || std::fs::read_to_string(&journal).map_or(0, |t| t.lines().count());

    // 1. Killed while waiting for the 4th reply: the 3 before it are in the journal.
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let (url, _) = fake_judge(
        4,
        None,
        Box::new(move |n, req, w| {
            if n < 3 {
                return answer(n, req, w);
            }
            tx.lock().unwrap().send(()).unwrap();
            std::thread::sleep(Duration::from_secs(10)); // killed meanwhile
            Ok(())
        }),
    );
    let mut child = run(&url).spawn().unwrap();
    rx.recv_timeout(Duration::from_secs(60))
        .expect("the 4th request never came");
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!out.exists());
    assert_eq!(lines(), 3);
    // ... and killed again in the middle of writing a line.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&journal)
        .unwrap();
    f.write_all(br#"{"key":"0123abcd","judge":"judge-mo"#)
        .unwrap();
    drop(f);

    // 2. The next run asks for the rest, and fails at its 2nd request (HTTP 400): the 1st is
    // kept.
    let (url, seen) = fake_judge(
        10,
        None,
        Box::new(|n, req, w| match n {
            0 => answer(n, req, w),
            _ => write_response(w, "400 Bad Request", "", br#"{"error": "bad"}"#),
        }),
    );
    let o = run(&url).output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    println!("2nd run: {}", stderr.lines().last().unwrap_or(""));
    assert!(!o.status.success());
    assert!(stderr.contains("written only in part"), "{stderr}");
    assert!(
        stderr.contains("HTTP 400 (attempt 1)") && stderr.contains("4 replies are kept"),
        "{stderr}"
    );
    assert_eq!(seen.lock().unwrap().len(), 2);
    assert_eq!(lines(), 4);

    // 3. The last run asks only for the 2 left.
    let (url, seen) = fake_judge(10, None, Box::new(answer));
    let o = run(&url).output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    let reused = stderr.lines().find(|l| l.contains("reused")).unwrap_or("");
    println!("3rd run: {reused}");
    assert!(reused.contains("reused 4 replies") && reused.contains("asked the judge for 2"));
    let asked: Vec<usize> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|s| pair_of(&s.request).0)
        .collect();
    let mut asked_sorted = asked.clone();
    asked_sorted.sort();
    assert_eq!(asked_sorted, [4, 5], "{asked:?}");
    let resumed = check_preferences(&out, N);

    // The same annotations as one uninterrupted run, bit for bit.
    let fresh = dir.join("fresh");
    std::fs::create_dir_all(&fresh).unwrap();
    let (url, seen) = fake_judge(10, None, Box::new(answer));
    let mut judge = EndpointJudge::new(&url, "judge-model", None).unwrap();
    let opts = JudgeOptions {
        max_examples: None,
        seed: 0,
        batch: 8,
        annotator: ANNOTATOR.into(),
    };
    run_judge(&a, &b, &mut judge, &opts, &fresh.join("annotations.json")).unwrap();
    assert_eq!(seen.lock().unwrap().len(), N);
    let once = check_preferences(&fresh.join("annotations.json"), N);
    assert_eq!(
        resumed.iter().map(|p| p.to_bits()).collect::<Vec<_>>(),
        once.iter().map(|p| p.to_bits()).collect::<Vec<_>>()
    );

    // A 4th run with everything journaled sends nothing: the fake judge is not even there.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let o = run(&format!("http://127.0.0.1:{port}")).output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(
        stderr.contains("reused 6 replies") && stderr.contains("asked the judge for 0"),
        "{stderr}"
    );
}
