//! CSV files (the poetry source, `--difficulty` tables) read with the `csv` crate: RFC 4180
//! quoting (fields may hold commas, newlines and doubled quotes), LF or CRLF record ends, a
//! UTF-8 BOM skipped, blank lines skipped (as pandas does). Each row keeps the line it starts
//! on, so errors name the file and line.
//!
//! The crate reads an unbalanced quote leniently (an unclosed quoted field swallows the rest of
//! the file); that would turn a damaged file into silently wrong rows, so a record holding an
//! odd number of quotes is an error here.

use crate::bail;
use crate::error::Result;
use std::path::Path;

/// One record with the (1-based) line it starts on, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsvRecord {
    pub line: usize,
    pub fields: Vec<String>,
}

/// A CSV file read as a header plus rows, every row checked to have the header's width.
#[derive(Debug)]
pub struct CsvTable {
    pub header: Vec<String>,
    pub rows: Vec<CsvRecord>,
}

impl CsvTable {
    pub fn read(path: &Path) -> Result<CsvTable> {
        let bytes = std::fs::read(path)
            .map_err(|e| crate::Error(format!("{}: cannot read: {e}", path.display())))?;
        CsvTable::parse(&bytes, path)
    }

    /// The table in `bytes`; `path` only names the file in errors.
    pub fn parse(bytes: &[u8], path: &Path) -> Result<CsvTable> {
        // No header handling in the reader: the header is record 1, and the crate's width check
        // (not `flexible`) compares every later record with it.
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .from_reader(bytes);
        let mut records = Vec::new();
        let mut record = csv::StringRecord::new();
        // Lines counted here: the crate's record positions are where its read began, before
        // the line ends (CRLF, blank lines) it skips, so they can be a line early.
        let (mut counted, mut line) = (0, 1);
        loop {
            let start = reader.position().byte() as usize;
            match reader.read_record(&mut record) {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => return Err(csv_error(&e, bytes, path)),
            }
            let end = reader.position().byte() as usize;
            let first = first_after_line_ends(bytes, start).min(end);
            line += newlines(bytes, counted, first);
            counted = first;
            let raw = bytes.get(first..end).unwrap_or_default();
            check_quotes(raw, &record, end == bytes.len(), path, line)?;
            records.push(CsvRecord {
                line,
                fields: record.iter().map(str::to_string).collect(),
            });
        }
        let mut records = records.into_iter();
        let Some(header) = records.next() else {
            bail!("{}: empty CSV file", path.display())
        };
        Ok(CsvTable {
            header: header.fields,
            rows: records.collect(),
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

/// Balanced quotes come in pairs (open and close, or a doubled `""`); an odd count in a record
/// is a quoted field left open, which the reader ran to the end of the file, or a stray quote.
fn check_quotes(
    raw: &[u8],
    record: &csv::StringRecord,
    at_end: bool,
    path: &Path,
    line: usize,
) -> Result<()> {
    if raw.iter().filter(|&&b| b == b'"').count() % 2 == 0 {
        return Ok(());
    }
    // An open quoted field ends the file: the record's text ends with `"` and the field's
    // value, its quotes doubled.
    let last = record.iter().next_back().unwrap_or_default();
    let open_field = format!("\"{}", last.replace('"', "\"\""));
    if at_end && raw.ends_with(open_field.as_bytes()) {
        bail!("{} line {line}: quoted field never closed", path.display());
    }
    bail!("{} line {line}: stray quote in a field", path.display())
}

/// The first byte at or after `at` that is not part of a line end.
fn first_after_line_ends(bytes: &[u8], at: usize) -> usize {
    let rest = bytes.get(at..).unwrap_or_default();
    at + rest
        .iter()
        .take_while(|&&b| b == b'\r' || b == b'\n')
        .count()
}

/// How many `\n` there are in `bytes[from..to]`.
fn newlines(bytes: &[u8], from: usize, to: usize) -> usize {
    let span = bytes.get(from..to).unwrap_or_default();
    span.iter().filter(|&&b| b == b'\n').count()
}

/// The crate's error as `file line N: what`.
fn csv_error(e: &csv::Error, bytes: &[u8], path: &Path) -> crate::Error {
    let line = e.position().map_or(0, |p| {
        let first = first_after_line_ends(bytes, p.byte() as usize);
        1 + newlines(bytes, 0, first)
    });
    let what = match e.kind() {
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => format!("{len} fields, the header has {expected_len}"),
        csv::ErrorKind::Utf8 { err, .. } => format!("not UTF-8 (field {})", err.field() + 1),
        csv::ErrorKind::Io(err) => format!("cannot read: {err}"),
        _ => e.to_string(),
    };
    crate::Error(format!("{} line {line}: {what}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<CsvTable> {
        CsvTable::parse(s.as_bytes(), Path::new("t.csv"))
    }

    fn rows(t: &CsvTable) -> Vec<(usize, Vec<&str>)> {
        t.rows
            .iter()
            .map(|r| (r.line, r.fields.iter().map(String::as_str).collect()))
            .collect()
    }

    #[test]
    fn quoted_fields_hold_commas_newlines_and_quotes() {
        let t = parse("\u{feff}a,b\r\n\"x, \"\"y\"\"\nz\",2\n,\"\"\n\n\"3\",4").unwrap();
        assert_eq!(t.header, ["a", "b"], "BOM skipped");
        assert_eq!(
            rows(&t),
            [
                (2, vec!["x, \"y\"\nz", "2"]),
                (4, vec!["", ""]),
                (6, vec!["3", "4"])
            ],
            "lines count the newlines inside quotes; the blank line 5 is skipped"
        );
        let t = parse("a,b").unwrap();
        assert!(t.header == ["a", "b"] && t.rows.is_empty());
    }

    #[test]
    fn errors_name_file_and_line() {
        let err = |s: &str| parse(s).unwrap_err().to_string();
        assert_eq!(
            err("h\n1\n\"open\n2\n"),
            "t.csv line 3: quoted field never closed"
        );
        assert_eq!(
            err("h,i\n1,\"open"),
            "t.csv line 2: quoted field never closed"
        );
        assert_eq!(err("h\na\"b\nc\n"), "t.csv line 2: stray quote in a field");
        assert_eq!(err("h\nc\na\"b\n"), "t.csv line 3: stray quote in a field");
        assert_eq!(
            err("a,b\n1,2\n3\n"),
            "t.csv line 3: 1 fields, the header has 2"
        );
        assert_eq!(
            err("a,b\r\n1,2\r\n\r\n3\r\n"),
            "t.csv line 4: 1 fields, the header has 2"
        );
        assert_eq!(err(""), "t.csv: empty CSV file");
        let bad_utf8 = CsvTable::parse(b"h\n\xff\n", Path::new("t.csv")).unwrap_err();
        assert!(
            bad_utf8.to_string().starts_with("t.csv line 2: not UTF-8"),
            "{bad_utf8}"
        );
        let t = parse("x\n1\n").unwrap();
        assert_eq!(
            t.column("y", Path::new("t.csv")).unwrap_err().to_string(),
            "t.csv line 1: no column y in the header"
        );
    }
}
