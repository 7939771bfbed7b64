//! The rule adapter as written down, before it meets a vocabulary: which rules, their weights
//! and token lists as text. The paper's rules are built in ([`AdapterSpec::paper`]); custom
//! ones load from a rules file ([`AdapterSpec::from_file`]) in the TOML subset of `super::toml`
//! (or the same structure as JSON). [`PAPER_RULES_TOML`] is the paper's adapter in that format:
//!
//! * top-level `user_tag`, `assistant_tag`: the chat tags that mark where the instruction and
//!   the response start (default the paper's Tulu tags `<|user|>`, `<|assistant|>`);
//! * `[eos]` (Rule 1): `weight`, `start`, `end`: EOS scores `weight·(L−start)/(end−start)` while
//!   `start < L < end` tokens of the response exist;
//! * `[[token]]` (Rule 2), one per token: `score` and exactly one of `text` (the text the token
//!   spells; a leading space means the word-start form: " I" is Llama's `▁I`, GPT-2's `ĠI`),
//!   `token` (an exact vocabulary entry) or `id`;
//! * `[diversity]` (Rule 3): `score` added to every distinct token since the user tag.
//!
//! A section that is absent turns its rule off.

use super::toml::{self, Document, Entry, Section, Value};
use crate::bail;
use crate::error::{Context, Error, Result};
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// The paper's three rules, by the names of its ablation (Table 4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    /// Rule 1, "Upweight EOS" / "EOS Rule".
    Eos,
    /// Rule 2, "Uniform Token Changes".
    Uniform,
    /// Rule 3, "Penalize Used Words" / "Diversity Rule".
    Diversity,
}

impl Rule {
    pub const ALL: [Rule; 3] = [Rule::Eos, Rule::Uniform, Rule::Diversity];
    pub fn name(self) -> &'static str {
        match self {
            Rule::Eos => "eos",
            Rule::Uniform => "uniform",
            Rule::Diversity => "diversity",
        }
    }
}

/// Which rules are on (the paper's ablations turn one off at a time).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RuleSet {
    pub eos: bool,
    pub uniform: bool,
    pub diversity: bool,
}

impl RuleSet {
    pub fn all() -> RuleSet {
        RuleSet {
            eos: true,
            uniform: true,
            diversity: true,
        }
    }
    pub fn contains(&self, rule: Rule) -> bool {
        match rule {
            Rule::Eos => self.eos,
            Rule::Uniform => self.uniform,
            Rule::Diversity => self.diversity,
        }
    }
    /// "eos,uniform,diversity" (the rules that are on, comma-separated).
    pub fn names(&self) -> String {
        let on: Vec<&str> = Rule::ALL
            .iter()
            .filter(|r| self.contains(**r))
            .map(|r| r.name())
            .collect();
        on.join(",")
    }
}

impl FromStr for RuleSet {
    type Err = Error;
    /// A comma-separated subset of `eos`, `uniform`, `diversity` (or `all`).
    fn from_str(list: &str) -> Result<RuleSet> {
        let mut set = RuleSet {
            eos: false,
            uniform: false,
            diversity: false,
        };
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            match name {
                "eos" => set.eos = true,
                "uniform" => set.uniform = true,
                "diversity" => set.diversity = true,
                "all" => set = RuleSet::all(),
                other => bail!(
                    "unknown rule {other:?} (the rules are eos, uniform and diversity, or all)"
                ),
            }
        }
        if set.names().is_empty() {
            bail!("no rule named (choose among eos, uniform, diversity)");
        }
        Ok(set)
    }
}

/// Rule 1: EOS scores `weight·(L−start)/(end−start)` for `start < L < end`, where L is the
/// number of tokens after the assistant tag, and is left alone otherwise.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EosSchedule {
    pub weight: f32,
    pub start: usize,
    pub end: usize,
}

