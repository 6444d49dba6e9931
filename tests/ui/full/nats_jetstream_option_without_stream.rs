use brook::prelude::*;

#[subscriber(broker = nats, subject = "orders.created", durable = "billing")]
async fn handle(_body: String) {}

fn main() {}
