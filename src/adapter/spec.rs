//! The rule adapter as written down, before it meets a vocabulary: which rules, their weights
//! and token lists as text. The paper's rules are built in ([`AdapterSpec::paper`]); custom
//! ones load from a rules file ([`AdapterSpec::from_file`]) in TOML (or the same structure as
//! JSON). [`PAPER_RULES_TOML`] is the paper's adapter in that format:
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
//! A table that is absent turns its rule off. Unknown keys, wrong types and a key given twice
//! are errors naming the line.

use crate::bail;
use crate::error::{Context, Error, Result};
use crate::toml_file::{self, line_of, Fault, Spanned};
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use std::fmt;
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
        let at = |line: usize, m: String| match line {
            0 => Error(format!("{}: {m}", path.display())),
            n => Error(format!("{}:{n}: {m}", path.display())),
        };
        // JSON is read as the TOML it stands for; its lines are then unknown (0).
        let converted;
        let (text, lines) = if json {
            converted = json_as_toml(text).map_err(|(line, m)| at(line, m))?;
            (converted.as_str(), false)
        } else {
            (text, true)
        };
        let line = |span: std::ops::Range<usize>| if lines { line_of(text, span.start) } else { 0 };
        let file: RulesFile =
            toml_file::from_str(text).map_err(|(n, m)| at(if lines { n } else { 0 }, m))?;
        let non_empty = |s: Option<Spanned<String>>, key: &str| -> Result<Option<String>> {
            match s {
                Some(s) if s.get_ref().is_empty() => {
                    Err(at(line(s.span()), format!("`{key}` must not be empty")))
                }
                s => Ok(s.map(Spanned::into_inner)),
            }
        };
        let paper = AdapterSpec::paper();
        let eos = match file.eos {
            Some(table) => {
                let (span, t) = (table.span(), table.into_inner());
                let paper_eos = EosSchedule::paper();
                let eos = EosSchedule {
                    weight: t.weight.map_or(paper_eos.weight, |w| w.0),
                    start: t.start.unwrap_or(paper_eos.start),
                    end: t.end.unwrap_or(paper_eos.end),
                };
                if eos.start >= eos.end {
                    return Err(at(line(span), "[eos]: start must be below end".into()));
                }
                Some(eos)
            }
            None => None,
        };
        let mut uniform = Vec::new();
        for table in file.token {
            let (span, t) = (table.span(), table.into_inner());
            let refs: Vec<TokenRef> = [
                non_empty(t.text, "text")?.map(TokenRef::Text),
                non_empty(t.token, "token")?.map(TokenRef::Vocab),
                t.id.map(TokenRef::Id),
            ]
            .into_iter()
            .flatten()
            .collect();
            let [token] = <[TokenRef; 1]>::try_from(refs).map_err(|_| {
                at(
                    line(span.clone()),
                    "[[token]] needs exactly one of text, token or id".into(),
                )
            })?;
            uniform.push(TokenBias {
                token,
                score: t.score.0,
                line: lines.then(|| line(span)),
            });
        }
        let spec = AdapterSpec {
            source: Some(path.to_path_buf()),
            user_tag: non_empty(file.user_tag, "user_tag")?.unwrap_or(paper.user_tag),
            assistant_tag: non_empty(file.assistant_tag, "assistant_tag")?
                .unwrap_or(paper.assistant_tag),
            eos,
            uniform,
            diversity: file.diversity.map(|d| d.score.0),
        };
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

/// A rules file as written.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesFile {
    user_tag: Option<Spanned<String>>,
    assistant_tag: Option<Spanned<String>>,
    eos: Option<Spanned<EosTable>>,
    diversity: Option<DiversityTable>,
    #[serde(default)]
    token: Vec<Spanned<TokenTable>>,
}

/// `[eos]`: what is left out is the paper's.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct EosTable {
    weight: Option<Finite>,
    start: Option<usize>,
    end: Option<usize>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct DiversityTable {
    score: Finite,
}

