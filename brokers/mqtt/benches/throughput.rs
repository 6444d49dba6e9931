//! Throughput: consume + settle N pre-published ~100-byte JSON messages (QoS 1, policy Ack),
//! brook vs a hand-written rumqttc loop with the same settings (manual acks, persistent
//! session, same broker), in the same run, on both tokio runtime flavours, over MQTT 3.1.1 and
//! MQTT 5.
//!
//! A private Mosquitto is started on a free loopback port with `max_queued_messages` raised
//! (the default of 1000 would silently drop most of the backlog) and killed at the end.
//!
//! ```text
//! cargo bench -p brook-mqtt --bench throughput            # N = 50000
//! BROOK_BENCH_N=200000 cargo bench -p brook-mqtt --bench throughput
//! BROOK_BENCH_PROTOCOL=5 BROOK_BENCH_FLAVOUR=current_thread cargo bench -p brook-mqtt --bench throughput
//! ```

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use brook_mqtt::{MqttBroker, ProtocolVersion};
use brook_runtime::bench::{decode, payload, report, run_brook};
use brook_runtime::kind;
use rumqttc::v5::mqttbytes::v5::Packet as Packet5;
use rumqttc::v5::mqttbytes::QoS as QoS5;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Outgoing, Packet, QoS};

/// Mosquitto's default: how many QoS 1 messages it sends before waiting for PUBACKs.
const MAX_INFLIGHT: u32 = 20;
/// rumqttc's request queue (acks wait there for the event loop), for both loops.
const REQUEST_CAPACITY: usize = 100_000;

struct Mosquitto {
    child: Child,
    port: u16,
    dir: std::path::PathBuf,
}

