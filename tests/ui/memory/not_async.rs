use brook::prelude::*;

#[subscriber(topic = "orders")]
fn handle(_body: String) {}

fn main() {}
