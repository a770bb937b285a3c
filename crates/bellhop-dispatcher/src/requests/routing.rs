//! Automatic department routing of service requests: rules are data (a TOML or YAML file at
//! `ROUTING_RULES_PATH`, or the built-in defaults), matched case-insensitively against the event
//! and every string in the payload. Deterministic and explainable: rules are tried by their
//! `priority` (highest first, then in file order), the first that matches wins, and the answer
//! names the rule and what matched; nothing matching goes to the default department.
//!
//! A file is checked against the configured departments: a rule naming another department, an
//! invalid regex or a rule that matches nothing is refused with the line at fault, and the rules
//! in use keep serving.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::RwLock;
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
/// Largest rule file read.
const MAX_FILE_BYTES: u64 = 1 << 20;

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

/// A built-in rule: name, department, priority, keywords, phrases.
type Builtin = (
    &'static str,
    &'static str,
    i32,
    &'static [&'static str],
    &'static [&'static str],
);

/// The rules a hotel expects without a file, for the departments that are configured.
const BUILTIN: &[Builtin] = &[
    (
        "maintenance",
        "maintenance",
        40,
        &[
            "leak",
            "broken",
            "light",
            "lamp",
            "bulb",
            "heating",
            "heater",
            "clog",
            "flood",
            "drip",
            "repair",
            "aircon",
            "thermostat",
        ],
        &[
            "air conditioning",
            "air conditioner",
            "hot water",
            "not working",
        ],
    ),
    (
        "housekeeping",
        "housekeeping",
        30,
        &[
            "towel",
            "linen",
            "sheet",
            "pillow",
            "blanket",
            "clean",
            "tidy",
            "toiletries",
            "soap",
            "shampoo",
        ],
        &["toilet paper", "make up the room"],
    ),
    (
        "roomservice",
        "roomservice",
        20,
        &[
            "food",
            "breakfast",
            "menu",
            "lunch",
            "dinner",
            "meal",
            "hungry",
            "coffee",
            "drink",
        ],
        &["room service"],
    ),
    (
        "frontdesk",
        "frontdesk",
        10,
        &[
            "taxi",
            "checkout",
            "bill",
            "invoice",
            "key",
            "reservation",
            "receipt",
        ],
        &["check out", "late check"],
    ),
];

impl Rules {
    /// The built-in rules, keeping those whose department is configured; the default is
    /// `frontdesk` when configured, else the first department.
    pub fn builtin(departments: &[String]) -> Rules {
        let known = |d: &str| departments.iter().any(|k| k == d);
        let rules = BUILTIN
            .iter()
            .filter(|(_, dept, ..)| known(dept))
            .map(|(name, dept, priority, keywords, phrases)| Rule {
                name: (*name).to_owned(),
                department: (*dept).to_owned(),
                keywords: keywords.iter().map(|k| (*k).to_owned()).collect(),
                phrases: phrases.iter().map(|p| (*p).to_owned()).collect(),
                regexes: Vec::new(),
                events: Vec::new(),
                priority: *priority,
            })
            .collect();
        let fallback = if known("frontdesk") {
            "frontdesk".to_owned()
        } else {
            departments.first().cloned().unwrap_or_default()
        };
        Rules { rules, fallback }
    }

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

/// The rules in use, and the file they come from (reloaded when it changes).
#[derive(Debug)]
pub struct RoutingTable {
    rules: RwLock<Arc<Rules>>,
    file: Option<PathBuf>,
    departments: Vec<String>,
    modified: parking_lot::Mutex<Option<SystemTime>>,
}

impl RoutingTable {
    /// The built-in rules for `departments`, or those of `file` (which must be valid now).
    pub fn new(
        file: Option<PathBuf>,
        departments: Vec<String>,
    ) -> Result<RoutingTable, RulesError> {
        let table = RoutingTable {
            rules: RwLock::new(Arc::new(Rules::builtin(&departments))),
            file,
            departments,
            modified: parking_lot::Mutex::new(None),
        };
        if let Some(path) = &table.file {
            let (rules, modified) = read(path, &table.departments)?;
            *table.rules.write() = Arc::new(rules);
            *table.modified.lock() = modified;
        }
        Ok(table)
    }

    /// The rules in use now.
    pub fn rules(&self) -> Arc<Rules> {
        self.rules.read().clone()
    }

