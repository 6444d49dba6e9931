//! Compile-time checks of `#[subscriber]`, pinned as trybuild `.stderr` files.
//!
//! `tests/ui/memory` runs in the default build (only the in-memory broker compiled in);
//! `tests/ui/full` needs every broker compiled in: `cargo test --features full --test ui`;
//! `tests/ui/additive` runs in both a `kafka`-only build and the full one.
//! Warnings are pinned by fixtures that `#![deny(deprecated)]` them into errors.

#[test]
#[cfg(not(any(
    feature = "kafka",
    feature = "rabbit",
    feature = "nats",
    feature = "redis",
    feature = "mqtt"
)))]
fn memory_only_build() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/memory/*.rs");
}

#[test]
#[cfg(all(
    feature = "kafka",
    feature = "rabbit",
    feature = "nats",
    feature = "redis",
    feature = "mqtt"
))]
fn all_brokers_build() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/full/*.rs");
    t.pass("tests/ui/pass/*.rs");
}

/// Additivity: the same fixtures compile with only `kafka` on and with every broker on
/// (`cargo test --features kafka --test ui` and `--features full`).
#[test]
#[cfg(feature = "kafka")]
fn turning_on_more_brokers_changes_nothing() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/additive/*.rs");
}
