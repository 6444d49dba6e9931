use brook::prelude::*;

struct NotAPayload;

#[subscriber(topic = "orders")]
async fn handle(_body: NotAPayload) {}

fn main() {}