/// One `[[token]]`: exactly one of `text`, `token` and `id`, and its score.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenTable {
    text: Option<Spanned<String>>,
    token: Option<Spanned<String>>,
    id: Option<u32>,
    score: Finite,
}

/// A finite number, written as an integer or a float (scores and weights).
struct Finite(f32);

impl<'de> Deserialize<'de> for Finite {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Finite, D::Error> {
        struct Number;
        impl Visitor<'_> for Number {
            type Value = Finite;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a finite number")
            }
            fn visit_i64<E: de::Error>(self, i: i64) -> std::result::Result<Finite, E> {
                Ok(Finite(i as f32))
            }
            fn visit_u64<E: de::Error>(self, u: u64) -> std::result::Result<Finite, E> {
                Ok(Finite(u as f32))
            }
            fn visit_f64<E: de::Error>(self, x: f64) -> std::result::Result<Finite, E> {
                match (x as f32).is_finite() {
                    true => Ok(Finite(x as f32)),
                    false => Err(E::invalid_value(de::Unexpected::Float(x), &self)),
                }
            }
        }
        d.deserialize_any(Number)
    }
}

/// A JSON rules file as the TOML document it stands for.
fn json_as_toml(text: &str) -> std::result::Result<String, Fault> {
    let value: JsonAsToml =
        serde_json::from_str(text).map_err(|e| (e.line(), format!("invalid JSON: {e}")))?;
    let toml::Value::Table(table) = value.0 else {
        return Err((1, "expected a JSON object".into()));
    };
    toml::to_string(&table).map_err(|e| (0, format!("cannot be written as TOML: {e}")))
}

/// A JSON value as a TOML one, refusing what TOML has no word for (null) and an object that
/// names a key twice (serde_json alone keeps the last, where TOML refuses the file).
struct JsonAsToml(toml::Value);

impl<'de> Deserialize<'de> for JsonAsToml {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<JsonAsToml, D::Error> {
        struct Json;
        impl<'de> Visitor<'de> for Json {
            type Value = JsonAsToml;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a value (not null)")
            }
            fn visit_bool<E: de::Error>(self, b: bool) -> std::result::Result<JsonAsToml, E> {
                Ok(JsonAsToml(toml::Value::Boolean(b)))
            }
            fn visit_i64<E: de::Error>(self, i: i64) -> std::result::Result<JsonAsToml, E> {
                Ok(JsonAsToml(toml::Value::Integer(i)))
            }
            fn visit_u64<E: de::Error>(self, u: u64) -> std::result::Result<JsonAsToml, E> {
                let i = i64::try_from(u).map_err(|_| E::custom(format!("{u} is too large")))?;
                Ok(JsonAsToml(toml::Value::Integer(i)))
            }
            fn visit_f64<E: de::Error>(self, x: f64) -> std::result::Result<JsonAsToml, E> {
                Ok(JsonAsToml(toml::Value::Float(x)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> std::result::Result<JsonAsToml, E> {
                Ok(JsonAsToml(toml::Value::String(s.into())))
            }
            fn visit_seq<A: SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> std::result::Result<JsonAsToml, A::Error> {
                let mut items = Vec::new();
                while let Some(JsonAsToml(v)) = seq.next_element()? {
                    items.push(v);
                }
                Ok(JsonAsToml(toml::Value::Array(items)))
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<JsonAsToml, A::Error> {
                let mut table = toml::Table::new();
                while let Some(key) = map.next_key::<String>()? {
                    if table.contains_key(&key) {
                        return Err(de::Error::custom(format!("key `{key}` is given twice")));
                    }
                    let JsonAsToml(value) = map.next_value()?;
                    table.insert(key, value);
                }
                Ok(JsonAsToml(toml::Value::Table(table)))
            }
        }
        d.deserialize_any(Json)
    }
}
