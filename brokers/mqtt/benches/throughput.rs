//! Throughput: consume + settle N pre-published ~100-byte JSON messages (QoS 1, policy Ack,
//! concurrency 1), brook vs a hand-written rumqttc loop with the same settings (manual acks,
//! PUBACK each in arrival order, persistent session, same request queue, same broker), both
//! decoding with `brook_runtime::bench::decode`, in the same run, on both tokio runtime
//! flavours, over MQTT 3.1.1 and MQTT 5, alternating which side goes first.
//!
//! A private Mosquitto is started on a free loopback port with `max_queued_messages` raised
//! (the default of 1000 would silently drop most of the backlog) and killed at the end. Each
//! round fills two fresh persistent sessions with N messages; each side then resumes its
//! session. Both sides are timed from the first message received to the N-th acknowledged:
//! the raw loop's N-th PUBACK written (rumqttc's `Outgoing::PubAck` event), brook's N-th
//! handled (its Ack queues the PUBACK right after; MQTT has no way to ask the broker whether
//! it arrived, and brook writes it on its own connection task). Connecting and resuming the
//! session stay outside the window. The process CPU time used
//! in the same window is measured too (`bench::Mark` at both ends). Per round the bench prints
//! both rates, both CPU µs/msg and the two brook/raw ratios, and per protocol and flavour their
//! medians (`brook_runtime::bench`).
//!
//! ```text
//! cargo bench -p brook-mqtt --bench throughput            # N = 50000
//! BROOK_BENCH_N=200000 cargo bench -p brook-mqtt --bench throughput
//! BROOK_BENCH_PROTOCOL=5 BROOK_BENCH_FLAVOUR=current_thread cargo bench -p brook-mqtt --bench throughput
//! ```
//! `BROOK_BENCH_N` (default 50000), `BROOK_BENCH_ROUNDS` (3),
//! `BROOK_BENCH_FLAVOUR=current_thread|multi_thread` and `BROOK_BENCH_PROTOCOL=3.1.1|5` run one
//! flavour or protocol only, `BROOK_BENCH_SIDE=raw|brook` one side only (for profiling).
//! Needs `mosquitto` on the PATH.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use brook_mqtt::{MqttBroker, ProtocolVersion};
use brook_runtime::bench::{self, decode, payload, run_brook_until, Mark, Round, Side};
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
/// order, as brook does), until `n` PUBACKs are written. Returns the window: first message
/// received to the N-th PUBACK written.
async fn raw(port: u16, client_id: &str, n: u64) -> Side {
    let (client, mut el) = AsyncClient::new(
        options(port, client_id, false, REQUEST_CAPACITY),
        REQUEST_CAPACITY,
    );
    connack(&mut el).await;
    let (mut first, mut acked) = (None, 0);
    while acked < n {
        match el.poll().await.expect("raw loop") {
            Event::Incoming(Packet::Publish(p)) => {
                first.get_or_insert_with(Mark::now);
                handle(&p.payload);
                client.try_ack(&p).expect("queue PUBACK");
            }
            Event::Outgoing(Outgoing::PubAck(_)) => acked += 1,
            _ => {}
        }
    }
    let window = first.map_or(Side::SKIPPED, Mark::until_now);
    disconnect(client, el).await;
    window
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
async fn raw5(port: u16, client_id: &str, n: u64) -> Side {
    use rumqttc::v5::{AsyncClient, Event};
    let (client, mut el) = AsyncClient::new(
        options5(port, client_id, REQUEST_CAPACITY),
        REQUEST_CAPACITY,
    );
    let (mut first, mut acked) = (None, 0);
    while acked < n {
        match el.poll().await.expect("raw loop") {
            Event::Incoming(Packet5::Publish(p)) => {
                first.get_or_insert_with(Mark::now);
                handle(&p.payload);
                client.try_ack(&p).expect("queue PUBACK");
            }
            Event::Outgoing(Outgoing::PubAck(_)) => acked += 1,
            _ => {}
        }
    }
    let window = first.map_or(Side::SKIPPED, Mark::until_now);
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while el.poll().await.is_ok() {}
    })
    .await;
    window
}

