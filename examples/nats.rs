//! Placeholder until the NATS broker lands (issue #4).
fn main() {}
