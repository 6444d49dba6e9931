//! Two consumers in one group: partitions move between them while messages are in flight, and
//! no message is lost (every one handled, every partition committed to its end).
mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use brook_runtime::{AckPolicy, App, Broker, Context, Handler, HandlerError, Message, Outgoing};
use bytes::Bytes;
use common::*;
use tokio::sync::mpsc;

struct Slow {
    sub: brook_runtime::SubscriptionBuilder,
    who: u8,
    seen: mpsc::UnboundedSender<(u8, String)>,
}

impl Handler for Slow {
    type Broker = brook_runtime::kind::Kafka;

    fn subscription(&self) -> brook_runtime::SubscriptionBuilder {
        self.sub.clone()
    }

    async fn call(&self, msg: &Message, _: &Context) -> brook_runtime::HandlerResult {
        let done: Result<(), HandlerError> = async move {
            // Slow enough that a rebalance finds messages in flight.
            tokio::time::sleep(Duration::from_millis(20)).await;
            let _ = self
                .seen
                .send((self.who, String::from_utf8_lossy(msg.body()).into_owned()));
            Ok(())
        }
        .await;
        done.map(|()| None)
    }
}

async fn publish(topic: &str, range: std::ops::Range<u32>) {
    let b = broker();
    for i in range {
        b.publish_message(Outgoing::new(topic, Bytes::from(i.to_string())))
            .await
            .expect("publish");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_consumers_in_a_group_lose_nothing_across_a_rebalance() {
    const PARTITIONS: i32 = 4;
    let (topic, group) = fresh_topic("rebalance", PARTITIONS).await;
    publish(&topic, 0..40).await; // round-robin: 10 per partition
    let (tx, mut rx) = mpsc::unbounded_channel();
    let handler = |who| Slow {
        sub: subscription(&topic, &group, AckPolicy::Ack),
        who,
        seen: tx.clone(),
    };
    let a = App::new(broker())
        .subscribe(handler(1))
        .start()
        .await
        .expect("start a");
    let mut seen: Vec<(u8, String)> = Vec::new();
    while seen.len() < 5 {
        seen.push(
            tokio::time::timeout(WAIT, rx.recv())
                .await
                .expect("call")
                .expect("open"),
        );
    }
    // B joins while A is busy: A's partitions are revoked with messages in flight.
    let b = App::new(broker())
        .subscribe(handler(2))
        .start()
        .await
        .expect("start b");
    let all: BTreeSet<String> = (0..60).map(|i| i.to_string()).collect();
    let mut published_more = false;
    loop {
        let distinct: BTreeSet<String> = seen.iter().map(|(_, s)| s.clone()).collect();
        if !published_more && (0..40).all(|i| distinct.contains(&i.to_string())) {
            publish(&topic, 40..60).await;
            published_more = true;
        }
        if distinct == all {
            break;
        }
        match tokio::time::timeout(WAIT, rx.recv()).await {
            Ok(Some(s)) => seen.push(s),
            _ => panic!(
                "missing after {WAIT:?}: {:?}",
                all.difference(&distinct).collect::<Vec<_>>()
            ),
        }
    }
    let by_b = seen.iter().filter(|(w, _)| *w == 2).count();
    assert!(by_b > 0, "the second consumer got partitions: {seen:?}");
    a.stop().await.expect("stop a");
    b.stop().await.expect("stop b");
    assert_eq!(
        committed(&group, &topic, PARTITIONS).await,
        [Some(15); PARTITIONS as usize],
        "every partition committed to its end"
    );
    assert!(remaining(&group, &topic, PARTITIONS).await.is_empty());
    let duplicates = seen.len() - all.len();
    eprintln!("handled {} messages ({duplicates} redelivered after the rebalance), {by_b} by the second consumer", seen.len());
}

/// Handler for the revocation test: the old owner (A) blocks on its first delivery of each
/// `hold*` message; the new owner (B) blocks on everything until released.
struct Holder {
    sub: brook_runtime::SubscriptionBuilder,
    who: u8,
    release: std::sync::Arc<tokio::sync::Notify>,
    seen: mpsc::UnboundedSender<(u8, i32, String)>,
    held: std::sync::Mutex<BTreeSet<String>>,
}

impl Handler for Holder {
    type Broker = brook_runtime::kind::Kafka;

    fn subscription(&self) -> brook_runtime::SubscriptionBuilder {
        self.sub.clone()
    }

    async fn call(&self, msg: &Message, _: &Context) -> brook_runtime::HandlerResult {
        let done: Result<(), HandlerError> = async move {
            let body = String::from_utf8_lossy(msg.body()).into_owned();
            let partition = msg
                .raw::<brook_kafka::KafkaMessage>()
                .map_or(-1, |k| k.partition());
            let block = match self.who {
                1 => {
                    body.starts_with("hold") && self.held.lock().expect("lock").insert(body.clone())
                }
                _ => true,
            };
            let released = self.release.notified();
            let _ = self.seen.send((self.who, partition, body));
            if block {
                released.await;
            }
            Ok(())
        }
        .await;
        done.map(|()| None)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_old_owner_never_commits_a_revoked_partition() {
    let (topic, group) = fresh_topic("revoke", 2).await;
    let b = broker();
    for (p, body) in [(0, "hold0"), (0, "tail0"), (1, "hold1"), (1, "tail1")] {
        b.publish_to_partition(
            Outgoing::new(topic.clone(), Bytes::from_static(body.as_bytes())),
            Some(p),
        )
        .await
        .expect("publish");
    }
    let (tx, mut rx) = mpsc::unbounded_channel();
    let holder = |who, release| {
        let sub = brook_runtime::Subscription::new(brook_runtime::BrokerKind::Kafka, "revoke")
            .arg("topic", topic.clone())
            .arg("group_id", group.clone())
            .arg(
                "auto_offset_reset",
                brook_runtime::ArgValue::Ident("earliest".into()),
            )
            .arg("ack_policy", AckPolicy::Ack)
            .arg("concurrency", 2u32);
        Holder {
            sub,
            who,
            release,
            seen: tx.clone(),
            held: Default::default(),
        }
    };
    let release_a = std::sync::Arc::new(tokio::sync::Notify::new());
    let release_b = std::sync::Arc::new(tokio::sync::Notify::new());
    let a = App::new(broker())
        .subscribe(holder(1, release_a.clone()))
        .start()
        .await
        .expect("start a");
    let mut calls = Vec::new();
    while calls.len() < 2 {
        calls.push(
            tokio::time::timeout(WAIT, rx.recv())
                .await
                .expect("a holds")
                .expect("open"),
        );
    }
    // A holds hold0 and hold1 unsettled. B joins: A's partitions are revoked, and B's share is
    // delivered again to B, which holds it.
    let bapp = App::new(broker())
        .subscribe(holder(2, release_b.clone()))
        .start()
        .await
        .expect("start b");
    let b_call = loop {
        let c = tokio::time::timeout(WAIT, rx.recv())
            .await
            .expect("b gets a partition")
            .expect("open");
        calls.push(c.clone());
        if c.0 == 2 {
            break c;
        }
    };
    let x = b_call.1; // B's partition
    let y = 1 - x; // A's partition after the rebalance
    assert!(
        b_call.2.starts_with("hold"),
        "B starts from the uncommitted offset 0: {calls:?}"
    );
    // A's handlers now finish: their acks are of deliveries from before the revocation.
    release_a.notify_waiters();
    let mut want = [None, None];
    want[y as usize] = Some(2);
    // A finishes its own partition (read again from offset 0 and committed to the end)...
    assert_eq!(
        wait_committed(&group, &topic, &want).await,
        want,
        "A commits its partition {y}; B's partition {x} stays uncommitted while B holds it: {calls:?}"
    );
    // ...while B still holds partition x's first message: nothing of x is committed by A.
    assert_eq!(committed(&group, &topic, 2).await, want);
    release_b.notify_waiters();
    // B's release lets it ack hold_x; tail_x then blocks B again: release until done.
    let started = std::time::Instant::now();
    while committed(&group, &topic, 2).await != [Some(2), Some(2)] {
        assert!(
            started.elapsed() < WAIT,
            "B finishes partition {x}: {calls:?}"
        );
        release_b.notify_waiters();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    a.stop().await.expect("stop a");
    bapp.stop().await.expect("stop b");
    assert!(remaining(&group, &topic, 2).await.is_empty());
}

/// The old owner blocks on the first delivery of each `hold*` message (the new owner on
/// nothing), so each partition has one message running, one queued and a third parked: paused.
struct PauseHolder {
    sub: brook_runtime::SubscriptionBuilder,
    who: u8,
    release: std::sync::Arc<tokio::sync::Notify>,
    seen: mpsc::UnboundedSender<(u8, i32, String)>,
    held: std::sync::Mutex<BTreeSet<String>>,
}

impl Handler for PauseHolder {
    type Broker = brook_runtime::kind::Kafka;

    fn subscription(&self) -> brook_runtime::SubscriptionBuilder {
        self.sub.clone()
    }

    async fn call(&self, msg: &Message, _: &Context) -> brook_runtime::HandlerResult {
        let done: Result<(), HandlerError> = async move {
            let body = String::from_utf8_lossy(msg.body()).into_owned();
            let partition = msg
                .raw::<brook_kafka::KafkaMessage>()
                .map_or(-1, |k| k.partition());
            let block = self.who == 1
                && body.starts_with("hold")
                && self.held.lock().expect("lock").insert(body.clone());
            let released = self.release.notified();
            let _ = self.seen.send((self.who, partition, body));
            if block {
                released.await;
            }
            Ok(())
        }
        .await;
        done.map(|()| None)
    }
}

/// librdkafka keeps a partition's application pause across revocation and re-assignment: a
/// partition the old owner had paused (too many messages out) and gets back must be fetched
/// again, or it stalls for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_paused_when_revoked_is_consumed_again_when_assigned_back() {
    let (topic, group) = fresh_topic("pausedrevoke", 2).await;
    let b = broker();
    for p in 0..2 {
        for body in ["hold", "a", "b", "c", "d"] {
            b.publish_to_partition(
                Outgoing::new(topic.clone(), Bytes::from(format!("{body}{p}"))),
                Some(p),
            )
            .await
            .expect("publish");
        }
    }
    let (tx, mut rx) = mpsc::unbounded_channel();
    let release = std::sync::Arc::new(tokio::sync::Notify::new());
    let holder = |who| {
        let sub = brook_runtime::Subscription::new(brook_runtime::BrokerKind::Kafka, "paused")
            .arg("topic", topic.clone())
            .arg("group_id", group.clone())
            .arg(
                "auto_offset_reset",
                brook_runtime::ArgValue::Ident("earliest".into()),
            )
            .arg("ack_policy", AckPolicy::Ack)
            .arg("concurrency", 2u32);
        PauseHolder {
            sub,
            who,
            release: release.clone(),
            seen: tx.clone(),
            held: Default::default(),
        }
    };
    let a = App::new(broker())
        .subscribe(holder(1))
        .start()
        .await
        .expect("start a");
    let mut calls = Vec::new();
    while calls.len() < 2 {
        calls.push(
            tokio::time::timeout(WAIT, rx.recv())
                .await
                .expect("a holds both partitions")
                .expect("open"),
        );
    }
    // A now holds hold0 and hold1 running, a0 and a1 queued, b0 and b1 parked (paused: the
    // parking follows the first calls within milliseconds; B's join takes seconds). B joins:
    // both partitions are revoked from A, and one is assigned back to it.
    let bapp = App::new(broker())
        .subscribe(holder(2))
        .start()
        .await
        .expect("start b");
    loop {
        let c = tokio::time::timeout(WAIT, rx.recv())
            .await
            .expect("b gets a partition")
            .expect("open");
        calls.push(c.clone());
        if c.0 == 2 {
            break;
        }
    }
    release.notify_waiters();
    // Both partitions are read to their end: A's by A, fetching again from offset 0.
    assert_eq!(
        wait_committed(&group, &topic, &[Some(5), Some(5)]).await,
        [Some(5), Some(5)],
        "a partition paused at revocation stalls: {calls:?}"
    );
    a.stop().await.expect("stop a");
    bapp.stop().await.expect("stop b");
    assert!(remaining(&group, &topic, 2).await.is_empty());
}
