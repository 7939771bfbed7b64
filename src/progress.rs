//! Progress of long work on stderr (model init, generation, ranking, judging), on indicatif.
//!
//! On a terminal: a bar redrawn in place with the count, rate and ETA. Anywhere else (a log
//! file, CI, a pipe): indicatif draws nothing, and a plain line is written at most every
//! [`PLAIN_EVERY`] plus one when the work ends, so a log shows how far a run got without being
//! flooded. Progress never fails or stops the work: write errors (a closed stderr, a broken
//! pipe) are ignored, here and by indicatif.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::Write;
use std::time::{Duration, Instant};

/// The least time between two plain lines when stderr is not a terminal.
pub const PLAIN_EVERY: Duration = Duration::from_secs(10);

/// What the count counts: how it is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unit {
    Items,
    Bytes,
}

/// Plain lines for a stderr that is not a terminal.
struct PlainLines {
    sink: Box<dyn Write + Send>,
    every: Duration,
    last_line: Instant,
    /// The position the last line showed.
    shown: Option<u64>,
}

/// A progress report: `label: done/total, rate, ETA` and an optional message.
pub struct Progress {
    bar: ProgressBar,
    label: String,
    unit: Unit,
    plain: Option<PlainLines>,
    finished: bool,
}

impl Progress {
    /// Progress over `total` items (instructions, annotations, ...) on stderr.
    pub fn new(label: &str, total: usize) -> Progress {
        Progress::on_stderr(label, total as u64, Unit::Items)
    }

    /// Progress over `total` bytes on stderr, shown in GB and GB/s.
    pub fn bytes(label: &str, total: u64) -> Progress {
        Progress::on_stderr(label, total, Unit::Bytes)
    }

    /// Progress that shows nothing (the caller did not ask for it).
    pub fn hidden() -> Progress {
        Progress::build("", 0, Unit::Items, ProgressDrawTarget::hidden(), None)
    }

    fn on_stderr(label: &str, total: u64, unit: Unit) -> Progress {
        let target = ProgressDrawTarget::stderr();
        // indicatif hides itself off a terminal (and on TERM=dumb): plain lines stand in.
        let plain = target
            .is_hidden()
            .then(|| PlainLines::new(Box::new(std::io::stderr()), PLAIN_EVERY));
        Progress::build(label, total, unit, target, plain)
    }

    fn build(
        label: &str,
        total: u64,
        unit: Unit,
        target: ProgressDrawTarget,
        plain: Option<PlainLines>,
    ) -> Progress {
        let bar = ProgressBar::with_draw_target(Some(total), target);
        let template = match unit {
            Unit::Items => "{prefix}: [{bar:30}] {pos}/{len} ({per_sec}, ETA {eta}) {msg}",
            Unit::Bytes => {
                "{prefix}: [{bar:30}] {decimal_bytes}/{decimal_total_bytes} \
                 ({decimal_bytes_per_sec}, ETA {eta}) {msg}"
            }
        };
        // The templates are constants; were one rejected, indicatif's default bar still works.
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_prefix(label.to_string());
        Progress {
            bar,
            label: label.to_string(),
            unit,
            plain,
            finished: false,
        }
    }

    /// Sets the count of items done and the message shown after the rate (e.g. tokens/s).
    pub fn update(&mut self, done: usize, message: &str) {
        self.bar.set_message(message.to_string());
        self.set_position(done as u64);
    }

    /// Sets the count done.
    pub fn set_position(&mut self, done: u64) {
        self.bar.set_position(done);
        self.plain_line(false);
    }

    /// Adds `n` to the count done.
    pub fn inc(&mut self, n: u64) {
        self.bar.inc(n);
        self.plain_line(false);
    }

