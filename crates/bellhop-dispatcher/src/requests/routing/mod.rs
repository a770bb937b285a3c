//! Automatic department routing of service requests: rules are data (a TOML or YAML file at
//! `ROUTING_RULES_PATH`, or the built-in defaults), matched case-insensitively against the event
//! and every string in the payload. Deterministic and explainable: rules are tried by their
//! `priority` (highest first, then in file order), the first that matches wins, and the answer
//! names the rule and what matched; nothing matching goes to the default department.
//!
//! A file is checked against the configured departments: a rule naming another department, an
//! invalid regex or a rule that matches nothing is refused with the line at fault, and the rules
//! in use keep serving.

//!
//! This file is the rules and their matching (pure); `builtin.rs` holds the defaults,
//! `table.rs` the rules in use and the file they are reloaded from, `tests.rs` the unit tests.

mod builtin;
mod table;
#[cfg(test)]
mod tests;

pub use table::RoutingTable;

use regex::{Regex, RegexBuilder};
use serde::Deserialize;
use serde_json::Value;

/// Longest regex source accepted, and the compiled size limit: a rule file is operator input,
/// but a pathological pattern must not cost every request.
const MAX_REGEX_LEN: usize = 512;
/// Compiled size limit of one regex.
const REGEX_SIZE_LIMIT: usize = 1 << 20;
/// Most rules in a file.
const MAX_RULES: usize = 1_000;

/// Where a request goes and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// The department (configured).
    pub department: String,
    /// The name of the rule that matched (`default` when none did).
    pub rule: String,
    /// What matched, in words (`keyword "leak"`), or `no rule matched`.
    pub matched: String,
}

/// One rule as written in a file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleSpec {
    name: String,
    department: String,
    #[serde(default)]
    keywords: Vec<String>,
    #[serde(default)]
    phrases: Vec<String>,
    #[serde(default)]
    regex: Vec<String>,
    #[serde(default)]
    events: Vec<String>,
    #[serde(default)]
    priority: i32,
}

/// A rule file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSpec {
    /// Where requests that match no rule go (default `frontdesk`).
    #[serde(default)]
    default: Option<String>,
    #[serde(default)]
    rules: Vec<RuleSpec>,
}

/// A compiled rule.
#[derive(Debug)]
struct Rule {
    name: String,
    department: String,
    /// Lowercase single words: a word of the text starting with one matches (`leak` matches
    /// `leaking`).
    keywords: Vec<String>,
    /// Lowercase word sequences, matched on word boundaries (the last word as a prefix).
    phrases: Vec<String>,
    regexes: Vec<Regex>,
    /// Upper-case event names this rule is limited to; empty for any.
    events: Vec<String>,
    priority: i32,
}

/// Why a rule file was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{path}: line {line}: {message}")]
pub struct RulesError {
    /// The file.
    pub path: String,
    /// The line at fault (1-based; 0 when the file could not be read at all).
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

/// A set of routing rules, ready to match.
#[derive(Debug)]
pub struct Rules {
    /// By priority, highest first, then in file order.
    rules: Vec<Rule>,
    /// Where nothing matching goes.
    fallback: String,
}

/// The text of a request, split for matching.
struct Text {
    /// Each string, lowercased, as `" word word "`.
    words: Vec<String>,
    /// Each string as given (for regexes).
    raw: Vec<String>,
}

impl Text {
    fn of(event: &str, payload: &Value) -> Text {
        let mut raw = vec![event.to_owned()];
        collect_strings(payload, &mut raw);
        let words = raw
            .iter()
            .map(|s| {
                let lower = s.to_lowercase();
                let joined: Vec<&str> = lower
                    .split(|c: char| !c.is_alphanumeric())
                    .filter(|w| !w.is_empty())
                    .collect();
                format!(" {} ", joined.join(" "))
            })
            .collect();
        Text { words, raw }
    }
}

/// Every string in a JSON value, depth first.
fn collect_strings(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::String(s) => out.push(s.clone()),
        Value::Array(items) => items.iter().for_each(|v| collect_strings(v, out)),
        Value::Object(map) => map.values().for_each(|v| collect_strings(v, out)),
        _ => {}
    }
}

