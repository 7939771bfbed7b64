//! Experiment configs and rules files: TOML read by the `toml` crate into serde structs, with
//! each error turned into `(line, message)` in this project's words (which key, what it must
//! be, what it is) rather than serde's (`invalid type: string "x", expected f32`).
//!
//! A key or table given twice is an error, as TOML says; structs that read a table use
//! `#[serde(deny_unknown_fields)]`, so a misspelt key is an error naming its line.

use serde::de::{self, DeserializeOwned, Deserializer, Visitor};
use std::fmt;
use std::marker::PhantomData;
use std::ops::Range;
pub use toml::de::DeTable;
pub use toml::Spanned;

/// What is wrong, and on which line (1-based; 0 when not known).
pub type Fault = (usize, String);

/// Parses `text` as a TOML document.
pub fn parse(text: &str) -> Result<Spanned<DeTable<'_>>, Fault> {
    DeTable::parse(text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        (
            line_of(text, span.start),
            syntax_message(e.message(), text, span),
        )
    })
}

/// Parses `text` and reads the whole document into `T`.
pub fn from_str<T: DeserializeOwned>(text: &str) -> Result<T, Fault> {
    read(parse(text)?, text, &[], &[])
}

/// Reads `table`, a table of the document `text`, into `T`. `path` is where the table sits
/// (`["train"]`; empty for the document), `more_keys` the keys of the same table that are read
/// elsewhere (listed among the known ones when a key is unknown).
pub fn read<T: DeserializeOwned>(
    table: Spanned<DeTable<'_>>,
    text: &str,
    path: &[&str],
    more_keys: &[&str],
) -> Result<T, Fault> {
    T::deserialize(toml::de::Deserializer::from(table)).map_err(|e| {
        let span = e.span();
        let line = span.as_ref().map_or(0, |s| line_of(text, s.start));
        let mut keys: Vec<String> = path.iter().map(|k| k.to_string()).collect();
        keys.extend(error_keys(&e));
        let message = plain_message(e.message(), text, span, &keys, more_keys);
        (line, message)
    })
}

/// The 1-based line of byte `offset` of `text`.
pub fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// A clap value enum read by its command-line name (`"bf16"`, `"cuda"`), so that a config
/// spells every choice as the flag does: `#[serde(deserialize_with = "value_enum")]`.
pub fn value_enum<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: clap::ValueEnum,
{
    struct Choice<T>(PhantomData<T>);
    impl<T: clap::ValueEnum> Visitor<'_> for Choice<T> {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            let names: Vec<String> = T::value_variants()
                .iter()
                .filter_map(|v| v.to_possible_value())
                .map(|p| format!("{:?}", p.get_name()))
                .collect();
            match names.split_last() {
                Some((last, [])) => f.write_str(last),
                Some((last, rest)) => write!(f, "{} or {last}", rest.join(", ")),
                None => f.write_str("nothing"),
            }
        }
        fn visit_str<E: de::Error>(self, s: &str) -> Result<T, E> {
            T::from_str(s, false).map_err(|_| E::invalid_value(de::Unexpected::Str(s), &self))
        }
    }
    d.deserialize_str(Choice(PhantomData))
}

/// The keys leading to the fault (`model.lr`), which toml's error says only in its Display
/// (`in `model.lr``, printed when the error carries no copy of the input, as here).
fn error_keys(e: &toml::de::Error) -> Vec<String> {
    let shown = e.to_string();
    shown
        .lines()
        .last()
        .and_then(|l| l.strip_prefix("in `"))
        .and_then(|l| l.strip_suffix('`'))
        .map_or(Vec::new(), |k| k.split('.').map(String::from).collect())
}

/// Serde's message for a fault at `span`, said in terms of TOML keys and tables. `keys` leads
/// to the table at fault (unknown or missing key) or to the value (wrong type or value).
fn plain_message(
    message: &str,
    text: &str,
    span: Option<Range<usize>>,
    keys: &[String],
    more_keys: &[&str],
) -> String {
    let table = || match keys {
        [] => "the top level".to_string(),
        _ => format!("[{}]", keys.join(".")),
    };
    // The header (`[eos]`, `[[token]]`) when the fault is on a table's header line.
    let header = span
        .as_ref()
        .map(|s| source_line(text, s.start))
        .filter(|l| l.starts_with('['));
    if let Some(rest) = message.strip_prefix("unknown field `") {
        let (name, expected) = rest.split_once('`').unwrap_or((rest, ""));
        let mut known: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
        known.extend(more_keys);
        let known = known.join(", ");
        return match header {
            Some(h) => format!("unknown table {h} (known: {known})"),
            None => format!("unknown key `{name}` in {} (known: {known})", table()),
        };
    }
    if let Some(rest) = message.strip_prefix("missing field `") {
        let name = rest.trim_end_matches('`');
        // The span is the table's: its header, unless it is the document itself.
        let header = header.filter(|_| !keys.is_empty());
        return format!("{} needs `{name}`", header.map_or_else(table, String::from));
    }
    let key = keys.last().map_or("the value", String::as_str);
    let wrong = message
        .strip_prefix("invalid type: ")
        .or_else(|| message.strip_prefix("invalid value: "))
        .and_then(|m| m.rsplit_once(", expected "));
    if let Some((unexpected, expected)) = wrong {
        let subject = match span.as_ref().is_some_and(|s| in_array(text, s.start)) {
            true => format!("an item of `{key}`"),
            false => format!("`{key}`"),
        };
        return format!(
            "{subject} must be {}, not {}",
            plain_expected(expected),
            plain_unexpected(unexpected)
        );
    }
    match keys.last() {
        Some(key) => format!("`{key}`: {message}"),
        None => message.to_string(),
    }
}