/// The raw side of a round: the raw loop of `protocol` in a spawned task (as brook's consumer
/// runs; on the multi-thread runtime `block_on` runs outside the worker threads).
async fn raw_side(port: u16, protocol: ProtocolVersion, client_id: &str, n: u64) -> Side {
    let client_id = client_id.to_owned();
    tokio::spawn(async move {
        match protocol {
            ProtocolVersion::V5 => raw5(port, &client_id, n).await,
            _ => raw(port, &client_id, n).await,
        }
    })
    .await
    .expect("raw loop")
}

/// brook's side of a round: an App resuming `client_id`'s session.
async fn brook_side(
    port: u16,
    protocol: ProtocolVersion,
    client_id: &str,
    topic: &str,
    n: u64,
) -> Side {
    let broker = MqttBroker::new(&format!("mqtt://127.0.0.1:{port}"))
        .client_id(client_id)
        .persistent_session(true)
        .protocol(protocol)
        .request_capacity(REQUEST_CAPACITY);
    run_brook_until::<_, kind::Mqtt, _>(
        broker,
        vec![("topic", topic.to_owned().into()), ("qos", 1u64.into())],
        n,
        1,
        async {},
    )
    .await
    .expect("brook run")
    .window()
}

/// One round over `protocol`: fill two fresh sessions, then run both sides.
async fn round(port: u16, protocol: ProtocolVersion, tag: &str, n: u64, i: u32) -> Round {
    let only = std::env::var("BROOK_BENCH_SIDE").unwrap_or_default();
    let raw_id = format!("bench-raw-{tag}-{i}");
    let brook_id = format!("bench-brook-{tag}-{i}");
    let raw_topic = format!("bench/{raw_id}");
    let brook_topic = format!("bench/{brook_id}");
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
    let (mut raw, mut brook) = (Side::SKIPPED, Side::SKIPPED);
    // Odd rounds run brook first: neither side always meets the warmer broker.
    let brook_first = i % 2 == 1;
    for brook_turn in [brook_first, !brook_first] {
        if brook_turn && only != "raw" {
            brook = brook_side(port, protocol, &brook_id, &brook_topic, n).await;
        } else if !brook_turn && only != "brook" {
            raw = raw_side(port, protocol, &raw_id, n).await;
        }
    }
    Round { raw, brook }
}

fn main() {
    let env = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let n = env("BROOK_BENCH_N", 50_000);
    let rounds = env("BROOK_BENCH_ROUNDS", 3).max(1) as u32;
    let mosquitto = Mosquitto::start();
    let port = mosquitto.port;
    println!(
        "MQTT (Mosquitto, private instance, max_inflight_messages {MAX_INFLIGHT}), QoS 1, {n} messages of {} bytes, {rounds} rounds",
        payload(0).len()
    );
    let only = std::env::var("BROOK_BENCH_FLAVOUR").ok();
    let only_protocol = std::env::var("BROOK_BENCH_PROTOCOL").ok();
    for (protocol, label) in [(ProtocolVersion::V311, "3.1.1"), (ProtocolVersion::V5, "5")] {
        if only_protocol.as_deref().is_some_and(|p| p != label) {
            continue;
        }
        for flavour in bench::FLAVOURS {
            if only.as_deref().is_some_and(|o| o != flavour) {
                continue;
            }
            let rt = bench::runtime(flavour).expect("runtime");
            let tag = format!("{label}-{flavour}");
            let results: Vec<Round> = (0..rounds)
                .map(|i| {
                    let r = rt.block_on(round(port, protocol, &tag, n, i));
                    println!(
                        "{}",
                        r.line(&format!("  round {i}, mqtt {label}, {flavour}"), n)
                    );
                    r
                })
                .collect();
            println!(
                "{}",
                bench::summary(&format!("mqtt {label}, {flavour}"), n, &results)
            );
        }
    }
    drop(mosquitto);
}
