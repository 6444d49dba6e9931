use brook::prelude::*;

#[subscriber(broker = redis, list = "orders", ack_policy = Manual)]
async fn handle(_body: String, _msg: &Message) {}

fn main() {}
