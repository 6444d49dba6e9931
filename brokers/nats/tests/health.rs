//! Health on the local NATS, through an App: `RunningApp::health` shows the broker connected
//! once the App started (and not after it stopped), and a connection cut through a proxy until
//! async-nats reconnected; the JetStream subscriber then consumes again.
//!
//! Supervision (a durable deleted under a running App ends it with `SubscriberEnded`, or, with
//! `App::restart_ended`, the subscriber is subscribed again) is tested on NATS in
//! tests/supervision.rs at the repository root, not repeated here.
//!
//! Health is sampled by polling `health()` with a deadline: it is the only thing to observe.

mod common;

use brook::nats::NatsBroker;
use brook::prelude::*;
use brook::BrokerKind;
use brook_runtime::proxy::TcpProxy;
use brook_runtime::testing::{assert_stopped, wait_disconnected, wait_ready, Seen};
use common::{names, URL, WAIT};

static READY: Seen = Seen::new();
static CUT: Seen = Seen::new();

#[brook::nats::subscriber(stream = _, subject = _, durable = "worker", ack_policy = Ack)]
async fn ready_handler(body: String) {
    READY.record(body);
}

#[brook::nats::subscriber(stream = _, subject = _, durable = "worker", ack_policy = Ack)]
async fn cut_handler(body: String) {
    CUT.record(body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_started_app_is_connected_and_ready_and_a_stopped_one_is_not() {
    let n = names("health_ready");
    let _cleanup = common::cleanup(&[&n.stream]);
    let mut seen = READY.watch();
    let broker = NatsBroker::new(URL);
    assert_eq!(broker.is_connected(), Some(false), "before connect");
    let running = App::new(broker.clone())
        .subscribe(ready_handler.stream(&n.stream).subject(&n.subject))
        .start()
        .await
        .unwrap();
    let probe = running.health_handle();
    let health = wait_ready(&probe, BrokerKind::Nats, WAIT).await;
    // The App has this one broker (elsewhere `connected` finding it is enough).
    assert_eq!(health.brokers, [(BrokerKind::Nats, Some(true))]);
    assert!(health.is_alive());
    assert_eq!(health.subscribers[0].subscriber, "ready_handler");

    broker.publish("hello", &n.subject).await.unwrap();
    assert_eq!(seen.next(WAIT).await.unwrap(), "hello");
    // Counted on receipt, before the handler ran.
    assert_eq!(probe.health().subscribers[0].received, 1);

    running.stop().await.unwrap();
    assert_stopped(&probe, BrokerKind::Nats);
}

/// The App's connection goes through a proxy; cutting it drops it (a server restart, as the
/// client sees it): health shows the broker not connected while async-nats reconnects, then
/// connected again, and the subscriber fetches what was published meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_connection_shows_in_health_until_the_client_reconnects() {
    let n = names("health_cut");
    let _cleanup = common::cleanup(&[&n.stream]);
    let mut seen = CUT.watch();
    let proxy = TcpProxy::start("127.0.0.1:4222".parse().unwrap())
        .await
        .unwrap();
    let broker = NatsBroker::new(format!("nats://{}", proxy.addr()));
    let running = App::new(broker.clone())
        .subscribe(cut_handler.stream(&n.stream).subject(&n.subject))
        .start()
        .await
        .unwrap();
    let probe = running.health_handle();
    wait_ready(&probe, BrokerKind::Nats, WAIT).await;

    proxy.cut();
    wait_disconnected(&probe, BrokerKind::Nats, WAIT).await;
    // Stored by the stream while the App is cut off (published past the proxy).
    let direct = NatsBroker::new(URL);
    direct.publish("during the cut", &n.subject).await.unwrap();

    proxy.restore();
    wait_ready(&probe, BrokerKind::Nats, WAIT).await;
    assert_eq!(seen.next(WAIT).await.unwrap(), "during the cut");
    running.stop().await.unwrap();
    direct.close().await.unwrap();
}
