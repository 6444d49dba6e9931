//! Nacks are redelivered by brook itself, counted, and bounded by `max_deliveries`: a message
//! that keeps failing neither stalls the other messages of the connection nor makes it
//! reconnect, and is dead-lettered at the end. Observed on Mosquitto: calls, the wire (PUBACK
//! order, connections through a proxy), the dead-letter topic and what the session keeps.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use brook_mqtt::{
    MqttBroker, MqttMessage, ProtocolVersion, DELIVERY_COUNT_HEADER, ORIGINAL_TOPIC_HEADER,
    REASON_HEADER,
};
use brook_runtime::proxy::TcpProxy;
use brook_runtime::{
    kind, AckPolicy, App, Broker, BrokerKind, Context, FromMessage, Handler, HandlerError, Message,
    Nack, Outgoing, Subscription, SubscriptionBuilder,
};
use bytes::Bytes;
use common::{remaining, unique, Collector, Mosquitto, Sniffer, SHARED};
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(15);

/// One handler call, as the test sees it.
#[derive(Clone, Debug)]
struct Call {
    subscriber: &'static str,
    body: Bytes,
    deliveries: Option<u32>,
    dup: bool,
    at: Instant,
}

enum Step {
    Ok,
    Fail,
    NackAfter(Duration),
}

type Script = dyn Fn(&Message) -> Step + Send + Sync;

struct Scripted {
    name: &'static str,
    sub: SubscriptionBuilder,
    script: Arc<Script>,
    tx: mpsc::UnboundedSender<Call>,
}

impl Scripted {
    fn new(
        name: &'static str,
        sub: SubscriptionBuilder,
        tx: &mpsc::UnboundedSender<Call>,
        script: impl Fn(&Message) -> Step + Send + Sync + 'static,
    ) -> Self {
        Scripted {
            name,
            sub,
            script: Arc::new(script),
            tx: tx.clone(),
        }
    }
}

impl Handler for Scripted {
    type Broker = kind::Mqtt;

    fn subscription(&self) -> SubscriptionBuilder {
        self.sub.clone()
    }

    async fn call(&self, msg: &Message, ctx: &Context) -> brook_runtime::HandlerResult {
        let done: Result<(), HandlerError> = async move {
            let raw = <&MqttMessage>::from_message(msg, ctx)?;
            let _ = self.tx.send(Call {
                subscriber: self.name,
                body: msg.body().clone(),
                deliveries: msg.delivery_count(),
                dup: raw.dup(),
                at: Instant::now(),
            });
            match (self.script)(msg) {
                Step::Ok => Ok(()),
                Step::Fail => Err(HandlerError::Failed(anyhow::anyhow!("scripted failure"))),
                Step::NackAfter(delay) => {
                    Err(HandlerError::Failed(Nack { delay: Some(delay) }.into()))
                }
            }
        }
        .await;
        done.map(|()| None)
    }
}

fn sub(name: &str, topic: &str, policy: AckPolicy) -> SubscriptionBuilder {
    Subscription::new(BrokerKind::Mqtt, name.to_owned())
        .arg("topic", topic.to_owned())
        .arg("ack_policy", policy)
}

async fn next(rx: &mut mpsc::UnboundedReceiver<Call>) -> Call {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("a handler call within 15 s")
        .expect("handlers alive")
}

async fn publish(broker: &MqttBroker, topic: &str, body: impl Into<Bytes>) {
    broker
        .publish_message(Outgoing::new(topic.to_owned(), body.into()))
        .await
        .expect("publish");
}

