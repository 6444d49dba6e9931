use brook::prelude::*;

#[subscriber(topic = "orders")]
async fn handle(_body: String) {}

fn main() {}
