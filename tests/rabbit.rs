#![cfg(feature = "rabbit")]
//! `#[subscriber(broker = rabbit, ...)]` end to end on the local RabbitMQ (127.0.0.1:5672): the
//! macro's arguments reach the queue declaration and the consumer, `&RabbitMessage` is
//! extracted, and RabbitMQ's state afterwards shows what the policy did.
//!
//! The queue's name comes from the environment (`BROOK_FACADE_RABBIT_QUEUE`, as a deployment
//! would set it) and the dead-letter exchange from the mount site, so each run uses fresh names
//! (parallel runs and reruns never share a queue); every queue the test declares has
//! `x-expires`, so a failed run leaves nothing behind.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use brook::prelude::{App, Broker, Message, MountNames};
use brook::rabbit::lapin::options::{
    BasicGetOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use brook::rabbit::lapin::types::{AMQPValue, FieldTable};
use brook::rabbit::lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use brook::rabbit::{subscriber, RabbitBroker, RabbitMessage};
use tokio::sync::mpsc;

const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// The prefixes of the per-run names.
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

/// Body, delivery count, redelivered flag of each delivery.
type Seen = (String, Option<u32>, bool);

static SEEN: Mutex<Option<mpsc::UnboundedSender<Seen>>> = Mutex::new(None);

/// Fails every time on a quorum queue: NackOnError requeues, and the second failure becomes a
/// basic.reject (max_deliveries = 2), which the queue dead-letters to `DLX`.
#[subscriber(
    queue = std::env::var("BROOK_FACADE_RABBIT_QUEUE").unwrap_or_else(|_| "orders".into()),
    queue_type = quorum,
    dead_letter_exchange = _,
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

/// Declares `queue` with `x-expires`, so a failed run leaves nothing behind.
async fn declare_expiring(ch: &Channel, queue: &str) {
    let mut expiring = FieldTable::default();
    expiring.insert("x-expires".into(), AMQPValue::LongLongInt(EXPIRES_MS));
    ch.queue_declare(queue.into(), QueueDeclareOptions::default(), expiring)
        .await
        .expect("declare a test queue");
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
    declare_expiring(&ch, &dlq).await;
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
    // What a deployment does: the environment names the queue, read when the App is built.
    std::env::set_var("BROOK_FACADE_RABBIT_QUEUE", &queue);
    let app = App::new(broker.clone())
        .subscribe(poison.dead_letter_exchange(dlx))
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

struct Billing;

/// Takes state the App below never registers.
#[subscriber(queue = _, ack_policy = NackOnError)]
async fn needs_state(_body: String, _billing: brook::State<Billing>) {}

/// A configuration mistake used to start fine and reject (dead-letter) every message without
/// running the handler; now the App refuses to start and the message stays in the queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_state_stops_the_start_and_no_message_is_touched() {
    let (_conn, ch) = admin().await;
    let queue = per_run("brook.facade.rabbit.state");
    let mut expiring = FieldTable::default();
    expiring.insert("x-expires".into(), AMQPValue::LongLongInt(EXPIRES_MS));
    ch.queue_declare(
        queue.as_str().into(),
        QueueDeclareOptions::default(),
        expiring,
    )
    .await
    .expect("queue");
    let broker = RabbitBroker::new(URL);
    broker.connect().await.unwrap();
    broker.publish("waiting", &queue).await.unwrap();
    let err = App::new(broker.clone())
        .subscribe(needs_state.queue(&queue))
        .start()
        .await
        .err()
        .expect("the App must refuse to start")
        .to_string();
    assert!(
        err.contains("subscriber `needs_state`: argument `_billing` can never be produced"),
        "{err}"
    );
    assert_eq!(
        depth(&ch, &queue).await,
        1,
        "the message is still in the queue"
    );
    broker.close().await.unwrap();
    ch.queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await
        .expect("delete test queue");
}
