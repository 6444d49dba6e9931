#![cfg(feature = "rabbit")]
//! `#[subscriber(broker = rabbit, ...)]` end to end on the local RabbitMQ (127.0.0.1:5672): the
//! macro's arguments reach the queue declaration and the consumer, `&RabbitMessage` is
//! extracted, and RabbitMQ's state afterwards shows what the policy did.
//!
//! Macro arguments are literals, so these tests cannot use per-run names; each one deletes its
//! queues first, so reruns start clean.

use std::sync::Mutex;
use std::time::Duration;

use brook::prelude::*;
use brook::rabbit::lapin::options::{
    BasicGetOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use brook::rabbit::lapin::types::FieldTable;
use brook::rabbit::lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use brook::rabbit::{RabbitBroker, RabbitMessage};
use tokio::sync::mpsc;

const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const QUEUE: &str = "brook.facade.rabbit.poison";
const DLX: &str = "brook.facade.rabbit.dlx";
const DLQ: &str = "brook.facade.rabbit.dlq";

/// Body, delivery count, redelivered flag of each delivery.
type Seen = (String, Option<u32>, bool);

static SEEN: Mutex<Option<mpsc::UnboundedSender<Seen>>> = Mutex::new(None);

/// Fails every time on a quorum queue: NackOnError requeues, and the second failure becomes a
/// basic.reject (max_deliveries = 2), which the queue dead-letters to `DLX`.
#[subscriber(
    broker = rabbit,
    queue = "brook.facade.rabbit.poison",
    queue_type = quorum,
    dead_letter_exchange = "brook.facade.rabbit.dlx",
    ack_policy = NackOnError,
    max_deliveries = 2,
    prefetch = 4
)]
async fn poison(body: String, msg: &Message, rabbit: &RabbitMessage) -> anyhow::Result<()> {
    if let Some(tx) = SEEN.lock().unwrap().as_ref() {
        let _ = tx.send((body, msg.delivery_count(), rabbit.redelivered()));
    }
    anyhow::bail!("always fails")
}

async fn admin() -> (Connection, Channel) {
    let conn = Connection::connect(URL, ConnectionProperties::default())
        .await
        .expect("RabbitMQ on 127.0.0.1:5672");
    let ch = conn.create_channel().await.expect("channel");
    (conn, ch)
}

async fn depth(ch: &Channel, queue: &str) -> u32 {
    let options = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    ch.queue_declare(queue.into(), options, FieldTable::default())
        .await
        .expect("queue exists")
        .message_count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_macro_declared_quorum_subscriber_dead_letters_after_max_deliveries() {
    let (_conn, ch) = admin().await;
    for q in [QUEUE, DLQ] {
        ch.queue_delete(q.into(), QueueDeleteOptions::default())
            .await
            .expect("delete old queue");
    }
    ch.exchange_declare(
        DLX.into(),
        ExchangeKind::Fanout,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("dlx");
    ch.queue_declare(
        DLQ.into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("dlq");
    ch.queue_bind(
        DLQ.into(),
        DLX.into(),
        "".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("bind dlq");

    let (tx, mut rx) = mpsc::unbounded_channel();
    *SEEN.lock().unwrap() = Some(tx);
    let broker = RabbitBroker::new(URL);
    let app = App::new(broker.clone())
        .subscribe(poison)
        .start()
        .await
        .unwrap();
    broker.publish("bad", QUEUE).await.unwrap();

    let mut seen = Vec::new();
    for _ in 0..2 {
        seen.push(
            tokio::time::timeout(Duration::from_secs(15), rx.recv())
                .await
                .expect("a delivery in time")
                .unwrap(),
        );
    }
    assert_eq!(
        seen,
        vec![
            ("bad".to_owned(), Some(1), false),
            ("bad".to_owned(), Some(2), true)
        ]
    );
    // Dead-lettered: the dead-letter queue gets it (bounded wait for RabbitMQ to route it).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while depth(&ch, DLQ).await < 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "nothing dead-lettered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app.stop().await.unwrap();
    assert_eq!(depth(&ch, QUEUE).await, 0, "nothing left in the queue");
    let dead = ch
        .basic_get(DLQ.into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .expect("the dead letter");
    assert_eq!(dead.delivery.data, b"bad");
    assert!(rx.try_recv().is_err(), "no third delivery");
}
