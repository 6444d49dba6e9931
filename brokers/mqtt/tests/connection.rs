//! Connection behaviour: clear, bounded connect errors; credentials kept out of errors and
//! `Debug`; consumption that resumes after the connection is cut (TcpProxy); a persistent
//! session backlog beyond Mosquitto's default 1000-message limit (private Mosquitto).

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use brook_mqtt::{MqttBroker, MqttMessage, ProtocolVersion};
use brook_runtime::proxy::TcpProxy;
use brook_runtime::{
    kind, AckPolicy, App, Broker, BrokerError, Context, FromMessage, Handler, HandlerError,
    Message, Outgoing, Subscription, SubscriptionBuilder,
};
use bytes::Bytes;
use common::{remaining, unique, Mosquitto, SHARED};
use tokio::sync::{mpsc, Notify};

const WAIT: Duration = Duration::from_secs(15);

fn assert_connect_error(err: BrokerError, address: &str, secret: Option<&str>) {
    let text = err.to_string();
    assert!(matches!(err, BrokerError::Connect { .. }), "{err:?}");
    assert!(text.contains("MQTT"), "{text}");
    assert!(text.contains(address), "{text}");
    if let Some(secret) = secret {
        assert!(!text.contains(secret), "{text}");
        assert!(!format!("{err:?}").contains(secret), "{err:?}");
    }
}

#[tokio::test]
async fn a_closed_port_fails_fast_naming_mqtt_and_the_address() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port(); // dropped: nothing listens there now
    let broker = MqttBroker::new(&format!("mqtt://user:hunter2@127.0.0.1:{port}"));
    let started = Instant::now();
    let err = broker.connect().await.expect_err("nothing listens there");
    assert!(started.elapsed() < Duration::from_secs(6));
    assert_connect_error(err, &format!("127.0.0.1:{port}"), Some("hunter2"));
}

#[tokio::test]
async fn a_silent_server_fails_within_the_connect_timeout() {
    // Accepts TCP but never answers CONNECT.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let broker =
        MqttBroker::new(&format!("mqtt://{addr}")).connect_timeout(Duration::from_millis(500));
    let started = Instant::now();
    let err = broker.connect().await.expect_err("no CONNACK");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_connect_error(err, &addr.to_string(), None);
    hold.abort();
}

