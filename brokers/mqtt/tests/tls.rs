//! TLS (`mqtts://`, rustls + ring) against a private Mosquitto with a TLS listener and a CA
//! made for the test with openssl.
#![cfg(feature = "tls")]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use brook_mqtt::MqttBroker;
use brook_runtime::{AckPolicy, Broker, BrokerError, BrokerKind, Consumer, Outgoing, Subscription};
use bytes::Bytes;
use common::{unique, Mosquitto};

fn openssl(dir: &Path, args: &[&str]) {
    let status = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl");
    assert!(
        status.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&status.stderr)
    );
}

/// A CA and a server certificate for 127.0.0.1, in `dir`.
fn make_certs(dir: &Path) {
    std::fs::write(dir.join("san.cnf"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "1",
            "-subj",
            "/CN=brook-test-ca",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "1",
            "-extfile",
            "san.cnf",
        ],
    );
}

#[tokio::test]
async fn mqtts_with_a_private_ca_publishes_and_consumes() {
    let dir = std::env::temp_dir().join(unique("brook-mqtt-tls"));
    std::fs::create_dir_all(&dir).unwrap();
    make_certs(&dir);
    let m = Mosquitto::start(&format!(
        "cafile {0}/ca.crt\ncertfile {0}/server.crt\nkeyfile {0}/server.key\nuser root",
        dir.display()
    ));
    let url = format!("mqtts://127.0.0.1:{}", m.port);
    let ca = std::fs::read(dir.join("ca.crt")).unwrap();

    // Without the CA the server is not trusted: a clear connect error, in bounded time.
    let untrusted = MqttBroker::new(&url).connect_timeout(Duration::from_secs(3));
    let err = untrusted.connect().await.expect_err("unknown issuer");
    assert!(matches!(err, BrokerError::Connect { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&format!("127.0.0.1:{}", m.port)),
        "{err}"
    );

    let broker = MqttBroker::new(&url).tls_ca_pem(ca);
    let topic = format!("brook-test/{}", unique("tls"));
    let sub = Subscription::new(BrokerKind::Mqtt, "tls")
        .arg("topic", topic.clone())
        .arg("ack_policy", AckPolicy::Ack)
        .build()
        .unwrap();
    let mut consumer = broker
        .subscribe(&sub)
        .await
        .expect("TLS connect + subscribe");
    broker
        .publish_message(Outgoing::new(topic, Bytes::from_static(b"secret payload")))
        .await
        .unwrap();
    let msg = tokio::time::timeout(Duration::from_secs(5), consumer.next())
        .await
        .expect("a message")
        .expect("open")
        .expect("ok");
    assert_eq!(&msg.body()[..], b"secret payload");
    msg.ack().await.unwrap();
    consumer.close().await.unwrap();
    broker.close().await.unwrap();
    drop(m);
    let _ = std::fs::remove_dir_all(&dir);
}
