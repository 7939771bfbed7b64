//! Tulu `messages` JSONL: reading training examples, and writing rows the way Python's
//! `json.dumps` does (so our files diff cleanly against the paper's).

use crate::bail;
use crate::error::{Context, Result};
use crate::io::atomic::write_atomic;
use serde::{Deserialize, Deserializer, Serialize};
use std::io::Write;
use std::path::Path;

/// One chat turn: `role` is "user", "assistant" or "system".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: &str, content: impl Into<String>) -> Message {
        Message {
            role: role.to_string(),
            content: content.into(),
        }
    }
}

/// One training example: its turns and, when the file has one, its `id`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Example {
    pub messages: Vec<Message>,
    #[serde(default, deserialize_with = "id_as_string")]
    pub id: Option<String>,
}

/// A row as the paper's scripts write it: `{"dataset", "id", "messages"}` in that order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub dataset: String,
    pub id: String,
    pub messages: Vec<Message>,
}

/// Ids are strings in every file we know, but a number is accepted too (and kept as text).
fn id_as_string<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Option<String>, D::Error> {
    Ok(match Option::<serde_json::Value>::deserialize(d)? {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) => Some(s),
        Some(other) => Some(other.to_string()),
    })
}

/// The longest line [`read_messages_jsonl`] reads: far above any training row (a LIMA row is a
/// few KB, and no more of a message than `encode::content_cap` is tokenized: 393 KB for
/// Llama-2 at 2048 tokens), and a bound on what one line costs before it is parsed and cut.
pub const MAX_LINE_BYTES: usize = 64 << 20;

/// Every example of a `messages` JSONL file; blank lines are skipped, and a malformed line, or
/// one longer than [`MAX_LINE_BYTES`], is an error naming the file and its (1-based) line
/// number. The file is read a line at a time.
pub fn read_messages_jsonl(path: &Path) -> Result<Vec<Example>> {
    read_messages_jsonl_limited(path, MAX_LINE_BYTES)
}

fn read_messages_jsonl_limited(path: &Path, max_line: usize) -> Result<Vec<Example>> {
    use std::io::{BufRead, Read};
    let file =
        std::fs::File::open(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let mut reader = std::io::BufReader::new(file);
    let mut line = Vec::new();
    let mut out = Vec::new();
    for number in 1.. {
        line.clear();
        // At most one byte past the limit: enough to tell a line that is too long.
        let n = (&mut reader)
            .take(max_line as u64 + 1)
            .read_until(b'\n', &mut line)
            .with_context(|| format!("{} line {number}: cannot read", path.display()))?;
        if n == 0 {
            break;
        }
        if line.last() == Some(&b'\n') {
            line.pop();
        }
        if line.len() > max_line {
            bail!(
                "{} line {number}: longer than {max_line} bytes (not a training row)",
                path.display()
            );
        }
        let text = std::str::from_utf8(&line)
            .with_context(|| format!("{} line {number}: not UTF-8", path.display()))?;
        if text.trim().is_empty() {
            continue;
        }
        let ex: Example = serde_json::from_str(text)
            .with_context(|| format!("{} line {number}", path.display()))?;
        out.push(ex);
    }
    Ok(out)
}

/// The first `limit` rows of a JSONL file (all when None) with their 1-based line numbers, blank
/// lines skipped, each parsed as JSON (an error names the file and line). Rows past the limit are
/// not parsed, as the paper's scripts stop reading there.
pub(crate) fn jsonl_values(
    path: &Path,
    limit: Option<usize>,
) -> Result<Vec<(usize, serde_json::Value)>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        if limit.is_some_and(|n| out.len() >= n) {
            break;
        }
        let v = serde_json::from_str(line)
            .with_context(|| format!("{} line {}", path.display(), i + 1))?;
        out.push((i + 1, v));
    }
    Ok(out)
}

