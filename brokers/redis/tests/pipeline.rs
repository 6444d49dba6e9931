//! The settlement pipeline: the engine's acks and rejects are queued and sent as one
//! `XACK key group id1 id2 ...` per flush instead of one round trip per entry. Observed in
//! Redis (XPENDING): nothing queued is lost on a graceful stop, a lone entry is acknowledged at
//! once, and a flush that fails leaves its entries pending for redelivery.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use brook_redis::RedisBroker;
use brook_runtime::{AckPolicy, Broker, Outgoing};
use common::*;
use tokio::sync::Notify;

/// A stream whose group `g` starts at the beginning, holding `n` entries `0`..`n`.
async fn prefilled(c: &fred::prelude::Client, stream: &str, n: u32) {
    call(
        c,
        "XGROUP",
        vec![s("CREATE"), s(stream), s("g"), s("0"), s("MKSTREAM")],
    )
    .await;
    let publisher = RedisBroker::new(URL);
    let sends = (0..n).map(|i| {
        publisher.publish_message(Outgoing::new(format!("stream:{stream}"), i.to_string()))
    });
    for r in futures_util::future::join_all(sends).await {
        r.expect("publish");
    }
}

/// The App is asked to stop while the handler of the last of many entries still runs: that
/// handler's acknowledgement is queued after the stop began, and the consumer's close flushes
/// it (on a current-thread runtime, nothing else would run the pipeline in between). Nothing
/// is left pending.
#[tokio::test(flavor = "current_thread")]
async fn a_graceful_stop_flushes_every_queued_acknowledgement() {
    let (stream, c) = (unique("pipeline-stop"), raw().await);
    let n = 1_000;
    prefilled(&c, &stream, n).await;
    let release = Arc::new(Notify::new());
    let r = release.clone();
    let last = (n - 1).to_string();
    let mut run = start(
        RedisBroker::new(URL),
        stream_sub(&stream, AckPolicy::Ack, vec![("batch", 100u64.into())]),
        WAIT,
        move |seen| {
            if seen.body == last.as_str() {
                Act::WaitThenOk(r.clone())
            } else {
                Act::Ok
            }
        },
    )
    .await;
    for _ in 0..n {
        run.next().await;
    }
    let app = run.app.take().expect("running");
    let stopping = tokio::spawn(app.stop());
    tokio::task::yield_now().await; // the stop has begun
    release.notify_one();
    tokio::time::timeout(WAIT, stopping)
        .await
        .expect("stop finishes")
        .expect("stop task")
        .expect("clean stop");
    assert_eq!(
        pending(&c, &stream, "g").await,
        vec![],
        "every handled entry acknowledged by the time stop returned"
    );
    assert!(remaining(&c, &stream, "g").await.is_empty());
}

/// One entry, handled while the consumer already waits in its next blocking read (two
/// handlers at once): its XACK goes out as soon as the handler returned, not when a batch has
/// filled or the read ends (BLOCK is 2 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_entry_is_acknowledged_at_once() {
    let (stream, c, broker) = (unique("pipeline-lone"), raw().await, RedisBroker::new(URL));
    let handler_time = Duration::from_millis(50);
    let bound = Duration::from_millis(1000);
    let mut run = start(
        broker.clone(),
        stream_sub(&stream, AckPolicy::Ack, vec![("concurrency", 2u64.into())]),
        WAIT,
        move |_| Act::SleepThenOk(handler_time),
    )
    .await;
    for body in ["first", "second"] {
        broker
            .publish_message(Outgoing::new(format!("stream:{stream}"), body))
            .await
            .expect("publish");
        let seen = run.next().await;
        let called = Instant::now();
        while !pending(&c, &stream, "g").await.is_empty() {
            assert!(
                called.elapsed() < handler_time + bound,
                "{body}: {} still pending {:?} after the handler was called",
                seen.id,
                called.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    run.stop().await;
}

/// The connection is cut while acknowledgements are queued, for longer than the command
/// timeout: the flush fails, the entries stay pending (nothing acknowledged them), and after
/// the reconnect they are delivered again and then acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_flush_leaves_its_entries_pending_and_they_come_back_after_the_reconnect() {
    let (stream, c) = (unique("pipeline-cut"), raw().await);
    let n = 5;
    prefilled(&c, &stream, n).await;
    let proxy = brook_runtime::proxy::TcpProxy::start(ADDR.parse().unwrap())
        .await
        .unwrap();
    // Above BLOCK (2 s), so that idle blocking reads do not time out.
    let timeout = Duration::from_millis(2500);
    let broker = RedisBroker::new(format!("redis://{}", proxy.addr()))
        .command_timeout(timeout)
        .reconnect_max_delay(Duration::from_millis(200));
    let release = Arc::new(Notify::new());
    let r = release.clone();
    let mut run = start(
        broker,
        stream_sub(&stream, AckPolicy::Ack, vec![]),
        WAIT,
        move |seen| {
            if seen.body == "0" && seen.deliveries == Some(1) {
                Act::WaitThenOk(r.clone())
            } else {
                Act::Ok
            }
        },
    )
    .await;
    let first = run.next().await;
    assert_eq!(first.body, "0");
    // The handlers return with the connection gone: their acks are queued, and the flush
    // cannot reach Redis.
    proxy.cut();
    release.notify_one();
    let mut ids = vec![first.id.clone()];
    for _ in 1..n {
        let seen = run.next().await;
        assert_eq!(seen.deliveries, Some(1));
        ids.push(seen.id);
    }
    tokio::time::sleep(timeout + Duration::from_millis(700)).await;
    let still = pending(&c, &stream, "g").await;
    assert_eq!(
        still.iter().map(|p| p.id.clone()).collect::<Vec<_>>(),
        ids,
        "the failed flush acknowledged nothing"
    );
    assert!(still.iter().all(|p| p.deliveries == 1));

    proxy.restore();
    let mut again = Vec::new();
    for _ in 0..n {
        let seen = run.next().await;
        assert_eq!(seen.deliveries, Some(2), "{} delivered again", seen.id);
        again.push(seen.id);
    }
    again.sort_by_key(|id| {
        let (ms, seq) = id.split_once('-').unwrap();
        (ms.parse::<u64>().unwrap(), seq.parse::<u64>().unwrap())
    });
    assert_eq!(again, ids);
    eventually("the redelivered entries are acknowledged", || async {
        pending(&c, &stream, "g").await.is_empty()
    })
    .await;
    run.stop().await;
    assert!(remaining(&c, &stream, "g").await.is_empty());
}
