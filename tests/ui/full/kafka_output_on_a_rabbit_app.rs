use brook::prelude::*;
use brook::rabbit::RabbitBroker;

#[brook::kafka::subscriber(topic = "orders", group_id = "billing", publish = "invoices")]
async fn bill(order: String) -> String {
    order
}

fn main() {
    // A Kafka handler on an App that has only RabbitMQ: refused by the compiler.
    let _ = App::new(RabbitBroker::new("amqp://127.0.0.1")).subscribe(bill);
}
