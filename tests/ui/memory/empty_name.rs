use brook::prelude::*;

#[subscriber(topic = "")]
async fn handle(_body: String) {}

fn main() {}
