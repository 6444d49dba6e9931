//! Nothing is stranded or lost when a stream consumer goes away: entries a stopped, cut-off or
//! crashed consumer left pending reach a new consumer (with a generated name, whatever its
//! `min_idle_ms`), the gone consumer leaves the group, and a graceful stop under AckFirst puts
//! back what it read but never handled. Observed in Redis: XPENDING, XINFO CONSUMERS, the
//! liveness keys.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use brook_redis::RedisBroker;
use brook_runtime::AckPolicy;
use bytes::Bytes;
use common::*;
use tokio::sync::Notify;

/// The group's consumers, its pending list and brook's keys once everything is settled and
/// every consumer closed: nothing left behind.
async fn assert_clean(c: &fred::prelude::Client, stream: &str, gone: &str) {
    assert_eq!(pending(c, stream, "g").await, vec![], "XPENDING ends at 0");
    assert_eq!(
        consumers(c, stream, "g").await,
        Vec::<String>::new(),
        "no consumer left in the group"
    );
    assert!(
        !exists(c, &registry_key(stream, "g")).await,
        "registry removed"
    );
    assert!(
        !exists(c, &alive_key(stream, "g", gone)).await,
        "liveness key removed"
    );
}

/// Manual without a settlement, then a graceful stop: the entry stays pending for a consumer
/// whose generated name no process will ever use again. A new consumer with `min_idle_ms = 0`
/// (no XAUTOCLAIM at all) still gets it, at once, and removes the gone consumer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_a_stopped_consumer_left_unsettled_reaches_a_new_consumer_with_min_idle_zero() {
    let (stream, c, broker) = (unique("left-manual"), raw().await, RedisBroker::new(URL));
    let mut a = start(
        broker.clone(),
        stream_sub(&stream, AckPolicy::Manual, vec![]),
        WAIT,
        |_| Act::Ok,
    )
    .await;
    publish(&broker, &stream, "kept").await;
    let first = a.next().await;
    let gone = first.consumer.clone().unwrap();
    a.stop().await;
    assert_eq!(pending(&c, &stream, "g").await[0].consumer, gone);
    assert!(consumers(&c, &stream, "g").await.contains(&gone));

    let started = Instant::now();
    let mut b = start(
        RedisBroker::new(URL),
        stream_sub(&stream, AckPolicy::Ack, vec![("min_idle_ms", 0u64.into())]),
        WAIT,
        |_| Act::Ok,
    )
    .await;
    let again = b.next().await;
    assert_eq!((&again.id, again.deliveries), (&first.id, Some(2)));
    assert_ne!(again.consumer, first.consumer);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "taken over after {:?}",
        started.elapsed()
    );
    let me = again.consumer.clone().unwrap();
    eventually("the gone consumer left the group", || async {
        consumers(&c, &stream, "g").await == vec![me.clone()]
    })
    .await;
    b.stop().await;
    assert_clean(&c, &stream, &gone).await;
}

/// The graceful timeout cuts a handler off: its entry is taken over by a new consumer with the
/// default settings, and the cut-off consumer does not stay in the group forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_cut_off_by_the_graceful_timeout_is_taken_over_and_its_consumer_removed() {
    let (stream, c, broker) = (unique("left-cut"), raw().await, RedisBroker::new(URL));
    let mut a = start(
        broker.clone(),
        stream_sub(&stream, AckPolicy::Ack, vec![]),
        Duration::from_millis(300),
        |_| Act::Hang,
    )
    .await;
    publish(&broker, &stream, "slow").await;
    let first = a.next().await;
    let gone = first.consumer.clone().unwrap();
    a.stop().await;
    assert_eq!(pending(&c, &stream, "g").await[0].consumer, gone);

    let mut b = start(
        RedisBroker::new(URL),
        stream_sub(&stream, AckPolicy::Ack, vec![]),
        WAIT,
        |_| Act::Ok,
    )
    .await;
    let again = b.next().await;
    assert_eq!((&again.id, again.deliveries), (&first.id, Some(2)));
    let me = again.consumer.clone().unwrap();
    eventually("the cut-off consumer left the group", || async {
        consumers(&c, &stream, "g").await == vec![me.clone()]
    })
    .await;
    b.stop().await;
    assert_clean(&c, &stream, &gone).await;
}

