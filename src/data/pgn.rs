//! A small PGN reader: per game, its tag pairs (with their raw lines, which the paper's chess
//! set copies verbatim) and its movetext, with line numbers for error messages.

use crate::bail;
use crate::error::Result;
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgnTag {
    pub name: String,
    pub value: String,
    /// The tag's line as written, e.g. `[WhiteElo "2436"]`.
    pub raw: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgnGame {
    pub tags: Vec<PgnTag>,
    /// Movetext as written (result included); lines of a wrapped movetext are joined by a space.
    pub movetext: String,
    /// 1-based line of the game's first tag (or of its movetext when it has no tags).
    pub line: usize,
    /// 1-based line where the movetext starts.
    pub movetext_line: usize,
}

impl PgnGame {
    pub fn tag(&self, name: &str) -> Option<&PgnTag> {
        self.tags.iter().find(|t| t.name == name)
    }
}

/// Every game of `text`; `path` only names the file in errors.
pub fn parse_pgn(text: &str, path: &Path) -> Result<Vec<PgnGame>> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut games = Vec::new();
    let mut cur: Option<PgnGame> = None;
    for (i, raw_line) in text.lines().enumerate() {
        let n = i + 1;
        let line = raw_line.trim();
        // `%` lines are PGN escapes, ignored by readers.
        if line.is_empty() || raw_line.starts_with('%') {
            continue;
        }
        if line.starts_with('[') {
            // A tag after movetext starts the next game.
            if cur.as_ref().is_some_and(|g| !g.movetext.is_empty()) {
                games.extend(cur.take());
            }
            let game = cur.get_or_insert_with(|| PgnGame {
                tags: Vec::new(),
                movetext: String::new(),
                line: n,
                movetext_line: 0,
            });
            let (name, value) = parse_tag(line).ok_or_else(|| {
                crate::Error(format!(
                    "{} line {n}: malformed tag pair {line:?}",
                    path.display()
                ))
            })?;
            game.tags.push(PgnTag {
                name,
                value,
                raw: raw_line.to_string(),
            });
        } else {
            let game = cur.get_or_insert_with(|| PgnGame {
                tags: Vec::new(),
                movetext: String::new(),
                line: n,
                movetext_line: n,
            });
            if game.movetext.is_empty() {
                game.movetext_line = n;
                game.movetext.push_str(raw_line);
            } else {
                game.movetext.push(' ');
                game.movetext.push_str(raw_line);
            }
        }
    }
    if let Some(g) = cur {
        if g.movetext.is_empty() {
            bail!(
                "{} line {}: game has tags but no movetext",
                path.display(),
                g.line
            );
        }
        games.push(g);
    }
    Ok(games)
}

/// `[Name "Value"]` with `\"` and `\\` escapes in the value.
fn parse_tag(line: &str) -> Option<(String, String)> {
    let inner = line.strip_prefix('[')?.strip_suffix(']')?.trim();
    let (name, rest) = inner.split_once(char::is_whitespace)?;
    let quoted = rest.trim().strip_prefix('"')?.strip_suffix('"')?;
    let mut value = String::new();
    let mut chars = quoted.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => value.push(chars.next()?),
            '"' => return None,
            _ => value.push(c),
        }
    }
    let name_ok = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    name_ok.then(|| (name.to_string(), value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_tags_and_movetext() {
        let text = "[Event \"x\"]\n[WhiteElo \"1500\"]\n\n1. e4 e5\n2. Nf3 1-0\n\n[Event \"y\"]\n\n1. d4 *\n";
        let games = parse_pgn(text, Path::new("g.pgn")).unwrap();
        assert_eq!(games.len(), 2);
        assert_eq!(games[0].tag("WhiteElo").unwrap().value, "1500");
        assert_eq!(games[0].tag("WhiteElo").unwrap().raw, "[WhiteElo \"1500\"]");
        assert_eq!(games[0].movetext, "1. e4 e5 2. Nf3 1-0");
        assert_eq!((games[0].line, games[0].movetext_line), (1, 4));
        assert_eq!((games[1].line, games[1].movetext_line), (7, 9));
    }

    #[test]
    fn errors_name_the_line() {
        let err = parse_pgn("[Event \"x\"]\n[Bad x]\n", Path::new("g.pgn")).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("g.pgn line 2: malformed tag pair"),
            "{err}"
        );
        let err = parse_pgn("[Event \"x\"]\n", Path::new("g.pgn")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "g.pgn line 1: game has tags but no movetext"
        );
    }
}