/// One message that always fails (NackOnError, max_deliveries = 5, a dead-letter topic) and a
/// healthy subscriber on the same connection: the healthy one gets each of its 50 messages
/// exactly once while the poison is retried, the connection is never re-established, the
/// poison is seen with delivery counts 1..5, then dead-lettered and acknowledged (its PUBACK
/// goes out after those of later messages, and Mosquitto takes it: the session keeps
/// nothing), and the App stops in under 2 s.
async fn a_poison_message_does_not_stall_the_connection(protocol: ProtocolVersion) {
    const HEALTHY: usize = 50;
    let sniffer = Sniffer::start(SHARED.parse().unwrap()).await;
    let proxy = TcpProxy::start(sniffer.addr).await.unwrap();
    let name = unique("poison");
    let poison_topic = format!("brook-test/{name}/poison");
    let healthy_topic = format!("brook-test/{name}/healthy");
    let dead_topic = format!("brook-test/{name}/dead");
    let client_id = format!("brook-test-{name}");
    let mut dead = Collector::start(SHARED, &dead_topic).await;

    let (tx, mut rx) = mpsc::unbounded_channel();
    let poison = Scripted::new(
        "poison",
        sub("poison", &poison_topic, AckPolicy::NackOnError)
            .arg("max_deliveries", 5u32)
            .arg("dead_letter_topic", dead_topic.clone()),
        &tx,
        |_| Step::Fail,
    );
    let healthy = Scripted::new(
        "healthy",
        sub("healthy", &healthy_topic, AckPolicy::NackOnError),
        &tx,
        |_| Step::Ok,
    );
    let broker = MqttBroker::new(&format!("mqtt://{}", proxy.addr()))
        .client_id(client_id.clone())
        .persistent_session(true)
        .protocol(protocol);
    let app = App::new(broker.clone())
        .subscribe(poison)
        .subscribe(healthy)
        .graceful_timeout(Duration::from_secs(5))
        .start()
        .await
        .expect("the App starts");

    let publisher = MqttBroker::new(&format!("mqtt://{SHARED}"));
    publish(&publisher, &poison_topic, "poison").await;
    for i in 0..HEALTHY {
        publish(&publisher, &healthy_topic, format!("h{i}")).await;
    }
    let mut calls = Vec::new();
    let dead_letter = tokio::time::timeout(WAIT, async {
        loop {
            tokio::select! {
                call = rx.recv() => calls.push(call.expect("handlers alive")),
                d = dead.rx.recv() => break d.expect("collector alive"),
            }
        }
    })
    .await
    .expect("the poison message is dead-lettered within 15 s");
    while calls.iter().filter(|c| c.subscriber == "healthy").count() < HEALTHY {
        calls.push(next(&mut rx).await);
    }
    assert_eq!(broker.connection_count().await, 1, "no reconnect");
    assert_eq!(proxy.connections_accepted(), 1, "one TCP connection");

    let stopping = Instant::now();
    tokio::time::timeout(WAIT, app.stop())
        .await
        .expect("stops")
        .expect("stops cleanly");
    let stop_took = stopping.elapsed();
    assert!(
        stop_took < Duration::from_secs(2),
        "stop took {stop_took:?}"
    );
    while let Ok(call) = rx.try_recv() {
        calls.push(call);
    }

    // The healthy subscriber: every message exactly once, none a redelivery.
    let mut seen: HashMap<Bytes, usize> = HashMap::new();
    for c in calls.iter().filter(|c| c.subscriber == "healthy") {
        assert_eq!((c.deliveries, c.dup), (Some(1), false), "{c:?}");
        *seen.entry(c.body.clone()).or_default() += 1;
    }
    assert_eq!(seen.len(), HEALTHY, "every healthy message handled");
    assert!(
        seen.values().all(|n| *n == 1),
        "each exactly once: {seen:?}"
    );

    // The poison: delivery counts 1..5, flagged as redeliveries after the first, then rejected.
    let poison: Vec<_> = calls.iter().filter(|c| c.subscriber == "poison").collect();
    assert_eq!(
        poison.iter().map(|c| c.deliveries).collect::<Vec<_>>(),
        (1..=5).map(Some).collect::<Vec<_>>()
    );
    assert_eq!(
        poison.iter().map(|c| c.dup).collect::<Vec<_>>(),
        [false, true, true, true, true]
    );
    // ...with the default delays between deliveries (100 ms, doubling).
    for (i, pair) in poison.windows(2).enumerate() {
        let waited = pair[1].at - pair[0].at;
        assert!(
            waited >= Duration::from_millis(100 << i) - Duration::from_millis(10),
            "delivery {} came {waited:?} after the one before",
            i + 2
        );
    }
    assert_eq!(dead_letter.payload, Bytes::from_static(b"poison"));
    assert_eq!(dead_letter.topic, dead_topic);
    let property = |name: &str| {
        dead_letter
            .properties
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    if protocol == ProtocolVersion::V5 {
        assert_eq!(property(ORIGINAL_TOPIC_HEADER), Some(poison_topic.clone()));
        assert_eq!(property(DELIVERY_COUNT_HEADER).as_deref(), Some("5"));
        let reason = property(REASON_HEADER).unwrap_or_default();
        assert!(reason.contains("max_deliveries"), "{reason}");
    } else {
        assert!(
            dead_letter.properties.is_empty(),
            "MQTT 3.1.1 has no headers"
        );
    }

    // On the wire: one PUBACK per message; the poison's (the first PUBLISH) after later ones.
    let publishes = sniffer.publishes.lock().unwrap().clone();
    let pubacks = sniffer.pubacks.lock().unwrap().clone();
    assert_eq!(publishes.len(), HEALTHY + 1, "no redelivery by the broker");
    let (mut sorted_p, mut sorted_a) = (publishes.clone(), pubacks.clone());
    sorted_p.sort_unstable();
    sorted_a.sort_unstable();
    assert_eq!(sorted_a, sorted_p, "each message acknowledged once");
    let at = |pkid: u16| pubacks.iter().position(|p| *p == pkid).unwrap();
    assert!(
        at(publishes[0]) > at(publishes[1]),
        "the retried message did not hold back later acks: {pubacks:?} for {publishes:?}"
    );
    assert_eq!(
        sniffer
            .connections
            .load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    // Mosquitto took the out-of-order PUBACK: the session holds nothing.
    assert_eq!(
        remaining(SHARED, &client_id).await.unwrap(),
        Vec::<Bytes>::new()
    );
    publisher.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_message_does_not_stall_the_connection_v311() {
    a_poison_message_does_not_stall_the_connection(ProtocolVersion::V311).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_message_does_not_stall_the_connection_v5() {
    a_poison_message_does_not_stall_the_connection(ProtocolVersion::V5).await;
}

/// 2000 messages, every seventh failing on its first delivery, 4 handlers: each message is
/// handled at most twice (the failed ones exactly twice, the second time with delivery count
/// 2), on one connection, and the session keeps nothing. (A private Mosquitto: the backlog may
/// pass the shared one's 1000-message queue limit.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_failure_in_seven_is_handled_at_most_twice() {
    const N: u64 = 2000;
    let m = Mosquitto::start("");
    let addr = format!("127.0.0.1:{}", m.port);
    let topic = format!("brook-test/{}", unique("one-in-seven"));
    let client_id = unique("brook-one-in-seven");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let handler = Scripted::new(
        "one-in-seven",
        sub("one-in-seven", &topic, AckPolicy::NackOnError).arg("concurrency", 4u32),
        &tx,
        |msg| {
            let n: u64 = std::str::from_utf8(msg.body()).unwrap().parse().unwrap();
            if n.is_multiple_of(7) && msg.delivery_count() == Some(1) {
                Step::Fail
            } else {
                Step::Ok
            }
        },
    );
    let broker = MqttBroker::new(&m.url())
        .client_id(client_id.clone())
        .persistent_session(true);
    let app = App::new(broker.clone())
        .subscribe(handler)
        .start()
        .await
        .unwrap();
    let publishing = {
        let (addr, topic) = (addr.clone(), topic.clone());
        tokio::spawn(async move {
            common::publish_raw(&addr, &topic, N, |i| i.to_string().into_bytes()).await
        })
    };
    let failing = (0..N).filter(|n| n.is_multiple_of(7)).count();
    let mut calls: HashMap<Bytes, Vec<Option<u32>>> = HashMap::new();
    let mut total = 0;
    while total < N as usize + failing {
        let call = next(&mut rx).await;
        calls.entry(call.body).or_default().push(call.deliveries);
        total += 1;
    }
    publishing.await.unwrap();
    assert_eq!(broker.connection_count().await, 1, "no reconnect");
    tokio::time::timeout(WAIT, app.stop())
        .await
        .unwrap()
        .unwrap();
    while let Ok(call) = rx.try_recv() {
        calls.entry(call.body).or_default().push(call.deliveries);
    }
    assert_eq!(calls.len(), N as usize, "every message handled");
    for (body, deliveries) in &calls {
        let n: u64 = std::str::from_utf8(body).unwrap().parse().unwrap();
        let expected = if n.is_multiple_of(7) {
            vec![Some(1), Some(2)]
        } else {
            vec![Some(1)]
        };
        assert_eq!(deliveries, &expected, "message {n}");
    }
    assert_eq!(
        remaining(&addr, &client_id).await.unwrap(),
        Vec::<Bytes>::new()
    );
}

/// `Err(Nack::after(d))` is redelivered no sooner than `d`.
#[tokio::test]
async fn a_nack_delay_is_honoured() {
    let name = unique("nack-delay");
    let topic = format!("brook-test/{name}");
    let client_id = format!("brook-test-{name}");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let handler = Scripted::new(
        "nack-delay",
        sub("nack-delay", &topic, AckPolicy::Ack),
        &tx,
        |msg| match msg.delivery_count() {
            Some(1) => Step::NackAfter(Duration::from_millis(700)),
            _ => Step::Ok,
        },
    );
    let broker = MqttBroker::new(&format!("mqtt://{SHARED}"))
        .client_id(client_id.clone())
        .persistent_session(true);
    let app = App::new(broker.clone())
        .subscribe(handler)
        .start()
        .await
        .unwrap();
    publish(&broker, &topic, "later").await;
    let first = next(&mut rx).await;
    let second = next(&mut rx).await;
    let waited = second.at - first.at;
    assert!(waited >= Duration::from_millis(700), "after {waited:?}");
    assert_eq!(second.deliveries, Some(2));
    tokio::time::timeout(WAIT, app.stop())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        remaining(SHARED, &client_id).await.unwrap(),
        Vec::<Bytes>::new()
    );
}

/// The connection is cut while a failing message waits for its local redelivery: the broker
/// resends it on the resumed session (DUP, same packet id), and brook's count goes on from
/// there (3, not 1), so `max_deliveries = 4` still stops it at the fourth delivery. The copy
/// brook held is not handled as well.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_delivery_count_survives_a_resumed_session() {
    let proxy = TcpProxy::start(SHARED.parse().unwrap()).await.unwrap();
    let name = unique("count-resume");
    let topic = format!("brook-test/{name}");
    let client_id = format!("brook-test-{name}");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let handler = Scripted::new(
        "count-resume",
        sub("count-resume", &topic, AckPolicy::NackOnError).arg("max_deliveries", 4u32),
        &tx,
        |_| Step::Fail,
    );
    let broker = MqttBroker::new(&format!("mqtt://{}", proxy.addr()))
        .client_id(client_id.clone())
        .persistent_session(true);
    let app = App::new(broker.clone())
        .subscribe(handler)
        .start()
        .await
        .unwrap();
    let publisher = MqttBroker::new(&format!("mqtt://{SHARED}"));
    publish(&publisher, &topic, "poison").await;
    assert_eq!(next(&mut rx).await.deliveries, Some(1));
    assert_eq!(next(&mut rx).await.deliveries, Some(2));
    // Delivery 2 is failing now; its redelivery is due in 200 ms. Cut the connection.
    proxy.cut();
    proxy.restore();
    let third = next(&mut rx).await;
    let fourth = next(&mut rx).await;
    assert_eq!(
        (third.deliveries, third.dup, fourth.deliveries),
        (Some(3), true, Some(4))
    );
    assert_eq!(broker.connection_count().await, 2, "one reconnect: the cut");
    tokio::time::timeout(WAIT, app.stop())
        .await
        .unwrap()
        .unwrap();
    assert!(rx.try_recv().is_err(), "no delivery past the fourth");
    // Rejected at the fourth delivery (= acknowledged: no dead-letter topic here).
    assert_eq!(
        remaining(SHARED, &client_id).await.unwrap(),
        Vec::<Bytes>::new()
    );
    publisher.close().await.unwrap();
}

/// A message `RejectOnError` rejects is dead-lettered too (reason "rejected"), then
/// acknowledged: with a dead-letter topic, MQTT's reject is no longer just an ack.
#[tokio::test]
async fn rejected_messages_go_to_the_dead_letter_topic() {
    let name = unique("reject-dlq");
    let topic = format!("brook-test/{name}/in");
    let dead_topic = format!("brook-test/{name}/dead");
    let client_id = format!("brook-test-{name}");
    let mut dead = Collector::start(SHARED, &dead_topic).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let handler = Scripted::new(
        "reject-dlq",
        sub("reject-dlq", &topic, AckPolicy::RejectOnError)
            .arg("dead_letter_topic", dead_topic.clone()),
        &tx,
        |_| Step::Fail,
    );
    let broker = MqttBroker::new(&format!("mqtt://{SHARED}"))
        .client_id(client_id.clone())
        .persistent_session(true)
        .protocol(ProtocolVersion::V5);
    let app = App::new(broker.clone())
        .subscribe(handler)
        .start()
        .await
        .unwrap();
    publish(&broker, &topic, "bad").await;
    assert_eq!(next(&mut rx).await.deliveries, Some(1));
    let d = dead.next().await;
    assert_eq!(d.payload, Bytes::from_static(b"bad"));
    let reason = d.properties.iter().find(|(n, _)| n == REASON_HEADER);
    assert_eq!(reason.map(|(_, v)| v.as_str()), Some("rejected"));
    tokio::time::timeout(WAIT, app.stop())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        remaining(SHARED, &client_id).await.unwrap(),
        Vec::<Bytes>::new()
    );
}

