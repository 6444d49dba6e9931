//! Every policy row on Mosquitto, observed on the broker afterwards: what a resumed persistent
//! session still receives, redeliveries (counted, flagged as DUP), and the PUBACK order on the
//! wire.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use brook_mqtt::{MqttBroker, MqttMessage, ProtocolVersion};
use brook_runtime::{
    kind, AckPolicy, App, Broker, Context, FromMessage, Handler, HandlerError, Message, Outgoing,
    Subscription, SubscriptionBuilder,
};
use bytes::Bytes;
use common::{remaining, unique, SHARED};
use tokio::sync::{mpsc, Notify};

const WAIT: Duration = Duration::from_secs(15);

/// What the handler saw of one delivery.
#[derive(Clone, Debug)]
struct Seen {
    body: Bytes,
    dup: bool,
    qos: u8,
    deliveries: Option<u32>,
    at: std::time::Instant,
}

type Script = dyn Fn(&Message, usize) -> Step + Send + Sync;

enum Step {
    Ok,
    Fail,
    Ack,
    Nack,
    Nothing,
    Wait(Arc<Notify>),
    /// Finishes after this long (so later messages finish first).
    Sleep(Duration),
}

struct TestHandler {
    sub: SubscriptionBuilder,
    script: Arc<Script>,
    calls: AtomicUsize,
    tx: mpsc::UnboundedSender<Seen>,
}

impl Handler for TestHandler {
    type Broker = kind::Mqtt;

    fn subscription(&self) -> SubscriptionBuilder {
        self.sub.clone()
    }

    async fn call(&self, msg: &Message, ctx: &Context) -> brook_runtime::HandlerResult {
        let done: Result<(), HandlerError> = async move {
            let raw = <&MqttMessage>::from_message(msg, ctx)?;
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            let _ = self.tx.send(Seen {
                body: msg.body().clone(),
                dup: raw.dup(),
                qos: raw.qos(),
                deliveries: msg.delivery_count(),
                at: std::time::Instant::now(),
            });
            let fail = || HandlerError::Failed(anyhow::anyhow!("scripted failure"));
            match (self.script)(msg, n) {
                Step::Ok | Step::Nothing => Ok(()),
                Step::Fail => Err(fail()),
                Step::Ack => {
                    msg.ack()
                        .await
                        .map_err(|e| HandlerError::Failed(e.into()))?;
                    Ok(())
                }
                Step::Nack => {
                    msg.nack()
                        .await
                        .map_err(|e| HandlerError::Failed(e.into()))?;
                    Ok(())
                }
                Step::Wait(n) => {
                    n.notified().await;
                    Ok(())
                }
                Step::Sleep(d) => {
                    tokio::time::sleep(d).await;
                    Ok(())
                }
            }
        }
        .await;
        done.map(|()| None)
    }
}

struct Run {
    topic: String,
    client_id: String,
    broker: MqttBroker,
    app: Option<brook_runtime::RunningApp<MqttBroker>>,
    rx: mpsc::UnboundedReceiver<Seen>,
}

async fn start(
    url: &str,
    policy: AckPolicy,
    qos: u64,
    concurrency: u32,
    script: impl Fn(&Message, usize) -> Step + Send + Sync + 'static,
) -> Run {
    let name = unique("policy");
    start_as(
        &format!("brook-test-{name}"),
        url,
        policy,
        qos,
        concurrency,
        script,
    )
    .await
}

/// [`start`] with a given client id (whose persistent session may exist already).
async fn start_as(
    client_id: &str,
    url: &str,
    policy: AckPolicy,
    qos: u64,
    concurrency: u32,
    script: impl Fn(&Message, usize) -> Step + Send + Sync + 'static,
) -> Run {
    let broker = MqttBroker::new(url)
        .client_id(client_id)
        .persistent_session(true);
    start_with(broker, client_id, policy, qos, concurrency, script).await
}

