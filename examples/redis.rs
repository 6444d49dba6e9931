//! Placeholder until the Redis broker lands (issue #5).
fn main() {}