/// A dead-letter topic that is a filter, that the subscriber's own filter matches, or on a
/// QoS 0 subscription is refused before anything connects.
#[test]
fn a_bad_dead_letter_topic_is_refused_at_start() {
    let broker = MqttBroker::new("mqtt://127.0.0.1:1")
        .client_id("brook-test-dlq-check")
        .persistent_session(true);
    for (filter, qos, dead, expected) in [
        ("orders/+", 1u64, "dead/+", "wildcard"),
        ("orders/#", 1, "orders/dead", "own filter"),
        ("orders/in", 0, "orders/dead", "QoS 0"),
    ] {
        let sub = Subscription::new(BrokerKind::Mqtt, "dlq-check")
            .arg("topic", filter)
            .arg("qos", qos)
            .arg("dead_letter_topic", dead)
            .build()
            .unwrap();
        let err = broker.check(&sub).expect_err(expected).to_string();
        assert!(err.contains("dead_letter_topic"), "{err}");
        assert!(err.contains("dlq-check"), "names the subscriber: {err}");
    }
    let fine = Subscription::new(BrokerKind::Mqtt, "dlq-check")
        .arg("topic", "orders/+")
        .arg("dead_letter_topic", "dead/orders")
        .build()
        .unwrap();
    broker
        .check(&fine)
        .expect("a plain topic outside the filter");
}