impl EosSchedule {
    /// The paper's: `eos_range = (0, 250)`, `score * 15` (Listing 1).
    pub fn paper() -> EosSchedule {
        EosSchedule {
            weight: 15.0,
            start: 0,
            end: 250,
        }
    }
    /// EOS's score with `len` response tokens so far, or None outside the window. The bounds are
    /// strict, as the paper's `eos_range[0] < prefix_len < eos_range[1]`: nothing for the first
    /// token (L = 0) nor from L = 250 on.
    pub fn score(&self, len: usize) -> Option<f32> {
        (self.start < len && len < self.end).then(|| {
            let frac = (len - self.start) as f64 / (self.end - self.start) as f64;
            (self.weight as f64 * frac.max(0.0)) as f32
        })
    }
}

/// How a rule names a token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenRef {
    /// The text the token spells, resolved per vocabulary (" I" -> `▁I` or `ĠI`).
    Text(String),
    /// An exact vocabulary entry (e.g. `▁I`).
    Vocab(String),
    Id(u32),
}

impl std::fmt::Display for TokenRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenRef::Text(t) => write!(f, "text {t:?}"),
            TokenRef::Vocab(t) => write!(f, "token {t:?}"),
            TokenRef::Id(id) => write!(f, "id {id}"),
        }
    }
}

/// Rule 2: one token's fixed score.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenBias {
    pub token: TokenRef,
    pub score: f32,
    /// Where it is written (rules files), for error messages.
    pub line: Option<usize>,
}

/// A rule adapter as written: rules absent are None/empty.
#[derive(Clone, Debug, PartialEq)]
pub struct AdapterSpec {
    /// The rules file, or None for the built-in paper rules.
    pub source: Option<PathBuf>,
    pub user_tag: String,
    pub assistant_tag: String,
    pub eos: Option<EosSchedule>,
    pub uniform: Vec<TokenBias>,
    /// Rule 3's score for every distinct token since the user tag.
    pub diversity: Option<f32>,
}

/// Rule 2 of the paper as text: the 15 tokens of Listing 1 / Table 8, in order. Llama-2 ids:
/// 29966 `<`, 529 `▁<`, 29989 `|`, 306 `▁I`, 29902 `I`, 1334 `▁We`, 5618 `What`, 881 `▁should`,
/// 334 `▁*`, 448 `▁-`, 1678 `▁▁▁`, 396 `▁#`, 444 `▁##`, 13 `\n`, 29991 `!`.
const PAPER_UNIFORM: [(&str, f32); 15] = [
    ("<", -4.0),
    (" <", -4.0),
    ("|", -4.0),
    (" I", -5.0),
    ("I", -5.0),
    (" We", -3.0),
    // Listing 1 and the repository's code give -5 (Table 8 prints -3).
    ("What", -5.0),
    (" should", -6.0),
    (" *", 1.0),
    (" -", 1.0),
    ("   ", 1.0),
    (" #", 1.0),
    (" ##", 1.0),
    ("\n", 1.0),
    ("!", 1.0),
];

/// The paper's adapter as a rules file (a starting point for custom rules).
pub const PAPER_RULES_TOML: &str = r#"# The rule-based adapter of Hewitt et al. (2024), Appendix E, Listing 1.
user_tag = "<|user|>"
assistant_tag = "<|assistant|>"

[eos]            # Rule 1: EOS gets 15 * L / 250 for 0 < L < 250 response tokens
weight = 15.0
start = 0
end = 250

[diversity]      # Rule 3: every distinct token since the user tag
score = -1.5

# Rule 2: uniform token changes
[[token]]
text = "<"
score = -4
[[token]]
text = " <"
score = -4
[[token]]
text = "|"
score = -4
[[token]]
text = " I"
score = -5
[[token]]
text = "I"
score = -5
[[token]]
text = " We"
score = -3
[[token]]
text = "What"
score = -5
[[token]]
text = " should"
score = -6
[[token]]
text = " *"
score = 1
[[token]]
text = " -"
score = 1
[[token]]
text = "   "
score = 1
[[token]]
text = " #"
score = 1
[[token]]
text = " ##"
score = 1
[[token]]
text = "\n"
score = 1
[[token]]
text = "!"
score = 1
"#;