/// `value[name]` as a string, or an error naming file, line and field.
pub(crate) fn str_field<'a>(
    v: &'a serde_json::Value,
    name: &str,
    path: &Path,
    line: usize,
) -> Result<&'a str> {
    match v.get(name) {
        Some(serde_json::Value::String(s)) => Ok(s),
        Some(_) => bail!(
            "{} line {line}: field {name} is not a string",
            path.display()
        ),
        None => bail!("{} line {line}: missing field {name}", path.display()),
    }
}

/// Python's `json.dumps(record)`: `", "` and `": "` separators, non-ASCII as `\uXXXX`.
pub fn to_python_json<T: Serialize>(value: &T) -> Result<String> {
    let mut buf = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut buf, PythonFormatter);
    value
        .serialize(&mut ser)
        .context("cannot serialize to JSON")?;
    String::from_utf8(buf).context("JSON output is not UTF-8")
}

/// Writes `rows` as JSONL to `out` atomically (see [`write_atomic`]), so a failed build never
/// leaves a half-written training set behind.
pub fn write_jsonl_atomic<T: Serialize>(out: &Path, rows: &[T]) -> Result<()> {
    let mut text = String::new();
    for row in rows {
        text += &to_python_json(row)?;
        text.push('\n');
    }
    write_atomic(out, text.as_bytes())
}

/// serde_json formatter matching CPython's default `json.dumps` (ensure_ascii=True).
struct PythonFormatter;

impl serde_json::ser::Formatter for PythonFormatter {
    fn begin_array_value<W: ?Sized + Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }

    fn begin_object_key<W: ?Sized + Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }

    fn begin_object_value<W: ?Sized + Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        w.write_all(b": ")
    }

    /// serde_json already escapes quotes, backslashes and control characters exactly as Python
    /// does; what is left is everything outside printable ASCII, which Python writes as
    /// `\uXXXX` (UTF-16 surrogate pairs above the BMP).
    fn write_string_fragment<W: ?Sized + Write>(
        &mut self,
        w: &mut W,
        fragment: &str,
    ) -> std::io::Result<()> {
        let mut start = 0;
        for (i, c) in fragment.char_indices() {
            if (' '..='~').contains(&c) {
                continue;
            }
            w.write_all(&fragment.as_bytes()[start..i])?;
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                write!(w, "\\u{unit:04x}")?;
            }
            start = i + c.len_utf8();
        }
        w.write_all(&fragment.as_bytes()[start..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_over_the_limit_is_named_and_one_at_it_is_read() {
        let dir = std::env::temp_dir().join(format!("implicit-jsonl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("rows.jsonl");
        let row = r#"{"messages": [{"role": "user", "content": "hi"}]}"#;
        std::fs::write(&path, format!("{row}\n\n{row}x\n")).unwrap();
        // Line 3 is one byte longer than the row: at the row's length it is refused by name.
        let err = read_messages_jsonl_limited(&path, row.len())
            .unwrap_err()
            .to_string();
        assert!(err.contains("rows.jsonl line 3: longer than"), "{err}");
        std::fs::write(&path, format!("{row}\r\n\n{row}")).unwrap();
        let rows = read_messages_jsonl_limited(&path, row.len() + 1).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[1].messages[0].content, "hi");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn python_json_matches_json_dumps() {
        let r = Record {
            dataset: "d".into(),
            id: "d_0".into(),
            messages: vec![Message::new(
                "user",
                "Kl\u{e4}mbt \u{1F600}\t\"q\"\u{7f}\u{1}",
            )],
        };
        // json.dumps({"dataset": "d", "id": "d_0", "messages": [...]}) in CPython:
        let want = r#"{"dataset": "d", "id": "d_0", "messages": [{"role": "user", "content": "Kl\u00e4mbt \ud83d\ude00\t\"q\"\u007f\u0001"}]}"#;
        assert_eq!(to_python_json(&r).unwrap(), want);
    }
}
