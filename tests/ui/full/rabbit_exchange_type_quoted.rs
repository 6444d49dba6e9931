use brook::prelude::*;

#[subscriber(broker = rabbit, queue = "orders", exchange = "billing", exchange_type = "topic")]
async fn handle(_body: String) {}

fn main() {}
