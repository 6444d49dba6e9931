//! Every policy row on the real broker (tansu, 127.0.0.1:9092), observed through the group's
//! committed offsets and what a fresh member of the group would read afterwards.
mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use brook_runtime::{AckPolicy, App, Broker, Context, Handler, HandlerError, Message, Outgoing};
use bytes::Bytes;
use common::*;
use tokio::sync::Notify;

async fn publish_all(topic: &str, bodies: &[&'static str]) {
    let b = broker();
    for body in bodies {
        b.publish_to_partition(
            Outgoing::new(topic, Bytes::from_static(body.as_bytes())),
            Some(0),
        )
        .await
        .expect("publish");
    }
}

fn bodies(seen: &[Seen]) -> Vec<String> {
    seen.iter()
        .map(|s| String::from_utf8_lossy(&s.body).into_owned())
        .collect()
}

fn remaining_bodies(r: &[(i32, i64, Bytes)]) -> Vec<String> {
    r.iter()
        .map(|(_, _, b)| String::from_utf8_lossy(b).into_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_commits_offset_plus_one_in_the_background_and_on_close() {
    let (topic, group) = fresh_topic("ack", 1).await;
    publish_all(&topic, &["a", "b", "c"]).await;
    let (h, mut rx) = Scripted::new(subscription(&topic, &group, AckPolicy::Ack), |s, _| {
        if s.body == "b" {
            Err(failed()) // Ack acks failures too
        } else {
            Ok(())
        }
    });
    let app = App::new(broker())
        .subscribe(h)
        .start()
        .await
        .expect("start");
    let seen = recv_n(&mut rx, 3).await;
    assert_eq!(bodies(&seen), ["a", "b", "c"]);
    // Committed by librdkafka's background commit while the App still runs.
    assert_eq!(wait_committed(&group, &topic, &[Some(3)]).await, [Some(3)]);
    app.stop().await.expect("stop");
    assert_eq!(committed(&group, &topic, 1).await, [Some(3)]);
    assert!(remaining(&group, &topic, 1).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_first_commits_before_the_handler_even_when_it_fails() {
    let (topic, group) = fresh_topic("ackfirst", 1).await;
    publish_all(&topic, &["a", "b"]).await;
    let (h, mut rx) = Scripted::new(subscription(&topic, &group, AckPolicy::AckFirst), |_, _| {
        Err(failed())
    });
    let app = App::new(broker())
        .subscribe(h)
        .start()
        .await
        .expect("start");
    let seen = recv_n(&mut rx, 2).await;
    assert_eq!(bodies(&seen), ["a", "b"]);
    app.stop().await.expect("stop");
    assert_eq!(committed(&group, &topic, 1).await, [Some(2)]);
    assert!(remaining(&group, &topic, 1).await.is_empty());
}

/// AckFirst commits before the handler: the offset of a message whose handler is still
/// running is committed already (and a crash now would lose it: at-most-once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_first_commits_while_the_handler_still_runs() {
    let (topic, group) = fresh_topic("ackfirstrun", 1).await;
    publish_all(&topic, &["block", "next"]).await;
    let release = Arc::new(Notify::new());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let h = BlockingHandler {
        sub: subscription(&topic, &group, AckPolicy::AckFirst),
        release: release.clone(),
        blocked: Arc::new(AtomicBool::new(false)),
        calls: tx,
    };
    let app = App::new(broker())
        .subscribe(h)
        .start()
        .await
        .expect("start");
    let first = tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("call")
        .expect("open");
    assert_eq!(first.1, "block");
    assert_eq!(
        wait_committed(&group, &topic, &[Some(1)]).await,
        [Some(1)],
        "committed while the handler is still running"
    );
    release.notify_one();
    let second = tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("call")
        .expect("open");
    assert_eq!(second.1, "next");
    app.stop().await.expect("stop");
    assert_eq!(committed(&group, &topic, 1).await, [Some(2)]);
}

/// Passthrough cannot switch on librdkafka's automatic offset store (it would commit every
/// message as soon as it is read, whatever the policy) nor replace the group: refused by
/// `Broker::check` (what `App::start` calls before connecting) and by `subscribe`.
#[tokio::test]
async fn passthrough_of_settings_the_policy_depends_on_is_refused() {
    let (topic, group) = fresh_topic("owned", 1).await;
    let sub = subscription(&topic, &group, AckPolicy::NackOnError)
        .build()
        .expect("valid subscription");
    for (key, value) in [("enable.auto.offset.store", "true"), ("group.id", "other")] {
        let b = broker().with_consumer_config(key, value);
        let checked = b.check(&sub).expect_err("refused by check");
        let err = b.subscribe(&sub).await.expect_err("refused by subscribe");
        for err in [checked, err] {
            assert!(
                matches!(err, brook_runtime::BrokerError::Invalid { .. }),
                "{err:?}"
            );
            assert!(err.to_string().contains(key), "{err}");
        }
        let started = App::new(b)
            .subscribe(
                Scripted::new(
                    subscription(&topic, &group, AckPolicy::NackOnError),
                    |_, _| Ok(()),
                )
                .0,
            )
            .start()
            .await;
        let err = started.err().expect("the App refuses to start");
        assert!(err.to_string().contains(key), "{err}");
    }
}

/// Without a group the consumer assigns itself every partition; a topic with none (it does
/// not exist) is an error, not a consumer that waits forever.
#[tokio::test]
async fn without_a_group_an_unknown_topic_fails_subscribe() {
    let topic = fresh("missing");
    let sub = brook_runtime::Subscription::new(brook_runtime::BrokerKind::Kafka, "missing")
        .arg("topic", topic.clone())
        .arg("ack_policy", AckPolicy::AckFirst)
        .build()
        .expect("sub");
    let result = tokio::time::timeout(WAIT, broker().subscribe(&sub))
        .await
        .expect("bounded");
    let err = result.expect_err("no partitions to read");
    assert!(err.to_string().contains(&topic), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_commits_like_ack() {
    let (topic, group) = fresh_topic("reject", 1).await;
    publish_all(&topic, &["bad", "good"]).await;
    let (h, mut rx) = Scripted::new(
        subscription(&topic, &group, AckPolicy::RejectOnError),
        |s, _| {
            if s.body == "bad" {
                Err(failed())
            } else {
                Ok(())
            }
        },
    );
    let app = App::new(broker())
        .subscribe(h)
        .start()
        .await
        .expect("start");
    let seen = recv_n(&mut rx, 2).await;
    assert_eq!(
        bodies(&seen),
        ["bad", "good"],
        "a rejected message is not redelivered"
    );
    app.stop().await.expect("stop");
    assert_eq!(committed(&group, &topic, 1).await, [Some(2)]);
    assert!(remaining(&group, &topic, 1).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nack_rereads_the_message_then_the_later_ones_in_order() {
    let (topic, group) = fresh_topic("nack", 1).await;
    publish_all(&topic, &["m0", "m1", "m2", "m3"]).await;
    let (h, mut rx) = Scripted::new(
        subscription(&topic, &group, AckPolicy::NackOnError),
        |s, _| {
            if s.body == "m1" && s.delivery == Some(1) {
                Err(failed())
            } else {
                Ok(())
            }
        },
    );
    let app = App::new(broker())
        .subscribe(h)
        .start()
        .await
        .expect("start");
    let seen = recv_n(&mut rx, 5).await;
    assert_eq!(bodies(&seen), ["m0", "m1", "m1", "m2", "m3"]);
    assert_eq!(
        seen.iter().map(|s| s.delivery).collect::<Vec<_>>(),
        [Some(1), Some(1), Some(2), Some(1), Some(1)]
    );
    assert_eq!(seen[2].offset, 1, "the nacked offset is read again");
    // m3 is committed once it is handled; with concurrency 1 any repeat of m2 or m3 would
    // have come before that commit, so the channel holds everything there will be.
    assert_eq!(wait_committed(&group, &topic, &[Some(4)]).await, [Some(4)]);
    app.stop().await.expect("stop");
    let mut extra = Vec::new();
    while let Ok(s) = rx.try_recv() {
        extra.push(s);
    }
    assert!(extra.is_empty(), "later messages handled twice: {extra:?}");
    assert_eq!(committed(&group, &topic, 1).await, [Some(4)]);
    assert!(remaining(&group, &topic, 1).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nacked_message_holds_back_the_commit_and_everything_after_it() {
    let (topic, group) = fresh_topic("nackhold", 1).await;
    publish_all(&topic, &["m0", "poison", "m2", "m3"]).await;
    let (h, mut rx) = Scripted::new(
        subscription(&topic, &group, AckPolicy::NackOnError),
        |s, _| {
            if s.body == "poison" {
                Err(failed())
            } else {
                Ok(())
            }
        },
    );
    let app = App::new(broker())
        .subscribe(h)
        .start()
        .await
        .expect("start");
    // m0, then the poison message again and again: never the later ones.
    let seen = recv_n(&mut rx, 6).await;
    assert_eq!(
        bodies(&seen),
        ["m0", "poison", "poison", "poison", "poison", "poison"]
    );
    assert_eq!(
        seen[1..].iter().map(|s| s.delivery).collect::<Vec<_>>(),
        [Some(1), Some(2), Some(3), Some(4), Some(5)]
    );
    // The background commit (every 200 ms) has run meanwhile: it committed m0 only.
    assert_eq!(wait_committed(&group, &topic, &[Some(1)]).await, [Some(1)]);
    app.stop().await.expect("stop");
    assert_eq!(committed(&group, &topic, 1).await, [Some(1)]);
    assert_eq!(
        remaining_bodies(&remaining(&group, &topic, 1).await),
        ["poison", "m2", "m3"]
    );
}

/// Manual: what the handler does not settle holds the commit back at its offset, even when
/// later messages are acked.
struct ManualHandler {
    sub: brook_runtime::SubscriptionBuilder,
    calls: tokio::sync::mpsc::UnboundedSender<Bytes>,
}

impl Handler for ManualHandler {
    type Broker = brook_runtime::kind::Kafka;

    fn subscription(&self) -> brook_runtime::SubscriptionBuilder {
        self.sub.clone()
    }

    async fn call(&self, msg: &Message, _: &Context) -> brook_runtime::HandlerResult {
        let done: Result<(), HandlerError> = async move {
            if msg.body() != "skip" {
                msg.ack()
                    .await
                    .map_err(|e| HandlerError::Failed(e.into()))?;
            }
            let _ = self.calls.send(msg.body().clone());
            Ok(())
        }
        .await;
        done.map(|()| None)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_commits_only_the_contiguous_settled_prefix() {
    let (topic, group) = fresh_topic("manual", 1).await;
    publish_all(&topic, &["a", "skip", "c", "d"]).await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let h = ManualHandler {
        sub: subscription(&topic, &group, AckPolicy::Manual),
        calls: tx,
    };
    let app = App::new(broker())
        .subscribe(h)
        .start()
        .await
        .expect("start");
    for want in ["a", "skip", "c", "d"] {
        let got = tokio::time::timeout(WAIT, rx.recv())
            .await
            .expect("call")
            .expect("open");
        assert_eq!(got, want);
    }
    app.stop().await.expect("stop");
    assert_eq!(
        committed(&group, &topic, 1).await,
        [Some(1)],
        "c and d are acked, but skip is not"
    );
    assert_eq!(
        remaining_bodies(&remaining(&group, &topic, 1).await),
        ["skip", "c", "d"]
    );
}

/// concurrency = 3 over 3 partitions: a partition whose handler is stuck holds back only its
/// own commit; the others commit while it waits.
struct BlockingHandler {
    sub: brook_runtime::SubscriptionBuilder,
    release: Arc<Notify>,
    blocked: Arc<AtomicBool>,
    calls: tokio::sync::mpsc::UnboundedSender<(i32, Bytes)>,
}

impl Handler for BlockingHandler {
    type Broker = brook_runtime::kind::Kafka;

    fn subscription(&self) -> brook_runtime::SubscriptionBuilder {
        self.sub.clone()
    }

    async fn call(&self, msg: &Message, _: &Context) -> brook_runtime::HandlerResult {
        let done: Result<(), HandlerError> = async move {
            let raw = msg.raw::<brook_kafka::KafkaMessage>().expect("kafka");
            let _ = self.calls.send((raw.partition(), msg.body().clone()));
            if msg.body() == "block" {
                self.blocked.store(true, Ordering::SeqCst);
                self.release.notified().await;
            }
            Ok(())
        }
        .await;
        done.map(|()| None)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_concurrency_a_stuck_partition_holds_back_only_its_own_commit() {
    let (topic, group) = fresh_topic("prefix", 3).await;
    let b = broker();
    // Partition 0: block and five more, published first (so they are fetched first: enough to
    // fill the engine's queue for that partition); partitions 1 and 2: three each.
    for (p, body) in [
        (0, "block"),
        (0, "x"),
        (0, "x"),
        (0, "x"),
        (0, "x"),
        (0, "x"),
        (1, "y"),
        (1, "y"),
        (1, "y"),
        (2, "z"),
        (2, "z"),
        (2, "z"),
    ] {
        b.publish_to_partition(
            Outgoing::new(topic.clone(), Bytes::from_static(body.as_bytes())),
            Some(p),
        )
        .await
        .expect("publish");
    }
    let sub = brook_runtime::Subscription::new(brook_runtime::BrokerKind::Kafka, "prefix")
        .arg("topic", topic.clone())
        .arg("group_id", group.clone())
        .arg(
            "auto_offset_reset",
            brook_runtime::ArgValue::Ident("earliest".into()),
        )
        .arg("ack_policy", AckPolicy::Ack)
        .arg("concurrency", 3u32);
    let release = Arc::new(Notify::new());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let h = BlockingHandler {
        sub,
        release: release.clone(),
        blocked: Arc::new(AtomicBool::new(false)),
        calls: tx,
    };
    let app = App::new(broker())
        .subscribe(h)
        .start()
        .await
        .expect("start");
    let mut seen = Vec::new();
    while seen.len() < 7 {
        let got = tokio::time::timeout(WAIT, rx.recv())
            .await
            .expect("call")
            .expect("open");
        seen.push(got);
    }
    assert!(
        !seen.iter().any(|(p, b)| *p == 0 && b == "x"),
        "partition 0 stays in order behind its stuck message: {seen:?}"
    );
    assert_eq!(
        wait_committed(&group, &topic, &[None, Some(3), Some(3)]).await,
        [None, Some(3), Some(3)],
        "partitions 1 and 2 commit while partition 0 waits"
    );
    release.notify_one();
    while seen.len() < 12 {
        let got = tokio::time::timeout(WAIT, rx.recv())
            .await
            .expect("call")
            .expect("open");
        seen.push(got);
    }
    app.stop().await.expect("stop");
    assert_eq!(
        committed(&group, &topic, 3).await,
        [Some(6), Some(3), Some(3)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_waits_for_the_handler_in_flight_and_commits_it() {
    let (topic, group) = fresh_topic("drain", 1).await;
    publish_all(&topic, &["block", "next"]).await;
    let release = Arc::new(Notify::new());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let h = BlockingHandler {
        sub: subscription(&topic, &group, AckPolicy::NackOnError),
        release: release.clone(),
        blocked: Arc::new(AtomicBool::new(false)),
        calls: tx,
    };
    let app = App::new(broker())
        .subscribe(h)
        .start()
        .await
        .expect("start");
    let first = tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("call")
        .expect("open");
    assert_eq!(first.1, "block");
    let mut stopping = tokio::spawn(app.stop());
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut stopping)
            .await
            .is_err(),
        "stop() returned while a handler was in flight"
    );
    release.notify_one();
    tokio::time::timeout(WAIT, stopping)
        .await
        .expect("stops")
        .expect("join")
        .expect("clean");
    // The in-flight message was committed on close; the next one was never handed out.
    assert_eq!(committed(&group, &topic, 1).await, [Some(1)]);
    assert_eq!(
        remaining_bodies(&remaining(&group, &topic, 1).await),
        ["next"]
    );
}

/// Key, partition and headers as the handler saw them.
type Captured = (Option<Bytes>, i32, Vec<(String, String)>);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_carries_key_headers_and_partition() {
    let (topic, group) = fresh_topic("publish", 2).await;
    // The App answers a message with `reply_to` (FastStream's RPC): the reply topic must exist
    // (tansu does not create topics on produce; the reply would wait out the producer's
    // message timeout, and the App's stop with it).
    let (replies, _) = fresh_topic("publish-replies", 1).await;
    let out = Outgoing::encode(&serde_json::json!({"n": 1}), topic.clone())
        .expect("encode")
        .with_correlation_id("corr-1")
        .with_reply_to(replies.clone())
        .with_key("customer-42");
    let (p, offset) = broker()
        .publish_to_partition(out, Some(1))
        .await
        .expect("publish");
    assert_eq!((p, offset), (1, 0));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    struct Capture(
        brook_runtime::SubscriptionBuilder,
        tokio::sync::mpsc::UnboundedSender<Captured>,
    );
    impl Handler for Capture {
        type Broker = brook_runtime::kind::Kafka;
        fn subscription(&self) -> brook_runtime::SubscriptionBuilder {
            self.0.clone()
        }
        async fn call(&self, msg: &Message, _: &Context) -> brook_runtime::HandlerResult {
            let done: Result<(), HandlerError> = async move {
                let raw = msg.raw::<brook_kafka::KafkaMessage>().expect("kafka");
                let headers = msg
                    .headers()
                    .iter()
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect();
                let _ = self.1.send((raw.key().cloned(), raw.partition(), headers));
                Ok(())
            }
            .await;
            done.map(|()| None)
        }
    }
    let app = App::new(broker())
        .subscribe(Capture(subscription(&topic, &group, AckPolicy::Ack), tx))
        .start()
        .await
        .expect("start");
    let (key, partition, mut headers) = tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("call")
        .expect("open");
    app.stop().await.expect("stop");
    headers.sort();
    assert_eq!(key.as_deref(), Some(&b"customer-42"[..]));
    assert_eq!(partition, 1);
    assert_eq!(
        headers,
        [
            ("content-type".to_owned(), "application/json".to_owned()),
            ("correlation_id".to_owned(), "corr-1".to_owned()),
            ("reply_to".to_owned(), replies.clone()),
        ]
    );
    assert_eq!(committed(&group, &topic, 2).await, [None, Some(1)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_group_ack_first_reads_every_partition_and_commits_nothing() {
    let (topic, group) = fresh_topic("nogroup", 2).await;
    let b = broker();
    for (p, body) in [(0, "a"), (1, "b")] {
        b.publish_to_partition(
            Outgoing::new(topic.clone(), Bytes::from_static(body.as_bytes())),
            Some(p),
        )
        .await
        .expect("publish");
    }
    let sub = brook_runtime::Subscription::new(brook_runtime::BrokerKind::Kafka, "nogroup")
        .arg("topic", topic.clone())
        .arg(
            "auto_offset_reset",
            brook_runtime::ArgValue::Ident("earliest".into()),
        )
        .arg("ack_policy", AckPolicy::AckFirst);
    let (h, mut rx) = Scripted::new(sub, |_, _| Ok(()));
    let app = App::new(broker())
        .subscribe(h)
        .start()
        .await
        .expect("start");
    let mut got = bodies(&recv_n(&mut rx, 2).await);
    got.sort();
    assert_eq!(got, ["a", "b"]);
    app.stop().await.expect("stop");
    // Nothing was committed under the placeholder group id librdkafka needs.
    let placeholder = format!("brook-nogroup-{}", std::process::id());
    assert_eq!(committed(&placeholder, &topic, 2).await, [None, None]);
    assert_eq!(committed(&group, &topic, 2).await, [None, None]);
}
