use brook::prelude::*;

#[subscriber(topic = "orders", ack_policy = NackOnErorr)]
async fn handle(_body: String) {}

fn main() {}
