use brook::prelude::*;

#[subscriber(broker = redis, list = "orders", group = "billing")]
async fn handle(_body: String) {}

fn main() {}