#[tokio::test]
async fn wrong_credentials_are_a_connect_error_without_the_password() {
    let dir = std::env::temp_dir().join(unique("brook-mqtt-auth"));
    std::fs::create_dir_all(&dir).unwrap();
    let passwd = dir.join("passwd");
    let status = std::process::Command::new("mosquitto_passwd")
        .args(["-b", "-c"])
        .arg(&passwd)
        .args(["alice", "right-password"])
        .status()
        .expect("mosquitto_passwd");
    assert!(status.success());
    let m = Mosquitto::start(&format!(
        "allow_anonymous false\npassword_file {}\nuser root",
        passwd.display()
    ));
    let addr = format!("127.0.0.1:{}", m.port);

    let wrong = MqttBroker::new(&format!("mqtt://alice:wrong-secret@{addr}"));
    let err = wrong.connect().await.expect_err("refused");
    assert!(err.to_string().contains("refused"), "{err}");
    assert_connect_error(err, &addr, Some("wrong-secret"));
    assert!(!format!("{wrong:?}").contains("wrong-secret"), "{wrong:?}");

    let wrong5 =
        MqttBroker::new(&format!("mqtt://alice:wrong-secret@{addr}")).protocol(ProtocolVersion::V5);
    let err = wrong5.connect().await.expect_err("refused (MQTT 5)");
    assert_connect_error(err, &addr, Some("wrong-secret"));

    let right = MqttBroker::new(&format!("mqtt://{addr}")).credentials("alice", "right-password");
    right.connect().await.expect("right credentials connect");
    assert!(!format!("{right:?}").contains("right-password"));
    right.close().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

struct Recording {
    sub: SubscriptionBuilder,
    tx: mpsc::UnboundedSender<(Bytes, bool)>,
    hold: Arc<Mutex<Option<Arc<Notify>>>>,
    count: Arc<AtomicU64>,
}

impl Handler for Recording {
    type Broker = kind::Mqtt;

    fn subscription(&self) -> SubscriptionBuilder {
        self.sub.clone()
    }

    async fn call(&self, msg: &Message, ctx: &Context) -> brook_runtime::HandlerResult {
        let done: Result<(), HandlerError> = async move {
            let dup = <&MqttMessage>::from_message(msg, ctx)?.dup();
            self.count.fetch_add(1, Ordering::Relaxed);
            let _ = self.tx.send((msg.body().clone(), dup));
            let hold = self.hold.lock().unwrap().clone();
            if let (Some(n), b"slow") = (hold, &msg.body()[..]) {
                n.notified().await;
            }
            Ok(())
        }
        .await;
        done.map(|()| None)
    }
}

async fn next(rx: &mut mpsc::UnboundedReceiver<(Bytes, bool)>) -> (Bytes, bool) {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("a delivery within 15 s")
        .expect("handler alive")
}

/// The connection is cut (client -> proxy -> broker) while a handler is in flight and while
/// messages are published: the client reconnects, resumes the session, the in-flight message
/// (whose PUBACK could not be sent) comes back, and the ones published meanwhile arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumption_resumes_after_the_connection_is_cut() {
    cut_and_resume(ProtocolVersion::V311).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumption_resumes_after_the_connection_is_cut_v5() {
    cut_and_resume(ProtocolVersion::V5).await;
}

async fn cut_and_resume(protocol: ProtocolVersion) {
    let proxy = TcpProxy::start(SHARED.parse().unwrap()).await.unwrap();
    let name = unique("cut");
    let topic = format!("brook-test/{name}");
    let client_id = format!("brook-test-{name}");
    let broker = MqttBroker::new(&format!("mqtt://{}", proxy.addr()))
        .client_id(client_id.clone())
        .persistent_session(true)
        .protocol(protocol);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let release = Arc::new(Notify::new());
    let handler = Recording {
        sub: Subscription::new(brook_runtime::BrokerKind::Mqtt, "cut")
            .arg("topic", topic.clone())
            .arg("ack_policy", AckPolicy::Ack),
        tx,
        hold: Arc::new(Mutex::new(Some(release.clone()))),
        count: Arc::new(AtomicU64::new(0)),
    };
    let hold = handler.hold.clone();
    let app = App::new(broker.clone())
        .subscribe(handler)
        .start()
        .await
        .unwrap();
    let publisher = MqttBroker::new(&format!("mqtt://{SHARED}"));
    let publish = |body: &'static str| {
        let publisher = publisher.clone();
        let topic = topic.clone();
        async move {
            publisher
                .publish_message(Outgoing::new(topic, Bytes::from_static(body.as_bytes())))
                .await
                .unwrap()
        }
    };

    publish("before").await;
    assert_eq!(next(&mut rx).await, (Bytes::from_static(b"before"), false));
    publish("slow").await;
    assert_eq!(next(&mut rx).await, (Bytes::from_static(b"slow"), false));
    // "slow" is being handled: cut the connection under it.
    proxy.cut();
    publish("during").await; // queued in the session while the client is away
    *hold.lock().unwrap() = None; // the redelivery will not wait
    release.notify_one(); // the first "slow" finishes; its PUBACK cannot be sent
    proxy.restore();

    // Expected after the reconnect: "during" (queued in the session) and "slow" again, with
    // DUP (its PUBACK could not be sent: nothing lost). "before" may come back too, with DUP,
    // when its PUBACK was still on the wire at the cut: at-least-once allows that, but nothing
    // may come back without DUP, and nothing else may arrive.
    let (mut during, mut slow_again) = (false, false);
    while !(during && slow_again) {
        let (body, dup) = next(&mut rx).await;
        match &body[..] {
            // "during" carries DUP when Mosquitto sent it into the dead connection first.
            b"during" => during = true,
            b"slow" => {
                assert!(dup, "the interrupted message comes back as a redelivery");
                slow_again = true;
            }
            b"before" => assert!(dup, "an earlier message may come back only as a redelivery"),
            other => panic!("unexpected message {other:?}"),
        }
    }
    assert!(
        broker.connection_count().await >= 2,
        "the client reconnected"
    );
    publish("after").await;
    assert_eq!(next(&mut rx).await, (Bytes::from_static(b"after"), false));
    tokio::time::timeout(WAIT, app.stop())
        .await
        .unwrap()
        .unwrap();
    publisher.close().await.unwrap();
    assert_eq!(
        remaining(SHARED, &client_id).await.unwrap(),
        Vec::<Bytes>::new()
    );
}

