use brook::prelude::*;

#[subscriber(broker = nats, subject = "orders", stream = "ORDERS", durabel = "billing")]
async fn handle(_body: String) {}

fn main() {}