    /// Ends the report: the bar stays on the terminal as it is; off a terminal a last line is
    /// written unless the last one already showed this count. Dropping a `Progress` finishes it.
    pub fn finish(&mut self) {
        if self.finished {
            return;
        }
        self.finished = true;
        // `abandon`, not `finish`: finish would move the count to the total.
        self.bar.abandon();
        self.plain_line(true);
    }

    fn plain_line(&mut self, last: bool) {
        let Some(plain) = self.plain.as_mut() else {
            return;
        };
        let done = self.bar.position();
        let total = self.bar.length().unwrap_or(0);
        // Nothing done yet (work that failed at once): nothing worth a line.
        if done == 0 {
            return;
        }
        let due = plain.last_line.elapsed() >= plain.every || (done >= total && total > 0);
        if plain.shown == Some(done) || !(due || last) {
            return;
        }
        plain.last_line = Instant::now();
        plain.shown = Some(done);
        let line = plain_text(
            &self.label,
            self.unit,
            done,
            total,
            self.bar.elapsed(),
            &self.bar.message(),
        );
        // A closed or broken stderr must not stop the work it reports on.
        let _ = writeln!(plain.sink, "{line}");
        let _ = plain.sink.flush();
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}

impl PlainLines {
    fn new(sink: Box<dyn Write + Send>, every: Duration) -> PlainLines {
        PlainLines {
            sink,
            every,
            last_line: Instant::now(),
            shown: None,
        }
    }
}

/// `label: [done/total] pct%, rate, elapsed, ETA[, message]`, the rate and ETA averaged over
/// the whole run so far.
fn plain_text(
    label: &str,
    unit: Unit,
    done: u64,
    total: u64,
    elapsed: Duration,
    message: &str,
) -> String {
    let secs = elapsed.as_secs_f64();
    let rate = done as f64 / secs.max(1e-9);
    let eta = if done > 0 {
        total.saturating_sub(done) as f64 / rate
    } else {
        f64::NAN
    };
    let percent = if total > 0 {
        100.0 * done as f64 / total as f64
    } else {
        100.0
    };
    let (count, rate) = match unit {
        Unit::Items => (format!("{done}/{total}"), format!("{rate:.2}/s")),
        Unit::Bytes => (
            format!("{:.2}/{:.2} GB", done as f64 / 1e9, total as f64 / 1e9),
            format!("{:.2} GB/s", rate / 1e9),
        ),
    };
    let message = if message.is_empty() {
        String::new()
    } else {
        format!(", {message}")
    };
    format!(
        "{label}: [{count}] {percent:.0}%, {rate}, elapsed {}, ETA {}{message}",
        clock(secs),
        clock(eta)
    )
}

/// 42s, 3m07s, 2h05m; "?" when unknown.
pub fn clock(secs: f64) -> String {
    if !secs.is_finite() {
        return "?".into();
    }
    let s = secs.round() as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A sink whose text the test reads back.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Shared {
        fn lines(&self) -> Vec<String> {
            let text = String::from_utf8(self.0.lock().unwrap().clone()).unwrap();
            text.lines().map(str::to_string).collect()
        }
    }

    /// What a closed stderr or a broken pipe does to every write.
    struct Broken;

    impl Write for Broken {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Err(std::io::ErrorKind::BrokenPipe.into())
        }
    }

    fn plain(label: &str, total: u64, unit: Unit, sink: impl Write + Send + 'static) -> Progress {
        let lines = PlainLines::new(Box::new(sink), Duration::from_secs(3600));
        Progress::build(
            label,
            total,
            unit,
            ProgressDrawTarget::hidden(),
            Some(lines),
        )
    }