/// A crash (connection gone, process gone, nothing handed back) with the default liveness
/// timeout: a new consumer with `min_idle_ms = 0` gets the entry once the crashed consumer's
/// liveness key lapsed (10 s), not never; the crashed consumer is removed from the group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_consumers_entry_reaches_a_new_consumer_after_the_liveness_timeout() {
    let (stream, c) = (unique("left-crash"), raw().await);
    let proxy = brook_runtime::proxy::TcpProxy::start(ADDR.parse().unwrap())
        .await
        .unwrap();
    let mut a = start(
        RedisBroker::new(format!("redis://{}", proxy.addr())),
        stream_sub(&stream, AckPolicy::Ack, vec![]),
        WAIT,
        |_| Act::Hang,
    )
    .await;
    publish(&RedisBroker::new(URL), &stream, "orphan").await;
    let first = a.next().await;
    let gone = first.consumer.clone().unwrap();
    let crashed = Instant::now();
    proxy.cut();
    drop(a.app.take());

    let mut b = start(
        RedisBroker::new(URL),
        stream_sub(&stream, AckPolicy::Ack, vec![("min_idle_ms", 0u64.into())]),
        WAIT,
        |_| Act::Ok,
    )
    .await;
    let limit = brook_redis::DEFAULT_LIVENESS_TIMEOUT + Duration::from_secs(3);
    let again = tokio::time::timeout(limit, b.seen.recv())
        .await
        .unwrap_or_else(|_| panic!("not taken over within {limit:?}"))
        .unwrap();
    let took = crashed.elapsed();
    assert_eq!((&again.id, again.deliveries), (&first.id, Some(2)));
    assert!(
        took >= brook_redis::DEFAULT_LIVENESS_TIMEOUT / 2,
        "taken over after {took:?}, while the crashed consumer's liveness key still lived"
    );
    eprintln!("crashed consumer's entry taken over after {took:?}");
    let me = again.consumer.clone().unwrap();
    eventually("the crashed consumer left the group", || async {
        consumers(&c, &stream, "g").await == vec![me.clone()]
    })
    .await;
    b.stop().await;
    assert_clean(&c, &stream, &gone).await;
}

/// A consumer whose handler runs much longer than the liveness timeout is alive: its entry is
/// not taken over by another consumer (both with `min_idle_ms = 0`), however long it runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_consumer_with_a_long_handler_keeps_its_entry() {
    let (stream, c) = (unique("alive"), raw().await);
    let ttl = Duration::from_millis(400);
    let release = Arc::new(Notify::new());
    let r = release.clone();
    let sub = || stream_sub(&stream, AckPolicy::Ack, vec![("min_idle_ms", 0u64.into())]);
    let mut a = start(
        RedisBroker::new(URL).liveness_timeout(ttl),
        sub(),
        WAIT,
        move |_| Act::WaitThenOk(r.clone()),
    )
    .await;
    publish(&RedisBroker::new(URL), &stream, "long").await;
    let first = a.next().await;
    let mut b = start(
        RedisBroker::new(URL).liveness_timeout(ttl),
        sub(),
        WAIT,
        |_| Act::Ok,
    )
    .await;
    // Five liveness timeouts, checked by B about every 100 ms.
    let stolen = tokio::time::timeout(ttl * 5, b.seen.recv()).await;
    assert!(
        stolen.is_err(),
        "B took a live consumer's entry: {stolen:?}"
    );
    let p = pending(&c, &stream, "g").await;
    assert_eq!(
        (p.len(), p[0].consumer.clone()),
        (1, first.consumer.clone().unwrap())
    );
    release.notify_one();
    eventually("A acknowledged it", || async {
        pending(&c, &stream, "g").await.is_empty()
    })
    .await;
    a.stop().await;
    b.stop().await;
    assert_clean(&c, &stream, &first.consumer.unwrap()).await;
}

