// The same source compiles, and means the same, whatever other broker features are on (this
// fixture runs in a build with only `kafka` and in one with every broker): the broker comes from
// the path or `broker = ...`, never from which features happen to be enabled. Names come from
// literals, constants, the environment, function calls and the mount site.
use brook::prelude::*;

mod cfg {
    pub const ORDERS: &str = "orders";
    pub fn group() -> String {
        std::env::var("BILLING_GROUP").unwrap_or_else(|_| "billing".into())
    }
}

#[derive(serde::Deserialize)]
struct Order {
    id: u64,
}

// brook::kafka::subscriber: a Kafka subscriber, however many brokers are compiled in.
#[brook::kafka::subscriber(
    topic = std::env::var("ORDERS_TOPIC").unwrap_or_else(|_| cfg::ORDERS.into()),
    group_id = cfg::group(),
    ack_policy = NackOnError
)]
async fn bill(order: Order, msg: &brook::kafka::KafkaMessage) -> anyhow::Result<()> {
    let _ = (order.id, msg.partition());
    Ok(())
}

// Names left to the mount site.
#[brook::kafka::subscriber(topic = _, group_id = _, ack_policy = NackOnError)]
async fn audit(_order: Order) {}

// brook::subscriber with no broker is the in-memory broker, always.
#[subscriber(topic = cfg::ORDERS, ack_policy = NackOnError)]
async fn in_memory(_order: Order) {}

// The in-memory broker's own path.
#[brook::memory::subscriber(topic = "orders")]
async fn also_in_memory(_order: Order) {}

// A user type named `Message` is a payload like any other.
#[derive(serde::Deserialize)]
struct Message {
    text: String,
}

#[brook::memory::subscriber(topic = "messages")]
async fn user_message(m: Message) {
    let _ = m.text;
}

struct Config {
    orders: String,
    group: String,
}

fn main() {
    let config = Config {
        orders: "orders-prod".into(),
        group: "billing-prod".into(),
    };
    let _kafka = App::new(brook::kafka::KafkaBroker::new("127.0.0.1:9092"))
        .subscribe(bill)
        .subscribe(audit.topic(&config.orders).group_id(&config.group));
    // Kafka handlers can be tested on the in-memory broker.
    let _memory = App::new(MemoryBroker::new())
        .subscribe(bill)
        .subscribe(in_memory)
        .subscribe(also_in_memory)
        .subscribe(user_message);
}
