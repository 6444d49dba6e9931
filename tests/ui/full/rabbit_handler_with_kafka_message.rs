use brook::prelude::*;

struct KafkaMessage;

#[subscriber(broker = rabbit, queue = "orders")]
async fn handle(_msg: &KafkaMessage) {}

fn main() {}
