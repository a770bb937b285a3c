//! The declarations against their documentation: docs/CONFIGURATION.md's settings table lists
//! exactly the settings [`table`](super::table) declares, with the same file key, flag and
//! default; the documented defaults are the real ones; the flags are those `bellhop serve` has.

use std::collections::HashMap;

use super::table::{self, SETTINGS};
use super::{serve_settings, FileSettings, Overrides};

/// A row of the settings table of docs/CONFIGURATION.md.
#[derive(Debug)]
struct Row {
    env: String,
    file_key: Option<String>,
    flag: Option<String>,
    default: String,
}

/// The rows of the table under `## Settings`, or why they cannot be read.
fn documented(doc: &str) -> Result<Vec<Row>, String> {
    let mut lines = doc
        .lines()
        .skip_while(|l| l.trim() != "## Settings")
        .skip(1)
        .skip_while(|l| !l.starts_with('|'));
    let header = lines.next().ok_or("no table under ## Settings")?;
    if !header.contains("environment") || !header.contains("default") {
        return Err(format!("unexpected header {header:?}"));
    }
    lines.next(); // |---|---|
    let optional = |cell: &str| (cell != "—").then(|| cell.trim_matches('`').to_owned());
    lines
        .take_while(|l| l.starts_with('|'))
        .map(|line| {
            let cells: Vec<&str> = line
                .trim()
                .trim_start_matches('|')
                .trim_end_matches('|')
                .split('|')
                .map(str::trim)
                .collect();
            let [env, file_key, flag, default, _meaning, _valid] = cells[..] else {
                return Err(format!("not 6 cells: {line}"));
            };
            let env = env
                .split('`')
                .nth(1)
                .ok_or_else(|| format!("no `NAME` in {env:?}"))?;
            Ok(Row {
                env: env.to_owned(),
                file_key: optional(file_key),
                flag: optional(flag),
                default: default.to_owned(),
            })
        })
        .collect()
}

/// What differs between the documented settings and the declared ones (empty: nothing).
fn docs_problems(doc: &str, declared: &[table::Setting]) -> Vec<String> {
    let rows = match documented(doc) {
        Ok(rows) => rows,
        Err(e) => return vec![e],
    };
    let mut problems = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        if rows[..i].iter().any(|r| r.env == row.env) {
            problems.push(format!("{}: two rows", row.env));
        }
        let Some(setting) = declared.iter().find(|s| s.env == row.env) else {
            problems.push(format!(
                "{}: a row for a setting the code does not know",
                row.env
            ));
            continue;
        };
        if row.file_key.as_deref() != setting.file_key {
            problems.push(format!(
                "{}: file key {:?} documented, {:?} declared",
                row.env, row.file_key, setting.file_key
            ));
        }
        if row.flag.as_deref() != setting.flag {
            problems.push(format!(
                "{}: flag {:?} documented, {:?} declared",
                row.env, row.flag, setting.flag
            ));
        }
        if row.default != setting.default {
            problems.push(format!(
                "{}: default {:?} documented, {:?} declared",
                row.env, row.default, setting.default
            ));
        }
    }
    for setting in declared {
        if !rows.iter().any(|r| r.env == setting.env) {
            problems.push(format!("{}: declared but has no row", setting.env));
        }
    }
    problems
}

fn configuration_md() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/CONFIGURATION.md");
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn configuration_md_lists_exactly_the_declared_settings() {
    let problems = docs_problems(&configuration_md(), SETTINGS);
    assert!(
        problems.is_empty(),
        "docs/CONFIGURATION.md and settings/table.rs disagree:\n{}",
        problems.join("\n")
    );
    assert_eq!(documented(&configuration_md()).unwrap().len(), 60);
}

