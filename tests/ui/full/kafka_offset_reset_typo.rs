use brook::prelude::*;

#[subscriber(broker = kafka, topic = "orders", group_id = "billing", auto_offset_reset = earliset)]
async fn handle(_body: String) {}

fn main() {}
