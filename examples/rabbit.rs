//! Placeholder until the RabbitMQ broker lands (issue #3).
fn main() {}
