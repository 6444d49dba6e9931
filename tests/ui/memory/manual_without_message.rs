use brook::prelude::*;

#[subscriber(topic = "orders", ack_policy = Manual)]
async fn handle(_body: String) {}

fn main() {}
