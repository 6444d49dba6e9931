use brook::prelude::*;

#[subscriber(broker = nats, subject = "orders.created", ack_policy = NackOnError)]
async fn handle(_body: String) {}

fn main() {}
