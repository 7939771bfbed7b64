//! The judge's journal: each reply of a paid-for judge (an endpoint) is appended as one JSON line
//! and synced to disk as it arrives, so that a rerun after a crash, a kill or a give-up asks only
//! for the pairs not yet answered. An entry's key is a SHA-512 of the judge's fingerprint
//! (model and request settings) and the exact messages sent (prompt, pair and order).
//!
//! A last line cut short (the process killed mid-write) is ignored and cut off; a damaged line
//! before it is an error naming the file and the line.

use super::judge::{ChatMessage, JudgeReply};
use super::sha512::sha512;
use crate::bail;
use crate::error::{Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// One line of the journal.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JournalEntry {
    pub key: String,
    /// The judge's name, for whoever reads the file.
    pub judge: String,
    /// Token and logprob, the logprob as Rust's shortest round-trip decimal text: serde_json's
    /// default float parsing may be one ulp off, and a reused reply must give the same
    /// preference bit for bit.
    pub top_logprobs: Vec<(String, String)>,
    pub raw_completion: Value,
    /// Seconds the judge took for this reply.
    pub seconds: Option<f64>,
}

impl JournalEntry {
    pub fn new(key: String, judge: &str, reply: &JudgeReply, seconds: Option<f64>) -> JournalEntry {
        JournalEntry {
            key,
            judge: judge.to_string(),
            top_logprobs: reply
                .top_logprobs
                .iter()
                .map(|(t, lp)| (t.clone(), format!("{lp:?}")))
                .collect(),
            raw_completion: reply.raw_completion.clone(),
            seconds,
        }
    }

    pub fn reply(&self) -> Result<JudgeReply> {
        let top_logprobs = self
            .top_logprobs
            .iter()
            .map(|(t, lp)| {
                let lp = lp
                    .parse::<f64>()
                    .with_context(|| format!("entry {}: bad logprob {lp:?}", self.key))?;
                Ok((t.clone(), lp))
            })
            .collect::<Result<_>>()?;
        Ok(JudgeReply {
            top_logprobs,
            raw_completion: self.raw_completion.clone(),
        })
    }
}

/// The key of one judge prompt: hex SHA-512 of the fingerprint and the messages.
pub fn entry_key(fingerprint: &str, messages: &[ChatMessage]) -> String {
    let messages = serde_json::to_string(messages).unwrap_or_default();
    let text = format!("{fingerprint}\n{messages}");
    sha512(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The journal beside `out`: `annotations.json` -> `annotations.journal.jsonl`.
pub fn journal_path(out: &Path) -> PathBuf {
    out.with_extension("journal.jsonl")
}

pub struct Journal {
    path: PathBuf,
    file: File,
    entries: HashMap<String, JournalEntry>,
}

impl Journal {
    /// Opens (or creates) the journal at `path` and reads its entries.
    pub fn open(path: &Path) -> Result<Journal> {
        let shown = path.display();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("{}: cannot create the folder", dir.display()))?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .with_context(|| format!("{shown}: cannot open the judge journal"))?;
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut file, &mut bytes)
            .with_context(|| format!("{shown}: cannot read the judge journal"))?;
        let mut entries = HashMap::new();
        let mut good_end = 0;
        let mut start = 0;
        let mut line_no = 0;
        while start < bytes.len() {
            line_no += 1;
            let end = bytes[start..]
                .iter()
                .position(|&b| b == b'\n')
                .map(|i| start + i + 1);
            let line = &bytes[start..end.unwrap_or(bytes.len())];
            let is_last = end.is_none_or(|e| e == bytes.len());
            match serde_json::from_slice::<JournalEntry>(line) {
                Ok(entry) if end.is_some() => {
                    entries.insert(entry.key.clone(), entry);
                    good_end = end.unwrap_or(bytes.len());
                }
                // The last line, unfinished or unreadable: a write cut short.
                _ if is_last => {
                    eprintln!(
                        "{shown}: ignoring its last line ({} bytes), written only in part",
                        line.len()
                    );
                    break;
                }
                Ok(_) => unreachable!("only the last line lacks its newline"),
                Err(e) => bail!("{shown} line {line_no}: not a journal entry: {e}"),
            }
            start = end.unwrap_or(bytes.len());
        }
        if good_end < bytes.len() {
            // Appends must start on a line of their own.
            file.set_len(good_end as u64)
                .with_context(|| format!("{shown}: cannot cut off its unfinished last line"))?;
        }
        Ok(Journal {
            path: path.to_path_buf(),
            file,
            entries,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn get(&self, key: &str) -> Option<&JournalEntry> {
        self.entries.get(key)
    }

    /// Appends `entries` and syncs the file before returning.
    pub fn append(&mut self, entries: Vec<JournalEntry>) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut text = Vec::new();
        for e in &entries {
            serde_json::to_writer(&mut text, e).context("cannot serialize a journal entry")?;
            text.push(b'\n');
        }
        self.file
            .write_all(&text)
            .and_then(|_| self.file.sync_data())
            .with_context(|| format!("{}: cannot append to the journal", self.path.display()))?;
        for e in entries {
            self.entries.insert(e.key.clone(), e);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn reply(lp: f64) -> JudgeReply {
        JudgeReply {
            top_logprobs: vec![("m".into(), lp), ("M".into(), (1.0 - lp.exp()).ln())],
            raw_completion: json!({"x": 1}),
        }
    }

    #[test]
    fn entries_survive_a_reopen_and_a_cut_last_line() {
        let dir = std::env::temp_dir().join(format!("implicit-journal-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = journal_path(&dir.join("annotations.json"));
        assert_eq!(path, dir.join("annotations.journal.jsonl"));
        let lp = (0.1f64).ln();
        let mut j = Journal::open(&path).unwrap();
        assert!(j.is_empty());
        j.append(vec![
            JournalEntry::new("a".into(), "judge", &reply(lp), Some(0.5)),
            JournalEntry::new("b".into(), "judge", &reply(-2.0), None),
        ])
        .unwrap();
        drop(j);
        // Killed in the middle of a third line.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(br#"{"key":"c","judge":"ju"#).unwrap();
        drop(f);
        let mut j = Journal::open(&path).unwrap();
        assert_eq!(j.len(), 2);
        // The logprob comes back bit for bit.
        let back = j.get("a").unwrap().reply().unwrap();
        assert_eq!(back.top_logprobs[0].1.to_bits(), lp.to_bits());
        assert!(j.get("c").is_none());
        j.append(vec![JournalEntry::new(
            "c".into(),
            "judge",
            &reply(-1.0),
            None,
        )])
        .unwrap();
        drop(j);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 3, "{text}");
        assert_eq!(Journal::open(&path).unwrap().len(), 3);

        // A damaged line before the last: an error naming the line.
        let lines: Vec<&str> = text.lines().collect();
        std::fs::write(&path, format!("{}\nnot json\n{}\n", lines[0], lines[2])).unwrap();
        let err = Journal::open(&path).err().unwrap().to_string();
        assert!(err.contains("line 2"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn keys_depend_on_fingerprint_and_messages() {
        let m = |c: &str| {
            vec![ChatMessage {
                role: "user".into(),
                content: c.into(),
            }]
        };
        let k = entry_key("judge-a", &m("x"));
        assert_eq!(k.len(), 128);
        assert_eq!(k, entry_key("judge-a", &m("x")));
        assert_ne!(k, entry_key("judge-b", &m("x")));
        assert_ne!(k, entry_key("judge-a", &m("y")));
    }
}
