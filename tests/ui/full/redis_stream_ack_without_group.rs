use brook::prelude::*;

#[subscriber(broker = redis, stream = "orders", ack_policy = Ack)]
async fn handle(_body: String) {}

fn main() {}
