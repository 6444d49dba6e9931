use brook::prelude::*;

struct KafkaMessage;

#[subscriber(topic = "orders", ack_policy = Manual)]
async fn handle(_msg: &KafkaMessage) {}

fn main() {}
