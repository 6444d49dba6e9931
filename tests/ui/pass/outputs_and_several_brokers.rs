use brook::kafka::KafkaBroker;
use brook::prelude::*;
use brook::rabbit::RabbitBroker;

#[derive(serde::Deserialize)]
struct Order {
    id: u64,
}

#[derive(serde::Serialize)]
struct Invoice {
    order: u64,
}

#[brook::rabbit::subscriber(queue = "orders", publish = "invoices", publish_broker = kafka)]
async fn bill(order: Order) -> anyhow::Result<Invoice> {
    Ok(Invoice { order: order.id })
}

#[brook::kafka::subscriber(topic = "invoices", group_id = "mail", publish = _)]
async fn mail(invoice: String) -> Option<Publish<String>> {
    Some(Publish::new(invoice).header("x-kind", "mail"))
}

#[brook::kafka::subscriber(topic = "orders-raw", group_id = "split")]
async fn split(lines: Vec<String>, publisher: Publisher<'_>) -> Result<(), brook::BrokerError> {
    for line in lines {
        publisher.publish(&line, "lines").await?;
    }
    Ok(())
}

fn main() {
    let _app = App::new(RabbitBroker::new("amqp://127.0.0.1"))
        .with_broker(KafkaBroker::new("127.0.0.1:9092"))
        .subscribe(bill)
        .subscribe(mail.publish("mail-out"))
        .subscribe(split);
}
