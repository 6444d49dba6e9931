#![deny(deprecated)]
use brook::rabbit::subscriber;

#[subscriber(queue = "orders", ack_policy = NackOnError, max_deliveries = 5)]
async fn handle(_body: String) {}

fn main() {}
