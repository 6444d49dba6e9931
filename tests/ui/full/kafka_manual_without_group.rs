use brook::prelude::*;

#[subscriber(broker = kafka, topic = "orders", ack_policy = Manual)]
async fn handle(_body: String, _msg: &Message) {}

fn main() {}
