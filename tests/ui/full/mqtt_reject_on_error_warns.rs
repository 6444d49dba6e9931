#![deny(deprecated)] // makes brook's warning an error, so trybuild pins its text
use brook::prelude::*;

#[subscriber(broker = mqtt, topic = "sensors/#", ack_policy = RejectOnError)]
async fn handle(_body: String) {}

fn main() {}
