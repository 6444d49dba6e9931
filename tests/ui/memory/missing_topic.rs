use brook::prelude::*;

#[subscriber(ack_policy = Ack)]
async fn handle(_body: String) {}

fn main() {}
