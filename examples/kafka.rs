//! Placeholder until the Kafka broker lands (issue #6).
fn main() {}
