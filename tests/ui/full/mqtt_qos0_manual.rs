use brook::prelude::*;

#[subscriber(broker = mqtt, topic = "sensors/#", qos = 0, ack_policy = Manual)]
async fn handle(_body: String, _msg: &Message) {}

fn main() {}