#[test]
fn the_docs_check_names_a_missing_row_an_unknown_row_and_a_changed_default_or_key() {
    let doc = configuration_md();
    let row = doc
        .lines()
        .find(|l| l.starts_with("| `WS_PATH` |"))
        .unwrap()
        .to_owned();
    let broken = [
        (
            doc.replace(&format!("{row}\n"), ""),
            "WS_PATH: declared but has no row",
        ),
        (
            doc.replace(
                &row,
                &format!("{row}\n{}", row.replace("WS_PATH", "WS_PATHS")),
            ),
            "WS_PATHS: a row for a setting the code does not know",
        ),
        (
            doc.replace(&row, &row.replace("`/ws`", "`/socket`")),
            "WS_PATH: default \"`/socket`\" documented",
        ),
        (
            doc.replace(&row, &row.replace("`ws_path`", "`wspath`")),
            "WS_PATH: file key Some(\"wspath\") documented",
        ),
        (
            doc.replace(&row, &format!("{row}\n{row}")),
            "WS_PATH: two rows",
        ),
    ];
    for (doc, expected) in broken {
        let problems = docs_problems(&doc, SETTINGS);
        assert!(
            problems.iter().any(|p| p.starts_with(expected)),
            "{expected}: {problems:?}"
        );
    }
}

#[test]
fn file_keys_are_the_environment_names_in_lower_case() {
    for s in SETTINGS {
        if let Some(key) = s.file_key {
            assert_eq!(key, s.env.to_ascii_lowercase());
        }
    }
}

/// Setting a setting to the value its documentation gives as the default changes nothing: the
/// documented defaults are the real ones. (Defaults that are not one plain value, such as
/// `BIND_ADDR`'s or `none`, are covered by the tests above.)
#[test]
fn documented_defaults_are_the_defaults() {
    // TLS and Redis on, so that their settings are read too.
    let base = [
        ("SSL_ENABLED", "true"),
        ("SSL_CERT_PATH", "/tls/tls.crt"),
        ("SSL_KEY_PATH", "/tls/tls.key"),
        ("REDIS_HOST", "redis"),
    ];
    let resolved = |extra: Option<(&str, &str)>| {
        let env: HashMap<String, String> = base
            .iter()
            .chain(&extra)
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let s = serve_settings(&env, &FileSettings::default(), &Overrides::default());
        format!("{:?}", s.unwrap())
    };
    let defaults = resolved(None);
    let mut checked = 0;
    for s in SETTINGS.iter().filter(|s| s.file_key.is_some()) {
        // "`3001`" or "`1048576` (1 MiB)": one plain value.
        let Some(value) = s.default.strip_prefix('`').and_then(|d| d.split_once('`')) else {
            continue;
        };
        let (value, rest) = value;
        if !(rest.is_empty() || rest.starts_with(" (")) || base.iter().any(|(k, _)| *k == s.env) {
            continue;
        }
        let with = resolved(Some((s.env, value)));
        let same = with
            .bytes()
            .zip(defaults.bytes())
            .take_while(|(a, b)| a == b);
        // From the start of the field that differs.
        let prefix = &with[..same.count()];
        let at = [", ", "{ "]
            .iter()
            .filter_map(|sep| prefix.rfind(sep).map(|i| i + 2))
            .max()
            .unwrap_or(0);
        assert!(
            with == defaults,
            "{}={value} is documented as the default, but it changes the settings: {} instead of {}",
            s.env,
            &with[at..(at + 80).min(with.len())],
            &defaults[at..(at + 80).min(defaults.len())],
        );
        checked += 1;
    }
    assert!(checked >= 30, "only {checked} defaults checked");
}

/// The declared flags are exactly the flags of `bellhop serve` (beside `--help`), and only
/// `--config` reads the environment itself (the others beat the variable the settings read).
#[test]
fn the_declared_flags_are_those_of_bellhop_serve() {
    use clap::CommandFactory;
    let cli = crate::Cli::command();
    let serve = cli.find_subcommand("serve").expect("bellhop serve");
    let mut flags: Vec<_> = serve
        .get_arguments()
        .filter_map(|a| {
            let env = a.get_env().map(|e| e.to_string_lossy().into_owned());
            Some((format!("--{}", a.get_long()?), env.unwrap_or_default()))
        })
        .filter(|(long, _)| long != "--help")
        .collect();
    flags.sort();
    let mut declared: Vec<_> = SETTINGS
        .iter()
        .filter_map(|s| {
            let env = if s.file_key.is_none() { s.env } else { "" };
            Some((s.flag?.to_owned(), env.to_owned()))
        })
        .collect();
    declared.sort();
    assert_eq!(flags, declared);
}
