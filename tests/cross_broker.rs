#![cfg(all(feature = "rabbit", feature = "kafka"))]
//! One App on two brokers: a handler consumes from RabbitMQ and its result is published to
//! Kafka (`publish_broker = kafka`), a migration's bridge. Checked from outside: the record is in
//! the Kafka topic with the RabbitMQ message's correlation id, and the RabbitMQ queue is empty
//! once the App has stopped (acked, not handed back).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use brook::kafka::rdkafka::consumer::{BaseConsumer, Consumer};
use brook::kafka::rdkafka::message::{Headers as _, Message as _};
use brook::kafka::rdkafka::{ClientConfig, Offset, TopicPartitionList};
use brook::kafka::KafkaBroker;
use brook::prelude::*;
use brook::rabbit::lapin::options::QueueDeclareOptions;
use brook::rabbit::lapin::types::{AMQPValue, FieldTable};
use brook::rabbit::lapin::{Connection, ConnectionProperties};
use brook::rabbit::RabbitBroker;
use serde::{Deserialize, Serialize};

const AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const KAFKA: &str = "127.0.0.1:9092";

#[derive(Debug, Deserialize, Serialize, PartialEq)]
struct Order {
    id: u64,
}

#[derive(Debug, Deserialize, Serialize, PartialEq)]
struct Shipped {
    order: u64,
    carrier: String,
}

#[brook::rabbit::subscriber(
    queue = _,
    declare = false,
    publish = _,
    publish_broker = kafka,
    ack_policy = NackOnError
)]
async fn ship(order: Order) -> anyhow::Result<Shipped> {
    Ok(Shipped {
        order: order.id,
        carrier: "Poste ünïcode".into(),
    })
}

fn fresh(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{prefix}-{}-{nanos}", std::process::id())
}

/// The records of partition 0 of `topic`, from the start, until `n` arrived (30 s at most).
fn read_records(topic: String, n: usize) -> Vec<(Vec<u8>, Option<String>)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", KAFKA)
        .set("group.id", fresh("brook-cross-reader"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("Kafka consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&topic, 0, Offset::Beginning)
        .expect("partition");
    consumer.assign(&tpl).expect("assign");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut records = Vec::new();
    while records.len() < n && std::time::Instant::now() < deadline {
        let Some(Ok(record)) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let correlation_id = record.headers().and_then(|h| {
            h.iter()
                .find(|h| h.key == "correlation_id")
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
        });
        records.push((
            record.payload().unwrap_or_default().to_vec(),
            correlation_id,
        ));
    }
    records
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rabbitmq_handler_publishes_its_result_to_kafka() {
    let (queue, topic) = (fresh("brook.cross.orders"), fresh("brook-cross-shipped"));
    let kafka = KafkaBroker::new(KAFKA);
    kafka.connect().await.expect("Kafka on 127.0.0.1:9092");
    kafka.create_topic(&topic, 1).await.expect("create topic");
    // Declared here (expiring, so a failed run leaves nothing), so that it outlives the App
    // and its state can be read afterwards.
    let conn = Connection::connect(AMQP, ConnectionProperties::default())
        .await
        .unwrap();
    let channel = conn.create_channel().await.unwrap();
    let mut args = FieldTable::default();
    args.insert("x-expires".into(), AMQPValue::LongInt(600_000));
    channel
        .queue_declare(queue.as_str().into(), QueueDeclareOptions::default(), args)
        .await
        .unwrap();
    let rabbit = RabbitBroker::new(AMQP);
    let app = App::new(rabbit.clone())
        .with_broker(kafka)
        .subscribe(ship.queue(&queue).publish(&topic))
        .start()
        .await
        .expect("start");

    let order = Outgoing::encode(&Order { id: 42 }, queue.as_str())
        .unwrap()
        .with_correlation_id("migration-7");
    rabbit.publish_message(order).await.expect("publish");
    let records = tokio::task::spawn_blocking({
        let topic = topic.clone();
        move || read_records(topic, 1)
    })
    .await
    .unwrap();
    assert_eq!(records.len(), 1, "the result reached Kafka");
    let shipped: Shipped = serde_json::from_slice(&records[0].0).unwrap();
    assert_eq!(
        shipped,
        Shipped {
            order: 42,
            carrier: "Poste ünïcode".into()
        }
    );
    assert_eq!(records[0].1.as_deref(), Some("migration-7"));
    app.stop().await.expect("stop");

    // Acked on RabbitMQ: nothing is back in the queue once the consumer is gone (an unacked
    // message would be requeued when the App closed its channel).
    let q = channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("the queue outlives the App");
    assert_eq!(q.message_count(), 0, "the input was acked");
    assert_eq!(q.consumer_count(), 0);
}

#[brook::kafka::subscriber(topic = "brook-cross-never", group_id = "g")]
async fn on_kafka(_: &Message) {}

#[tokio::test]
async fn an_output_broker_the_app_lacks_stops_the_start() {
    let err = App::new(RabbitBroker::new(AMQP))
        .subscribe(ship.queue("q").publish("t"))
        .start()
        .await
        .err()
        .expect("refused");
    assert_eq!(
        err.to_string(),
        "the App cannot start: subscriber `ship` publishes its result on Kafka (publish_broker = kafka), but the App has no Kafka broker: add it with App::with_broker(...)"
    );
    // A handler for the second broker runs on it (this compiles because the App has Kafka).
    let _ = App::new(RabbitBroker::new(AMQP))
        .with_broker(KafkaBroker::new(KAFKA))
        .subscribe(on_kafka);
}
