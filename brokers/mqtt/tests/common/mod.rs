//! Test helpers: fresh names, a private Mosquitto, a raw rumqttc client that reads what a
//! resumed session receives, a raw MQTT 5 subscriber that collects what reaches a topic (with
//! its properties), a sniffing proxy that records packet order on the wire, and a log capture.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use brook_mqtt::{MqttBroker, ProtocolVersion};
use brook_runtime::conformance::{Adapter, TestSource};
use brook_runtime::{kind, BrokerError, BrokerKind};
use bytes::Bytes;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub const SHARED: &str = "127.0.0.1:1883";

/// A name no other test (or earlier run) uses: prefix + pid + nanos + counter.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() % 1_000_000_000_000);
    format!(
        "{prefix}-{}-{nanos}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A private Mosquitto on a free loopback port, stopped on drop. Its queue limit is raised so a
/// persistent session can hold a large backlog (the shared one drops past 1000).
///
/// Mosquitto runs under a small shell watchdog that stops it when its stdin (a pipe from this
/// process) closes: on drop, and also when the test process dies without unwinding (a nextest
/// timeout, SIGKILL), so no broker outlives its test.
pub struct Mosquitto {
    child: Child,
    pub port: u16,
    dir: PathBuf,
}

impl Mosquitto {
    pub fn start(extra_config: &str) -> Mosquitto {
        let port = StdListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let dir = std::env::temp_dir().join(unique("brook-mosquitto"));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let conf = dir.join("mosquitto.conf");
        let anonymous = if extra_config.contains("allow_anonymous") {
            ""
        } else {
            "allow_anonymous true\n"
        };
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\n{anonymous}persistence false\nmax_queued_messages 1000000\nmax_queued_bytes 0\n{extra_config}\n"
            ),
        )
        .expect("write config");
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
                "private mosquitto did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        m
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn dir(&self) -> &PathBuf {
        &self.dir
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        // Closing the watchdog's stdin stops mosquitto; kill the shell only if that hangs.
        drop(self.child.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(5);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn split(addr: &str) -> (String, u16) {
    let (h, p) = addr.rsplit_once(':').expect("host:port");
    (h.to_owned(), p.parse().expect("port"))
}

async fn connect_raw(
    addr: &str,
    client_id: &str,
    clean: bool,
) -> Result<(AsyncClient, rumqttc::EventLoop, bool), String> {
    let (host, port) = split(addr);
    let mut options = MqttOptions::new(client_id, host, port);
    options
        .set_clean_session(clean)
        .set_manual_acks(true)
        .set_keep_alive(Duration::from_secs(5));
    let (client, mut el) = AsyncClient::new(options, 1000);
    match tokio::time::timeout(Duration::from_secs(5), el.poll()).await {
        Ok(Ok(Event::Incoming(Packet::ConnAck(ack)))) => Ok((client, el, ack.session_present)),
        other => Err(format!("raw connect to {addr}: {other:?}")),
    }
}

async fn disconnect_raw(client: AsyncClient, mut el: rumqttc::EventLoop) {
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            match el.poll().await {
                Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
}

/// What the persistent session of `client_id` holds: reconnects with clean_session = false
/// (the session must exist), collects until 700 ms pass without a message (at most 15 s),
/// acks them, then deletes the session (clean reconnect) so nothing leaks on the broker.
pub async fn remaining(addr: &str, client_id: &str) -> Result<Vec<Bytes>, String> {
    let (client, mut el, present) = connect_raw(addr, client_id, false).await?;
    if !present {
        disconnect_raw(client, el).await;
        return Err(format!("the broker has no session for `{client_id}`"));
    }
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_millis(700), el.poll()).await {
            Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                got.push(p.payload.clone());
                let _ = client.try_ack(&p);
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(format!("reading the session: {e}")),
            Err(_) => break,
        }
    }
    disconnect_raw(client, el).await;
    forget_session(addr, client_id).await;
    Ok(got)
}

/// Deletes the session of `client_id` (connect with a clean session, disconnect).
pub async fn forget_session(addr: &str, client_id: &str) {
    if let Ok((client, el, _)) = connect_raw(addr, client_id, true).await {
        disconnect_raw(client, el).await;
    }
}

/// Creates the persistent session of `client_id` subscribed to `topic` (QoS 1), then leaves,
/// so messages published afterwards queue up for it.
pub async fn prepare_session(addr: &str, client_id: &str, topic: &str) {
    let (client, mut el, _) = connect_raw(addr, client_id, false).await.expect("connect");
    client
        .subscribe(topic, QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Ok(Event::Incoming(Packet::SubAck(_))) = el.poll().await {
                break;
            }
        }
    })
    .await
    .expect("suback");
    disconnect_raw(client, el).await;
}

