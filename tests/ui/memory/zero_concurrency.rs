use brook::prelude::*;

#[subscriber(topic = "orders", concurrency = 0)]
async fn handle(_body: String) {}

fn main() {}
