use brook::prelude::*;

#[subscriber(broker = redis, channel = "orders", stream = "orders")]
async fn handle(_body: String) {}

fn main() {}