/// Publishes `n` payloads `make(i)` at QoS 1 with a raw client, waiting for every PUBACK.
pub async fn publish_raw(addr: &str, topic: &str, n: u64, make: impl Fn(u64) -> Vec<u8>) {
    let (client, mut el, _) = connect_raw(addr, &unique("brook-pub"), true)
        .await
        .expect("connect publisher");
    let producer = {
        let client = client.clone();
        let topic = topic.to_owned();
        let payloads: Vec<Vec<u8>> = (0..n).map(make).collect();
        tokio::spawn(async move {
            for p in payloads {
                client
                    .publish(topic.clone(), QoS::AtLeastOnce, false, p)
                    .await
                    .expect("queue publish");
            }
        })
    };
    let mut acked = 0;
    tokio::time::timeout(Duration::from_secs(120), async {
        while acked < n {
            if let Event::Incoming(Packet::PubAck(_)) = el.poll().await.expect("publisher loop") {
                acked += 1;
            }
        }
    })
    .await
    .expect("every publish confirmed");
    producer.await.expect("producer");
    disconnect_raw(client, el).await;
}

/// The conformance adapter: every source is a fresh topic read by a fresh client id with a
/// persistent session, so `remaining` can resume that session.
pub struct MqttAdapter {
    addr: String,
    protocol: ProtocolVersion,
    current: Mutex<Option<String>>,
    ids: Mutex<HashMap<String, String>>,
}

impl MqttAdapter {
    /// Against the shared Mosquitto.
    pub fn new() -> Self {
        Self::at(SHARED)
    }

    /// Against the shared Mosquitto, speaking MQTT 5.
    pub fn v5() -> Self {
        MqttAdapter {
            protocol: ProtocolVersion::V5,
            ..Self::at(SHARED)
        }
    }

    /// Against the Mosquitto at `addr` (host:port).
    pub fn at(addr: &str) -> Self {
        MqttAdapter {
            addr: addr.to_owned(),
            protocol: ProtocolVersion::V311,
            current: Mutex::new(None),
            ids: Mutex::new(HashMap::new()),
        }
    }
}

impl Adapter for MqttAdapter {
    type Broker = MqttBroker;
    type Kind = kind::Mqtt;

    async fn broker(&self) -> MqttBroker {
        let id = self
            .current
            .lock()
            .unwrap()
            .clone()
            .unwrap_or_else(MqttBroker::generate_client_id);
        MqttBroker::new(&format!("mqtt://{}", self.addr))
            .client_id(id)
            .persistent_session(true)
            .protocol(self.protocol)
    }

    async fn fresh_source(&self, test: &str) -> Result<TestSource, BrokerError> {
        let name = unique(test);
        let topic = format!("brook-test/{name}");
        let client_id = format!("brook-test-{name}");
        *self.current.lock().unwrap() = Some(client_id.clone());
        self.ids.lock().unwrap().insert(topic.clone(), client_id);
        Ok(TestSource {
            args: vec![
                ("topic".into(), topic.clone().into()),
                ("qos".into(), 1u64.into()),
            ],
            destination: topic,
        })
    }

    async fn remaining(&self, source: &TestSource) -> Result<Vec<Bytes>, BrokerError> {
        let id = self
            .ids
            .lock()
            .unwrap()
            .get(&source.destination)
            .cloned()
            .ok_or_else(|| BrokerError::Invalid {
                broker: BrokerKind::Mqtt,
                message: "unknown test source".into(),
            })?;
        remaining(&self.addr, &id)
            .await
            .map_err(|e| BrokerError::operation(BrokerKind::Mqtt, "remaining", e))
    }

