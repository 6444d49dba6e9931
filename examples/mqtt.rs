//! Placeholder until the MQTT broker lands (issue #7).
fn main() {}
