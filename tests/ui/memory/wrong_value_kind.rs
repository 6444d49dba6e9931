use brook::prelude::*;

#[subscriber(topic = "orders", concurrency = "4")]
async fn handle(_body: String) {}

fn main() {}
