//! Every policy on a stream read through a group, observed in Redis afterwards: the pending
//! list, the group's cursor, the dead-letter stream, and redelivery seen by a second consumer.

mod common;

use std::sync::Arc;
use std::time::Duration;

use brook_redis::RedisBroker;
use brook_runtime::{AckPolicy, Broker, Outgoing, Settlement};
use bytes::Bytes;
use common::*;
use tokio::sync::Notify;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_removes_the_entry_from_the_pending_list() {
    let (stream, c, broker) = (unique("ack"), raw().await, RedisBroker::new(URL));
    let mut run = start(
        broker.clone(),
        stream_sub(&stream, AckPolicy::Ack, vec![]),
        WAIT,
        |_| Act::Fail,
    )
    .await;
    publish(&broker, &stream, b"a").await;
    let seen = run.next().await;
    assert_eq!(seen.deliveries, Some(1));
    run.stop().await;
    assert_eq!(
        pending(&c, &stream, "g").await,
        vec![],
        "Ack (even on error) = XACK"
    );
    assert_eq!(
        last_delivered(&c, &stream, "g").await,
        seen.id,
        "the group read it"
    );
    assert_eq!(
        xrange(&c, &stream).await.len(),
        1,
        "XACK does not delete the entry"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_first_reads_with_noack_so_nothing_is_ever_pending() {
    let (stream, c, broker) = (unique("ackfirst"), raw().await, RedisBroker::new(URL));
    let release = Arc::new(Notify::new());
    let r = release.clone();
    let mut run = start(
        broker.clone(),
        stream_sub(&stream, AckPolicy::AckFirst, vec![]),
        WAIT,
        move |_| Act::WaitThenFail(r.clone()),
    )
    .await;
    publish(&broker, &stream, b"a").await;
    run.next().await;
    assert_eq!(
        pending(&c, &stream, "g").await,
        vec![],
        "while the handler runs, the entry is already acknowledged"
    );
    release.notify_one();
    run.stop().await;
    assert!(remaining(&c, &stream, "g").await.is_empty());
    assert!(
        call(&c, "XINFO", vec![s("CONSUMERS"), s(&stream), s("g")])
            .await
            .into_array()
            .is_empty(),
        "the generated consumer name left the group on close"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_acks_and_dead_letters_the_entry_with_its_origin() {
    let (stream, c, broker) = (unique("reject"), raw().await, RedisBroker::new(URL));
    let dlq = format!("{stream}:dlq");
    let sub = stream_sub(
        &stream,
        AckPolicy::RejectOnError,
        vec![("dead_letter_stream", dlq.clone().into())],
    );
    let mut run = start(broker.clone(), sub, WAIT, |_| Act::Fail).await;
    broker
        .publish_message(
            Outgoing::new(format!("stream:{stream}"), Bytes::from_static(b"bad"))
                .with_correlation_id("c-1"),
        )
        .await
        .unwrap();
    let seen = run.next().await;
    run.stop().await;
    assert_eq!(
        pending(&c, &stream, "g").await,
        vec![],
        "rejected entries do not leak in the pending list"
    );
    let dead = xrange(&c, &dlq).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].body(), Bytes::from_static(b"bad"));
    let (_, headers) = brook_redis::envelope::decode(dead[0].field("__data__").unwrap());
    assert_eq!(
        headers.get("correlation_id"),
        Some("c-1"),
        "headers travel to the dead-letter stream"
    );
    assert_eq!(
        dead[0].field("__brook_id").map(|b| &b[..]),
        Some(seen.id.as_bytes())
    );
    assert_eq!(
        dead[0].field("__brook_stream").map(|b| &b[..]),
        Some(stream.as_bytes())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_without_a_dead_letter_stream_just_acks() {
    let (stream, c, broker) = (unique("reject-nodlq"), raw().await, RedisBroker::new(URL));
    let mut run = start(
        broker.clone(),
        stream_sub(&stream, AckPolicy::RejectOnError, vec![]),
        WAIT,
        |_| Act::Fail,
    )
    .await;
    publish(&broker, &stream, b"bad").await;
    run.next().await;
    run.stop().await;
    assert_eq!(pending(&c, &stream, "g").await, vec![]);
    assert!(remaining(&c, &stream, "g").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nack_redelivers_with_redis_delivery_count() {
    let (stream, c, broker) = (unique("nack"), raw().await, RedisBroker::new(URL));
    let mut run = start(
        broker.clone(),
        stream_sub(&stream, AckPolicy::NackOnError, vec![]),
        WAIT,
        |s| {
            if s.deliveries == Some(1) {
                Act::Fail
            } else {
                Act::Ok
            }
        },
    )
    .await;
    publish(&broker, &stream, b"n").await;
    let first = run.next().await;
    let second = run.next().await;
    assert_eq!(
        (first.id.clone(), first.deliveries),
        (second.id.clone(), Some(1))
    );
    assert_eq!(second.deliveries, Some(2));
    run.stop().await;
    assert_eq!(
        pending(&c, &stream, "g").await,
        vec![],
        "acked on the second delivery"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nack_leaves_the_entry_pending_while_it_waits_for_redelivery() {
    let (stream, c, broker) = (unique("nack-pending"), raw().await, RedisBroker::new(URL));
    let sub = stream_sub(&stream, AckPolicy::Manual, vec![]);
    let release = Arc::new(Notify::new());
    let r = release.clone();
    let mut run = start(broker.clone(), sub, WAIT, move |s| {
        if s.deliveries == Some(1) {
            Act::Settle(Settlement::Nack {
                delay: Some(Duration::from_millis(500)),
            })
        } else {
            Act::WaitThenSettle(r.clone(), Settlement::Ack)
        }
    })
    .await;
    publish(&broker, &stream, b"later").await;
    let first = run.next().await;
    let second = run.next().await;
    assert_eq!((&second.id, second.deliveries), (&first.id, Some(2)));
    // While the redelivery is being handled: the entry never left the pending list (a nack
    // that XACKed could not be claimed back), it is still this consumer's, and Redis itself
    // counts two deliveries (the count the handler saw is Redis's, not a local one).
    let p = pending(&c, &stream, "g").await;
    assert_eq!(
        p,
        vec![Pending {
            id: first.id.clone(),
            consumer: first.consumer.clone().unwrap(),
            deliveries: 2,
        }]
    );
    release.notify_one();
    run.stop().await;
    assert_eq!(pending(&c, &stream, "g").await, vec![]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsettled_entry_is_handed_back_and_a_second_consumer_gets_it_at_once() {
    let (stream, c, broker) = (unique("handback"), raw().await, RedisBroker::new(URL));
    // Manual without settling: the entry stays pending when the App stops.
    let mut a = start(
        broker.clone(),
        stream_sub(&stream, AckPolicy::Manual, vec![]),
        WAIT,
        |_| Act::Ok,
    )
    .await;
    publish(&broker, &stream, b"keep").await;
    let first = a.next().await;
    a.stop().await;
    let p = pending(&c, &stream, "g").await;
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].consumer, first.consumer.clone().unwrap());

    // A second consumer with the default min_idle_ms (60 s) claims it at once: it was handed back.
    let mut b = start(
        RedisBroker::new(URL),
        stream_sub(&stream, AckPolicy::Ack, vec![]),
        WAIT,
        |_| Act::Ok,
    )
    .await;
    let again = b.next().await;
    assert_eq!(
        (again.id.clone(), again.body.clone()),
        (first.id, Bytes::from_static(b"keep"))
    );
    assert_eq!(
        again.deliveries,
        Some(2),
        "Redis counts the second delivery"
    );
    assert_ne!(again.consumer, first.consumer);
    b.stop().await;
    assert_eq!(pending(&c, &stream, "g").await, vec![]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_consumers_entries_are_claimed_by_another_after_min_idle() {
    let (stream, c) = (unique("crash"), raw().await);
    let proxy = brook_runtime::proxy::TcpProxy::start(ADDR.parse().unwrap())
        .await
        .unwrap();
    let through_proxy = RedisBroker::new(format!("redis://{}", proxy.addr()));
    let mut a = start(
        through_proxy,
        stream_sub(&stream, AckPolicy::Ack, vec![]),
        WAIT,
        |_| Act::Hang,
    )
    .await;
    let publisher = RedisBroker::new(URL);
    publish(&publisher, &stream, b"orphan").await;
    let first = a.next().await;
    // Crash: the connection dies and the process is gone, nothing settled, nothing handed back.
    proxy.cut();
    drop(a.app.take());
    assert_eq!(
        pending(&c, &stream, "g").await[0].consumer,
        first.consumer.clone().unwrap()
    );

    let started = std::time::Instant::now();
    let mut b = start(
        RedisBroker::new(URL),
        stream_sub(
            &stream,
            AckPolicy::Ack,
            vec![("min_idle_ms", 400u64.into())],
        ),
        WAIT,
        |_| Act::Ok,
    )
    .await;
    let claimed = b.next().await;
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "claimed only once idle for min_idle_ms"
    );
    assert_eq!((claimed.id, claimed.deliveries), (first.id, Some(2)));
    b.stop().await;
    assert_eq!(pending(&c, &stream, "g").await, vec![]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_consumer_with_the_same_name_rereads_its_own_pending_entries() {
    let (stream, c) = (unique("restart"), raw().await);
    let proxy = brook_runtime::proxy::TcpProxy::start(ADDR.parse().unwrap())
        .await
        .unwrap();
    let sub = || {
        stream_sub(
            &stream,
            AckPolicy::Ack,
            vec![
                ("consumer", "worker-1".into()),
                ("min_idle_ms", 0u64.into()),
            ],
        )
    };
    let mut a = start(
        RedisBroker::new(format!("redis://{}", proxy.addr())),
        sub(),
        WAIT,
        |_| Act::Hang,
    )
    .await;
    publish(&RedisBroker::new(URL), &stream, b"mine").await;
    let first = a.next().await;
    proxy.cut();
    drop(a.app.take());

    // Claiming is off (min_idle_ms = 0): only re-reading its own pending list can bring it back.
    let mut b = start(RedisBroker::new(URL), sub(), WAIT, |_| Act::Ok).await;
    let again = b.next().await;
    assert_eq!((again.id, again.deliveries), (first.id, Some(2)));
    b.stop().await;
    assert_eq!(pending(&c, &stream, "g").await, vec![]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumption_resumes_after_the_connection_is_cut_and_nacked_entries_come_back() {
    let (stream, c) = (unique("reconnect"), raw().await);
    let proxy = brook_runtime::proxy::TcpProxy::start(ADDR.parse().unwrap())
        .await
        .unwrap();
    let broker = RedisBroker::new(format!("redis://{}", proxy.addr()))
        .command_timeout(Duration::from_secs(2));
    let release = Arc::new(Notify::new());
    let r = release.clone();
    let mut run = start(
        broker,
        stream_sub(&stream, AckPolicy::NackOnError, vec![]),
        WAIT,
        move |s| {
            if s.body == Bytes::from_static(b"a") && s.deliveries == Some(1) {
                Act::WaitThenFail(r.clone())
            } else {
                Act::Ok
            }
        },
    )
    .await;
    let publisher = RedisBroker::new(URL);
    publish(&publisher, &stream, b"a").await;
    let first = run.next().await;
    assert_eq!(first.deliveries, Some(1));
    // The connection dies while the handler runs; the handler then fails (nack) and more
    // arrives while the consumer is cut off.
    let before = proxy.connections_accepted();
    proxy.cut();
    release.notify_one();
    publish(&publisher, &stream, b"b").await;
    proxy.restore();

    let mut got = [run.next().await, run.next().await];
    got.sort_by(|x, y| x.body.cmp(&y.body));
    assert_eq!(got[0].body, Bytes::from_static(b"a"));
    assert_eq!(got[0].id, first.id);
    assert_eq!(
        got[0].deliveries,
        Some(2),
        "the nacked entry came back after the reconnect"
    );
    assert_eq!(got[1].body, Bytes::from_static(b"b"));
    run.stop().await;
    assert_eq!(
        pending(&c, &stream, "g").await,
        vec![],
        "everything acknowledged after processing"
    );
    assert!(remaining(&c, &stream, "g").await.is_empty());
    assert!(
        proxy.connections_accepted() > before,
        "the clients reconnected through the proxy"
    );
}

#[allow(clippy::manual_is_multiple_of)] // is_multiple_of needs Rust 1.87; the MSRV is 1.85
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_and_concurrency_settle_each_entry() {
    let (stream, c, broker) = (unique("batch"), raw().await, RedisBroker::new(URL));
    let sub = stream_sub(
        &stream,
        AckPolicy::NackOnError,
        vec![("batch", 5u64.into()), ("concurrency", 4u64.into())],
    );
    // Every third entry fails once: per-entry settlement, not per batch.
    let mut run = start(broker.clone(), sub, WAIT, |s| {
        let n: u32 = std::str::from_utf8(&s.body).unwrap().parse().unwrap();
        if n % 3 == 0 && s.deliveries == Some(1) {
            Act::Fail
        } else {
            Act::Ok
        }
    })
    .await;
    for i in 0..20u32 {
        broker
            .publish_message(Outgoing::new(format!("stream:{stream}"), i.to_string()))
            .await
            .unwrap();
    }
    let mut handled = 0;
    while handled < 20 + 7 {
        run.next().await;
        handled += 1;
    }
    run.stop().await;
    assert_eq!(pending(&c, &stream, "g").await, vec![]);
    assert!(remaining(&c, &stream, "g").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_group_entries_are_read_with_xread() {
    let (stream, broker) = (unique("xread"), RedisBroker::new(URL));
    publish(&broker, &stream, b"old").await;
    let sub = subscription(vec![("stream", stream.clone().into())]);
    let mut run = start(broker.clone(), sub, WAIT, |_| Act::Ok).await;
    publish(&broker, &stream, b"new-1").await;
    publish(&broker, &stream, b"new-2").await;
    assert_eq!(
        run.next().await.body,
        Bytes::from_static(b"new-1"),
        "only entries added after the start"
    );
    let second = run.next().await;
    assert_eq!(second.body, Bytes::from_static(b"new-2"));
    assert_eq!(second.deliveries, None);
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_written_without_an_envelope_arrive_as_json_of_their_fields() {
    let (stream, c, broker) = (unique("fields"), raw().await, RedisBroker::new(URL));
    let mut run = start(
        broker.clone(),
        stream_sub(&stream, AckPolicy::Ack, vec![]),
        WAIT,
        |_| Act::Ok,
    )
    .await;
    call(
        &c,
        "XADD",
        vec![s(&stream), s("*"), s("id"), s("7"), s("kind"), s("order")],
    )
    .await;
    let seen = run.next().await;
    let json: serde_json::Value = serde_json::from_slice(&seen.body).unwrap();
    assert_eq!(json, serde_json::json!({"id": "7", "kind": "order"}));
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_caps_the_stream_with_maxlen() {
    let (stream, c, broker) = (unique("maxlen"), raw().await, RedisBroker::new(URL));
    for i in 0..5u32 {
        broker
            .publish(&i, &format!("stream:{stream}?maxlen=2"))
            .await
            .unwrap();
    }
    let entries = xrange(&c, &stream).await;
    assert_eq!(
        entries.iter().map(Entry::body).collect::<Vec<_>>(),
        vec![Bytes::from_static(b"3"), Bytes::from_static(b"4")]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_stream_gets_its_group_back_and_consumption_goes_on() {
    let (stream, c, broker) = (unique("deleted"), raw().await, RedisBroker::new(URL));
    let mut run = start(
        broker.clone(),
        stream_sub(&stream, AckPolicy::Ack, vec![]),
        WAIT,
        |_| Act::Ok,
    )
    .await;
    publish(&broker, &stream, b"before").await;
    assert_eq!(run.next().await.body, Bytes::from_static(b"before"));
    del(&c, &[&stream]).await;
    eventually("the group was created again", || async {
        let groups = call(&c, "EXISTS", vec![s(&stream)]).await.as_i64() == Some(1);
        groups
            && !call(&c, "XINFO", vec![s("GROUPS"), s(&stream)])
                .await
                .into_array()
                .is_empty()
    })
    .await;
    publish(&broker, &stream, b"after").await;
    assert_eq!(run.next().await.body, Bytes::from_static(b"after"));
    run.stop().await;
    assert_eq!(pending(&c, &stream, "g").await, vec![]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reject_whose_dead_letter_xadd_fails_does_not_lose_the_entry() {
    let (stream, c, broker) = (
        unique("reject-dlq-fails"),
        raw().await,
        RedisBroker::new(URL),
    );
    // A dead-letter key of the wrong type: XADD fails at run time (WRONGTYPE).
    let dlq = format!("{stream}:dlq");
    call(&c, "SET", vec![s(&dlq), s("not a stream")]).await;
    let sub = stream_sub(
        &stream,
        AckPolicy::RejectOnError,
        vec![("dead_letter_stream", dlq.clone().into())],
    );
    let mut run = start(broker.clone(), sub, WAIT, |_| Act::Fail).await;
    publish(&broker, &stream, b"precious").await;
    let first = run.next().await;
    let failed_at = std::time::Instant::now();
    // Not acknowledged without its dead letter: it stays pending and comes back, a second
    // later rather than in a tight loop while the dead-letter key stays broken.
    let again = run.next().await;
    assert_eq!((&again.id, again.deliveries), (&first.id, Some(2)));
    assert!(
        failed_at.elapsed() >= Duration::from_millis(800),
        "redelivered after {:?}",
        failed_at.elapsed()
    );
    run.stop().await;
    let p = pending(&c, &stream, "g").await;
    assert_eq!(
        p.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(),
        vec![first.id.as_str()],
        "still pending: never acknowledged without being dead-lettered"
    );
    del(&c, &[&dlq]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_left_unsettled_comes_back_to_the_same_consumer_after_min_idle() {
    let (stream, c, broker) = (unique("unsettled"), raw().await, RedisBroker::new(URL));
    // Manual, and the first delivery is never settled: the only consumer of the group must
    // take it again after min_idle_ms, as it would a crashed consumer's entry.
    let sub = stream_sub(
        &stream,
        AckPolicy::Manual,
        vec![("min_idle_ms", 300u64.into())],
    );
    let mut run = start(broker.clone(), sub, WAIT, |s| {
        if s.deliveries == Some(1) {
            Act::Ok
        } else {
            Act::Settle(Settlement::Ack)
        }
    })
    .await;
    publish(&broker, &stream, b"forgotten").await;
    let first = run.next().await;
    let again = run.next().await;
    assert_eq!((&again.id, again.deliveries), (&first.id, Some(2)));
    assert_eq!(again.consumer, first.consumer);
    run.stop().await;
    assert_eq!(pending(&c, &stream, "g").await, vec![]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nacked_entry_another_consumer_claimed_is_not_taken_back() {
    let (stream, c) = (unique("no-steal"), raw().await);
    // A nacks with a delay longer than B's min_idle_ms; B claims the entry meanwhile. When A's
    // delay is up, the entry is B's: A must not claim it back and handle it at the same time.
    let mut a = start(
        RedisBroker::new(URL),
        stream_sub(
            &stream,
            AckPolicy::Manual,
            vec![("min_idle_ms", 0u64.into())],
        ),
        WAIT,
        |_| {
            Act::Settle(Settlement::Nack {
                delay: Some(Duration::from_millis(1500)),
            })
        },
    )
    .await;
    let publisher = RedisBroker::new(URL);
    publish(&publisher, &stream, b"contended").await;
    let first = a.next().await;
    let release = Arc::new(Notify::new());
    let r = release.clone();
    let mut b = start(
        RedisBroker::new(URL),
        stream_sub(
            &stream,
            AckPolicy::Ack,
            vec![("min_idle_ms", 300u64.into())],
        ),
        WAIT,
        move |_| Act::WaitThenOk(r.clone()),
    )
    .await;
    let claimed = b.next().await;
    assert_eq!((&claimed.id, claimed.deliveries), (&first.id, Some(2)));
    // A's delay ends about 1.5 s after its nack; give it a second more to (wrongly) act.
    let stolen = tokio::time::timeout(Duration::from_millis(2500), a.seen.recv()).await;
    assert!(stolen.is_err(), "A took the entry back: {stolen:?}");
    let p = pending(&c, &stream, "g").await;
    assert_eq!(p.len(), 1);
    assert_eq!(Some(p[0].consumer.clone()), claimed.consumer);
    release.notify_one();
    b.stop().await;
    a.stop().await;
    assert_eq!(pending(&c, &stream, "g").await, vec![]);
}

/// A stream name that is an existing key of another type is refused when the subscription
/// starts, naming the subscriber, the argument and the key; nothing is consumed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_name_that_holds_another_type_is_refused_at_start() {
    let (key, c, broker) = (unique("wrongtype"), raw().await, RedisBroker::new(URL));
    call(&c, "SET", vec![s(&key), s("not a stream")]).await;
    let sub = stream_sub(&key, AckPolicy::Ack, vec![]).build().unwrap();
    let err = broker
        .subscribe(&sub)
        .await
        .err()
        .expect("a string key cannot be read as a stream")
        .to_string();
    assert!(
        err.contains(&format!(
            "`stream = {key:?}` is an existing Redis key of type string"
        )),
        "{err}"
    );
    del(&c, &[&key]).await;
}
