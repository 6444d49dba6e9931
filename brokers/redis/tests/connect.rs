//! Connection failures are clear and bounded; credentials never show.

mod common;

use std::time::{Duration, Instant};

use brook_redis::RedisBroker;
use brook_runtime::{Broker, BrokerError, BrokerKind};

#[tokio::test]
async fn a_closed_port_fails_fast_naming_redis_and_the_address() {
    // Bind and drop a listener: a loopback port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let broker = RedisBroker::new(format!("redis://127.0.0.1:{port}"))
        .connect_timeout(Duration::from_secs(2));
    let started = Instant::now();
    let err = broker.connect().await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    let BrokerError::Connect {
        broker: kind,
        address,
        ..
    } = &err
    else {
        panic!("{err:?}")
    };
    assert_eq!(*kind, BrokerKind::Redis);
    assert_eq!(address, &format!("redis://127.0.0.1:{port}"));
    let text = err.to_string();
    assert!(
        text.contains("Redis") && text.contains(&format!("127.0.0.1:{port}")),
        "{text}"
    );
}

#[tokio::test]
async fn an_unresponsive_address_fails_within_the_connect_timeout() {
    // A listener that accepts (backlog) but never speaks Redis.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let broker =
        RedisBroker::new(format!("redis://{addr}")).connect_timeout(Duration::from_millis(500));
    let started = Instant::now();
    let err = broker.connect().await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    assert!(matches!(err, BrokerError::Connect { .. }), "{err:?}");
    drop(listener);
}

#[tokio::test]
async fn a_wrong_password_fails_without_showing_it() {
    let broker = RedisBroker::new("redis://brook:hunter2-secret@127.0.0.1:6379")
        .connect_timeout(Duration::from_secs(2));
    let started = Instant::now();
    let err = broker.connect().await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(3));
    let shown = format!("{err} | {err:?} | {broker:?}");
    assert!(matches!(err, BrokerError::Connect { .. }), "{shown}");
    assert!(
        shown.contains("Redis") && shown.contains("127.0.0.1:6379"),
        "{shown}"
    );
    assert!(!shown.contains("hunter2"), "the password leaked: {shown}");
}

#[tokio::test]
async fn an_invalid_url_is_a_connect_error_without_the_url() {
    let broker = RedisBroker::new("nonsense://:pw-xyz@");
    let err = broker.connect().await.unwrap_err();
    assert!(matches!(err, BrokerError::Connect { .. }));
    assert!(!format!("{err:?}").contains("pw-xyz"));
}

#[tokio::test]
async fn a_password_with_a_slash_never_shows() {
    // Unencoded `/` in a password: fred cannot parse the URL, and neither the error nor the
    // broker's Debug output may quote the part after the slash.
    let broker = RedisBroker::new("redis://:hunter2/secret@127.0.0.1:6379")
        .connect_timeout(Duration::from_secs(2));
    let err = broker.connect().await.unwrap_err();
    let shown = format!("{err} | {err:?} | {broker:?} | {}", broker.address());
    assert!(matches!(err, BrokerError::Connect { .. }), "{shown}");
    assert!(
        !shown.contains("hunter2") && !shown.contains("secret"),
        "the password leaked: {shown}"
    );
}