/// Lowercase words of `s`, joined by single spaces.
fn normalize(s: &str) -> String {
    s.to_lowercase()
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

impl Rule {
    /// What of `text` this rule matches, or `None`.
    fn matches(&self, event: &str, text: &Text) -> Option<String> {
        if !self.events.is_empty() && !self.events.iter().any(|e| e.eq_ignore_ascii_case(event)) {
            return None;
        }
        for k in &self.keywords {
            let needle = format!(" {k}");
            if text.words.iter().any(|w| w.contains(&needle)) {
                return Some(format!("keyword {k:?}"));
            }
        }
        for p in &self.phrases {
            let needle = format!(" {p}");
            if text.words.iter().any(|w| w.contains(&needle)) {
                return Some(format!("phrase {p:?}"));
            }
        }
        for r in &self.regexes {
            if text.raw.iter().any(|s| r.is_match(s)) {
                return Some(format!("regex {:?}", r.as_str()));
            }
        }
        if self.keywords.is_empty() && self.phrases.is_empty() && self.regexes.is_empty() {
            return Some(format!("event {event}"));
        }
        None
    }
}

impl Rules {
    /// Parses and checks a rule file (`.yaml`/`.yml` as YAML, anything else as TOML).
    pub fn parse(path: &str, text: &str, departments: &[String]) -> Result<Rules, RulesError> {
        let error = |line: usize, message: String| RulesError {
            path: path.to_owned(),
            line,
            message,
        };
        let yaml = path.ends_with(".yaml") || path.ends_with(".yml");
        let spec: FileSpec = if yaml {
            serde_yaml::from_str(text).map_err(|e| {
                let line = e.location().map_or(1, |l| l.line());
                error(line, e.to_string())
            })?
        } else {
            toml::from_str(text).map_err(|e| {
                let line = e.span().map_or(1, |s| {
                    text[..s.start.min(text.len())].lines().count().max(1)
                });
                error(line, e.message().to_owned())
            })?
        };
        if spec.rules.len() > MAX_RULES {
            return Err(error(1, format!("more than {MAX_RULES} rules")));
        }
        let known = |d: &str| departments.iter().any(|k| k == d);
        let configured = departments.join(", ");
        let mut rules = Vec::with_capacity(spec.rules.len());
        for spec in spec.rules.iter() {
            let at = |needle: &str| line_of(text, needle);
            if !known(&spec.department) {
                return Err(error(
                    at(&spec.department),
                    format!(
                        "rule {:?}: unknown department {:?} (DEPARTMENTS is {configured})",
                        spec.name, spec.department
                    ),
                ));
            }
            let mut regexes = Vec::new();
            for source in &spec.regex {
                if source.len() > MAX_REGEX_LEN {
                    return Err(error(
                        at(source),
                        format!("rule {:?}: regex longer than {MAX_REGEX_LEN}", spec.name),
                    ));
                }
                let compiled = RegexBuilder::new(source)
                    .case_insensitive(true)
                    .size_limit(REGEX_SIZE_LIMIT)
                    .build()
                    .map_err(|e| {
                        error(
                            at(source),
                            format!("rule {:?}: invalid regex: {e}", spec.name),
                        )
                    })?;
                regexes.push(compiled);
            }
            let keywords: Vec<String> = spec.keywords.iter().map(|k| normalize(k)).collect();
            if let Some(bad) = keywords
                .iter()
                .position(|k| k.is_empty() || k.contains(' '))
            {
                return Err(error(
                    at(&spec.keywords[bad]),
                    format!(
                        "rule {:?}: keyword {:?} must be one word (use phrases for more)",
                        spec.name, spec.keywords[bad]
                    ),
                ));
            }
            let phrases: Vec<String> = spec.phrases.iter().map(|p| normalize(p)).collect();
            if let Some(bad) = phrases.iter().position(String::is_empty) {
                return Err(error(
                    at(&spec.phrases[bad]),
                    format!("rule {:?}: empty phrase", spec.name),
                ));
            }
            if keywords.is_empty()
                && phrases.is_empty()
                && regexes.is_empty()
                && spec.events.is_empty()
            {
                return Err(error(
                    at(&spec.name),
                    format!(
                        "rule {:?} matches nothing: give keywords, phrases, regex or events",
                        spec.name
                    ),
                ));
            }
            rules.push(Rule {
                name: spec.name.clone(),
                department: spec.department.clone(),
                keywords,
                phrases,
                regexes,
                events: spec.events.clone(),
                priority: spec.priority,
            });
        }
        // Stable: equal priorities keep file order.
        rules.sort_by_key(|r| std::cmp::Reverse(r.priority));
        let fallback = match spec.default {
            Some(d) if known(&d) => d,
            Some(d) => {
                return Err(error(
                    line_of(text, &d),
                    format!(
                        "default department {d:?} is not configured (DEPARTMENTS is {configured})"
                    ),
                ))
            }
            None => Rules::builtin(departments).fallback,
        };
        Ok(Rules { rules, fallback })
    }

    /// Where a request with `event` and `payload` goes, and why.
    pub fn route(&self, event: &str, payload: &Value) -> Route {
        let text = Text::of(event, payload);
        for rule in &self.rules {
            if let Some(matched) = rule.matches(event, &text) {
                return Route {
                    department: rule.department.clone(),
                    rule: rule.name.clone(),
                    matched,
                };
            }
        }
        Route {
            department: self.fallback.clone(),
            rule: "default".into(),
            matched: "no rule matched".into(),
        }
    }

    /// How many rules there are (the default not counted).
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// Whether there are none (everything goes to the default).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

/// The first line of `text` that contains `needle` (1-based), or 1.
fn line_of(text: &str, needle: &str) -> usize {
    if needle.is_empty() {
        return 1;
    }
    text.lines()
        .position(|l| l.contains(needle))
        .map_or(1, |i| i + 1)
}