/// [`start_as`] on a broker configured by the caller (with a persistent session).
async fn start_with(
    broker: MqttBroker,
    client_id: &str,
    policy: AckPolicy,
    qos: u64,
    concurrency: u32,
    script: impl Fn(&Message, usize) -> Step + Send + Sync + 'static,
) -> Run {
    let topic = format!("brook-test/{}", unique("policy"));
    let client_id = client_id.to_owned();
    let sub = Subscription::new(brook_runtime::BrokerKind::Mqtt, "policy-test")
        .arg("topic", topic.clone())
        .arg("qos", qos)
        .arg("ack_policy", policy)
        .arg("concurrency", concurrency);
    let (tx, rx) = mpsc::unbounded_channel();
    let handler = TestHandler {
        sub,
        script: Arc::new(script),
        calls: AtomicUsize::new(0),
        tx,
    };
    let app = App::new(broker.clone())
        .subscribe(handler)
        .graceful_timeout(Duration::from_secs(5))
        .start()
        .await
        .expect("the App starts");
    Run {
        topic,
        client_id,
        broker,
        app: Some(app),
        rx,
    }
}

impl Run {
    async fn publish(&self, body: &'static str) {
        self.publish_bytes(Bytes::from_static(body.as_bytes()))
            .await;
    }

    async fn publish_bytes(&self, body: Bytes) {
        self.broker
            .publish_message(Outgoing::new(self.topic.clone(), body))
            .await
            .expect("publish");
    }

    async fn next(&mut self) -> Seen {
        tokio::time::timeout(WAIT, self.rx.recv())
            .await
            .expect("a handler call within 15 s")
            .expect("handler alive")
    }

    async fn stop(&mut self) {
        if let Some(app) = self.app.take() {
            tokio::time::timeout(WAIT, app.stop())
                .await
                .expect("stops in time")
                .expect("stops cleanly");
        }
    }

    /// Stops the App, then resumes its session: what the broker still holds for it.
    async fn remaining(&mut self, addr: &str) -> Vec<Bytes> {
        self.stop().await;
        remaining(addr, &self.client_id)
            .await
            .expect("resume the session")
    }
}