impl Mosquitto {
    fn start() -> Mosquitto {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let dir = std::env::temp_dir().join(format!("brook-mqtt-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let conf = dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 0\nmax_queued_bytes 0\nmax_inflight_messages {MAX_INFLIGHT}\n"
            ),
        )
        .expect("config");
        // Under a shell watchdog that stops mosquitto when our stdin pipe closes: on drop, and
        // when the bench dies without unwinding (Ctrl-C, SIGKILL), so no broker outlives it.
        let child = Command::new("sh")
            .arg("-c")
            .arg(r#"mosquitto -c "$0" & m=$!; read _ || true; kill $m; wait $m"#)
            .arg(&conf)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mosquitto");
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut m = Mosquitto { child, port, dir };
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline && matches!(m.child.try_wait(), Ok(None)),
                "mosquitto did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        m
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        drop(self.child.stdin.take()); // the watchdog stops mosquitto
        let deadline = Instant::now() + Duration::from_secs(5);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn options(port: u16, client_id: &str, clean: bool, capacity: usize) -> MqttOptions {
    let mut o = MqttOptions::new(client_id, "127.0.0.1", port);
    o.set_clean_session(clean)
        .set_manual_acks(true)
        .set_keep_alive(Duration::from_secs(30))
        .set_request_channel_capacity(capacity);
    o
}

async fn connack(el: &mut EventLoop) {
    match el.poll().await {
        Ok(Event::Incoming(Packet::ConnAck(_))) => {}
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

async fn disconnect(client: AsyncClient, mut el: EventLoop) {
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            match el.poll().await {
                Ok(Event::Outgoing(Outgoing::Disconnect)) => {}
                Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
}

/// Creates `client_id`'s persistent session subscribed to `topic`, then fills it with `n`
/// bench payloads (published at QoS 1, every PUBACK awaited).
async fn fill(port: u16, client_id: &str, topic: &str, n: u64) {
    let (client, mut el) = AsyncClient::new(options(port, client_id, false, 100), 100);
    connack(&mut el).await;
    client
        .subscribe(topic, QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    loop {
        if let Ok(Event::Incoming(Packet::SubAck(_))) = el.poll().await {
            break;
        }
    }
    disconnect(client, el).await;
    fill_only(port, client_id, topic, n).await;
}

/// Publishes `n` bench payloads to `topic` at QoS 1, every PUBACK awaited.
async fn fill_only(port: u16, client_id: &str, topic: &str, n: u64) {
    let (client, mut el) =
        AsyncClient::new(options(port, &format!("{client_id}-pub"), true, 1000), 1000);
    connack(&mut el).await;
    let producer = {
        let client = client.clone();
        let topic = topic.to_owned();
        tokio::spawn(async move {
            for i in 0..n {
                client
                    .publish(topic.clone(), QoS::AtLeastOnce, false, payload(i))
                    .await
                    .expect("publish");
            }
        })
    };
    let mut acked = 0;
    while acked < n {
        if let Event::Incoming(Packet::PubAck(_)) = el.poll().await.expect("publisher") {
            acked += 1;
        }
    }
    producer.await.expect("producer");
    disconnect(client, el).await;
}

/// What the raw loops do per message: decode, as brook's bench handler does.
fn handle(payload: &[u8]) {
    let order = decode(payload);
    assert!(order.is_some(), "bench payloads decode");
    std::hint::black_box(order);
}

/// The hand-written loop: resume the session, decode and PUBACK every message (in arrival
/// order, as brook does), until `n`. Timed from before connecting, like `run_brook`.
async fn raw(port: u16, client_id: &str, n: u64) -> Duration {
    let started = Instant::now();
    let (client, mut el) = AsyncClient::new(
        options(port, client_id, false, REQUEST_CAPACITY),
        REQUEST_CAPACITY,
    );
    connack(&mut el).await;
    let mut seen = 0;
    while seen < n {
        if let Event::Incoming(Packet::Publish(p)) = el.poll().await.expect("raw loop") {
            handle(&p.payload);
            client.try_ack(&p).expect("queue PUBACK");
            seen += 1;
        }
    }
    let elapsed = started.elapsed();
    disconnect(client, el).await;
    elapsed
}

/// MQTT 5 options: a persistent session is a session expiry interval.
fn options5(port: u16, client_id: &str, capacity: usize) -> rumqttc::v5::MqttOptions {
    let mut o = rumqttc::v5::MqttOptions::new(client_id, "127.0.0.1", port);
    o.set_clean_start(false)
        .set_session_expiry_interval(Some(3600))
        .set_manual_acks(true)
        .set_keep_alive(Duration::from_secs(30))
        .set_request_channel_capacity(capacity);
    o
}

/// [`fill`] over MQTT 5: the session is created by an MQTT 5 client.
async fn fill5(port: u16, client_id: &str, topic: &str, n: u64) {
    use rumqttc::v5::{AsyncClient, Event};
    let (client, mut el) = AsyncClient::new(options5(port, client_id, 100), 100);
    loop {
        match el.poll().await.expect("connect") {
            Event::Incoming(Packet5::ConnAck(_)) => break,
            _ => continue,
        }
    }
    client
        .subscribe(topic, QoS5::AtLeastOnce)
        .await
        .expect("subscribe");
    loop {
        if let Ok(Event::Incoming(Packet5::SubAck(_))) = el.poll().await {
            break;
        }
    }
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while el.poll().await.is_ok() {}
    })
    .await;
    // The publisher's protocol does not matter to the subscriber's session.
    fill_only(port, client_id, topic, n).await;
}

/// [`raw`] over MQTT 5.
async fn raw5(port: u16, client_id: &str, n: u64) -> Duration {
    use rumqttc::v5::{AsyncClient, Event};
    let started = Instant::now();
    let (client, mut el) = AsyncClient::new(
        options5(port, client_id, REQUEST_CAPACITY),
        REQUEST_CAPACITY,
    );
    let mut seen = 0;
    while seen < n {
        if let Event::Incoming(Packet5::Publish(p)) = el.poll().await.expect("raw loop") {
            handle(&p.payload);
            client.try_ack(&p).expect("queue PUBACK");
            seen += 1;
        }
    }
    let elapsed = started.elapsed();
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while el.poll().await.is_ok() {}
    })
    .await;
    elapsed
}

async fn brook(
    port: u16,
    protocol: ProtocolVersion,
    client_id: &str,
    topic: &str,
    n: u64,
) -> Duration {
    let broker = MqttBroker::new(&format!("mqtt://127.0.0.1:{port}"))
        .client_id(client_id)
        .persistent_session(true)
        .protocol(protocol)
        .request_capacity(REQUEST_CAPACITY);
    run_brook::<_, kind::Mqtt>(
        broker,
        vec![("topic", topic.to_owned().into()), ("qos", 1u64.into())],
        n,
        1,
    )
    .await
    .expect("brook run")
}

fn main() {
    let n: u64 = std::env::var("BROOK_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50_000);
    let rounds: u32 = std::env::var("BROOK_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let mosquitto = Mosquitto::start();
    let port = mosquitto.port;
    println!(
        "MQTT (Mosquitto, private instance, max_inflight_messages {MAX_INFLIGHT}), QoS 1, {n} messages of {} bytes, best of {rounds}",
        payload(0).len()
    );
    let only = std::env::var("BROOK_BENCH_FLAVOUR").ok();
    let only_protocol = std::env::var("BROOK_BENCH_PROTOCOL").ok();
    for (protocol, label) in [(ProtocolVersion::V311, "3.1.1"), (ProtocolVersion::V5, "5")] {
        if only_protocol.as_deref().is_some_and(|p| p != label) {
            continue;
        }
        for flavour in ["current_thread", "multi_thread"] {
            if only.as_deref().is_some_and(|o| o != flavour) {
                continue;
            }
            let rt = match flavour {
                "current_thread" => tokio::runtime::Builder::new_current_thread(),
                _ => tokio::runtime::Builder::new_multi_thread(),
            }
            .enable_all()
            .build()
            .expect("runtime");
            let (mut best_raw, mut best_brook) = (Duration::MAX, Duration::MAX);
            for round in 0..rounds {
                let (r, b) = rt.block_on(async {
                    let raw_id = format!("bench-raw-{label}-{flavour}-{round}");
                    let brook_id = format!("bench-brook-{label}-{flavour}-{round}");
                    let raw_topic = format!("bench/{raw_id}");
                    let brook_topic = format!("bench/{brook_id}");
                    let raw_loop = || async {
                        match protocol {
                            ProtocolVersion::V5 => raw5(port, &raw_id, n).await,
                            _ => raw(port, &raw_id, n).await,
                        }
                    };
                    match protocol {
                        ProtocolVersion::V5 => {
                            fill5(port, &raw_id, &raw_topic, n).await;
                            fill5(port, &brook_id, &brook_topic, n).await;
                        }
                        _ => {
                            fill(port, &raw_id, &raw_topic, n).await;
                            fill(port, &brook_id, &brook_topic, n).await;
                        }
                    }
                    // Alternate which goes first, so neither always gets the warmer broker.
                    if round % 2 == 0 {
                        let r = raw_loop().await;
                        (r, brook(port, protocol, &brook_id, &brook_topic, n).await)
                    } else {
                        let b = brook(port, protocol, &brook_id, &brook_topic, n).await;
                        (raw_loop().await, b)
                    }
                });
                best_raw = best_raw.min(r);
                best_brook = best_brook.min(b);
            }
            println!(
                "{}",
                report(
                    &format!("mqtt {label:>5} {flavour:>14}"),
                    n,
                    best_raw,
                    best_brook
                )
            );
        }
    }
    drop(mosquitto);
}
