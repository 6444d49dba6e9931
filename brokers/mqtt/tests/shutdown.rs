//! Shutdown on 127.0.0.1:1883: a stop with nothing in flight waits for no fixed delay (no
//! polling, no sleep after DISCONNECT), and the PUBACKs of handled messages still reach the
//! broker before the DISCONNECT.

use std::time::{Duration, Instant};

mod common;

use brook_mqtt::{MqttBroker, ProtocolVersion};
use brook_runtime::testing::Bodies;
use brook_runtime::{kind, AckPolicy, App, Broker, BrokerKind, Outgoing, Subscription};
use bytes::Bytes;
use common::{unique, SHARED};

const WAIT: Duration = Duration::from_secs(15);
/// Stops measured per case; the median is what is asserted.
const STOPS: usize = 10;
/// What the median stop must stay under: a stop with nothing in flight is a DISCONNECT and
/// the broker closing the socket, on loopback.
const FAST: Duration = Duration::from_millis(150);

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

/// Starts an App with one QoS 1 subscriber, has it handle one message (so nothing is in
/// flight), and times `stop`.
async fn timed_stop(broker: MqttBroker, topic: &str) -> Duration {
    let sub = Subscription::new(BrokerKind::Mqtt, "shutdown")
        .arg("topic", topic.to_owned())
        .arg("qos", 1u32)
        .arg("ack_policy", AckPolicy::Ack);
    let (handler, mut rx) = Bodies::<kind::Mqtt>::new(sub);
    let running = App::new(broker.clone())
        .subscribe(handler)
        .start()
        .await
        .expect("start");
    // Subscribed (SUBACK) once `start` returned.
    broker
        .publish_message(Outgoing::new(topic.to_owned(), Bytes::from_static(b"x")))
        .await
        .expect("publish");
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("handled within the bound")
        .expect("handler alive");
    let started = Instant::now();
    running.stop().await.expect("stop");
    started.elapsed()
}

async fn idle_stops(protocol: ProtocolVersion) {
    let name = unique("shutdown");
    let topic = format!("brook-test/{name}");
    let mut times = Vec::new();
    for _ in 0..STOPS {
        let broker = MqttBroker::new(&format!("mqtt://{SHARED}")).protocol(protocol);
        times.push(timed_stop(broker, &topic).await);
    }
    eprintln!("{protocol:?} stop times: {times:?}");
    let median = median(times);
    eprintln!("{protocol:?} median stop: {median:?}");
    assert!(median < FAST, "median stop {median:?} (over {FAST:?})");
}

#[tokio::test]
async fn an_idle_subscriber_stops_without_waiting() {
    idle_stops(ProtocolVersion::V311).await;
}

#[tokio::test]
async fn an_idle_subscriber_stops_without_waiting_v5() {
    idle_stops(ProtocolVersion::V5).await;
}

/// Rounds of [`acks_before_disconnect`], each a new App on the same persistent session.
const ROUNDS: usize = 5;

/// Handles a burst with concurrent handlers and stops as soon as the last handler call began
/// (its ack, and likely others, not written yet), a few times over: every message was
/// handled, so the persistent session must hold none of them afterwards.
async fn acks_before_disconnect(protocol: ProtocolVersion, qos: u32) {
    const N: usize = 100;
    let name = unique("shutdown-acks");
    let topic = format!("brook-test/{name}");
    let client_id = format!("brook-test-{name}");
    let publisher = MqttBroker::new(&format!("mqtt://{SHARED}"));
    let mut times = Vec::new();
    for _ in 0..ROUNDS {
        let broker = MqttBroker::new(&format!("mqtt://{SHARED}"))
            .client_id(client_id.clone())
            .persistent_session(true)
            .protocol(protocol);
        let sub = Subscription::new(BrokerKind::Mqtt, "shutdown")
            .arg("topic", topic.clone())
            .arg("qos", qos)
            .arg("ack_policy", AckPolicy::Ack)
            .arg("concurrency", 16u32);
        let (handler, mut rx) = Bodies::<kind::Mqtt>::new(sub);
        let running = App::new(broker.clone())
            .subscribe(handler)
            .start()
            .await
            .expect("start");
        for i in 0..N {
            publisher
                .publish_with(
                    Outgoing::new(topic.clone(), Bytes::from(i.to_string())),
                    1,
                    false,
                )
                .await
                .expect("publish");
        }
        let mut handled = std::collections::HashSet::new();
        while handled.len() < N {
            let body = tokio::time::timeout(WAIT, rx.recv())
                .await
                .expect("a handler call within the bound")
                .expect("handler alive");
            handled.insert(body);
        }
        let started = Instant::now();
        running.stop().await.expect("stop");
        times.push(started.elapsed());
    }
    publisher.close().await.expect("close publisher");
    eprintln!("{protocol:?} QoS {qos}: stop right after {N} handler calls: {times:?}");
    eprintln!("{protocol:?} QoS {qos}: median {:?}", median(times));
    let left = common::remaining(SHARED, &client_id)
        .await
        .expect("the session is still there");
    assert!(
        left.is_empty(),
        "{} handled messages still in the session: {left:?}",
        left.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubacks_of_handled_messages_reach_the_broker_before_disconnect() {
    acks_before_disconnect(ProtocolVersion::V311, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubacks_of_handled_messages_reach_the_broker_before_disconnect_v5() {
    acks_before_disconnect(ProtocolVersion::V5, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos2_handshakes_of_handled_messages_complete_before_disconnect() {
    acks_before_disconnect(ProtocolVersion::V311, 2).await;
}
