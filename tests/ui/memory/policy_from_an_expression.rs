use brook::prelude::*;

fn policy() -> AckPolicy {
    AckPolicy::NackOnError
}

#[subscriber(topic = "orders", ack_policy = policy())]
async fn handle(_body: String) {}

fn main() {}
