use brook::prelude::*;

#[subscriber(topic = "orders", exchange = "billing")]
async fn handle(_body: String) {}

fn main() {}