impl AdapterSpec {
    /// The paper's three rules (Appendix E, Listing 1; weights of Table 8).
    pub fn paper() -> AdapterSpec {
        AdapterSpec {
            source: None,
            user_tag: "<|user|>".into(),
            assistant_tag: "<|assistant|>".into(),
            eos: Some(EosSchedule::paper()),
            uniform: PAPER_UNIFORM
                .iter()
                .map(|&(text, score)| TokenBias {
                    token: TokenRef::Text(text.into()),
                    score,
                    line: None,
                })
                .collect(),
            diversity: Some(-1.5),
        }
    }

    /// `rules` for the paper's adapter, otherwise a rules file (.json: JSON, else TOML).
    pub fn load(name: &str) -> Result<AdapterSpec> {
        if name == "rules" || name == "paper" {
            Ok(AdapterSpec::paper())
        } else {
            AdapterSpec::from_file(Path::new(name))
        }
    }

    pub fn from_file(path: &Path) -> Result<AdapterSpec> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read rules file", path.display()))?;
        let json = path.extension().is_some_and(|e| e == "json");
        AdapterSpec::parse(&text, path, json)
    }

    /// Parses a rules file's text; errors name `path` and the line.
    pub fn parse(text: &str, path: &Path, json: bool) -> Result<AdapterSpec> {
        let at = |line: usize| match line {
            0 => path.display().to_string(),
            n => format!("{}:{n}", path.display()),
        };
        let doc = if json {
            toml::from_json(text)
        } else {
            toml::parse(text)
        };
        let doc: Document = doc.map_err(|(line, m)| Error(format!("{}: {m}", at(line))))?;
        let fail = |line: usize, m: String| Error(format!("{}: {m}", at(line)));
        let mut spec = AdapterSpec {
            source: Some(path.to_path_buf()),
            eos: None,
            uniform: Vec::new(),
            diversity: None,
            ..AdapterSpec::paper()
        };
        for section in &doc.sections {
            match section.name.as_deref() {
                None => {
                    let keys = Keys::new(section, &["user_tag", "assistant_tag"], &fail)?;
                    if let Some(e) = keys.get("user_tag") {
                        spec.user_tag = string(e, &fail)?;
                    }
                    if let Some(e) = keys.get("assistant_tag") {
                        spec.assistant_tag = string(e, &fail)?;
                    }
                }
                Some("eos") => {
                    let keys = Keys::new(section, &["weight", "start", "end"], &fail)?;
                    let paper = EosSchedule::paper();
                    let eos = EosSchedule {
                        weight: keys.number("weight", &fail)?.unwrap_or(paper.weight),
                        start: keys.count("start", &fail)?.unwrap_or(paper.start),
                        end: keys.count("end", &fail)?.unwrap_or(paper.end),
                    };
                    if eos.start >= eos.end {
                        return Err(fail(section.line, "[eos]: start must be below end".into()));
                    }
                    spec.eos = Some(eos);
                }
                Some("diversity") => {
                    let keys = Keys::new(section, &["score"], &fail)?;
                    spec.diversity = Some(keys.required_number("score", &fail)?);
                }
                Some("token") if section.array => {
                    let keys = Keys::new(section, &["text", "token", "id", "score"], &fail)?;
                    let refs: Vec<TokenRef> = [
                        keys.get("text")
                            .map(|e| string(e, &fail).map(TokenRef::Text)),
                        keys.get("token")
                            .map(|e| string(e, &fail).map(TokenRef::Vocab)),
                        keys.count("id", &fail)?
                            .map(|id| Ok(TokenRef::Id(id as u32))),
                    ]
                    .into_iter()
                    .flatten()
                    .collect::<Result<_>>()?;
                    let [token] = <[TokenRef; 1]>::try_from(refs).map_err(|_| {
                        fail(
                            section.line,
                            "[[token]] needs exactly one of text, token or id".into(),
                        )
                    })?;
                    spec.uniform.push(TokenBias {
                        token,
                        score: keys.required_number("score", &fail)?,
                        line: Some(section.line),
                    });
                }
                Some(other) => {
                    let header = if section.array {
                        format!("[[{other}]]")
                    } else {
                        format!("[{other}]")
                    };
                    return Err(fail(
                        section.line,
                        format!(
                            "unknown section {header} (expected [eos], [diversity], [[token]])"
                        ),
                    ));
                }
            }
        }
        if spec.eos.is_none() && spec.uniform.is_empty() && spec.diversity.is_none() {
            bail!(
                "{}: no rules ([eos], [[token]] or [diversity])",
                path.display()
            );
        }
        Ok(spec)
    }

    /// Which of the rules this spec defines.
    pub fn defined(&self) -> RuleSet {
        RuleSet {
            eos: self.eos.is_some(),
            uniform: !self.uniform.is_empty(),
            diversity: self.diversity.is_some(),
        }
    }
}

