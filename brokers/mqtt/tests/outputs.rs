//! Handlers that publish, on the shared Mosquitto (127.0.0.1:1883): a handler's result goes to
//! its output topic (with the input's correlation id on MQTT 5; on MQTT 3.1.1 no header
//! travels, so the output arrives without one), request/reply through the connection's
//! response topic on MQTT 5, its timeout, a late reply that is dropped, and the typed refusal
//! of request/reply on MQTT 3.1.1.
mod common;

use std::time::{Duration, Instant};

use brook::mqtt::{MqttBroker, MqttConsumer, ProtocolVersion};
use brook::prelude::*;
use brook::{BrokerError, BrokerKind, Consumer, Outgoing, Subscription};
use brook_runtime::testing::{Calls, Probe};
use common::{unique, SHARED};
use serde::{Deserialize, Serialize};

const WAIT: Duration = Duration::from_secs(15);

#[derive(Debug, Deserialize, Serialize, PartialEq)]
struct Order {
    id: u64,
    amount: u32,
}

#[derive(Debug, Deserialize, Serialize, PartialEq)]
struct Invoice {
    order: u64,
    total: u32,
}

const OPEN: usize = Probe::OPEN;

#[brook::mqtt::subscriber(topic = _, publish = _, qos = 1)]
async fn bill(order: Order, msg: &Message, probe: State<Probe>) -> anyhow::Result<Invoice> {
    probe.pass(msg).await?;
    Ok(Invoice {
        order: order.id,
        total: order.amount * 2,
    })
}

#[brook::mqtt::subscriber(topic = _, qos = 1)]
async fn square(n: u64, msg: &Message, probe: State<Probe>) -> anyhow::Result<u64> {
    probe.pass(msg).await?;
    Ok(n * n)
}

fn broker(protocol: ProtocolVersion) -> MqttBroker {
    MqttBroker::new(&format!("mqtt://{SHARED}")).protocol(protocol)
}

fn v5() -> MqttBroker {
    broker(ProtocolVersion::V5)
}

fn topic(prefix: &str) -> String {
    format!("brook-test/{}", unique(prefix))
}

/// An MQTT 5 consumer of `topic` on a connection of its own (subscribed when this returns),
/// to see what reached the broker, properties included.
async fn watch(topic: &str) -> (MqttBroker, MqttConsumer) {
    let watcher = v5();
    let sub = Subscription::new(BrokerKind::Mqtt, "watch")
        .arg("topic", topic.to_owned())
        .arg("ack_policy", AckPolicy::Ack)
        .build()
        .expect("subscription");
    let consumer = watcher.subscribe(&sub).await.expect("watch");
    (watcher, consumer)
}

async fn next(consumer: &mut MqttConsumer) -> Message {
    let msg = tokio::time::timeout(WAIT, consumer.next())
        .await
        .expect("a message in time")
        .expect("open")
        .expect("a message");
    msg.ack().await.expect("ack");
    msg
}

