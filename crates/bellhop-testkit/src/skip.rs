//! Skipping a test whose tool is missing, the one way the project does it: a run by hand says
//! `SKIPPED` with the reason and passes; a run through `make test` (which installs every tool
//! the tests use and sets `BELLHOP_REQUIRE_TOOLS=1`) fails instead, so a missing install step
//! cannot hide behind a green run.

/// The environment variable that turns a skip into a failure.
pub const REQUIRE_TOOLS: &str = "BELLHOP_REQUIRE_TOOLS";

/// Call when `test` cannot run because of `reason` (a missing tool), then return from the
/// test: prints `SKIPPED <test>: <reason>`, or panics with it when [`REQUIRE_TOOLS`] is set.
pub fn skip(test: &str, reason: &str) {
    if std::env::var_os(REQUIRE_TOOLS).is_some_and(|v| !v.is_empty() && v != "0") {
        panic!("{test}: {reason}, and {REQUIRE_TOOLS} is set (make test installs it: a skip here is a missing install step)");
    }
    println!("SKIPPED {test}: {reason}");
}
