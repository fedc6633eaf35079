//! A test whose outside program (chromium, nginx, pebble, redis-server, …) is
//! not installed: on a developer's machine it says SKIPPED and ends; in CI it
//! fails. `.ci/run` sets `CI` and installs every such program, so a skip there
//! would only hide a failed install behind a pass.

/// Ends the calling test's use of `program` when it is missing: panics in CI,
/// else says SKIPPED with the way to install it. Returns so the caller can `return`.
pub fn program_missing(test: &str, program: &str, install: &str) {
    assert!(
        std::env::var_os("CI").is_none(),
        "{test}: {program} is missing in CI ({install}; .ci/run installs it)"
    );
    eprintln!("SKIPPED {test}: {program} is missing ({install})");
}
