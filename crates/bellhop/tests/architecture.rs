//! The dependency invariants of docs/ARCHITECTURE.md, checked against `cargo metadata`: the
//! next change that makes one false fails here, and the fix is either the change or the
//! document (they must agree).

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

/// Each workspace crate and the names of its normal (not dev, not build) dependencies.
fn normal_dependencies() -> BTreeMap<String, BTreeSet<String>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let metadata: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    metadata["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let deps = p["dependencies"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|d| d["kind"].is_null())
                .map(|d| d["name"].as_str().unwrap().to_owned())
                .collect();
            (p["name"].as_str().unwrap().to_owned(), deps)
        })
        .collect()
}

/// The workspace crates that depend on `dependency` directly.
fn users_of(all: &BTreeMap<String, BTreeSet<String>>, dependency: &str) -> BTreeSet<String> {
    all.iter()
        .filter(|(_, deps)| deps.contains(dependency))
        .map(|(name, _)| name.clone())
        .collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|n| n.to_string()).collect()
}

#[test]
fn the_protocol_crate_does_no_io() {
    let all = normal_dependencies();
    let protocol = &all["bellhop-protocol"];
    for io in [
        "tokio",
        "async-trait",
        "hyper",
        "tokio-tungstenite",
        "rustls",
        "fred",
    ] {
        assert!(
            !protocol.contains(io),
            "bellhop-protocol must do no IO, but depends on {io}"
        );
    }
}

#[test]
fn the_dispatcher_knows_nothing_of_websockets_or_http() {
    let all = normal_dependencies();
    let dispatcher = &all["bellhop-dispatcher"];
    for edge in ["hyper", "hyper-util", "http-body-util", "tokio-tungstenite"] {
        assert!(
            !dispatcher.contains(edge),
            "bellhop-dispatcher must not know WebSockets or HTTP, but depends on {edge}"
        );
    }
}

#[test]
fn only_the_dispatcher_talks_to_redis() {
    let all = normal_dependencies();
    assert_eq!(users_of(&all, "fred"), set(&["bellhop-dispatcher"]));
}

#[test]
fn only_the_gateway_serves_http_and_only_known_clients_speak_websocket() {
    let all = normal_dependencies();
    assert_eq!(
        users_of(&all, "hyper"),
        set(&["bellhop-gateway"]),
        "hyper (the HTTP server) is the gateway's alone"
    );
    // tungstenite serves WebSockets in the gateway; the others are clients (the Rust SDK, the
    // CLI's `bellhop connect`, the load generator and the test kit).
    let allowed = set(&[
        "bellhop-gateway",
        "bellhop-client",
        "bellhop",
        "bellhop-loadgen",
        "bellhop-testkit",
    ]);
    let users = users_of(&all, "tokio-tungstenite");
    assert!(
        users.is_subset(&allowed),
        "tokio-tungstenite used by {:?}, outside {allowed:?}",
        users.difference(&allowed).collect::<Vec<_>>()
    );
    assert!(users.contains("bellhop-gateway"));
}

#[test]
fn rustls_is_for_serving_tls_and_for_tls_clients_only() {
    let all = normal_dependencies();
    // The gateway terminates TLS; bellhop-tls builds the clients' TLS configurations (the
    // dispatcher's Redis client, the SDK's, the CLI's); the CLI, the SDK and the test kit are TLS
    // clients. The protocol crate and the load generator's
    // library code never touch it.
    let allowed = set(&[
        "bellhop-gateway",
        "bellhop-dispatcher",
        "bellhop",
        "bellhop-client",
        "bellhop-tls",
        "bellhop-testkit",
    ]);
    let users = users_of(&all, "rustls");
    assert!(
        users.is_subset(&allowed),
        "rustls used by {:?}",
        users.difference(&allowed).collect::<Vec<_>>()
    );
}

#[test]
fn the_test_kit_is_never_a_product_dependency() {
    let all = normal_dependencies();
    assert_eq!(
        users_of(&all, "bellhop-testkit"),
        BTreeSet::new(),
        "bellhop-testkit may only be a dev-dependency"
    );
}

/// The workspace's own crates among `name`'s normal dependencies.
fn bellhop_dependencies(all: &BTreeMap<String, BTreeSet<String>>, name: &str) -> BTreeSet<String> {
    all[name]
        .iter()
        .filter(|d| all.contains_key(*d))
        .cloned()
        .collect()
}

