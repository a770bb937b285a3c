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
