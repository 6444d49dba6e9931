#![deny(deprecated)] // makes brook's warning an error, so trybuild pins its text
use brook::prelude::*;

#[subscriber(broker = kafka, topic = "orders", group_id = "billing", ack_policy = RejectOnError)]
async fn handle(_body: String) {}

fn main() {}
