use brook::prelude::*;

#[subscriber(broker = mqtt, topic = "sensors/+/temp", qos = 0, ack_policy = NackOnError)]
async fn handle(_body: String) {}

fn main() {}
