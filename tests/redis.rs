#![cfg(feature = "redis")]
//! `#[subscriber(broker = redis, ...)]` end to end on the local Redis (127.0.0.1:6379): the
//! macro's arguments reach the stream consumer, `&RedisMessage` is extracted, and Redis's state
//! afterwards (pending list, dead-letter stream) shows what the policy did.
//!
//! Macro arguments are literals, so the test cannot use per-run names; it deletes its keys
//! first, so reruns start clean.

use std::sync::Mutex;
use std::time::Duration;

use brook::prelude::*;
use brook::redis::fred::prelude::*;
use brook::redis::fred::types::Value;
use brook::redis::{RedisBroker, RedisMessage};
use tokio::sync::mpsc;

const URL: &str = "redis://127.0.0.1:6379";
const STREAM: &str = "brook.facade.redis.poison";
const DEAD: &str = "brook.facade.redis.poison.dead";

/// Body, delivery count, entry id of each delivery.
type Seen = (String, Option<u32>, String);

static SEEN: Mutex<Option<mpsc::UnboundedSender<Seen>>> = Mutex::new(None);

/// Fails every time: NackOnError redelivers (XCLAIM, delivery count from Redis), and the
/// second failure becomes a reject (max_deliveries = 2): XACK + XADD to the dead-letter stream.
#[subscriber(
    broker = redis,
    stream = "brook.facade.redis.poison",
    group = "facade",
    consumer = "facade-1",
    dead_letter_stream = "brook.facade.redis.poison.dead",
    ack_policy = NackOnError,
    max_deliveries = 2,
    batch = 4
)]
async fn poison(body: String, msg: &Message, redis: &RedisMessage) -> anyhow::Result<()> {
    if let Some(tx) = SEEN.lock().unwrap().as_ref() {
        let _ = tx.send((
            body,
            msg.delivery_count(),
            redis.entry_id().unwrap_or_default().to_owned(),
        ));
    }
    anyhow::bail!("always fails")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nack_on_error_with_max_deliveries_dead_letters_on_redis() {
    let admin = Builder::from_config(Config::from_url(URL).unwrap())
        .build()
        .unwrap();
    admin.init().await.expect("Redis on 127.0.0.1:6379");
    let _: i64 = admin.del(vec![STREAM, DEAD]).await.unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    *SEEN.lock().unwrap() = Some(tx);

    let broker = RedisBroker::new(URL);
    let app = App::new(broker.clone())
        .subscribe(poison)
        .start()
        .await
        .unwrap();
    broker
        .publish(&"poison", &format!("stream:{STREAM}"))
        .await
        .unwrap();
    let mut seen = Vec::new();
    for _ in 0..2 {
        seen.push(
            tokio::time::timeout(Duration::from_secs(15), rx.recv())
                .await
                .expect("delivered in time")
                .unwrap(),
        );
    }
    app.stop().await.unwrap();
    assert_eq!(
        seen.iter().map(|s| (s.0.as_str(), s.1)).collect::<Vec<_>>(),
        vec![("poison", Some(1)), ("poison", Some(2))]
    );
    assert_eq!(seen[0].2, seen[1].2, "the same entry, redelivered");
    assert!(rx.try_recv().is_err(), "no third delivery");

    let pending: Value = admin.xpending(STREAM, "facade", ()).await.unwrap();
    assert_eq!(
        pending.into_array().first().and_then(|v| v.as_u64()),
        Some(0),
        "nothing left pending"
    );
    let dead: u64 = admin.xlen(DEAD).await.unwrap();
    assert_eq!(dead, 1, "dead-lettered once");
    let _: i64 = admin.del(vec![STREAM, DEAD]).await.unwrap();
    admin.quit().await.unwrap();
}
