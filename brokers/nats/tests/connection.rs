//! Connection errors (bounded, naming NATS and the address, never the password) and recovery
//! after a connection loss, cut with `TcpProxy` (client -> proxy -> broker) so the shared
//! server is not disturbed.

mod common;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use brook_nats::NatsBroker;
use brook_runtime::proxy::TcpProxy;
use brook_runtime::{AckPolicy, App, Broker, BrokerError};
use common::{consumer_info, js_builder, names, next_seen, scripted, Act, URL, WAIT};

#[tokio::test]
async fn a_wrong_port_fails_fast_with_a_clear_error() {
    // A port nothing listens on: bind, note the port, close.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // An unencoded `/` in the password must not turn the rest into a "path" that is kept.
    let broker = NatsBroker::new(format!("nats://app:hunter2/x?y@127.0.0.1:{port}"));
    let started = Instant::now();
    let err = broker.connect().await.expect_err("no server there");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert!(matches!(err, BrokerError::Connect { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("NATS"), "{text}");
    assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
    assert!(
        !text.contains("hunter2") && !format!("{err:?}").contains("hunter2"),
        "{text}"
    );
    assert!(!format!("{broker:?}").contains("hunter2"));
}

/// A private nats-server with a password, on a free port, killed on drop.
struct PrivateServer(Child, u16);

impl PrivateServer {
    fn start() -> Option<PrivateServer> {
        let port = TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let child = Command::new("nats-server")
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "--user",
                "app",
                "--pass",
                "right/pass",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        Some(PrivateServer(child, port))
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn a_wrong_password_fails_with_a_clear_error_without_the_password() {
    let Some(server) = PrivateServer::start() else {
        panic!("nats-server must be installed (scripts/brokers/nats.sh installs it)");
    };
    let port = server.1;
    // Wait (bounded) until the private server accepts connections.
    let deadline = Instant::now() + WAIT;
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "private nats-server did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Written raw (not percent-encoded), as users do: still the password.
    let good = NatsBroker::new(format!("nats://app:right/pass@127.0.0.1:{port}"));
    good.connect().await.expect("right password connects");
    good.close().await.unwrap();

    let bad = NatsBroker::new(format!("nats://app:wrong/pass@127.0.0.1:{port}"));
    let started = Instant::now();
    let err = bad.connect().await.expect_err("refused");
    assert!(started.elapsed() < Duration::from_secs(10));
    let text = err.to_string();
    assert!(matches!(err, BrokerError::Connect { .. }), "{err:?}");
    assert!(
        text.contains("NATS") && text.contains(&format!("127.0.0.1:{port}")),
        "{text}"
    );
    assert!(text.to_lowercase().contains("authorization"), "{text}");
    assert!(!text.contains("wrong/pass") && !format!("{err:?}").contains("wrong/pass"));
    assert!(!format!("{bad:?}").contains("wrong/pass"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumption_resumes_after_a_connection_loss_and_unacked_messages_come_back() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let n = names("js_reconnect");
    let _cleanup = common::cleanup(&[&n.stream]);
    let proxy = TcpProxy::start("127.0.0.1:4222".parse().unwrap())
        .await
        .unwrap();
    let via_proxy = NatsBroker::new(format!("nats://{}", proxy.addr()));
    let direct = NatsBroker::new(URL);
    // Manual: the first delivery of "first" is left unsettled, as if the process had been
    // working on it when the connection died; it must come back after ack_wait.
    let sub = js_builder(
        &n,
        &[
            ("ack_policy", AckPolicy::Manual.into()),
            ("ack_wait_ms", 1500u64.into()),
        ],
    );
    let (handler, mut seen) = scripted(sub, |m| {
        if &m.body()[..] == b"first" && m.delivery_count() == Some(1) {
            Act::Succeed // leaves it unsettled
        } else {
            Act::Ack
        }
    });
    let running = App::new(via_proxy.clone())
        .subscribe(handler)
        .start()
        .await
        .unwrap();
    direct.publish("first", &n.subject).await.unwrap();
    let s = next_seen(&mut seen).await;
    assert_eq!((&s.body[..], s.delivery_count), (&b"first"[..], Some(1)));

    proxy.cut();
    direct.publish("second", &n.subject).await.unwrap();
    proxy.restore();

    // "second" may have been sent to the dying connection just before the server noticed
    // the cut; then it comes back after ack_wait too (delivery count 2 or more). Either way
    // both must be handled, and "first" only by redelivery.
    let mut got = std::collections::BTreeMap::new();
    while got.len() < 2 {
        let s = next_seen(&mut seen).await;
        got.insert(
            String::from_utf8(s.body.to_vec()).unwrap(),
            s.delivery_count,
        );
    }
    assert!(
        matches!(got.get("first"), Some(Some(n)) if *n >= 2),
        "the unacked message was redelivered: {got:?}"
    );
    assert!(
        got.contains_key("second"),
        "the new message was consumed: {got:?}"
    );
    assert!(proxy.connections_accepted() >= 2, "the client reconnected");

    // Still consuming on the new connection. An ack sent into the dying connection is lost,
    // so "first" or "second" may legitimately be handled once more (at least once); nothing
    // else may arrive before "third".
    direct.publish("third", &n.subject).await.unwrap();
    loop {
        let s = next_seen(&mut seen).await;
        match &s.body[..] {
            b"third" => break,
            b"first" | b"second" => {}
            other => panic!("unexpected delivery {other:?}"),
        }
    }
    running.stop().await.unwrap();

    let js = jetstream::new(common::client().await);
    let c = consumer_info(&js, &n.stream, &n.durable).await;
    assert_eq!((c.num_pending, c.num_ack_pending), (0, 0), "{c:?}");
    assert_eq!(
        c.ack_floor.stream_sequence, 3,
        "everything processed was acknowledged"
    );
}

#[tokio::test]
async fn auto_publish_reports_a_failed_stream_lookup_instead_of_publishing_unconfirmed() {
    let n = names("js_lookup");
    let _cleanup = common::cleanup(&[&n.stream]);
    let js = jetstream::new(common::client().await);
    js.create_stream(jetstream::stream::Config {
        name: n.stream.clone(),
        subjects: vec![n.subject.clone()],
        ..Default::default()
    })
    .await
    .unwrap();
    let proxy = TcpProxy::start("127.0.0.1:4222".parse().unwrap())
        .await
        .unwrap();
    let broker = NatsBroker::new(format!("nats://{}", proxy.addr()));
    broker.connect().await.unwrap();

    // The lookup cannot be answered: publish must fail (the caller retries), not fall back to
    // a core publish that nobody confirms.
    proxy.cut();
    let result = tokio::time::timeout(WAIT, broker.publish("lost?", &n.subject))
        .await
        .expect("publish returns within the bound");
    assert!(result.is_err(), "an unconfirmed publish reported success");
    proxy.restore();

    // Once reconnected, publishing goes through JetStream and the stream confirms it.
    let deadline = Instant::now() + WAIT;
    while let Err(e) = broker.publish("kept", &n.subject).await {
        assert!(
            Instant::now() < deadline,
            "no publish after reconnecting: {e}"
        );
    }
    let info = js
        .get_stream(&n.stream)
        .await
        .unwrap()
        .get_info()
        .await
        .unwrap();
    assert_eq!(
        info.state.messages, 1,
        "only the confirmed publish is stored"
    );
    broker.close().await.unwrap();
}