    async fn dead_letters(&self, _: &TestSource) -> Result<Vec<Bytes>, BrokerError> {
        Ok(Vec::new()) // MQTT has no dead-letter place
    }
}

/// A proxy that records, in order, the packet ids of PUBLISH packets the broker sends
/// (QoS > 0) and of PUBACK packets the client sends, by parsing MQTT framing on the wire, and
/// counts the connections it forwarded.
pub struct Sniffer {
    pub addr: SocketAddr,
    pub publishes: Arc<Mutex<Vec<u16>>>,
    pub pubacks: Arc<Mutex<Vec<u16>>>,
    pub connections: Arc<AtomicU64>,
    /// SUBACKs the broker sent.
    pub subacks: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Sniffer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Sniffer {
    pub async fn start(target: SocketAddr) -> Sniffer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let publishes = Arc::new(Mutex::new(Vec::new()));
        let pubacks = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicU64::new(0));
        let subacks = Arc::new(AtomicU64::new(0));
        let (p, a, c, s) = (
            publishes.clone(),
            pubacks.clone(),
            connections.clone(),
            subacks.clone(),
        );
        let task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let Ok(outbound) = TcpStream::connect(target).await else {
                    continue;
                };
                c.fetch_add(1, Ordering::SeqCst);
                let (ci, co) = inbound.into_split();
                let (bi, bo) = outbound.into_split();
                // client -> broker: PUBACK = type 4; broker -> client: PUBLISH = type 3
                tokio::spawn(pump(ci, bo, a.clone(), 4, None));
                tokio::spawn(pump(bi, co, p.clone(), 3, Some(s.clone())));
            }
        });
        Sniffer {
            addr,
            publishes,
            pubacks,
            connections,
            subacks,
            task,
        }
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    record: Arc<Mutex<Vec<u16>>>,
    packet_type: u8,
    subacks: Option<Arc<AtomicU64>>,
) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if to.write_all(&chunk[..n]).await.is_err() {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        // Parse complete packets.
        while let Some((header_len, remaining)) = frame(&buf) {
            let total = header_len + remaining;
            if buf.len() < total {
                break;
            }
            let kind = buf[0] >> 4;
            let body = &buf[header_len..total];
            if let (9, Some(subacks)) = (kind, &subacks) {
                subacks.fetch_add(1, Ordering::SeqCst);
            }
            if kind == packet_type {
                if kind == 4 && body.len() >= 2 {
                    record
                        .lock()
                        .unwrap()
                        .push(u16::from_be_bytes([body[0], body[1]]));
                }
                if kind == 3 && (buf[0] >> 1) & 3 > 0 && body.len() >= 2 {
                    let topic_len = u16::from_be_bytes([body[0], body[1]]) as usize;
                    if body.len() >= 2 + topic_len + 2 {
                        let at = 2 + topic_len;
                        record
                            .lock()
                            .unwrap()
                            .push(u16::from_be_bytes([body[at], body[at + 1]]));
                    }
                }
            }
            buf.drain(..total);
        }
    }
}

/// (fixed header length, remaining length) of the packet at the start of `buf`, if complete.
fn frame(buf: &[u8]) -> Option<(usize, usize)> {
    let mut remaining = 0usize;
    let mut multiplier = 1usize;
    for (i, b) in buf.iter().enumerate().skip(1).take(4) {
        remaining += (*b as usize & 0x7f) * multiplier;
        if b & 0x80 == 0 {
            return Some((i + 1, remaining));
        }
        multiplier *= 128;
    }
    None
}

/// Waits until `f` holds (checked every 10 ms), at most `limit`.
pub async fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    f()
}

/// A message a [`Collector`] received.
#[derive(Clone, Debug)]
pub struct Collected {
    pub topic: String,
    pub payload: Bytes,
    /// MQTT 5 user properties, in order.
    pub properties: Vec<(String, String)>,
}

