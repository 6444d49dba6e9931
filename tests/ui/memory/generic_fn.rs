use brook::prelude::*;

#[subscriber(topic = "orders")]
async fn handle<T: serde::de::DeserializeOwned>(_body: T) {}

fn main() {}
