use brook::prelude::*;

#[subscriber(broker = kafka, topic = "orders", ack_policy = NackOnError)]
async fn handle(_body: String) {}

fn main() {}
