//! MQTT 5 specifics: headers travel as native publish properties (checked with a raw rumqttc
//! v5 client on the wire side) and come back as brook headers.

mod common;

use std::time::Duration;

use brook_mqtt::{MqttBroker, ProtocolVersion};
use brook_runtime::{AckPolicy, Broker, BrokerKind, Consumer, Outgoing, Subscription};
use bytes::Bytes;
use common::{unique, SHARED};
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};

fn v5_broker() -> MqttBroker {
    MqttBroker::new(&format!("mqtt://{SHARED}")).protocol(ProtocolVersion::V5)
}

fn outgoing(topic: &str) -> Outgoing {
    Outgoing::new(topic, Bytes::from_static(br#"{"n":1}"#))
        .with_header("content-type", "application/json")
        .with_correlation_id("corr-42")
        .with_reply_to("replies/here")
        .with_header("x-tenant", "acme")
}

#[tokio::test]
async fn headers_are_native_v5_properties_on_the_wire() {
    let topic = format!("brook-test/{}", unique("v5-props"));
    // A raw MQTT 5 subscriber sees what brook put on the wire.
    let mut options = MqttOptions::new(unique("brook-v5-raw"), "127.0.0.1", 1883);
    options.set_keep_alive(Duration::from_secs(5));
    let (raw, mut el) = AsyncClient::new(options, 10);
    raw.subscribe(topic.clone(), QoS::AtLeastOnce)
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Ok(Event::Incoming(Packet::SubAck(_))) = el.poll().await {
                break;
            }
        }
    })
    .await
    .expect("suback");

    let broker = v5_broker();
    broker.publish_message(outgoing(&topic)).await.unwrap();
    let publish = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Ok(Event::Incoming(Packet::Publish(p))) = el.poll().await {
                break p;
            }
        }
    })
    .await
    .expect("the raw client receives the message");
    let props = publish.properties.expect("properties");
    assert_eq!(props.content_type.as_deref(), Some("application/json"));
    assert_eq!(props.correlation_data.as_deref(), Some(&b"corr-42"[..]));
    assert_eq!(props.response_topic.as_deref(), Some("replies/here"));
    assert_eq!(
        props.user_properties,
        vec![("x-tenant".to_owned(), "acme".to_owned())]
    );
    broker.close().await.unwrap();
    let _ = raw.disconnect().await;
}

#[tokio::test]
async fn properties_come_back_as_brook_headers() {
    let topic = format!("brook-test/{}", unique("v5-headers"));
    let broker = v5_broker();
    let sub = Subscription::new(BrokerKind::Mqtt, "v5")
        .arg("topic", topic.clone())
        .arg("ack_policy", AckPolicy::Ack)
        .build()
        .unwrap();
    let mut consumer = broker.subscribe(&sub).await.unwrap();
    broker.publish_message(outgoing(&topic)).await.unwrap();
    let msg = tokio::time::timeout(Duration::from_secs(5), consumer.next())
        .await
        .expect("a message")
        .expect("open")
        .expect("ok");
    assert_eq!(msg.content_type(), Some("application/json"));
    assert_eq!(msg.correlation_id(), Some("corr-42"));
    assert_eq!(msg.reply_to(), Some("replies/here"));
    assert_eq!(msg.headers().get("x-tenant"), Some("acme"));
    msg.ack().await.unwrap();
    consumer.close().await.unwrap();
    broker.close().await.unwrap();
}

#[tokio::test]
async fn mqtt_3_1_1_sends_no_headers() {
    let topic = format!("brook-test/{}", unique("v3-headers"));
    let broker = MqttBroker::new(&format!("mqtt://{SHARED}"));
    let sub = Subscription::new(BrokerKind::Mqtt, "v3")
        .arg("topic", topic.clone())
        .build()
        .unwrap();
    let mut consumer = broker.subscribe(&sub).await.unwrap();
    broker.publish_message(outgoing(&topic)).await.unwrap();
    let msg = tokio::time::timeout(Duration::from_secs(5), consumer.next())
        .await
        .expect("a message")
        .expect("open")
        .expect("ok");
    assert!(msg.headers().is_empty());
    assert_eq!(&msg.body()[..], br#"{"n":1}"#);
    msg.ack().await.unwrap();
    consumer.close().await.unwrap();
    broker.close().await.unwrap();
}
