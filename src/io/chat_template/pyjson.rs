//! Python's `json.dumps` over template values, for transformers' `tojson` filter: chat templates
//! that print tools or arguments expect Python's spacing (`", "`, `": "`), key order and
//! escapes, where minijinja's own `tojson` is compact and HTML-escaped.

use minijinja::value::ValueKind;
use minijinja::{Error, ErrorKind, Value};

/// `json.dumps`' keyword arguments.
pub struct DumpOptions {
    pub ensure_ascii: bool,
    /// Python's `indent`: None is one line; an integer n is n spaces per level.
    pub indent: Option<String>,
    /// (item separator, key separator); default `(", ", ": ")`, or `(",", ": ")` with indent.
    pub separators: Option<(String, String)>,
    pub sort_keys: bool,
}

fn unserializable(kind: impl std::fmt::Display) -> Error {
    Error::new(
        ErrorKind::InvalidOperation,
        format!("tojson: a {kind} value is not JSON serializable"),
    )
}

/// The JSON text of `value`, byte for byte as Python would write it.
pub fn dumps(value: &Value, opts: &DumpOptions) -> Result<String, Error> {
    let (item, key) = match &opts.separators {
        Some((i, k)) => (i.clone(), k.clone()),
        None if opts.indent.is_some() => (",".to_string(), ": ".to_string()),
        None => (", ".to_string(), ": ".to_string()),
    };
    let mut out = String::new();
    let w = Writer {
        opts,
        item: &item,
        key: &key,
    };
    w.value(value, 0, &mut out)?;
    Ok(out)
}

struct Writer<'a> {
    opts: &'a DumpOptions,
    item: &'a str,
    key: &'a str,
}

impl Writer<'_> {
    /// Before an element at nesting `level`: nothing, or a newline and indentation.
    fn newline(&self, level: usize, out: &mut String) {
        if let Some(unit) = &self.opts.indent {
            out.push('\n');
            for _ in 0..level {
                out.push_str(unit);
            }
        }
    }

    fn value(&self, v: &Value, level: usize, out: &mut String) -> Result<(), Error> {
        match v.kind() {
            ValueKind::None => out.push_str("null"),
            ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
            ValueKind::Number => out.push_str(&number(v)?),
            ValueKind::String => {
                string(v.as_str().unwrap_or_default(), self.opts.ensure_ascii, out)
            }
            ValueKind::Seq | ValueKind::Iterable => {
                let items: Vec<Value> = v.try_iter()?.collect();
                self.container(('[', ']'), items.len(), level, out, |i, out| {
                    self.value(&items[i], level + 1, out)
                })?;
            }
            ValueKind::Map => {
                let mut entries: Vec<(String, Value)> = Vec::new();
                for k in v.try_iter()? {
                    let item = v.get_item(&k)?;
                    entries.push((key_text(&k)?, item));
                }
                if self.opts.sort_keys {
                    entries.sort_by(|a, b| a.0.cmp(&b.0));
                }
                self.container(('{', '}'), entries.len(), level, out, |i, out| {
                    string(&entries[i].0, self.opts.ensure_ascii, out);
                    out.push_str(self.key);
                    self.value(&entries[i].1, level + 1, out)
                })?;
            }
            other => return Err(unserializable(other)),
        }
        Ok(())
    }

    fn container(
        &self,
        (open, close): (char, char),
        n: usize,
        level: usize,
        out: &mut String,
        mut element: impl FnMut(usize, &mut String) -> Result<(), Error>,
    ) -> Result<(), Error> {
        out.push(open);
        if n == 0 {
            out.push(close);
            return Ok(());
        }
        for i in 0..n {
            if i > 0 {
                out.push_str(self.item);
            }
            self.newline(level + 1, out);
            element(i, out)?;
        }
        self.newline(level, out);
        out.push(close);
        Ok(())
    }
}

/// A dict key as Python's json writes it: strings as they are; numbers, booleans and None as
/// their JSON text.
fn key_text(k: &Value) -> Result<String, Error> {
    match k.kind() {
        ValueKind::String => Ok(k.as_str().unwrap_or_default().to_string()),
        ValueKind::Number => number(k),
        ValueKind::Bool => Ok(if k.is_true() { "true" } else { "false" }.into()),
        ValueKind::None => Ok("null".into()),
        other => Err(Error::new(
            ErrorKind::InvalidOperation,
            format!("tojson: keys must be str, int, float, bool or None, not {other}"),
        )),
    }
}

