use brook::prelude::*;

#[subscriber(broker = rabit, queue = "orders")]
async fn handle(_body: String) {}

fn main() {}
