use brook::prelude::*;

#[subscriber(broker = redis, channel = "orders", ack_policy = NackOnError)]
async fn handle(_body: String) {}

fn main() {}
