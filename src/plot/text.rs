//! Fitting text into pixel widths with the bitmap font's metrics: truncation with "...", and
//! word wrap that breaks at spaces, then after hyphens, slashes and underscores, and cuts words
//! only as a last resort.

use super::font;

pub fn tw(text: &str, scale: u32) -> f64 {
    font::text_width(text, scale) as f64
}

/// Most characters that fit in `width` pixels at `scale`.
pub fn max_chars(width: f64, scale: u32) -> usize {
    let n = ((width / scale as f64 + 1.0) / font::ADVANCE as f64).floor();
    if n > 0.0 {
        n as usize
    } else {
        0
    }
}

/// `text` cut to `max` characters, ending in "..." when cut.
pub fn ellipsize(text: &str, max: usize) -> String {
    let chars: Vec<char> = text.chars().collect();
    if chars.len() <= max {
        return text.to_string();
    }
    if max < 4 {
        return chars[..max].iter().collect();
    }
    let kept: String = chars[..max - 3].iter().collect();
    format!("{}...", kept.trim_end())
}

/// The largest of `scales` at which `text` fits in `width`; the smallest, truncated, if none.
pub fn fit_line(text: &str, width: f64, scales: &[u32]) -> (String, u32) {
    for &s in scales {
        if tw(text, s) <= width {
            return (text.to_string(), s);
        }
    }
    let s = scales.last().copied().unwrap_or(1);
    (ellipsize(text, max_chars(width, s)), s)
}

/// Splits a word longer than `max` after hyphens, slashes and underscores; pieces still too
/// long are cut hard when `hard`, and make the wrap fail otherwise.
pub fn split_long(word: &str, max: usize, hard: bool) -> Option<Vec<String>> {
    if word.chars().count() <= max {
        return Some(vec![word.to_string()]);
    }
    let mut parts = vec![String::new()];
    for ch in word.chars() {
        parts.last_mut().unwrap().push(ch);
        if matches!(ch, '-' | '/' | '_') {
            parts.push(String::new());
        }
    }
    let mut out = Vec::new();
    for p in parts.iter().filter(|p| !p.is_empty()) {
        let chars: Vec<char> = p.chars().collect();
        if chars.len() > max && !hard {
            return None;
        }
        out.extend(
            chars
                .chunks(max.max(1))
                .map(|c| c.iter().collect::<String>()),
        );
    }
    Some(out)
}

/// Greedy word wrap to lines of at most `max` characters; `None` past `max_lines` lines, or
/// when a word would need cutting mid-way and `hard` is false.
pub fn wrap(text: &str, max: usize, max_lines: usize, hard: bool) -> Option<Vec<String>> {
    let mut lines = Vec::new();
    let (mut cur, mut n) = (String::new(), 0);
    for word in text.split_whitespace() {
        for (k, piece) in split_long(word, max, hard)?.into_iter().enumerate() {
            let len = piece.chars().count();
            let mut sep = usize::from(n > 0 && k == 0);
            if n > 0 && n + sep + len > max {
                lines.push(std::mem::take(&mut cur));
                (n, sep) = (0, 0);
            }
            if sep == 1 {
                cur.push(' ');
            }
            cur.push_str(&piece);
            n += sep + len;
        }
    }
    if n > 0 {
        lines.push(cur);
    }
    (lines.len() <= max_lines).then_some(lines)
}

/// Wraps every label into `width` pixels in at most `max_lines` lines: between words
/// at the largest of `scales` where all fit, else also cutting words; failing that, at the
/// smallest scale with the last line truncated.
pub fn fit_labels(
    labels: &[&str],
    width: f64,
    scales: &[u32],
    max_lines: usize,
) -> (u32, Vec<Vec<String>>) {
    for hard in [false, true] {
        for &s in scales {
            let m = max_chars(width, s);
            if m < 3 {
                continue;
            }
            let all: Option<Vec<_>> = labels.iter().map(|l| wrap(l, m, max_lines, hard)).collect();
            if let Some(all) = all {
                return (s, all);
            }
        }
    }
    let s = scales.last().copied().unwrap_or(1);
    let m = max_chars(width, s);
    let all = labels
        .iter()
        .map(|l| {
            if m == 0 {
                return Vec::new();
            }
            let mut lines = wrap(l, m, usize::MAX, true).unwrap_or_default();
            if lines.len() > max_lines {
                lines.truncate(max_lines);
                let last = &lines[max_lines - 1];
                lines[max_lines - 1] = if last.chars().count() + 3 <= m {
                    format!("{last}...")
                } else {
                    ellipsize(&format!("{last}...."), m)
                };
            }
            lines
        })
        .collect();
    (s, all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrapping_and_fitting() {
        assert_eq!(
            wrap("response tuning", 10, 3, false).unwrap(),
            ["response", "tuning"]
        );
        assert_eq!(wrap("Llama-2-7B", 7, 3, false).unwrap(), ["Llama-", "2-7B"]);
        assert_eq!(
            wrap("OLMo-7B-0724 base", 20, 3, false).unwrap(),
            ["OLMo-7B-0724 base"]
        );
        assert_eq!(wrap("abcdefghij", 4, 3, false), None);
        assert_eq!(
            wrap("abcdefghij", 4, 3, true).unwrap(),
            ["abcd", "efgh", "ij"]
        );
        assert_eq!(wrap("a b c d e", 1, 3, true), None);
        assert_eq!(wrap("", 5, 3, false).unwrap(), Vec::<String>::new());
        assert_eq!(ellipsize("parity line", 8), "parit...");
        assert_eq!(ellipsize("ab", 8), "ab");
        assert_eq!(max_chars(11.0, 1), 2);
        assert_eq!(max_chars(10.0, 1), 1);
        // Two lines at full size rather than one at half size.
        let (s, lines) = fit_labels(&["Llama-2-7B", "OLMo-7B"], 80.0, &[2, 1], 3);
        assert_eq!(
            (s, &lines[0]),
            (2, &vec!["Llama-".to_string(), "2-7B".into()])
        );
        assert_eq!(lines[1], ["OLMo-", "7B"]);
        // Half size rather than a word cut in the middle.
        let (s, lines) = fit_labels(&["Llama-2-7B"], 60.0, &[2, 1], 3);
        assert_eq!((s, &lines[0]), (1, &vec!["Llama-2-7B".to_string()]));
        let long = "a very long model name that cannot possibly fit in a narrow column";
        let (s, lines) = fit_labels(&[long], 60.0, &[2, 1], 3);
        assert_eq!(s, 1);
        assert_eq!(lines[0], ["a very", "long model", "name th..."]);
        assert!(lines[0].iter().all(|l| tw(l, 1) <= 60.0));
    }
}
