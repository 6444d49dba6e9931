//! Connecting: clear errors for a wrong address, no credentials in errors or `Debug`, and
//! reconnecting after the connection to the broker is cut.
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use brook_kafka::KafkaBroker;
use brook_runtime::{AckPolicy, App, Broker, BrokerError, Outgoing};
use bytes::Bytes;
use common::*;

#[tokio::test]
async fn a_wrong_address_fails_connect_in_bounded_time_naming_kafka_and_the_address() {
    let broker = KafkaBroker::new("kafka://alice:hunter2@127.0.0.1:1")
        .with_connect_timeout(Duration::from_secs(2));
    let started = Instant::now();
    let err = tokio::time::timeout(Duration::from_secs(10), broker.connect())
        .await
        .expect("connect() must not hang")
        .expect_err("nothing listens on port 1");
    assert!(started.elapsed() < Duration::from_secs(8));
    assert!(matches!(err, BrokerError::Connect { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("Kafka") && text.contains("127.0.0.1:1"),
        "{text}"
    );
    assert!(!text.contains("hunter2"), "{text}");
    // A typed source, not a formatted string.
    let source = std::error::Error::source(&err).expect("a source");
    assert!(
        matches!(
            source.downcast_ref::<brook_kafka::ConnectError>(),
            Some(brook_kafka::ConnectError::NoMetadata { .. })
        ),
        "{source:?}"
    );
    assert!(!format!("{err:?}").contains("hunter2"));
    assert!(!format!("{broker:?}").contains("hunter2"), "{broker:?}");
}

#[tokio::test]
async fn the_local_broker_connects() {
    broker().connect().await.expect("tansu on 127.0.0.1:9092");
}

/// A private tansu whose advertised address is a [`TcpProxy`] in front of it: Kafka clients
/// reconnect to the *advertised* address, so the proxy must be what the broker advertises, or
/// the client would bypass it after the first metadata response. Killed on drop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumption_resumes_after_the_connection_is_cut_and_nothing_is_lost() {
    let tansu = PrivateTansu::start().await;
    let addr = tansu.addr();
    let topic = fresh("reconnect");
    let group = format!("{topic}-group");
    create_topic_at(&addr, &topic, 1).await;
    let broker = broker_at(&addr)
        .with_config("reconnect.backoff.ms", "50")
        .with_config("reconnect.backoff.max.ms", "300");
    broker.connect().await.expect("connect through the proxy");
    let release = Arc::new(tokio::sync::Notify::new());
    let r = release.clone();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    struct H(
        brook_runtime::SubscriptionBuilder,
        tokio::sync::mpsc::UnboundedSender<Bytes>,
        Arc<tokio::sync::Notify>,
    );
    impl brook_runtime::Handler for H {
        type Broker = brook_runtime::kind::Kafka;
        fn subscription(&self) -> brook_runtime::SubscriptionBuilder {
            self.0.clone()
        }
        async fn call(
            &self,
            msg: &brook_runtime::Message,
            _: &brook_runtime::Context,
        ) -> brook_runtime::HandlerResult {
            let done: Result<(), brook_runtime::HandlerError> = async move {
                let _ = self.1.send(msg.body().clone());
                if msg.body() == "in-flight" {
                    self.2.notified().await; // still being handled while the connection is down
                }
                Ok(())
            }
            .await;
            done.map(|()| None)
        }
    }
    let app = App::new(broker.clone())
        .subscribe(H(
            subscription(&topic, &group, AckPolicy::NackOnError),
            tx,
            r,
        ))
        .start()
        .await
        .expect("start");
    for body in ["a", "b", "in-flight"] {
        broker
            .publish_message(Outgoing::new(
                topic.clone(),
                Bytes::from_static(body.as_bytes()),
            ))
            .await
            .expect("publish");
    }
    let mut seen = Vec::new();
    while seen.len() < 3 {
        seen.push(
            tokio::time::timeout(WAIT, rx.recv())
                .await
                .expect("call")
                .expect("open"),
        );
    }
    assert_eq!(
        wait_committed_at(&addr, &group, &topic, &[Some(2)]).await,
        [Some(2)]
    );
    let before = tansu.proxy.connections_accepted();
    tansu.proxy.cut();
    // The outage: shorter than the session timeout (6 s), so the member keeps its partitions.
    tokio::time::sleep(Duration::from_secs(2)).await;
    release.notify_one(); // the in-flight handler finishes while the connection is down
    tansu.proxy.restore();
    for body in ["after-1", "after-2"] {
        tokio::time::timeout(
            WAIT,
            broker.publish_message(Outgoing::new(
                topic.clone(),
                Bytes::from_static(body.as_bytes()),
            )),
        )
        .await
        .expect("publish after the outage")
        .expect("publish");
    }
    while seen.len() < 5 {
        seen.push(
            tokio::time::timeout(WAIT, rx.recv())
                .await
                .expect("call after reconnect")
                .expect("open"),
        );
    }
    assert_eq!(seen, ["a", "b", "in-flight", "after-1", "after-2"]);
    assert!(
        tansu.proxy.connections_accepted() > before,
        "the client reconnected"
    );
    // The ack of the message handled during the outage reached the broker after reconnecting.
    assert_eq!(
        wait_committed_at(&addr, &group, &topic, &[Some(5)]).await,
        [Some(5)]
    );
    app.stop().await.expect("stop");
    assert!(remaining_at(&addr, &group, &topic, 1).await.is_empty());
}