/// Integers as they are; floats as Python's `repr`: shortest round-trip digits, fixed notation
/// with ".0" for 1e-4 <= |x| < 1e16, else `1e+16`-style exponents; NaN and Infinity as Python's
/// json writes them.
fn number(v: &Value) -> Result<String, Error> {
    if v.is_integer() {
        return Ok(v.to_string());
    }
    let x = f64::try_from(v.clone())?;
    if x.is_nan() {
        return Ok("NaN".into());
    }
    if x.is_infinite() {
        return Ok(if x > 0.0 { "Infinity" } else { "-Infinity" }.into());
    }
    let a = x.abs();
    if a == 0.0 || (1e-4..1e16).contains(&a) {
        let s = format!("{x}");
        return Ok(if s.contains('.') { s } else { format!("{s}.0") });
    }
    let s = format!("{x:e}");
    let (mantissa, exp) = s.split_once('e').unwrap_or((&s, "0"));
    let (sign, digits) = match exp.strip_prefix('-') {
        Some(d) => ('-', d),
        None => ('+', exp),
    };
    Ok(format!("{mantissa}e{sign}{digits:0>2}"))
}

/// A JSON string as Python writes it: `"` and `\` escaped, \b \f \n \r \t by name, other
/// control characters as \u00XX; with `ensure_ascii`, everything outside ' '..'~' as \uXXXX
/// (UTF-16 surrogate pairs above U+FFFF).
fn string(s: &str, ensure_ascii: bool, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (ensure_ascii && !(' '..='~').contains(&c)) => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{u:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use minijinja::value::Serde;

    fn opts() -> DumpOptions {
        DumpOptions {
            ensure_ascii: false,
            indent: None,
            separators: None,
            sort_keys: false,
        }
    }

    /// Keys in declaration order, as a Python dict keeps them.
    #[derive(serde::Serialize)]
    struct Unsorted {
        b: Vec<serde_json::Value>,
        a: &'static str,
        c: bool,
    }

    #[derive(serde::Serialize)]
    struct Nested {
        x: Vec<u32>,
        y: Vec<u32>,
    }

    // Expected strings are Python 3.11's json.dumps of the same values.
    #[test]
    fn dumps_like_python() {
        let v = Value::from(Serde(Unsorted {
            b: vec![1.into(), 2.5.into(), serde_json::Value::Null],
            a: "é\"\n\u{1}<>",
            c: true,
        }));
        assert_eq!(
            dumps(&v, &opts()).unwrap(),
            r#"{"b": [1, 2.5, null], "a": "é\"\n\u0001<>", "c": true}"#
        );
        let ascii = DumpOptions {
            ensure_ascii: true,
            sort_keys: true,
            ..opts()
        };
        assert_eq!(
            dumps(&v, &ascii).unwrap(),
            r#"{"a": "\u00e9\"\n\u0001<>", "b": [1, 2.5, null], "c": true}"#
        );
        let indented = DumpOptions {
            indent: Some("  ".into()),
            ..opts()
        };
        let nested = Value::from(Serde(Nested {
            x: vec![],
            y: vec![1],
        }));
        assert_eq!(
            dumps(&nested, &indented).unwrap(),
            "{\n  \"x\": [],\n  \"y\": [\n    1\n  ]\n}"
        );
        assert_eq!(
            dumps(&Value::from("😀"), &ascii).unwrap(),
            r#""\ud83d\ude00""#
        );
    }

    #[test]
    fn floats_follow_python_repr() {
        let cases = [
            (1.0, "1.0"),
            (0.1, "0.1"),
            (1e16, "1e+16"),
            (1e15, "1000000000000000.0"),
            (1e-5, "1e-05"),
            (0.0001, "0.0001"),
            (-2.5e-7, "-2.5e-07"),
            (1.5e300, "1.5e+300"),
        ];
        for (x, want) in cases {
            assert_eq!(number(&Value::from(x)).unwrap(), want, "{x}");
        }
    }
}
