#![cfg(feature = "rabbit")]
//! `#[subscriber(broker = rabbit, ...)]` end to end on the local RabbitMQ (127.0.0.1:5672): the
//! macro's arguments reach the queue declaration and the consumer, `&RabbitMessage` is
//! extracted, and RabbitMQ's state afterwards shows what the policy did.
//!
//! Macro arguments are literals, so a wrapper checks the arguments the macro produced and runs
//! the same subscription on per-run queue names (parallel runs and reruns never share a queue);
//! every queue the test declares has `x-expires`, so a failed run leaves nothing behind.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use brook::prelude::*;
use brook::rabbit::lapin::options::{
    BasicGetOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use brook::rabbit::lapin::types::{AMQPValue, FieldTable};
use brook::rabbit::lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use brook::rabbit::{RabbitBroker, RabbitMessage};
use brook::{Handler, HandlerError, Subscription, SubscriptionError};
use tokio::sync::mpsc;

const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// The names the macro below is written with; the test runs on per-run variants.
const QUEUE: &str = "brook.facade.rabbit.poison";
const DLX: &str = "brook.facade.rabbit.dlx";
/// Test queues disappear this long after their last use.
const EXPIRES_MS: i64 = 10 * 60 * 1000;

/// `name` with a suffix no other run (or test) uses.
fn per_run(name: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "{name}.{}-{nanos}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Runs the macro-generated handler on other queue names: checks that the macro's arguments
/// arrived, then builds the same subscription with `queue` and `dlx` renamed.
struct PerRun<H> {
    inner: H,
    queue: String,
    dlx: String,
}

impl<H: Handler> Handler for PerRun<H> {
    type Broker = H::Broker;

    fn subscription(&self) -> Result<Subscription, SubscriptionError> {
        let sub = self.inner.subscription()?;
        assert_eq!(sub.source_name(), QUEUE);
        assert_eq!(sub.str("queue_type"), Some("quorum"));
        assert_eq!(sub.str("dead_letter_exchange"), Some(DLX));
        assert_eq!(sub.policy(), AckPolicy::NackOnError);
        assert_eq!(sub.max_deliveries(), Some(2));
        assert_eq!(sub.int("prefetch"), Some(4));
        Subscription::new(sub.broker(), sub.name().to_owned())
            .arg("queue", self.queue.clone())
            // A name, as the macro passes `quorum` (its value type is not re-exported
            // elsewhere).
            .arg("queue_type", brook::ArgValue::Ident("quorum".into()))
            .arg("dead_letter_exchange", self.dlx.clone())
            .arg("ack_policy", sub.policy())
            .arg("max_deliveries", 2u32)
            .arg("prefetch", 4u32)
            .build()
    }

    async fn call(&self, msg: &Message, ctx: &Context) -> Result<(), HandlerError> {
        self.inner.call(msg, ctx).await
    }
}

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
    let queue = per_run(QUEUE);
    let dlx = per_run(DLX);
    let dlq = format!("{queue}.dlq");
    ch.exchange_declare(
        dlx.as_str().into(),
        ExchangeKind::Fanout,
        ExchangeDeclareOptions {
            auto_delete: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("dlx");
    let mut expiring = FieldTable::default();
    expiring.insert("x-expires".into(), AMQPValue::LongLongInt(EXPIRES_MS));
    ch.queue_declare(
        dlq.as_str().into(),
        QueueDeclareOptions::default(),
        expiring,
    )
    .await
    .expect("dlq");
    ch.queue_bind(
        dlq.as_str().into(),
        dlx.as_str().into(),
        "".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("bind dlq");

    let (tx, mut rx) = mpsc::unbounded_channel();
    *SEEN.lock().unwrap() = Some(tx);
    let broker = RabbitBroker::new(URL);
    let handler = PerRun {
        inner: poison,
        queue: queue.clone(),
        dlx,
    };
    let app = App::new(broker.clone())
        .subscribe(handler)
        .start()
        .await
        .unwrap();
    broker.publish("bad", &queue).await.unwrap();

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
    while depth(&ch, &dlq).await < 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "nothing dead-lettered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app.stop().await.unwrap();
    assert_eq!(depth(&ch, &queue).await, 0, "nothing left in the queue");
    let dead = ch
        .basic_get(dlq.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .expect("the dead letter");
    assert_eq!(dead.delivery.data, b"bad");
    assert!(rx.try_recv().is_err(), "no third delivery");
    // brook declared the queue itself (without x-expires): remove it.
    for q in [&queue, &dlq] {
        ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await
            .expect("delete test queue");
    }
}
