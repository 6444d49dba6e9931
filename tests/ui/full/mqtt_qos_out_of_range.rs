use brook::prelude::*;

#[subscriber(broker = mqtt, topic = "sensors/#", qos = 3)]
async fn handle(_body: String) {}

fn main() {}