/// A persistent session holding 2500 messages (past Mosquitto's default limit of 1000, so on
/// a private Mosquitto with the limit raised) is consumed completely.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_session_backlog_is_consumed_completely() {
    const N: u64 = 2500;
    let m = Mosquitto::start("");
    let addr = format!("127.0.0.1:{}", m.port);
    let topic = format!("brook-test/{}", unique("backlog"));
    let client_id = unique("brook-backlog");
    common::prepare_session(&addr, &client_id, &topic).await;
    common::publish_raw(&addr, &topic, N, |i| format!("{i}").into_bytes()).await;

    let (tx, mut rx) = mpsc::unbounded_channel();
    let count = Arc::new(AtomicU64::new(0));
    let handler = Recording {
        sub: Subscription::new(brook_runtime::BrokerKind::Mqtt, "backlog")
            .arg("topic", topic.clone())
            .arg("ack_policy", AckPolicy::Ack)
            .arg("concurrency", 4u32),
        tx,
        hold: Arc::new(Mutex::new(None)),
        count: count.clone(),
    };
    let broker = MqttBroker::new(&m.url())
        .client_id(client_id.clone())
        .persistent_session(true);
    let app = App::new(broker).subscribe(handler).start().await.unwrap();
    let mut got = std::collections::BTreeSet::new();
    while (got.len() as u64) < N {
        let (body, _) = next(&mut rx).await;
        got.insert(
            String::from_utf8(body.to_vec())
                .unwrap()
                .parse::<u64>()
                .unwrap(),
        );
    }
    assert_eq!(got.len() as u64, N);
    assert_eq!(*got.iter().next_back().unwrap(), N - 1);
    tokio::time::timeout(WAIT, app.stop())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(count.load(Ordering::Relaxed), N, "each handled once");
    assert_eq!(
        remaining(&addr, &client_id).await.unwrap(),
        Vec::<Bytes>::new()
    );
}

#[tokio::test]
async fn publishes_with_retain_reach_later_subscribers() {
    let topic = format!("brook-test/{}", unique("retain"));
    let broker = MqttBroker::new(&format!("mqtt://{SHARED}"));
    broker
        .publish_with(
            Outgoing::new(topic.clone(), Bytes::from_static(b"kept")),
            1,
            true,
        )
        .await
        .unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let handler = Recording {
        sub: Subscription::new(brook_runtime::BrokerKind::Mqtt, "retain")
            .arg("topic", topic.clone()),
        tx,
        hold: Arc::new(Mutex::new(None)),
        count: Arc::new(AtomicU64::new(0)),
    };
    let app = App::new(MqttBroker::new(&format!("mqtt://{SHARED}")))
        .subscribe(handler)
        .start()
        .await
        .unwrap();
    assert_eq!(next(&mut rx).await.0, Bytes::from_static(b"kept"));
    tokio::time::timeout(WAIT, app.stop())
        .await
        .unwrap()
        .unwrap();
    // Clear the retained message (empty retained payload).
    broker
        .publish_with(Outgoing::new(topic, Bytes::new()), 1, true)
        .await
        .unwrap();
    broker.close().await.unwrap();
}

