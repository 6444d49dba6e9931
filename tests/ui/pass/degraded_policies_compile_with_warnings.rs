// Without `deny`, the degraded combinations compile (the warnings are shown, not fatal).
use brook::prelude::*;

#[subscriber(broker = kafka, topic = "orders", group_id = "billing", ack_policy = RejectOnError)]
async fn kafka_reject(_body: String) {}

#[subscriber(broker = mqtt, topic = "sensors/#", ack_policy = NackOnError)]
async fn mqtt_nack(_body: String) {}

fn main() {
    let _ = (kafka_reject, mqtt_nack);
}
