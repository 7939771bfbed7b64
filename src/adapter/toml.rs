//! The small TOML subset that rule files are written in (no toml crate: the format is tiny).
//!
//! Supported, one item per line:
//! * comments: `#` to the end of a line (outside strings); blank lines;
//! * `key = value` with a bare key (`A-Z a-z 0-9 _ -`);
//! * tables `[name]` (each at most once) and arrays of tables `[[name]]` (repeatable);
//! * values: basic strings `"..."` with the escapes `\" \\ \n \t \r \b \f \uXXXX \UXXXXXXXX`,
//!   literal strings `'...'`, integers (`-3`, `1_000`), floats (`1.5`, `-1e3`, `inf`, `nan`),
//!   booleans, and one-line arrays of those (`[1, 2, 3]`, a trailing comma allowed).
//!
//! Not supported (an error says so): dotted or quoted keys, inline tables, multi-line strings
//! or arrays, dates. The same document can also be written as JSON (see [`from_json`]).

/// A value of the subset.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Array(Vec<Value>),
}

impl Value {
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Str(_) => "a string",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a float",
            Value::Bool(_) => "a boolean",
            Value::Array(_) => "an array",
        }
    }
}

/// `key = value` on line `line` (1-based; 0 when unknown, as for JSON input).
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub key: String,
    pub value: Value,
    pub line: usize,
}

/// The keys before any header (`name: None`), a `[name]` table or one `[[name]]` element.
#[derive(Clone, Debug, PartialEq)]
pub struct Section {
    pub name: Option<String>,
    pub array: bool,
    pub line: usize,
    pub entries: Vec<Entry>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Document {
    pub sections: Vec<Section>,
}

/// A parse error: the 1-based line (0 if unknown) and what is wrong.
pub type ParseError = (usize, String);

fn is_bare(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

/// Parses the subset. Errors carry the line number.
pub fn parse(text: &str) -> Result<Document, ParseError> {
    let mut doc = Document {
        sections: vec![Section {
            name: None,
            array: false,
            line: 0,
            entries: Vec::new(),
        }],
    };
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let err = |m: String| (line, m);
        let mut cur = Cursor {
            s: raw.trim_start(),
            pos: 0,
        };
        if cur.at_end_or_comment() {
            continue;
        }
        if cur.eat('[') {
            let array = cur.eat('[');
            let close = if array { "]]" } else { "]" };
            let name = cur.take_while(|c| c != ']').trim().to_string();
            if !cur.rest().starts_with(close) {
                return Err(err(format!("expected `{close}` after the table name")));
            }
            cur.pos += close.len();
            if !cur.at_end_or_comment() {
                return Err(err("unexpected text after the table header".into()));
            }
            if name.is_empty() || !name.chars().all(is_bare) {
                return Err(err(format!(
                    "invalid table name {name:?} (only bare names: letters, digits, _ and -)"
                )));
            }
            let existing = doc
                .sections
                .iter()
                .find(|s| s.name.as_deref() == Some(name.as_str()));
            if let Some(prev) = existing {
                if !(array && prev.array) {
                    return Err(err(format!(
                        "table [{name}] is already defined on line {}",
                        prev.line
                    )));
                }
            }
            doc.sections.push(Section {
                name: Some(name),
                array,
                line,
                entries: Vec::new(),
            });
            continue;
        }
        let key = cur.take_while(is_bare).to_string();
        cur.skip_ws();
        if key.is_empty() || cur.peek() == Some('.') || cur.peek() == Some('"') {
            return Err(err(
                "expected `key = value` with a bare key (letters, digits, _ and -)".into(),
            ));
        }
        if !cur.eat('=') {
            return Err(err(format!("expected `=` after key `{key}`")));
        }
        cur.skip_ws();
        let value = cur.value().map_err(err)?;
        if !cur.at_end_or_comment() {
            return Err(err(format!("unexpected text after the value of `{key}`")));
        }
        let section = doc.sections.last_mut().expect("the root section");
        if let Some(prev) = section.entries.iter().find(|e| e.key == key) {
            return Err(err(format!(
                "key `{key}` is already set on line {}",
                prev.line
            )));
        }
        section.entries.push(Entry { key, value, line });
    }
    Ok(doc)
}

struct Cursor<'a> {
    s: &'a str,
    pos: usize,
}