/// AckFirst reads with XREADGROUP NOACK, `batch` entries at a time: Redis acknowledges them on
/// delivery. A graceful stop after the second of ten is handled must not lose the other eight:
/// they are back in the group's pending list, and a new consumer handles each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_under_ack_first_loses_none_of_the_batch() {
    let (stream, c, broker) = (unique("ackfirst-stop"), raw().await, RedisBroker::new(URL));
    let release = Arc::new(Notify::new());
    let r = release.clone();
    let mut a = start(
        broker.clone(),
        stream_sub(&stream, AckPolicy::AckFirst, vec![]),
        WAIT,
        move |s| {
            if s.body == Bytes::from_static(b"0") {
                Act::WaitThenOk(r.clone())
            } else {
                Act::SleepThenOk(Duration::from_millis(300))
            }
        },
    )
    .await;
    // "0" alone first, so that the next read (COUNT 10) takes the nine others at once.
    publish(&broker, &stream, "0").await;
    let mut handled = vec![a.next().await];
    for i in 1..10u32 {
        publish(&broker, &stream, i.to_string()).await;
    }
    release.notify_one();
    handled.push(a.next().await);
    assert_eq!(handled[1].body, Bytes::from_static(b"1"));
    assert_eq!(
        pending(&c, &stream, "g").await,
        vec![],
        "NOACK: nothing pending while running"
    );
    assert!(
        remaining(&c, &stream, "g").await.is_empty(),
        "the consumer read all ten"
    );
    // Stop while "1" is being handled: the App waits for it, then closes.
    a.stop().await;
    while let Ok(seen) = a.seen.try_recv() {
        handled.push(seen);
    }
    let gone = handled[0].consumer.clone().unwrap();
    let all: Vec<String> = xrange(&c, &stream)
        .await
        .into_iter()
        .map(|e| e.id)
        .collect();
    let back: Vec<String> = pending(&c, &stream, "g")
        .await
        .into_iter()
        .map(|p| {
            assert_eq!(p.consumer, gone);
            p.id
        })
        .collect();
    let handled_ids: Vec<String> = handled.iter().map(|s| s.id.clone()).collect();
    assert_eq!(
        [handled_ids.clone(), back.clone()].concat(),
        all,
        "handled {handled_ids:?}; every other entry must be pending again, none acknowledged and lost"
    );
    assert!(back.len() >= 7, "{back:?}");

    let mut b = start(
        RedisBroker::new(URL),
        stream_sub(&stream, AckPolicy::AckFirst, vec![]),
        WAIT,
        |_| Act::Ok,
    )
    .await;
    let mut second = Vec::new();
    for _ in 0..back.len() {
        second.push(b.next().await.id);
    }
    assert_eq!(second, back, "each of the rest handled once, in order");
    let none = tokio::time::timeout(Duration::from_millis(500), b.seen.recv()).await;
    assert!(none.is_err(), "handled twice: {none:?}");
    b.stop().await;
    assert_clean(&c, &stream, &gone).await;
}

/// The same with handlers running concurrently: entries already queued for a handler are
/// handled before the stop completes, the rest are put back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_under_ack_first_with_concurrency_loses_nothing() {
    let (stream, c, broker) = (unique("ackfirst-conc"), raw().await, RedisBroker::new(URL));
    let release = Arc::new(Notify::new());
    let r = release.clone();
    let mut a = start(
        broker.clone(),
        stream_sub(
            &stream,
            AckPolicy::AckFirst,
            vec![("concurrency", 2u64.into()), ("batch", 20u64.into())],
        ),
        WAIT,
        move |s| {
            if s.body == Bytes::from_static(b"0") {
                Act::WaitThenOk(r.clone())
            } else {
                Act::SleepThenOk(Duration::from_millis(200))
            }
        },
    )
    .await;
    publish(&broker, &stream, "0").await;
    let mut handled = vec![a.next().await];
    // Nineteen more at once (one script), so that one read (COUNT 20) takes them all.
    let mut args = vec![
        s("for i = 1, #ARGV do redis.call('XADD', KEYS[1], '*', '__data__', ARGV[i]) end"),
        fred::types::Value::from(1i64),
        s(&stream),
    ];
    args.extend((1..20u32).map(|i| s(&i.to_string())));
    call(&c, "EVAL", args).await;
    // The second worker is busy with the later entries meanwhile; "0" is still running.
    handled.push(a.next().await);
    let app = a.app.take().unwrap();
    let stopping = tokio::spawn(app.stop());
    release.notify_one();
    stopping.await.unwrap().unwrap();
    while let Ok(seen) = a.seen.try_recv() {
        handled.push(seen);
    }
    let mut handled_ids: Vec<String> = handled.iter().map(|s| s.id.clone()).collect();
    handled_ids.sort_by_key(|id| id_key(id));
    let back: Vec<String> = remaining(&c, &stream, "g")
        .await
        .into_iter()
        .map(|e| e.id)
        .collect();
    let mut together = [handled_ids.clone(), back.clone()].concat();
    together.sort_by_key(|id| id_key(id));
    let all: Vec<String> = xrange(&c, &stream)
        .await
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(
        together, all,
        "handled {handled_ids:?}, back {back:?}: each entry exactly once in one of them"
    );
    assert!(
        pending(&c, &stream, "g").await.len() >= 10,
        "the read took all nineteen: most are back in the pending list"
    );
    del(&c, &[&stream, &registry_key(&stream, "g")]).await;
}

fn id_key(id: &str) -> (u64, u64) {
    let (a, b) = id.split_once('-').unwrap();
    (a.parse().unwrap(), b.parse().unwrap())
}