/// A raw MQTT 5 subscriber (rumqttc, clean start, QoS 1, automatic acks) collecting what
/// reaches a topic filter; stops on drop.
pub struct Collector {
    pub rx: tokio::sync::mpsc::UnboundedReceiver<Collected>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Collector {
    /// Subscribes to `filter` at `addr` (host:port) and returns once the SUBACK arrived.
    pub async fn start(addr: &str, filter: &str) -> Collector {
        use rumqttc::v5::mqttbytes::v5::Packet as P5;
        use rumqttc::v5::{AsyncClient as C5, Event as E5, MqttOptions as O5};
        let (host, port) = split(addr);
        let mut options = O5::new(unique("brook-collector"), host, port);
        options.set_keep_alive(Duration::from_secs(5));
        let (client, mut el) = C5::new(options, 100);
        client
            .subscribe(filter, rumqttc::v5::mqttbytes::QoS::AtLeastOnce)
            .await
            .expect("subscribe");
        tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                if let E5::Incoming(P5::SubAck(_)) = el.poll().await.expect("collector connects") {
                    break;
                }
            }
        })
        .await
        .expect("suback");
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            let _client = client; // keeps the request channel open
            while let Ok(event) = el.poll().await {
                if let E5::Incoming(P5::Publish(p)) = event {
                    let _ = tx.send(Collected {
                        topic: String::from_utf8_lossy(&p.topic).into_owned(),
                        payload: p.payload.clone(),
                        properties: p.properties.map(|p| p.user_properties).unwrap_or_default(),
                    });
                }
            }
        });
        Collector { rx, task }
    }

    /// The next message, within 15 s.
    pub async fn next(&mut self) -> Collected {
        tokio::time::timeout(Duration::from_secs(15), self.rx.recv())
            .await
            .expect("a message within 15 s")
            .expect("collector alive")
    }
}

/// Captures what brook logs (`tracing`, debug and up) on this thread while the guard lives:
/// use it in a current-thread test runtime, where every task runs on the test's thread.
pub struct LogCapture {
    buffer: Arc<Mutex<Vec<u8>>>,
    _guard: tracing::subscriber::DefaultGuard,
}

struct CaptureWriter(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for CaptureWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogCapture {
    pub fn start() -> LogCapture {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let b = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::DEBUG)
            .with_writer(move || CaptureWriter(b.clone()))
            .finish();
        LogCapture {
            buffer,
            _guard: tracing::subscriber::set_default(subscriber),
        }
    }

    /// Everything logged so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.buffer.lock().unwrap()).into_owned()
    }
}

/// The persistent session's client id of a test source (as `fresh_source` names it), so a
/// child process finds the same session.
fn client_id_of(source: &TestSource) -> String {
    source.destination.replacen("brook-test/", "brook-test-", 1)
}

impl brook_runtime::soak::SoakAdapter for MqttAdapter {
    /// The source's persistent session, subscribed, so the ids published before the App runs
    /// queue up for it (the shared Mosquitto keeps up to 1000 per session).
    async fn prepare(&self, source: &TestSource) -> Result<(), String> {
        prepare_session(&self.addr, &client_id_of(source), &source.destination).await;
        Ok(())
    }

    fn upstream(&self) -> SocketAddr {
        self.addr
            .parse()
            .unwrap_or_else(|_| panic!("`{}` is an IP address and port", self.addr))
    }

    async fn soak_broker(&self, source: &TestSource) -> MqttBroker {
        MqttBroker::new(&format!("mqtt://{}", self.addr))
            .client_id(client_id_of(source))
            .persistent_session(true)
            .protocol(self.protocol)
    }

    async fn broker_at(&self, addr: SocketAddr, source: &TestSource) -> MqttBroker {
        MqttBroker::new(&format!("mqtt://{addr}"))
            .client_id(client_id_of(source))
            .persistent_session(true)
            .protocol(self.protocol)
    }

    /// What a resumed session resends that was handled but not acknowledged: at most
    /// Mosquitto's in-flight window (20 messages), plus the handlers running.
    fn duplicate_bound(&self) -> usize {
        20 + brook_runtime::soak::CONCURRENCY as usize
    }
}