/// A clean session: a message already received, but still waiting in the client for the busy
/// handler when the connection is cut, is handled after the reconnect. The broker will not
/// send it again (the new clean session forgets it), so skipping it, as is right on a
/// persistent session, would lose it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_session_still_handles_what_it_received_before_a_cut() {
    let sniffer = common::Sniffer::start(SHARED.parse().unwrap()).await;
    let proxy = TcpProxy::start(sniffer.addr).await.unwrap();
    let topic = format!("brook-test/{}", unique("clean-cut"));
    let broker = MqttBroker::new(&format!("mqtt://{}", proxy.addr())); // clean session
    let (tx, mut rx) = mpsc::unbounded_channel();
    let release = Arc::new(Notify::new());
    let handler = Recording {
        sub: Subscription::new(brook_runtime::BrokerKind::Mqtt, "clean-cut")
            .arg("topic", topic.clone())
            .arg("ack_policy", AckPolicy::Ack),
        tx,
        hold: Arc::new(Mutex::new(Some(release.clone()))),
        count: Arc::new(AtomicU64::new(0)),
    };
    let hold = handler.hold.clone();
    let app = App::new(broker.clone())
        .subscribe(handler)
        .start()
        .await
        .unwrap();
    let publisher = MqttBroker::new(&format!("mqtt://{SHARED}"));
    for body in ["slow", "queued"] {
        publisher
            .publish_message(Outgoing::new(
                topic.clone(),
                Bytes::from_static(body.as_bytes()),
            ))
            .await
            .unwrap();
    }
    assert_eq!(next(&mut rx).await.0, Bytes::from_static(b"slow"));
    // "queued" went through the sniffer towards the client; the handler (concurrency 1) is
    // busy, so it waits in the client. Nothing observable marks the moment the client has read
    // it off the socket: allow a moment for that before cutting.
    let published = sniffer.publishes.clone();
    assert!(common::eventually(WAIT, || published.lock().unwrap().len() == 2).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.cut();
    proxy.restore();
    let reconnected = tokio::time::timeout(WAIT, async {
        while broker.connection_count().await < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(reconnected.is_ok(), "the client reconnected");
    *hold.lock().unwrap() = None;
    release.notify_one();
    assert_eq!(next(&mut rx).await, (Bytes::from_static(b"queued"), false));
    tokio::time::timeout(WAIT, app.stop())
        .await
        .unwrap()
        .unwrap();
    publisher.close().await.unwrap();
}

/// The broker loses the session while brook holds messages: 20 are delivered (as many as
/// Mosquitto sends without acks), the first is being handled slowly and 19 wait for the
/// handler; then a clean-session client with the same client id takes the session over (the
/// broker deletes it), and brook reconnects to a new, empty session. Nobody will send those
/// messages again, so brook still handles all of them, each once; their PUBACKs are not sent
/// (their packet ids mean nothing in the new session: nothing goes on the wire for them), no
/// log line claims the broker redelivers them, and the new session works.
async fn messages_held_when_the_session_is_lost_are_still_handled(protocol: ProtocolVersion) {
    const HELD: usize = 20;
    let logs = common::LogCapture::start();
    let sniffer = common::Sniffer::start(SHARED.parse().unwrap()).await;
    let name = unique("lost-session");
    let topic = format!("brook-test/{name}");
    let client_id = format!("brook-test-{name}");
    let broker = MqttBroker::new(&format!("mqtt://{}", sniffer.addr))
        .client_id(client_id.clone())
        .persistent_session(true)
        .protocol(protocol);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let release = Arc::new(Notify::new());
    let count = Arc::new(AtomicU64::new(0));
    let handler = Recording {
        sub: Subscription::new(brook_runtime::BrokerKind::Mqtt, "lost-session")
            .arg("topic", topic.clone())
            .arg("ack_policy", AckPolicy::Ack),
        tx,
        hold: Arc::new(Mutex::new(Some(release.clone()))),
        count: count.clone(),
    };
    let hold = handler.hold.clone();
    let app = App::new(broker.clone())
        .subscribe(handler)
        .start()
        .await
        .unwrap();
    let publisher = MqttBroker::new(&format!("mqtt://{SHARED}"));
    let publish = |body: String| {
        let (publisher, topic) = (publisher.clone(), topic.clone());
        async move {
            publisher
                .publish_message(Outgoing::new(topic, Bytes::from(body)))
                .await
                .unwrap()
        }
    };
    publish("slow".into()).await;
    assert_eq!(next(&mut rx).await.0, Bytes::from_static(b"slow"));
    for i in 1..HELD {
        publish(format!("m{i}")).await;
    }
    // All 20 are in brook's hands: one in the handler, 19 waiting for it.
    let held = tokio::time::timeout(WAIT, async {
        while broker.unacknowledged().await < HELD {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(held.is_ok(), "brook received all {HELD}");
    assert_eq!(count.load(Ordering::Relaxed), 1);

    // A clean-session client with our client id: the broker drops our connection and the
    // session. brook reconnects (persistent) and gets a new, empty session.
    common::forget_session(SHARED, &client_id).await;
    let subacks = sniffer.subacks.clone();
    assert!(
        common::eventually(WAIT, || subacks.load(Ordering::SeqCst) >= 2).await,
        "brook reconnected and subscribed again in the new session"
    );
    assert!(broker.connection_count().await >= 2);
    *hold.lock().unwrap() = None;
    release.notify_one();
    let mut got = std::collections::BTreeSet::new();
    while got.len() < HELD - 1 {
        let (body, dup) = next(&mut rx).await;
        assert!(!dup, "{body:?} was delivered once");
        assert!(got.insert(body.clone()), "{body:?} handled twice");
    }
    let expected: std::collections::BTreeSet<Bytes> =
        (1..HELD).map(|i| Bytes::from(format!("m{i}"))).collect();
    assert_eq!(got, expected, "every held message handled");

    // The new session works, and is the only one acknowledged on the wire.
    publish("after".into()).await;
    assert_eq!(next(&mut rx).await, (Bytes::from_static(b"after"), false));
    let acks = sniffer.pubacks.clone();
    assert!(common::eventually(WAIT, || !acks.lock().unwrap().is_empty()).await);
    tokio::time::timeout(WAIT, app.stop())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(count.load(Ordering::Relaxed), HELD as u64 + 1, "each once");
    let publishes = sniffer.publishes.lock().unwrap().clone();
    assert_eq!(publishes.len(), HELD + 1);
    assert_eq!(
        *sniffer.pubacks.lock().unwrap(),
        vec![publishes[HELD]],
        "only the new session's message is acknowledged"
    );
    let text = logs.text();
    assert!(
        !text.contains("on the resumed session"),
        "no claim that the broker redelivers: {text}"
    );
    assert!(text.contains("did not resume the session"), "{text}");
    publisher.close().await.unwrap();
    assert_eq!(
        remaining(SHARED, &client_id).await.unwrap(),
        Vec::<Bytes>::new()
    );
}

#[tokio::test]
async fn messages_held_when_the_session_is_lost_are_still_handled_v311() {
    messages_held_when_the_session_is_lost_are_still_handled(ProtocolVersion::V311).await;
}

#[tokio::test]
async fn messages_held_when_the_session_is_lost_are_still_handled_v5() {
    messages_held_when_the_session_is_lost_are_still_handled(ProtocolVersion::V5).await;
}
