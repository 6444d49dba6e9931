//! Health and supervision on the local RabbitMQ, through an App: `RunningApp::health` shows the
//! broker connected once the App started (and not after it stopped), a connection cut through a
//! proxy (and the recovery), and a subscriber that cannot consume because its queue is gone.
//!
//! Supervision: nothing done to RabbitMQ from outside ends a RabbitMQ consumer for good, by
//! design. When its queue is deleted RabbitMQ cancels the consumer (`basic.cancel`), and the
//! consumer consumes again on a new channel: it declares the queue again (`declare = true`,
//! tested here), or, with `passive = true` / `declare = false`, keeps retrying until the queue
//! is back (the App keeps running; health shows the broker not connected meanwhile, tested
//! here). So `App::restart_ended` never comes into play on RabbitMQ, and there is no
//! `SubscriberEnded` to test; supervision of an ended consumer is tested on NATS
//! (tests/supervision.rs at the repository root).
//!
//! Health is sampled by polling `health()` with a deadline: it is the only thing to observe.

mod common;

use std::time::{Duration, Instant};

use brook::prelude::*;
use brook::rabbit::lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
use brook::rabbit::lapin::types::FieldTable;
use brook::rabbit::lapin::{Connection, ConnectionProperties};
use brook::rabbit::{subscriber, RabbitBroker};
use brook::BrokerKind;
use brook_runtime::proxy::TcpProxy;
use brook_runtime::testing::{assert_stopped, wait_disconnected, wait_ready, Seen};
use common::{fresh, Admin, ADDR, URL, WAIT};

static READY: Seen = Seen::new();
static REDECLARED: Seen = Seen::new();
static PASSIVE: Seen = Seen::new();
static CUT: Seen = Seen::new();

#[subscriber(queue = _, declare = false, ack_policy = Ack)]
async fn ready_handler(body: String) {
    READY.record(body);
}

// Declared by brook, auto-delete: gone once the App stopped, even if the test fails.
#[subscriber(queue = _, auto_delete = true, durable = false, ack_policy = Ack)]
async fn redeclared_handler(body: String) {
    REDECLARED.record(body);
}

#[subscriber(queue = _, passive = true, ack_policy = Ack)]
async fn passive_handler(body: String) {
    PASSIVE.record(body);
}

#[subscriber(queue = _, declare = false, ack_policy = Ack)]
async fn cut_handler(body: String) {
    CUT.record(body);
}

/// Reconnects quickly, so a test waits for a restored connection for well under a second.
fn quick(url: &str) -> RabbitBroker {
    RabbitBroker::new(url)
        .connect_timeout(Duration::from_secs(2))
        .reconnect_backoff(Duration::from_millis(50), Duration::from_millis(200))
}

/// The queue's consumer count, or `None` if it does not exist, on a connection of its own (a
/// passive declare of a missing queue closes the channel it ran on).
async fn consumers(queue: &str) -> Option<u32> {
    let connection = Connection::connect(URL, ConnectionProperties::default())
        .await
        .expect("inspection connection");
    let channel = connection.create_channel().await.expect("channel");
    let options = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let found = channel
        .queue_declare(queue.into(), options, FieldTable::default())
        .await
        .ok()
        .map(|q| q.consumer_count());
    let _ = connection.close(200, "bye".into()).await;
    found
}

/// Deletes `queue`, which must exist.
async fn delete(admin: &Admin, queue: &str) {
    admin
        .channel
        .queue_delete(queue.into(), QueueDeleteOptions::default())
        .await
        .expect("delete the queue under the App");
}

async fn until_consumed(queue: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let found = consumers(queue).await;
        if found == Some(1) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{queue}: {found:?} consumers, expected the queue with one"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_started_app_is_connected_and_ready_and_a_stopped_one_is_not() {
    let mut seen = READY.watch();
    let admin = Admin::new().await;
    let queue = fresh("health-ready");
    admin.queue(&queue, None, None).await;
    let broker = RabbitBroker::new(URL);
    assert_eq!(broker.is_connected(), Some(false), "before connect");
    let running = App::new(broker.clone())
        .subscribe(ready_handler.queue(&queue))
        .start()
        .await
        .unwrap();
    let probe = running.health_handle();
    let health = wait_ready(&probe, BrokerKind::Rabbit, WAIT).await;
    // The App has this one broker (elsewhere `connected` finding it is enough).
    assert_eq!(health.brokers, [(BrokerKind::Rabbit, Some(true))]);
    assert!(health.is_alive());
    assert_eq!(health.subscribers[0].subscriber, "ready_handler");
    assert_eq!(health.subscribers[0].source, queue);

    broker.publish("hello", &queue).await.unwrap();
    assert_eq!(seen.next(WAIT).await.unwrap(), "hello");
    // Counted on receipt, before the handler ran.
    assert_eq!(probe.health().subscribers[0].received, 1);

    running.stop().await.unwrap();
    assert_stopped(&probe, BrokerKind::Rabbit);
    admin.delete(&queue).await;
}