#[test]
fn the_client_sdk_depends_on_the_protocol_and_the_tls_helper_only() {
    let all = normal_dependencies();
    assert_eq!(
        bellhop_dependencies(&all, "bellhop-client"),
        set(&["bellhop-protocol", "bellhop-tls"]),
        "the SDK is a client of the product: never the gateway or the dispatcher"
    );
}

#[test]
fn the_tls_helper_is_a_leaf_that_only_knows_rustls() {
    let all = normal_dependencies();
    assert_eq!(bellhop_dependencies(&all, "bellhop-tls"), BTreeSet::new());
    for io in ["tokio", "hyper", "tokio-tungstenite", "fred"] {
        assert!(
            !all["bellhop-tls"].contains(io),
            "bellhop-tls builds TLS client configurations only, but depends on {io}"
        );
    }
    assert_eq!(
        users_of(&all, "bellhop-tls"),
        set(&["bellhop-dispatcher", "bellhop-client"]),
        "one CA-file helper, for the Redis client and the SDK (and through it the CLI)"
    );
}

/// The top-level modules of the crate whose sources are in `src`, each with the top-level
/// modules of the same crate it names (`crate::<module>` in code, not in comments), leaving out
/// test code (`tests.rs` files and what follows `#[cfg(test)] mod tests`).
fn module_graph(src: &std::path::Path) -> BTreeMap<String, BTreeSet<String>> {
    fn files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                files(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let mut all = Vec::new();
    files(src, &mut all);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for path in all {
        let rel = path.strip_prefix(src).unwrap();
        let top = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_owned();
        if top == "lib" || top == "main" || rel.ends_with("tests.rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let text = text.split("#[cfg(test)]\nmod tests").next().unwrap();
        let uses = graph.entry(top.clone()).or_default();
        for line in text.lines().filter(|l| !l.trim_start().starts_with("//")) {
            for (at, _) in line.match_indices("crate::") {
                let name: String = line[at + 7..]
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                    .collect();
                if !name.is_empty() && name != top {
                    uses.insert(name);
                }
            }
        }
    }
    let modules: BTreeSet<String> = graph.keys().cloned().collect();
    for uses in graph.values_mut() {
        uses.retain(|m| modules.contains(m));
    }
    graph
}

/// A cycle in `graph`, as the modules along it, if there is one.
fn a_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        graph: &BTreeMap<String, BTreeSet<String>>,
        at: &str,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(start) = path.iter().position(|m| m == at) {
            let mut cycle = path[start..].to_vec();
            cycle.push(at.to_owned());
            return Some(cycle);
        }
        if !done.insert(at.to_owned()) {
            return None;
        }
        path.push(at.to_owned());
        for next in &graph[at] {
            if let Some(cycle) = visit(graph, next, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|m| visit(graph, m, &mut Vec::new(), &mut done))
}

#[test]
fn no_crate_has_a_cycle_of_modules() {
    let crates = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut checked = 0;
    for entry in std::fs::read_dir(&crates).unwrap() {
        let src = entry.unwrap().path().join("src");
        if !src.is_dir() {
            continue;
        }
        let graph = module_graph(&src);
        assert!(
            a_cycle(&graph).is_none(),
            "{}: the modules {:?} depend on each other in a circle: move what they share into a module of its own, or make them one",
            src.display(),
            a_cycle(&graph).unwrap()
        );
        checked += 1;
    }
    assert!(
        checked >= 8,
        "only {checked} crates found under {}",
        crates.display()
    );
}

#[test]
fn the_cycle_check_finds_a_cycle() {
    let graph: BTreeMap<String, BTreeSet<String>> = [
        ("a".to_owned(), set(&["b"])),
        ("b".to_owned(), set(&["c"])),
        ("c".to_owned(), set(&["a"])),
        ("d".to_owned(), set(&["a"])),
    ]
    .into_iter()
    .collect();
    assert_eq!(a_cycle(&graph).unwrap(), ["a", "b", "c", "a"]);
    let acyclic: BTreeMap<String, BTreeSet<String>> =
        [("a".to_owned(), set(&["b"])), ("b".to_owned(), set(&[]))]
            .into_iter()
            .collect();
    assert!(a_cycle(&acyclic).is_none());
}