    /// Reads the file again if its modification time changed: `Ok(true)` when new rules are in
    /// use, `Ok(false)` when nothing changed, the error (old rules kept) for a bad file.
    pub fn reload(&self) -> Result<bool, RulesError> {
        let Some(path) = &self.file else {
            return Ok(false);
        };
        let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        if modified.is_some() && modified == *self.modified.lock() {
            return Ok(false);
        }
        // Remembered even when the file is bad, so it is reported once, not every poll.
        *self.modified.lock() = modified;
        let (rules, _) = read(path, &self.departments)?;
        *self.rules.write() = Arc::new(rules);
        Ok(true)
    }

    /// Polls the file every `interval` until `self` is dropped elsewhere, logging reloads.
    pub fn spawn_watch(self: &Arc<Self>, interval: Duration) -> tokio::task::JoinHandle<()> {
        let table = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(table) = table.upgrade() else { return };
                match table.reload() {
                    Ok(true) => {
                        tracing::info!(rules = table.rules().len(), "routing rules reloaded")
                    }
                    Ok(false) => {}
                    Err(error) => tracing::error!(
                        %error,
                        "routing rules file refused; the previous rules keep serving"
                    ),
                }
            }
        })
    }
}

/// Reads and parses a rule file.
fn read(path: &Path, departments: &[String]) -> Result<(Rules, Option<SystemTime>), RulesError> {
    let shown = path.display().to_string();
    let unreadable = |e: std::io::Error| RulesError {
        path: shown.clone(),
        line: 0,
        message: format!("cannot read ROUTING_RULES_PATH: {e}"),
    };
    let meta = std::fs::metadata(path).map_err(unreadable)?;
    if meta.len() > MAX_FILE_BYTES {
        return Err(RulesError {
            path: shown,
            line: 0,
            message: format!("larger than {MAX_FILE_BYTES} bytes"),
        });
    }
    let text = std::fs::read_to_string(path).map_err(unreadable)?;
    Ok((
        Rules::parse(&shown, &text, departments)?,
        meta.modified().ok(),
    ))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn departments() -> Vec<String> {
        [
            "frontdesk",
            "housekeeping",
            "maintenance",
            "roomservice",
            "management",
        ]
        .map(String::from)
        .to_vec()
    }

    fn dept(rules: &Rules, text: &str) -> String {
        rules
            .route("SERVICE_REQUEST", &json!({ "text": text }))
            .department
    }

    #[test]
    fn the_builtin_rules_route_what_a_hotel_expects() {
        let r = Rules::builtin(&departments());
        for (text, want) in [
            ("the sink is leaking", "maintenance"),
            ("The AIR CONDITIONING is broken", "maintenance"),
            ("a light is out", "maintenance"),
            ("More towels please", "housekeeping"),
            ("fresh linen", "housekeeping"),
            ("room needs cleaning", "housekeeping"),
            ("can I see the breakfast menu?", "roomservice"),
            ("some food", "roomservice"),
            ("call me a taxi", "frontdesk"),
            ("my key does not work", "frontdesk"),
            ("the bill is wrong", "frontdesk"),
            ("what time is checkout", "frontdesk"),
            ("hello there", "frontdesk"),
        ] {
            assert_eq!(dept(&r, text), want, "{text}");
        }
        let route = r.route(
            "SERVICE_REQUEST",
            &json!({"details": {"notes": ["the sink is leaking"]}}),
        );
        assert_eq!(route.rule, "maintenance");
        assert_eq!(route.matched, "keyword \"leak\"");
        let none = r.route("SERVICE_REQUEST", &json!(42));
        assert_eq!(
            (none.rule.as_str(), none.department.as_str()),
            ("default", "frontdesk")
        );
    }

    #[test]
    fn builtin_rules_of_unconfigured_departments_are_left_out() {
        let only = ["concierge".to_string(), "housekeeping".to_string()];
        let r = Rules::builtin(&only);
        assert_eq!(dept(&r, "towels"), "housekeeping");
        assert_eq!(
            dept(&r, "the sink is leaking"),
            "concierge",
            "the first department"
        );
    }

    #[test]
    fn a_toml_file_is_matched_by_priority_then_order_with_events_and_regexes() {
        let text = r#"
default = "housekeeping"

[[rules]]
name = "late-checkout"
department = "frontdesk"
phrases = ["late check out"]
priority = 5

[[rules]]
name = "wifi"
department = "maintenance"
regex = ['\bwi-?fi\b']
priority = 5

[[rules]]
name = "vip"
department = "management"
events = ["VIP_REQUEST"]
priority = 100

[[rules]]
name = "anything-broken"
department = "maintenance"
keywords = ["broken"]
priority = 1

[[rules]]
name = "broken-key"
department = "frontdesk"
keywords = ["key"]
priority = 1
"#;
        let r = Rules::parse("rules.toml", text, &departments()).unwrap();
        assert_eq!(r.len(), 5);
        assert_eq!(dept(&r, "Can I have a LATE check-out?"), "frontdesk");
        assert_eq!(dept(&r, "the WiFi is down"), "maintenance");
        assert_eq!(
            dept(&r, "my key is broken"),
            "maintenance",
            "file order breaks the tie"
        );
        assert_eq!(dept(&r, "hello"), "housekeeping");
        let vip = r.route("VIP_REQUEST", &json!({}));
        assert_eq!(
            (vip.department.as_str(), vip.rule.as_str()),
            ("management", "vip")
        );
    }

    #[test]
    fn a_yaml_file_works_the_same() {
        let text = "default: frontdesk\nrules:\n  - name: towels\n    department: housekeeping\n    keywords: [towel]\n";
        let r = Rules::parse("rules.yaml", text, &departments()).unwrap();
        assert_eq!(dept(&r, "two towels"), "housekeeping");
        assert_eq!(r.route("SERVICE_REQUEST", &json!({})).rule, "default");
    }

    #[test]
    fn bad_files_are_refused_with_the_line_at_fault() {
        let d = departments();
        let unknown = "[[rules]]\nname = \"x\"\ndepartment = \"maintenence\"\nkeywords = [\"a\"]\n";
        let e = Rules::parse("r.toml", unknown, &d).unwrap_err();
        assert_eq!(e.line, 3, "{e}");
        assert!(
            e.message.contains("unknown department \"maintenence\""),
            "{e}"
        );
        let regex =
            "[[rules]]\nname = \"x\"\ndepartment = \"maintenance\"\n\nregex = [\"(unclosed\"]\n";
        let e = Rules::parse("r.toml", regex, &d).unwrap_err();
        assert_eq!(e.line, 5, "{e}");
        assert!(e.message.contains("invalid regex"), "{e}");
        let syntax = "[[rules]]\nname = \"x\"\ndepartment = maintenance\n";
        let e = Rules::parse("r.toml", syntax, &d).unwrap_err();
        assert_eq!(e.line, 3, "{e}");
        let empty = "[[rules]]\nname = \"lonely\"\ndepartment = \"maintenance\"\n";
        let e = Rules::parse("r.toml", empty, &d).unwrap_err();
        assert!(e.message.contains("matches nothing"), "{e}");
        let yaml = "rules:\n  - name: x\n    department: housekeeping\n    keyword: [a]\n";
        let e = Rules::parse("r.yml", yaml, &d).unwrap_err();
        assert_eq!(e.line, 4, "{e}");
        assert!(e.to_string().starts_with("r.yml: line 4:"), "{e}");
    }

    #[test]
    fn a_changed_file_is_reloaded_and_a_bad_one_keeps_the_old_rules() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rules.toml");
        let write = |text: &str, age: u64| {
            std::fs::write(&path, text).unwrap();
            // Distinct modification times, whatever the file system's resolution.
            let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 + age);
            std::fs::File::options()
                .write(true)
                .open(&path)
                .unwrap()
                .set_modified(t)
                .unwrap();
        };
        write(
            "[[rules]]\nname = \"a\"\ndepartment = \"housekeeping\"\nkeywords = [\"sink\"]\n",
            1,
        );
        let table = RoutingTable::new(Some(path.clone()), departments()).unwrap();
        assert_eq!(dept(&table.rules(), "the sink"), "housekeeping");
        assert_eq!(table.reload(), Ok(false), "unchanged");
        write(
            "[[rules]]\nname = \"a\"\ndepartment = \"maintenance\"\nkeywords = [\"sink\"]\n",
            2,
        );
        assert_eq!(table.reload(), Ok(true));
        assert_eq!(dept(&table.rules(), "the sink"), "maintenance");
        write("[[rules]]\nname = \"a\"\ndepartment = \"nowhere\"\n", 3);
        let e = table.reload().unwrap_err();
        assert_eq!(e.line, 3);
        assert_eq!(
            dept(&table.rules(), "the sink"),
            "maintenance",
            "old rules serve"
        );
        assert_eq!(table.reload(), Ok(false), "a bad file is reported once");
        assert!(RoutingTable::new(Some(dir.path().join("missing.toml")), departments()).is_err());
    }
}