impl Cursor<'_> {
    fn rest(&self) -> &str {
        &self.s[self.pos..]
    }
    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }
    fn eat(&mut self, c: char) -> bool {
        if self.peek() == Some(c) {
            self.pos += c.len_utf8();
            true
        } else {
            false
        }
    }
    fn take_while(&mut self, f: impl Fn(char) -> bool) -> &str {
        let start = self.pos;
        while let Some(c) = self.peek().filter(|&c| f(c)) {
            self.pos += c.len_utf8();
        }
        &self.s[start..self.pos]
    }
    fn skip_ws(&mut self) {
        self.take_while(|c| c == ' ' || c == '\t');
    }
    fn at_end_or_comment(&mut self) -> bool {
        self.skip_ws();
        matches!(self.peek(), None | Some('#'))
    }

    fn value(&mut self) -> Result<Value, String> {
        match self.peek() {
            None | Some('#') => Err("missing value".into()),
            Some('"') | Some('\'')
                if self.rest().starts_with("\"\"\"") || self.rest().starts_with("'''") =>
            {
                Err("multi-line strings are not supported".into())
            }
            Some('"') => self.basic_string().map(Value::Str),
            Some('\'') => {
                self.pos += 1;
                let body = self.take_while(|c| c != '\'').to_string();
                if !self.eat('\'') {
                    return Err("unterminated string".into());
                }
                Ok(Value::Str(body))
            }
            Some('[') => {
                self.pos += 1;
                let mut items = Vec::new();
                loop {
                    self.skip_ws();
                    if self.eat(']') {
                        return Ok(Value::Array(items));
                    }
                    if self.peek().is_none() {
                        return Err("unterminated array (arrays must be on one line)".into());
                    }
                    items.push(self.value()?);
                    self.skip_ws();
                    if !self.eat(',') && self.peek() != Some(']') {
                        return Err("expected `,` or `]` in the array".into());
                    }
                }
            }
            Some('{') => Err("inline tables are not supported".into()),
            Some(_) => {
                let word = self
                    .take_while(|c| c.is_ascii_alphanumeric() || "+-._".contains(c))
                    .to_string();
                scalar(&word)
            }
        }
    }

    fn basic_string(&mut self) -> Result<String, String> {
        self.pos += 1;
        let mut out = String::new();
        loop {
            let c = self.peek().ok_or("unterminated string")?;
            self.pos += c.len_utf8();
            match c {
                '"' => return Ok(out),
                '\\' => {
                    let e = self.peek().ok_or("unterminated string")?;
                    self.pos += e.len_utf8();
                    let simple = match e {
                        '"' => Some('"'),
                        '\\' => Some('\\'),
                        'n' => Some('\n'),
                        't' => Some('\t'),
                        'r' => Some('\r'),
                        'b' => Some('\u{8}'),
                        'f' => Some('\u{c}'),
                        _ => None,
                    };
                    if let Some(ch) = simple {
                        out.push(ch);
                        continue;
                    }
                    let digits = match e {
                        'u' => 4,
                        'U' => 8,
                        _ => return Err(format!("unknown escape `\\{e}`")),
                    };
                    let hex = self.rest().get(..digits).unwrap_or("");
                    let ch = u32::from_str_radix(hex, 16)
                        .ok()
                        .filter(|_| hex.len() == digits)
                        .and_then(char::from_u32)
                        .ok_or(format!("invalid escape `\\{e}{hex}`"))?;
                    self.pos += digits;
                    out.push(ch);
                }
                c if (c as u32) < 0x20 && c != '\t' => {
                    return Err("control character in a string (use an escape)".into())
                }
                c => out.push(c),
            }
        }
    }
}

/// An integer, float or boolean written as a bare word.
fn scalar(word: &str) -> Result<Value, String> {
    match word {
        "" => return Err("missing value".into()),
        "true" => return Ok(Value::Bool(true)),
        "false" => return Ok(Value::Bool(false)),
        "inf" | "+inf" => return Ok(Value::Float(f64::INFINITY)),
        "-inf" => return Ok(Value::Float(f64::NEG_INFINITY)),
        "nan" | "+nan" | "-nan" => return Ok(Value::Float(f64::NAN)),
        _ => {}
    }
    let digits = word.replace('_', "");
    let is_float = digits.contains(['.', 'e', 'E']);
    let parsed = if is_float {
        digits.parse::<f64>().ok().map(Value::Float)
    } else {
        digits.parse::<i64>().ok().map(Value::Int)
    };
    parsed.ok_or_else(|| format!("invalid value `{word}` (strings need quotes)"))
}

/// The same document written as JSON: top-level scalars are root keys, an object is a table,
/// an array of objects an array of tables. Line numbers are unknown (0).
pub fn from_json(text: &str) -> Result<Document, ParseError> {
    let json: serde_json::Value =
        serde_json::from_str(text).map_err(|e| (e.line(), format!("invalid JSON: {e}")))?;
    let serde_json::Value::Object(top) = json else {
        return Err((1, "expected a JSON object".into()));
    };
    let mut root = Section {
        name: None,
        array: false,
        line: 0,
        entries: Vec::new(),
    };
    let mut tables = Vec::new();
    let entries = |name: &str, obj: &serde_json::Map<String, serde_json::Value>| {
        obj.iter()
            .map(|(k, v)| {
                Ok(Entry {
                    key: k.clone(),
                    value: json_value(v).map_err(|m| (0, format!("{name}.{k}: {m}")))?,
                    line: 0,
                })
            })
            .collect::<Result<Vec<_>, ParseError>>()
    };
    for (key, v) in &top {
        let section = |obj, array| -> Result<Section, ParseError> {
            Ok(Section {
                name: Some(key.clone()),
                array,
                line: 0,
                entries: entries(key, obj)?,
            })
        };
        match v {
            serde_json::Value::Object(obj) => tables.push(section(obj, false)?),
            serde_json::Value::Array(items)
                if !items.is_empty() && items.iter().all(|i| i.is_object()) =>
            {
                for item in items {
                    tables.push(section(item.as_object().expect("checked"), true)?);
                }
            }
            other => root.entries.push(Entry {
                key: key.clone(),
                value: json_value(other).map_err(|m| (0, format!("{key}: {m}")))?,
                line: 0,
            }),
        }
    }
    let mut sections = vec![root];
    sections.extend(tables);
    Ok(Document { sections })
}

fn json_value(v: &serde_json::Value) -> Result<Value, String> {
    Ok(match v {
        serde_json::Value::String(s) => Value::Str(s.clone()),
        serde_json::Value::Bool(b) => Value::Bool(*b),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => Value::Int(i),
            None => Value::Float(n.as_f64().ok_or("number out of range")?),
        },
        serde_json::Value::Array(items) => {
            Value::Array(items.iter().map(json_value).collect::<Result<_, _>>()?)
        }
        serde_json::Value::Null => return Err("null is not a value".into()),
        serde_json::Value::Object(_) => return Err("nested objects are not supported".into()),
    })
}