    #[test]
    fn plain_lines_are_sparse_and_always_show_the_end() {
        let sink = Shared::default();
        let mut p = plain("ranking", 100, Unit::Items, sink.clone());
        for done in 1..=100 {
            p.update(done, &format!("{done} tokens/s"));
        }
        p.finish();
        drop(p);
        // Nothing before the hour is up but the line at the total, written once.
        let lines = sink.lines();
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(
            lines[0].starts_with("ranking: [100/100] 100%, ")
                && lines[0].ends_with(", 100 tokens/s"),
            "{lines:?}"
        );
        assert!(lines[0].contains("ETA 0s"), "{lines:?}");

        // Stopped early (an error, or a caller that never reaches the total): dropping writes
        // where it got to, once.
        let sink = Shared::default();
        let mut p = plain("init", 4_000_000_000, Unit::Bytes, sink.clone());
        p.inc(1_500_000_000);
        drop(p);
        let lines = sink.lines();
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(
            lines[0].starts_with("init: [1.50/4.00 GB] 38%, "),
            "{lines:?}"
        );
        assert!(lines[0].contains(" GB/s, elapsed "), "{lines:?}");

        // Failed before anything was done: no line at all.
        let sink = Shared::default();
        drop(plain("generate", 56, Unit::Items, sink.clone()));
        assert_eq!(sink.lines(), Vec::<String>::new());
    }

    #[test]
    fn plain_lines_come_again_once_the_interval_is_up() {
        let sink = Shared::default();
        let lines = PlainLines::new(Box::new(sink.clone()), Duration::ZERO);
        let mut p = Progress::build(
            "judge",
            3,
            Unit::Items,
            ProgressDrawTarget::hidden(),
            Some(lines),
        );
        for done in 1..=3 {
            p.update(done, "");
        }
        drop(p);
        let got: Vec<String> = sink
            .lines()
            .iter()
            .map(|l| l.split(']').next().unwrap().to_string())
            .collect();
        assert_eq!(got, ["judge: [1/3", "judge: [2/3", "judge: [3/3"]);
    }

    #[test]
    fn broken_stderr_does_not_stop_the_work() {
        let mut p = plain("generate", 10, Unit::Items, Broken);
        for done in 0..=10 {
            p.update(done, "x");
        }
        p.finish();

        /// A terminal whose every write fails, for indicatif's own drawing.
        #[derive(Debug)]
        struct BrokenTerm;
        impl indicatif::TermLike for BrokenTerm {
            fn width(&self) -> u16 {
                80
            }
            fn move_cursor_up(&self, _: usize) -> std::io::Result<()> {
                Err(std::io::ErrorKind::BrokenPipe.into())
            }
            fn move_cursor_down(&self, _: usize) -> std::io::Result<()> {
                Err(std::io::ErrorKind::BrokenPipe.into())
            }
            fn move_cursor_right(&self, _: usize) -> std::io::Result<()> {
                Err(std::io::ErrorKind::BrokenPipe.into())
            }
            fn move_cursor_left(&self, _: usize) -> std::io::Result<()> {
                Err(std::io::ErrorKind::BrokenPipe.into())
            }
            fn write_line(&self, _: &str) -> std::io::Result<()> {
                Err(std::io::ErrorKind::BrokenPipe.into())
            }
            fn write_str(&self, _: &str) -> std::io::Result<()> {
                Err(std::io::ErrorKind::BrokenPipe.into())
            }
            fn clear_line(&self) -> std::io::Result<()> {
                Err(std::io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&self) -> std::io::Result<()> {
                Err(std::io::ErrorKind::BrokenPipe.into())
            }
        }
        for unit in [Unit::Items, Unit::Bytes] {
            let target = ProgressDrawTarget::term_like(Box::new(BrokenTerm));
            let mut p = Progress::build("init", 1000, unit, target, None);
            for _ in 0..100 {
                p.inc(10);
            }
            assert_eq!(p.bar.position(), 1000);
            p.finish();
        }
    }

    #[test]
    fn clock_reads_as_minutes_and_hours() {
        assert_eq!(clock(42.4), "42s");
        assert_eq!(clock(187.0), "3m07s");
        assert_eq!(clock(7500.0), "2h05m");
        assert_eq!(clock(f64::NAN), "?");
    }
}
