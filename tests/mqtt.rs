#![cfg(feature = "mqtt")]
// NackOnError on MQTT compiles with brook's (deprecation-style) warning; known here.
#![allow(deprecated)]
//! `#[subscriber(broker = mqtt, ...)]` end to end on the local Mosquitto (127.0.0.1:1883): the
//! macro's `topic`/`qos`/`ack_policy` reach the subscription, `&MqttMessage` is extracted, a
//! failed message comes back (redelivered by brook, on the same connection), and the session is
//! empty afterwards.
//!
//! Macro arguments are literals, so the test cannot use per-run names; it deletes its session
//! first (a clean-session connect), so reruns start clean.

use std::sync::Mutex;
use std::time::Duration;

use brook::mqtt::{MqttBroker, MqttMessage};
use brook::prelude::*;
use brook::{BrokerKind, Consumer, Subscription};
use tokio::sync::mpsc;

const URL: &str = "mqtt://127.0.0.1:1883";
const CLIENT_ID: &str = "brook-facade-mqtt";
const TOPIC: &str = "brook/facade/orders";

static SEEN: Mutex<Option<mpsc::UnboundedSender<(u64, bool, u8)>>> = Mutex::new(None);

#[derive(serde::Deserialize)]
struct Order {
    id: u64,
}

/// Fails on the first delivery of every order; the redelivery (DUP) succeeds.
#[subscriber(broker = mqtt, topic = "brook/facade/orders", qos = 1, ack_policy = NackOnError)]
async fn bill(order: Order, mqtt: &MqttMessage) -> anyhow::Result<()> {
    if let Some(tx) = SEEN.lock().unwrap().as_ref() {
        let _ = tx.send((order.id, mqtt.dup(), mqtt.qos()));
    }
    if !mqtt.dup() {
        anyhow::bail!("first attempt fails");
    }
    Ok(())
}

fn session_broker() -> MqttBroker {
    MqttBroker::new(URL)
        .client_id(CLIENT_ID)
        .persistent_session(true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_macro_declared_mqtt_subscriber_redelivers_a_nacked_message() {
    // Delete whatever an earlier run left: a clean-session connect discards the session.
    let clean = MqttBroker::new(URL).client_id(CLIENT_ID);
    clean.connect().await.expect("Mosquitto on 127.0.0.1:1883");
    clean.close().await.unwrap();

    let (tx, mut rx) = mpsc::unbounded_channel();
    *SEEN.lock().unwrap() = Some(tx);
    let broker = session_broker();
    let app = App::new(broker.clone())
        .subscribe(bill)
        .start()
        .await
        .unwrap();
    broker
        .publish(&serde_json::json!({"id": 7}), TOPIC)
        .await
        .unwrap();
    async fn next(rx: &mut mpsc::UnboundedReceiver<(u64, bool, u8)>) -> (u64, bool, u8) {
        tokio::time::timeout(Duration::from_secs(15), rx.recv())
            .await
            .expect("a delivery")
            .expect("handler alive")
    }
    assert_eq!(next(&mut rx).await, (7, false, 1));
    assert_eq!(
        next(&mut rx).await,
        (7, true, 1),
        "redelivered with DUP after the nack"
    );
    // Redelivered by brook itself, on the same connection: a nack no longer reconnects.
    assert_eq!(broker.connection_count().await, 1);
    tokio::time::timeout(Duration::from_secs(15), app.stop())
        .await
        .expect("the App stops in time")
        .unwrap();

    // The broker's state: the resumed session holds nothing more.
    let check = session_broker();
    let sub = Subscription::new(BrokerKind::Mqtt, "check")
        .arg("topic", TOPIC)
        .arg("ack_policy", AckPolicy::Manual)
        .build()
        .unwrap();
    let mut consumer = check.subscribe(&sub).await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(700), consumer.next())
            .await
            .is_err(),
        "nothing left in the session"
    );
    consumer.close().await.unwrap();
    check.close().await.unwrap();
    let clean = MqttBroker::new(URL).client_id(CLIENT_ID);
    clean.connect().await.unwrap();
    clean.close().await.unwrap();
}
