use brook::prelude::*;

#[subscriber(broker = nats, subject = "orders.created", ack_policy = Manual)]
async fn handle(_body: String, _msg: &Message) {}

fn main() {}
