//! A small RFC 4180 CSV reader: comma-separated fields, `"`-quoted fields that may hold commas,
//! newlines and doubled quotes (`""`), LF or CRLF record ends. Enough for the poetry file
//! without pulling in a crate.

use crate::bail;
use crate::error::Result;
use std::path::Path;

/// One record with the (1-based) line it starts on, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsvRecord {
    pub line: usize,
    pub fields: Vec<String>,
}

/// All records of `text` (header included); `path` only names the file in errors.
pub fn parse_csv(text: &str, path: &Path) -> Result<Vec<CsvRecord>> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut records = Vec::new();
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut line = 1;
    let mut record_line = 1;
    // Whether the current field started with a quote, and whether we are inside the quotes.
    let mut quoted = false;
    let mut in_quotes = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if in_quotes {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                '"' => in_quotes = false,
                '\n' => {
                    line += 1;
                    field.push(c);
                }
                _ => field.push(c),
            }
            continue;
        }
        match c {
            '"' if field.is_empty() && !quoted => {
                quoted = true;
                in_quotes = true;
            }
            '"' => bail!("{} line {line}: stray quote in a field", path.display()),
            ',' => {
                fields.push(std::mem::take(&mut field));
                quoted = false;
            }
            '\r' if chars.peek() == Some(&'\n') => {}
            '\n' => {
                fields.push(std::mem::take(&mut field));
                records.push(CsvRecord {
                    line: record_line,
                    fields: std::mem::take(&mut fields),
                });
                quoted = false;
                line += 1;
                record_line = line;
            }
            _ if quoted => {
                bail!(
                    "{} line {line}: text after the closing quote of a field",
                    path.display()
                )
            }
            _ => field.push(c),
        }
    }
    if in_quotes {
        bail!(
            "{} line {record_line}: quoted field never closed",
            path.display()
        );
    }
    // A last record without a final newline.
    if !field.is_empty() || !fields.is_empty() || quoted {
        fields.push(field);
        records.push(CsvRecord {
            line: record_line,
            fields,
        });
    }
    Ok(records)
}

/// A CSV file read as a header plus rows, every row checked to have the header's width.
pub struct CsvTable {
    pub header: Vec<String>,
    pub rows: Vec<CsvRecord>,
}

impl CsvTable {
    pub fn read(path: &Path) -> Result<CsvTable> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| crate::Error(format!("{}: cannot read: {e}", path.display())))?;
        let mut records = parse_csv(&text, path)?.into_iter();
        let Some(header) = records.next() else {
            bail!("{}: empty CSV file", path.display())
        };
        let rows: Vec<CsvRecord> = records.collect();
        for r in &rows {
            if r.fields.len() != header.fields.len() {
                bail!(
                    "{} line {}: {} fields, the header has {}",
                    path.display(),
                    r.line,
                    r.fields.len(),
                    header.fields.len()
                );
            }
        }
        Ok(CsvTable {
            header: header.fields,
            rows,
        })
    }

    /// Index of column `name`, or an error naming the file.
    pub fn column(&self, name: &str, path: &Path) -> Result<usize> {
        match self.header.iter().position(|h| h == name) {
            Some(i) => Ok(i),
            None => bail!("{} line 1: no column {name} in the header", path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Vec<Vec<String>> {
        parse_csv(s, Path::new("t.csv"))
            .unwrap()
            .into_iter()
            .map(|r| r.fields)
            .collect()
    }

    #[test]
    fn quoted_fields_hold_commas_newlines_and_quotes() {
        let got = parse("a,b\r\n\"x, \"\"y\"\"\nz\",2\n,\"\"\n");
        assert_eq!(
            got,
            vec![vec!["a", "b"], vec!["x, \"y\"\nz", "2"], vec!["", ""]]
        );
        assert_eq!(parse("a,b"), vec![vec!["a", "b"]]);
    }

    #[test]
    fn records_know_their_lines_and_errors_name_them() {
        let recs = parse_csv("h\n\"1\n2\"\n3\n", Path::new("t.csv")).unwrap();
        assert_eq!(
            recs.iter().map(|r| r.line).collect::<Vec<_>>(),
            vec![1, 2, 4]
        );
        let err = parse_csv("h\n1\n\"open\n", Path::new("t.csv")).unwrap_err();
        assert_eq!(err.to_string(), "t.csv line 3: quoted field never closed");
        let err = parse_csv("h\n\"a\"b\n", Path::new("t.csv")).unwrap_err();
        assert!(err.to_string().starts_with("t.csv line 2:"), "{err}");
    }
}