/// The next handler call: (correlation_id, reply_to).
async fn next_call(calls: &mut Calls) -> (Option<String>, Option<String>) {
    let c = calls.next(WAIT).await.expect("a handler call in time");
    (c.correlation_id, c.reply_to)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_mqtt_5_the_output_carries_the_input_s_correlation_id() {
    let (input, output) = (topic("out5-in"), topic("out5-out"));
    let (watcher, mut out) = watch(&output).await;
    let (probe, mut calls, _gate) = Probe::new(OPEN);
    let app = App::new(v5())
        .state(probe)
        .subscribe(bill.topic(&input).publish(&output))
        .start()
        .await
        .expect("start");
    let order = Outgoing::encode(&Order { id: 7, amount: 21 }, &input)
        .expect("encode")
        .with_correlation_id("chain-7");
    v5().publish_message(order).await.expect("publish");
    assert_eq!(next_call(&mut calls).await.0.as_deref(), Some("chain-7"));
    let msg = next(&mut out).await;
    let invoice: Invoice = serde_json::from_slice(msg.body()).expect("an invoice");
    assert_eq!(
        invoice,
        Invoice {
            order: 7,
            total: 42
        }
    );
    assert_eq!(msg.correlation_id(), Some("chain-7"));
    assert_eq!(msg.content_type(), Some("application/json"));
    app.stop().await.expect("stop");
    watcher.close().await.expect("close");
}

/// MQTT 3.1.1 has no properties: the input arrives without a correlation id (the handler's
/// output gets a new one, which cannot travel either), and the output arrives with no
/// headers at all, even to an MQTT 5 subscriber.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_mqtt_3_1_1_the_output_arrives_without_headers() {
    let (input, output) = (topic("out3-in"), topic("out3-out"));
    let (watcher, mut out) = watch(&output).await;
    let (probe, mut calls, _gate) = Probe::new(OPEN);
    let app = App::new(broker(ProtocolVersion::V311))
        .state(probe)
        .subscribe(bill.topic(&input).publish(&output))
        .start()
        .await
        .expect("start");
    let order = Outgoing::encode(&Order { id: 3, amount: 5 }, &input)
        .expect("encode")
        .with_correlation_id("chain-3");
    broker(ProtocolVersion::V311)
        .publish_message(order)
        .await
        .expect("publish");
    assert_eq!(
        next_call(&mut calls).await,
        (None, None),
        "no header came in"
    );
    let msg = next(&mut out).await;
    let invoice: Invoice = serde_json::from_slice(msg.body()).expect("an invoice");
    assert_eq!(
        invoice,
        Invoice {
            order: 3,
            total: 10
        }
    );
    assert!(msg.headers().is_empty(), "{:?}", msg.headers());
    app.stop().await.expect("stop");
    watcher.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_mqtt_5_a_request_gets_the_handler_s_result_back_by_correlation_id() {
    let input = topic("rpc");
    let (probe, mut calls, _gate) = Probe::new(OPEN);
    let app = App::new(v5())
        .state(probe)
        .subscribe(square.topic(&input))
        .start()
        .await
        .expect("start");
    let client_id = MqttBroker::generate_client_id();
    let client = v5().client_id(&client_id);
    let request = Outgoing::encode(&12u64, &input)
        .expect("encode")
        .with_correlation_id("ask-12");
    let reply = client
        .request_message(request, WAIT)
        .await
        .expect("a reply");
    assert_eq!(&reply.body()[..], b"144");
    assert_eq!(reply.correlation_id(), Some("ask-12"));
    let response_topic = format!("brook/replies/{client_id}");
    assert_eq!(reply.topic(), response_topic);
    // The request reached the handler with the response topic as its reply_to.
    assert_eq!(
        next_call(&mut calls).await,
        (Some("ask-12".to_owned()), Some(response_topic.clone()))
    );
    // Concurrent requests share the response topic; each gets its own reply.
    let (a, b, c) = tokio::join!(
        client.request(&2u64, &input, WAIT),
        client.request(&3u64, &input, WAIT),
        client.request(&4u64, &input, WAIT),
    );
    let bodies: Vec<Vec<u8>> = [a, b, c]
        .into_iter()
        .map(|r| r.expect("a reply").body().to_vec())
        .collect();
    assert_eq!(bodies, [&b"4"[..], b"9", b"16"]);
    app.stop().await.expect("stop");
    client.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_mqtt_5_a_request_nobody_answers_times_out() {
    let input = topic("rpc-nobody");
    // Nobody answers, but the request is seen on the broker.
    let (watcher, mut seen) = watch(&input).await;
    let client = v5();
    let err = client
        .request(&1u64, &input, Duration::from_millis(500))
        .await
        .expect_err("no reply");
    assert!(
        matches!(&err, BrokerError::RequestTimeout { destination, timeout, .. }
            if destination == &input && *timeout == Duration::from_millis(500)),
        "{err:?}"
    );
    let request = next(&mut seen).await;
    assert!(
        request
            .reply_to()
            .is_some_and(|t| t.starts_with("brook/replies/")),
        "{:?}",
        request.headers()
    );
    assert_eq!(
        request.correlation_id().map(str::len),
        Some(36),
        "a new UUID"
    );
    client.close().await.expect("close");
    watcher.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_mqtt_5_a_late_reply_is_dropped_and_the_next_request_gets_its_own() {
    let input = topic("rpc-late");
    let (probe, mut calls, gate) = Probe::new(0);
    let app = App::new(v5())
        .state(probe)
        .subscribe(square.topic(&input))
        .start()
        .await
        .expect("start");
    let client = v5();
    let late = Outgoing::encode(&5u64, &input)
        .expect("encode")
        .with_correlation_id("late-5");
    let err = client
        .request_message(late, Duration::from_millis(500))
        .await
        .expect_err("the handler is held back");
    assert!(matches!(err, BrokerError::RequestTimeout { .. }), "{err:?}");
    let (_, reply_to) = next_call(&mut calls).await;
    let response_topic = reply_to.expect("reply_to");
    // Watch the response topic from outside, then let the handler go: it answers the
    // timed-out request (late), then the next one.
    let (watcher, mut replies) = watch(&response_topic).await;
    gate.add_permits(OPEN);
    let on_time = Outgoing::encode(&6u64, &input)
        .expect("encode")
        .with_correlation_id("on-time-6");
    let reply = client
        .request_message(on_time, WAIT)
        .await
        .expect("a reply");
    assert_eq!(
        (reply.correlation_id(), &reply.body()[..]),
        (Some("on-time-6"), &b"36"[..])
    );
    // The late reply did reach the response topic, first, and was dropped.
    let first = next(&mut replies).await;
    assert_eq!(
        (first.correlation_id(), &first.body()[..]),
        (Some("late-5"), &b"25"[..])
    );
    assert_eq!(next(&mut replies).await.correlation_id(), Some("on-time-6"));
    app.stop().await.expect("stop");
    client.close().await.expect("close");
    watcher.close().await.expect("close");
}

#[tokio::test]
async fn on_mqtt_3_1_1_a_request_is_refused_at_once_with_a_typed_error() {
    let input = topic("rpc-v3");
    let client = broker(ProtocolVersion::V311);
    let started = Instant::now();
    let err = client
        .request(&1u64, &input, WAIT)
        .await
        .expect_err("3.1.1 has no reply address");
    assert!(started.elapsed() < Duration::from_secs(1), "at once");
    match &err {
        BrokerError::Unsupported { broker, what, why } => {
            assert_eq!(*broker, BrokerKind::Mqtt);
            assert_eq!(*what, "request/reply");
            assert!(why.contains("MQTT 3.1.1"), "{why}");
            assert!(why.contains("ProtocolVersion::V5"), "says how: {why}");
        }
        other => panic!("expected Unsupported, got {other:?}"),
    }
    // Nothing was sent: the client did not even connect.
    assert_eq!(client.connection_count().await, 0);
}
