use brook::prelude::*;

#[subscriber(topic = "orders", publish_broker = memory)]
async fn bill(order: String) -> String {
    order
}

fn main() {}
