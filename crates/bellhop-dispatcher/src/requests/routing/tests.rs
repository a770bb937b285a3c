//! Routing's unit tests: the built-in rules, files in TOML and YAML, refusals with the line at
//! fault, and reloads.

use std::time::{Duration, SystemTime};

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
