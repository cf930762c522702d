//! Settings shared by the property tests that fuzz the hand-written parsers.
//!
//! Each property runs `default_cases` random inputs in `make test`; `PROPTEST_CASES=N` runs N instead
//! (see docs/fuzzing.md). Failures are not persisted to files: proptest prints the shrunk input, which is
//! then added to the unit tests as a named case.

use proptest::test_runner::Config;

/// The configuration for a fuzzing property: `PROPTEST_CASES` if set, else `default_cases`.
pub(crate) fn config(default_cases: u32) -> Config {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default_cases);
    Config { cases, failure_persistence: None, ..Config::default() }
}
