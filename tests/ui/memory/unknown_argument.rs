use brook::prelude::*;

#[subscriber(topik = "orders")]
async fn handle(_body: String) {}

fn main() {}
