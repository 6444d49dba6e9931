use brook::prelude::*;

#[subscriber(broker = rabbit, exchange = "billing")]
async fn handle(_body: String) {}

fn main() {}
