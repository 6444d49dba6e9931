use brook::prelude::*;

#[subscriber(broker = rabbit, queue = "orders", topic = "orders")]
async fn handle(_body: String) {}

fn main() {}
