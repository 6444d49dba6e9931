#![cfg(feature = "nats")]
//! `#[subscriber(broker = nats, ...)]` end to end on the local nats-server (127.0.0.1:4222):
//! the macro's arguments reach the JetStream consumer, `&NatsMessage` is extracted, and the
//! server's state afterwards shows what the policy did.
//!
//! Macro arguments are literals, so these tests cannot use per-run names; each one deletes
//! its stream first, so reruns start clean.

use std::sync::Mutex;
use std::time::Duration;

use brook::nats::async_nats::jetstream;
use brook::nats::{NatsBroker, NatsMessage};
use brook::prelude::*;
use tokio::sync::mpsc;

const URL: &str = "nats://127.0.0.1:4222";

/// One handler call: body, stream sequence, delivery count.
type Call = (String, Option<u64>, Option<u32>);

static SEEN: Mutex<Option<mpsc::UnboundedSender<Call>>> = Mutex::new(None);

fn report(what: String, seq: Option<u64>, count: Option<u32>) {
    if let Some(tx) = SEEN.lock().unwrap().as_ref() {
        let _ = tx.send((what, seq, count));
    }
}

/// Fails every time: NackOnError redelivers once; the second delivery is the last one
/// max_deliveries = 2 allows, so its failure is turned into a +TERM instead of a -NAK.
#[subscriber(
    broker = nats,
    subject = "brook.facade.poison",
    stream = "BROOK_FACADE_POISON",
    durable = "facade",
    ack_policy = NackOnError,
    max_deliveries = 2,
    ack_wait_ms = 5000
)]
async fn poison(body: String, msg: &NatsMessage) -> anyhow::Result<()> {
    let info = msg.info().expect("JetStream metadata");
    report(
        body,
        Some(info.stream_sequence),
        Some(info.delivered as u32),
    );
    anyhow::bail!("always fails")
}

async fn fresh_stream(js: &jetstream::Context, name: &str) {
    // Ignore "not found": the point is only that nothing old is left.
    let _ = js.delete_stream(name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_macro_declared_jetstream_subscriber_settles_on_the_server() {
    let admin = NatsBroker::new(URL);
    let js = admin
        .jetstream()
        .await
        .expect("nats-server on 127.0.0.1:4222");
    fresh_stream(&js, "BROOK_FACADE_POISON").await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    *SEEN.lock().unwrap() = Some(tx);

    let broker = NatsBroker::new(URL);
    let app = App::new(broker.clone())
        .subscribe(poison)
        .start()
        .await
        .unwrap();
    broker.publish("bad", "brook.facade.poison").await.unwrap();

    let mut calls = Vec::new();
    for _ in 0..2 {
        calls.push(
            tokio::time::timeout(Duration::from_secs(15), rx.recv())
                .await
                .expect("a call")
                .expect("open"),
        );
    }
    assert_eq!(
        calls,
        vec![
            ("bad".to_owned(), Some(1), Some(1)),
            ("bad".to_owned(), Some(1), Some(2))
        ]
    );
    // No third call: the second failure was settled with +TERM, not -NAK.
    assert!(
        tokio::time::timeout(Duration::from_millis(500), rx.recv())
            .await
            .is_err(),
        "handled more than max_deliveries times"
    );
    app.stop().await.unwrap();

    let info = js
        .get_stream("BROOK_FACADE_POISON")
        .await
        .unwrap()
        .consumer_info("facade")
        .await
        .unwrap();
    assert_eq!(
        info.config.ack_wait,
        Duration::from_secs(5),
        "ack_wait_ms reached the consumer"
    );
    assert_eq!((info.num_pending, info.num_ack_pending), (0, 0), "{info:?}");
    assert_eq!(
        info.ack_floor.stream_sequence, 1,
        "terminated: the floor moved past it"
    );
    assert_eq!(info.delivered.stream_sequence, 1);
}