/// The line holding byte `offset`, trimmed; a table header without its comment.
fn source_line(text: &str, offset: usize) -> &str {
    let start = text[..offset.min(text.len())]
        .rfind('\n')
        .map_or(0, |i| i + 1);
    let line = text[start..].lines().next().unwrap_or("").trim();
    match line.starts_with('[') {
        // Table names here are bare words: a `#` after a header starts its comment.
        true => line.split('#').next().unwrap_or("").trim(),
        false => line,
    }
}

/// Whether byte `offset` lies inside an array written on its line after the `=`.
fn in_array(text: &str, offset: usize) -> bool {
    let start = text[..offset.min(text.len())]
        .rfind('\n')
        .map_or(0, |i| i + 1);
    let before = &text[start..offset.min(text.len())];
    before
        .split_once('=')
        .is_some_and(|(_, value)| value.contains('['))
}

fn plain_expected(expected: &str) -> String {
    match expected {
        "f32" | "f64" => "a number".into(),
        "u8" | "u16" | "u64" | "usize" => "a non-negative integer".into(),
        "u32" => format!("an integer from 0 to {}", u32::MAX),
        "i8" | "i16" | "i32" | "i64" | "isize" => "an integer".into(),
        "a boolean" => "true or false".into(),
        "a sequence" => "an array".into(),
        "a map" => "a table".into(),
        "path string" | "a borrowed string" => "a string".into(),
        s if s.starts_with("struct ") => "a table".into(),
        s => s.into(),
    }
}

fn plain_unexpected(unexpected: &str) -> String {
    if let Some(s) = unexpected.strip_prefix("string ") {
        return s.into();
    }
    for kind in ["integer `", "floating point `", "boolean `"] {
        if let Some(v) = unexpected
            .strip_prefix(kind)
            .and_then(|v| v.strip_suffix('`'))
        {
            return v.into();
        }
    }
    match unexpected {
        "sequence" => "an array".into(),
        "map" => "a table".into(),
        s => s.into(),
    }
}

/// The toml parser's message for a syntax error at `span`, with the names it leaves out.
fn syntax_message(message: &str, text: &str, span: Range<usize>) -> String {
    let word = text.get(span.clone()).unwrap_or("");
    if message == "duplicate key" {
        return duplicate(text, span.start, word);
    }
    // A bare word where a value goes: the parser guesses at a boolean or a literal string.
    let bare = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.+".contains(c));
    if bare
        && (message.starts_with("invalid boolean")
            || message.starts_with("string values must be quoted"))
    {
        return format!("invalid value `{word}` (strings need quotes)");
    }
    message.to_string()
}

/// "duplicate key" said with the key and where it was first given, found by reading the lines
/// before (a key among its table's lines, a header among the headers); without the line when
/// it cannot be found that way (dotted keys, inline tables).
fn duplicate(text: &str, offset: usize, name: &str) -> String {
    let line = line_of(text, offset);
    let lines: Vec<&str> = text.lines().collect();
    let before = &lines[..(line - 1).min(lines.len())];
    let here = source_line(text, offset);
    if here.starts_with('[') {
        // `[a]` after `[a]` or `[[a]]`: compare the names, spaces left out.
        let bare = |l: &str| -> String {
            let header = l.split('#').next().unwrap_or("");
            header
                .trim()
                .trim_matches(['[', ']'])
                .replace(char::is_whitespace, "")
        };
        let table = bare(here);
        let first = before
            .iter()
            .position(|l| l.trim_start().starts_with('[') && bare(l) == table);
        return match first {
            Some(i) => format!("table [{table}] is already defined on line {}", i + 1),
            None => format!("table [{table}] is defined twice"),
        };
    }
    let table_start = before
        .iter()
        .rposition(|l| l.trim_start().starts_with('['))
        .map_or(0, |i| i + 1);
    let first = (table_start..before.len()).find(|&i| {
        lines[i]
            .split_once('=')
            .is_some_and(|(k, _)| k.trim() == name)
    });
    match first {
        Some(i) => format!("key `{name}` is already set on line {}", i + 1),
        None => format!("key `{name}` is given twice"),
    }
}