fn bodies(v: &[&'static str]) -> Vec<Bytes> {
    v.iter().map(|s| Bytes::from_static(s.as_bytes())).collect()
}

fn url() -> String {
    format!("mqtt://{SHARED}")
}

#[tokio::test]
async fn ack_sends_puback_even_when_the_handler_fails() {
    let mut run = start(&url(), AckPolicy::Ack, 1, 1, |_, _| Step::Fail).await;
    run.publish("a").await;
    assert_eq!(run.next().await.body, "a");
    assert_eq!(run.remaining(SHARED).await, Vec::<Bytes>::new());
}

/// The PUBACK is on the wire while the handler is still running (under `Ack` it would wait
/// for the handler), and nothing comes back although the handler then fails.
#[tokio::test]
async fn ack_first_acks_before_the_handler() {
    let sniffer = common::Sniffer::start(SHARED.parse().unwrap()).await;
    let release = Arc::new(Notify::new());
    let r = release.clone();
    let mut run = start(
        &format!("mqtt://{}", sniffer.addr),
        AckPolicy::AckFirst,
        1,
        1,
        move |_, _| Step::Wait(r.clone()),
    )
    .await;
    run.publish("a").await;
    run.next().await; // the handler runs, and waits
    let acks = sniffer.pubacks.clone();
    assert!(
        common::eventually(WAIT, || acks.lock().unwrap().len() == 1).await,
        "the PUBACK left while the handler was still running"
    );
    assert_eq!(*acks.lock().unwrap(), *sniffer.publishes.lock().unwrap());
    release.notify_one();
    assert_eq!(run.remaining(SHARED).await, Vec::<Bytes>::new());
}

#[tokio::test]
async fn reject_on_error_acknowledges_like_ack() {
    let mut run = start(&url(), AckPolicy::RejectOnError, 1, 1, |_, _| Step::Fail).await;
    run.publish("bad").await;
    run.next().await;
    // MQTT has no reject: the PUBACK went out, nothing comes back.
    assert_eq!(run.remaining(SHARED).await, Vec::<Bytes>::new());
}

/// The failed message comes back from brook itself after the default delay (100 ms), counted
/// and flagged as a redelivery, without a reconnect; then it is acked.
#[tokio::test]
async fn nack_on_error_redelivers_without_reconnecting() {
    let mut run = start(&url(), AckPolicy::NackOnError, 1, 1, |_, n| {
        if n == 0 {
            Step::Fail
        } else {
            Step::Ok
        }
    })
    .await;
    assert_eq!(run.broker.connection_count().await, 1);
    run.publish("retry").await;
    let first = run.next().await;
    let second = run.next().await;
    assert!(
        second.at - first.at >= Duration::from_millis(100),
        "the default redelivery delay"
    );
    assert_eq!(
        (first.body.clone(), first.dup, first.deliveries),
        (Bytes::from_static(b"retry"), false, Some(1))
    );
    assert_eq!(
        (second.body, second.dup, second.deliveries),
        (Bytes::from_static(b"retry"), true, Some(2))
    );
    assert_eq!(
        run.broker.connection_count().await,
        1,
        "a nack does not reconnect"
    );
    assert_eq!(run.remaining(SHARED).await, Vec::<Bytes>::new());
}

/// Refused by `Broker::check` (what `App::start` calls before connecting, so the App does not
/// start) and by `subscribe`.
#[tokio::test]
async fn nack_on_error_is_refused_on_a_clean_session() {
    let broker = MqttBroker::new(&url());
    let builder = Subscription::new(brook_runtime::BrokerKind::Mqtt, "h")
        .arg("topic", unique("brook-test/clean"))
        .arg("ack_policy", AckPolicy::NackOnError);
    let sub = builder.clone().build().unwrap();
    let err = broker.check(&sub).expect_err("refused by check");
    assert!(err.to_string().contains("persistent_session"), "{err}");
    let err = broker.subscribe(&sub).await.err().expect("refused");
    assert!(err.to_string().contains("persistent_session"), "{err}");
    let (tx, _rx) = mpsc::unbounded_channel();
    let handler = TestHandler {
        sub: builder,
        script: Arc::new(|_, _| Step::Ok),
        calls: AtomicUsize::new(0),
        tx,
    };
    let err = App::new(broker.clone())
        .subscribe(handler)
        .start()
        .await
        .err()
        .expect("the App refuses to start");
    assert!(err.to_string().contains("persistent_session"), "{err}");
    broker.close().await.unwrap();
}

#[tokio::test]
async fn manual_ack_and_nack_take_effect_and_an_unsettled_message_stays() {
    // msg 0: nack (comes back as DUP, then acked); msg "keep": never settled.
    let mut run = start(&url(), AckPolicy::Manual, 1, 1, |m, _| {
        match (&m.body()[..], m.raw::<MqttMessage>().map(|r| r.dup())) {
            (b"n", Some(false)) => Step::Nack,
            (b"keep", _) => Step::Nothing,
            _ => Step::Ack,
        }
    })
    .await;
    run.publish("n").await;
    let first = run.next().await;
    let again = run.next().await;
    assert_eq!(
        (first.dup, again.dup, again.body.clone()),
        (false, true, Bytes::from_static(b"n"))
    );
    run.publish("keep").await;
    assert_eq!(run.next().await.body, "keep");
    assert_eq!(run.remaining(SHARED).await, bodies(&["keep"]));
}

#[tokio::test]
async fn qos0_has_nothing_to_acknowledge() {
    let mut run = start(&url(), AckPolicy::Ack, 0, 1, |_, _| Step::Fail).await;
    run.publish("zero").await;
    let seen = run.next().await;
    assert_eq!((seen.body, seen.qos), (Bytes::from_static(b"zero"), 0));
    assert_eq!(run.remaining(SHARED).await, Vec::<Bytes>::new());
}

#[tokio::test]
async fn qos2_is_acknowledged_with_pubrec() {
    let mut run = start(&url(), AckPolicy::Ack, 2, 1, |_, _| Step::Ok).await;
    let broker = MqttBroker::new(&url()).publish_qos(2);
    broker
        .publish_message(Outgoing::new(run.topic.clone(), Bytes::from_static(b"two")))
        .await
        .expect("QoS 2 publish completes (PUBCOMP)");
    let seen = run.next().await;
    assert_eq!((seen.body, seen.qos), (Bytes::from_static(b"two"), 2));
    broker.close().await.unwrap();
    assert_eq!(run.remaining(SHARED).await, Vec::<Bytes>::new());
}

/// With concurrency 3 and the first message finishing last, the PUBACKs still leave in the
/// order the PUBLISH packets arrived (observed on the wire by a sniffing proxy).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubacks_leave_in_arrival_order() {
    let sniffer = common::Sniffer::start(SHARED.parse().unwrap()).await;
    let release = Arc::new(Notify::new());
    let r = release.clone();
    let handled = Arc::new(Mutex::new(Vec::<Bytes>::new()));
    let h = handled.clone();
    let mut run = start(
        &format!("mqtt://{}", sniffer.addr),
        AckPolicy::Ack,
        1,
        3,
        move |m, _| {
            h.lock().unwrap().push(m.body().clone());
            if &m.body()[..] == b"first" {
                Step::Wait(r.clone())
            } else {
                Step::Ok
            }
        },
    )
    .await;
    for b in ["first", "second", "third"] {
        run.publish(b).await;
    }
    for _ in 0..3 {
        run.next().await;
    }
    // "second" and "third" are done, but their PUBACKs must wait for "first".
    let published = sniffer.publishes.clone();
    assert!(common::eventually(WAIT, || published.lock().unwrap().len() == 3).await);
    tokio::time::sleep(Duration::from_millis(200)).await; // give a wrong ack time to show up
    assert_eq!(
        *sniffer.pubacks.lock().unwrap(),
        Vec::<u16>::new(),
        "acks held back"
    );
    release.notify_one();
    let acks = sniffer.pubacks.clone();
    assert!(common::eventually(WAIT, || acks.lock().unwrap().len() == 3).await);
    assert_eq!(
        *sniffer.pubacks.lock().unwrap(),
        *sniffer.publishes.lock().unwrap()
    );
    assert_eq!(run.remaining(SHARED).await, Vec::<Bytes>::new());
}