/// A section's entries, checked against the keys it may have.
struct Keys<'a> {
    section: &'a Section,
}

type Fail<'a> = &'a dyn Fn(usize, String) -> Error;

impl<'a> Keys<'a> {
    fn new(section: &'a Section, allowed: &[&str], fail: Fail) -> Result<Keys<'a>> {
        for e in &section.entries {
            if !allowed.contains(&e.key.as_str()) {
                let name = section.name.as_deref().unwrap_or("the top level");
                return Err(fail(
                    e.line,
                    format!(
                        "unknown key `{}` in {name} (expected {})",
                        e.key,
                        allowed.join(", ")
                    ),
                ));
            }
        }
        Ok(Keys { section })
    }
    fn get(&self, key: &str) -> Option<&'a Entry> {
        self.section.entries.iter().find(|e| e.key == key)
    }
    fn number(&self, key: &str, fail: Fail) -> Result<Option<f32>> {
        let Some(e) = self.get(key) else {
            return Ok(None);
        };
        match e.value {
            Value::Int(i) => Ok(Some(i as f32)),
            Value::Float(f) if f.is_finite() => Ok(Some(f as f32)),
            ref v => Err(fail(
                e.line,
                format!("`{key}` must be a finite number, not {}", v.type_name()),
            )),
        }
    }
    fn required_number(&self, key: &str, fail: Fail) -> Result<f32> {
        self.number(key, fail)?.ok_or_else(|| {
            let name = self.section.name.as_deref().unwrap_or("");
            fail(self.section.line, format!("[{name}] needs `{key}`"))
        })
    }
    fn count(&self, key: &str, fail: Fail) -> Result<Option<usize>> {
        let Some(e) = self.get(key) else {
            return Ok(None);
        };
        match e.value {
            Value::Int(i) if (0..=u32::MAX as i64).contains(&i) => Ok(Some(i as usize)),
            ref v => Err(fail(
                e.line,
                format!(
                    "`{key}` must be a non-negative integer, not {}",
                    describe(v)
                ),
            )),
        }
    }
}

fn describe(v: &Value) -> String {
    match v {
        Value::Int(i) => format!("{i}"),
        other => other.type_name().to_string(),
    }
}

fn string(e: &Entry, fail: Fail) -> Result<String> {
    match &e.value {
        Value::Str(s) if !s.is_empty() => Ok(s.clone()),
        Value::Str(_) => Err(fail(e.line, format!("`{}` must not be empty", e.key))),
        v => Err(fail(
            e.line,
            format!("`{}` must be a string, not {}", e.key, v.type_name()),
        )),
    }
}