/// brook recovers by design: RabbitMQ cancels the consumer of a deleted queue, and the consumer
/// declares the queue again and consumes it, without ending (no restart, no `SubscriberEnded`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_deleted_under_a_running_app_is_declared_again_and_consumed() {
    let mut seen = REDECLARED.watch();
    let admin = Admin::new().await;
    let queue = fresh("health-redeclared");
    let broker = quick(URL);
    let running = App::new(broker.clone())
        .subscribe(redeclared_handler.queue(&queue))
        .start()
        .await
        .unwrap();
    let probe = running.health_handle();
    broker.publish("before", &queue).await.unwrap();
    assert_eq!(seen.next(WAIT).await.unwrap(), "before");

    delete(&admin, &queue).await;
    // Published only once the queue is back: before, the default exchange would drop it.
    until_consumed(&queue).await;
    broker.publish("after", &queue).await.unwrap();
    assert_eq!(seen.next(WAIT).await.unwrap(), "after");

    let health = wait_ready(&probe, BrokerKind::Rabbit, WAIT).await;
    let sub = &health.subscribers[0];
    assert!(sub.consuming && sub.ended.is_none(), "{sub:?}");
    assert_eq!(sub.restarts, 0, "recovered by the consumer, not restarted");
    assert_eq!(sub.received, 2);
    running.stop().await.expect("the App ran on");
}

/// A passive subscriber cannot declare its queue again: while the queue is gone it holds no
/// connection (each attempt finds the queue missing), so health shows the broker not connected
/// and the App not ready; the App keeps running, and consumes again once the queue is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passive_subscriber_whose_queue_is_gone_is_not_ready_until_it_is_back() {
    let mut seen = PASSIVE.watch();
    let admin = Admin::new().await;
    let queue = fresh("health-passive");
    admin.queue(&queue, None, None).await;
    let broker = quick(URL);
    let running = App::new(broker.clone())
        .subscribe(passive_handler.queue(&queue))
        .start()
        .await
        .unwrap();
    let probe = running.health_handle();
    wait_ready(&probe, BrokerKind::Rabbit, WAIT).await;

    delete(&admin, &queue).await;
    wait_disconnected(&probe, BrokerKind::Rabbit, WAIT).await;

    admin.queue(&queue, None, None).await;
    until_consumed(&queue).await;
    wait_ready(&probe, BrokerKind::Rabbit, WAIT).await;
    broker.publish("back", &queue).await.unwrap();
    assert_eq!(seen.next(WAIT).await.unwrap(), "back");
    assert_eq!(probe.health().subscribers[0].restarts, 0);
    running.stop().await.expect("the App ran on");
    admin.delete(&queue).await;
}

/// The App's connections go through a proxy; cutting it drops them (a broker restart, as the
/// client sees it): health shows the broker not connected, then connected again once the
/// consumer reconnected, and the subscriber consumes again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_connection_shows_in_health_until_the_consumer_reconnects() {
    let mut seen = CUT.watch();
    let admin = Admin::new().await;
    let queue = fresh("health-cut");
    admin.queue(&queue, None, None).await;
    let proxy = TcpProxy::start(ADDR.parse().unwrap()).await.unwrap();
    let broker = quick(&format!("amqp://guest:guest@{}/%2f", proxy.addr()));
    let running = App::new(broker.clone())
        .subscribe(cut_handler.queue(&queue))
        .start()
        .await
        .unwrap();
    let probe = running.health_handle();
    wait_ready(&probe, BrokerKind::Rabbit, WAIT).await;

    proxy.cut();
    wait_disconnected(&probe, BrokerKind::Rabbit, WAIT).await;

    proxy.restore();
    wait_ready(&probe, BrokerKind::Rabbit, WAIT).await;
    // Published past the proxy, so only the consumer's reconnection is tested.
    admin
        .publish_with_int_headers(&queue, b"after the cut", &[])
        .await;
    assert_eq!(seen.next(WAIT).await.unwrap(), "after the cut");
    running.stop().await.unwrap();
    admin.delete(&queue).await;
}