/// A burst handled by 32 concurrent handlers that finish out of order: brook writes the
/// PUBACKs in batches, and on the wire each message is acknowledged exactly once, in arrival
/// order, and the session keeps nothing. With a tiny request queue, acks that do not fit wait
/// in order (MQTT 5 has only that path: rumqttc gives it no direct writes).
async fn burst_acked_in_arrival_order_once_each(version: ProtocolVersion, request_capacity: usize) {
    const N: usize = 1000;
    let sniffer = common::Sniffer::start(SHARED.parse().unwrap()).await;
    let client_id = format!("brook-test-{}", unique("burst"));
    let broker = MqttBroker::new(&format!("mqtt://{}", sniffer.addr))
        .client_id(client_id.clone())
        .persistent_session(true)
        .protocol(version)
        .request_capacity(request_capacity);
    // Every 25th message is slow: the ones after it finish first, and their acks are all
    // released at once when it completes (more than rumqttc's smallest request queue holds).
    let mut run = start_with(broker, &client_id, AckPolicy::Ack, 1, 32, |m, _| {
        let n: u64 = std::str::from_utf8(m.body()).unwrap().parse().unwrap();
        Step::Sleep(if n.is_multiple_of(25) {
            Duration::from_millis(20)
        } else {
            Duration::from_micros(n * 37 % 500)
        })
    })
    .await;
    // From a connection of its own, so deliveries keep arriving while acks are released.
    let publishing = {
        let broker = MqttBroker::new(&url());
        let topic = run.topic.clone();
        tokio::spawn(async move {
            for i in 0..N {
                broker
                    .publish_message(Outgoing::new(topic.clone(), Bytes::from(i.to_string())))
                    .await
                    .expect("publish");
            }
        })
    };
    let mut handled = std::collections::HashSet::new();
    while handled.len() < N {
        handled.insert(run.next().await.body);
    }
    publishing.await.expect("publisher");
    let acks = sniffer.pubacks.clone();
    assert!(
        common::eventually(WAIT, || acks.lock().unwrap().len() >= N).await,
        "every message acknowledged"
    );
    run.stop().await;
    assert_eq!(
        *sniffer.pubacks.lock().unwrap(),
        *sniffer.publishes.lock().unwrap(),
        "one PUBACK per delivery, in arrival order"
    );
    assert_eq!(run.remaining(SHARED).await, Vec::<Bytes>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_is_acked_in_arrival_order_once_each() {
    burst_acked_in_arrival_order_once_each(ProtocolVersion::V311, 10_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_is_acked_in_arrival_order_once_each_with_a_full_request_queue() {
    burst_acked_in_arrival_order_once_each(ProtocolVersion::V311, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_is_acked_in_arrival_order_once_each_on_v5_with_a_full_request_queue() {
    burst_acked_in_arrival_order_once_each(ProtocolVersion::V5, 2).await;
}

/// Manual: an unsettled message blocks the PUBACKs of later ones (MQTT orders acks), so after
/// the App stops both come back; this is the documented policy.
#[tokio::test]
async fn an_unsettled_message_holds_back_later_acks() {
    let mut run = start(&url(), AckPolicy::Manual, 1, 1, |m, _| {
        if &m.body()[..] == b"unsettled" {
            Step::Nothing
        } else {
            Step::Ack
        }
    })
    .await;
    run.publish("unsettled").await;
    run.publish("acked").await;
    run.next().await;
    run.next().await;
    assert_eq!(run.remaining(SHARED).await, bodies(&["unsettled", "acked"]));
}

/// The persistent session holds a subscription no subscriber of this App declares (left by an
/// earlier run). Its message is parked, unacknowledged; it must not hold back the PUBACK of a
/// message that was handled: at shutdown that PUBACK is sent, and only the orphan stays in the
/// session.
#[tokio::test]
async fn an_unclaimed_message_does_not_hold_back_acks_at_shutdown() {
    let client_id = unique("brook-test-orphan");
    let orphan = format!("brook-test/{}", unique("orphan"));
    common::prepare_session(SHARED, &client_id, &orphan).await;
    let mut run = start_as(&client_id, &url(), AckPolicy::Ack, 1, 1, |_, _| Step::Ok).await;
    run.broker
        .publish_message(Outgoing::new(orphan.clone(), Bytes::from_static(b"orphan")))
        .await
        .expect("publish");
    run.publish("handled").await;
    assert_eq!(run.next().await.body, "handled");
    assert_eq!(run.remaining(SHARED).await, bodies(&["orphan"]));
}

/// The same while running: after the parking timeout (10 s) the unclaimed message stops
/// holding back later acks, so the handled message's PUBACK reaches the broker (observed on
/// the wire) without a shutdown; otherwise Mosquitto would stop sending after 20 messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unclaimed_message_stops_holding_back_acks_after_a_timeout() {
    let sniffer = common::Sniffer::start(SHARED.parse().unwrap()).await;
    let client_id = unique("brook-test-orphan");
    let orphan = format!("brook-test/{}", unique("orphan"));
    common::prepare_session(SHARED, &client_id, &orphan).await;
    let mut run = start_as(
        &client_id,
        &format!("mqtt://{}", sniffer.addr),
        AckPolicy::Ack,
        1,
        1,
        |_, _| Step::Ok,
    )
    .await;
    run.broker
        .publish_message(Outgoing::new(orphan.clone(), Bytes::from_static(b"orphan")))
        .await
        .expect("publish");
    run.publish("handled").await;
    assert_eq!(run.next().await.body, "handled");
    let published = sniffer.publishes.clone();
    assert!(common::eventually(WAIT, || published.lock().unwrap().len() == 2).await);
    let handled_pkid = published.lock().unwrap()[1];
    let acks = sniffer.pubacks.clone();
    assert!(
        common::eventually(Duration::from_secs(20), || acks
            .lock()
            .unwrap()
            .contains(&handled_pkid))
        .await,
        "the handled message's PUBACK went out while the App runs"
    );
    assert_eq!(acks.lock().unwrap().len(), 1, "the orphan is not acked");
    assert_eq!(run.remaining(SHARED).await, bodies(&["orphan"]));
}
