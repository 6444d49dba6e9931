//! Health and supervision on the local Redis, through an App reading a stream through a group:
//! `RunningApp::health` shows the broker connected once the App started (and not after it
//! stopped), and a connection cut through a proxy until fred reconnected.
//!
//! Supervision: nothing done to Redis from outside ends a stream consumer for good, by design.
//! A destroyed group (`XGROUP DESTROY`, or the stream deleted: NOGROUP on the next read) is
//! created again by the consumer, which goes on consuming, so the App keeps running and
//! `App::restart_ended` never comes into play; tested here through health (no restart, not
//! ended). The stream deleted with `DEL` is tested in tests/streams.rs. Supervision of an ended
//! consumer is tested on NATS (tests/supervision.rs at the repository root).
//!
//! Health is sampled by polling `health()` with a deadline: it is the only thing to observe.

mod common;

use std::time::Duration;

use brook::{Broker as _, BrokerKind, HealthHandle};
use brook_redis::RedisBroker;
use brook_runtime::proxy::TcpProxy;
use brook_runtime::testing::{assert_stopped, wait_disconnected, wait_ready};
use brook_runtime::AckPolicy;
use bytes::Bytes;
use common::*;

/// An App reading `stream` through group `g` and acking each message, and its health.
async fn start_app(broker: &RedisBroker, stream: &str) -> (Running, HealthHandle) {
    let sub = stream_sub(stream, AckPolicy::Ack, vec![]);
    let run = start(broker.clone(), sub, WAIT, |_| Act::Ok).await;
    let probe = run.app.as_ref().expect("running").health_handle();
    (run, probe)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_started_app_is_connected_and_ready_and_a_stopped_one_is_not() {
    let (stream, c) = (unique("health-ready"), raw().await);
    let broker = RedisBroker::new(URL);
    assert_eq!(broker.is_connected(), Some(false), "before connect");
    let (mut run, probe) = start_app(&broker, &stream).await;
    let health = wait_ready(&probe, BrokerKind::Redis, WAIT).await;
    // The App has this one broker (elsewhere `connected` finding it is enough).
    assert_eq!(health.brokers, [(BrokerKind::Redis, Some(true))]);
    assert!(health.is_alive());
    assert_eq!(health.subscribers[0].source, stream);

    publish(&broker, &stream, b"hello").await;
    assert_eq!(run.next().await.body, Bytes::from_static(b"hello"));
    // Counted on receipt, before the handler ran.
    assert_eq!(probe.health().subscribers[0].received, 1);

    run.stop().await;
    assert_stopped(&probe, BrokerKind::Redis);
    del(&c, &[&stream]).await;
}

/// brook recovers by design: the consumer's next read fails with NOGROUP, it creates the group
/// again and consumes on, without ending (no restart, no `SubscriberEnded`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_destroyed_under_a_running_app_is_created_again_and_consumed() {
    let (stream, c) = (unique("health-destroyed"), raw().await);
    let broker = RedisBroker::new(URL);
    let (mut run, probe) = start_app(&broker, &stream).await;
    publish(&broker, &stream, b"before").await;
    assert_eq!(run.next().await.body, Bytes::from_static(b"before"));

    let destroyed = call(&c, "XGROUP", vec![s("DESTROY"), s(&stream), s("g")]).await;
    assert_eq!(destroyed.as_i64(), Some(1), "the group existed");
    eventually("the group was created again", || async {
        !call(&c, "XINFO", vec![s("GROUPS"), s(&stream)])
            .await
            .into_array()
            .is_empty()
    })
    .await;
    // Published once the group is back: it starts at the stream's end (`$`).
    publish(&broker, &stream, b"after").await;
    assert_eq!(run.next().await.body, Bytes::from_static(b"after"));

    let health = probe.health();
    let sub = &health.subscribers[0];
    assert!(sub.consuming && sub.ended.is_none(), "{sub:?}");
    assert_eq!(sub.restarts, 0, "recovered by the consumer, not restarted");
    assert_eq!(sub.received, 2, "both counted on receipt");
    assert!(health.is_ready(), "{health:?}");
    run.stop().await;
    assert_eq!(pending(&c, &stream, "g").await, vec![]);
    del(&c, &[&stream]).await;
}

/// The App's connections go through a proxy; cutting it drops them (a Redis restart, as the
/// client sees it): health shows the broker not connected while fred reconnects, then connected
/// again, and the subscriber reads what was added meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_connection_shows_in_health_until_the_client_reconnects() {
    let (stream, c) = (unique("health-cut"), raw().await);
    let proxy = TcpProxy::start(ADDR.parse().unwrap()).await.unwrap();
    let broker = RedisBroker::new(format!("redis://{}", proxy.addr()))
        .reconnect_max_delay(Duration::from_millis(200));
    let (mut run, probe) = start_app(&broker, &stream).await;
    wait_ready(&probe, BrokerKind::Redis, WAIT).await;

    proxy.cut();
    wait_disconnected(&probe, BrokerKind::Redis, WAIT).await;
    // Added while the App is cut off (past the proxy).
    publish(&RedisBroker::new(URL), &stream, b"during the cut").await;

    proxy.restore();
    wait_ready(&probe, BrokerKind::Redis, WAIT).await;
    assert_eq!(run.next().await.body, Bytes::from_static(b"during the cut"));
    run.stop().await;
    del(&c, &[&stream]).await;
}
