use brook::prelude::*;

#[subscriber(topic = "orders", publish = "invoices", publish_broker = kafka)]
async fn bill(order: String) -> String {
    order
}

fn main() {}
