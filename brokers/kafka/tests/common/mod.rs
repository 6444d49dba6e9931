//! Shared test helpers: fresh names, topic creation, the broker's view of a group (committed
//! offsets, what a fresh member would read), the conformance adapter and a scripted handler.
#![allow(dead_code)]

use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use brook_kafka::KafkaBroker;
use brook_runtime::conformance::{Adapter, TestSource};
use brook_runtime::proxy::TcpProxy;
use brook_runtime::ArgValue;
use brook_runtime::{
    kind, AckPolicy, BrokerError, BrokerKind, Context, Handler, HandlerError, Message,
    Subscription, SubscriptionBuilder,
};
use bytes::Bytes;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::Message as _;
use tokio::sync::mpsc;

pub const ADDR: &str = "127.0.0.1:9092";
pub const WAIT: Duration = Duration::from_secs(30);

/// A name no other test (or earlier run) uses: prefix + pid + nanos + counter.
pub fn fresh(prefix: &str) -> String {
    brook_runtime::conformance::unique_name(&format!("brook-{prefix}"), '-')
}

pub fn broker() -> KafkaBroker {
    broker_at(ADDR)
}

/// The client settings every test uses: short group timings, so joins and rebalances on the
/// test broker take seconds, not the default tens of seconds; and one record per produced
/// batch (see [`one_record_per_batch`]).
pub fn broker_at(addr: &str) -> KafkaBroker {
    one_record_per_batch(KafkaBroker::new(addr))
        .with_round_robin_unkeyed()
        .with_consumer_config("session.timeout.ms", "6000")
        .with_consumer_config("heartbeat.interval.ms", "500")
        .with_consumer_config("fetch.wait.max.ms", "100")
        .with_consumer_config("auto.commit.interval.ms", "200")
}

/// tansu cannot serve a fetch that starts inside a multi-record batch: a consumer starting
/// at offset 5 of a 20-record batch never gets offsets 5..19 (librdkafka is handed later
/// records instead, even the same one again and again). Every test that reads from the
/// middle of a topic (a nack's seek back, a restart or a new owner from the committed offset,
/// [`remaining_at`]) depends on the offset being the start of a batch, so test producers
/// write one record per batch: no lingering, at most one message per batch, whatever the
/// test publishes concurrently. ([`remaining_at`] also checks that it read every offset.)
pub fn one_record_per_batch(broker: KafkaBroker) -> KafkaBroker {
    broker
        .with_producer_config("linger.ms", "0")
        .with_producer_config("batch.num.messages", "1")
}

/// Creates `topic` with `partitions` partitions.
pub async fn create_topic_at(addr: &str, topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", addr)
        .create()
        .expect("admin client");
    let results = admin
        .create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .expect("create topic");
    for r in results {
        r.unwrap_or_else(|(t, e)| panic!("create topic {t}: {e}"));
    }
}

pub async fn create_topic(topic: &str, partitions: i32) {
    create_topic_at(ADDR, topic, partitions).await
}

/// A fresh topic with `partitions` partitions and a fresh group name.
pub async fn fresh_topic(prefix: &str, partitions: i32) -> (String, String) {
    let topic = fresh(prefix);
    create_topic(&topic, partitions).await;
    (topic.clone(), format!("{topic}-group"))
}

fn group_consumer(addr: &str, group: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", addr)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set("fetch.wait.max.ms", "50")
        .create()
        .expect("inspection consumer")
}

/// The group's committed offset of each partition of `topic` (`None`: nothing committed), as
/// the broker reports it.
pub async fn committed_at(
    addr: &str,
    group: &str,
    topic: &str,
    partitions: i32,
) -> Vec<Option<i64>> {
    let (addr, group, topic) = (addr.to_owned(), group.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        let c = group_consumer(&addr, &group);
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition(&topic, p);
        }
        let got = c
            .committed_offsets(tpl, Duration::from_secs(10))
            .expect("committed offsets");
        (0..partitions)
            .map(
                |p| match got.find_partition(&topic, p).map(|e| e.offset()) {
                    Some(Offset::Offset(o)) => Some(o),
                    _ => None,
                },
            )
            .collect()
    })
    .await
    .expect("join")
}

pub async fn committed(group: &str, topic: &str, partitions: i32) -> Vec<Option<i64>> {
    committed_at(ADDR, group, topic, partitions).await
}

/// Waits until the group's committed offsets equal `want` (bounded).
pub async fn wait_committed(group: &str, topic: &str, want: &[Option<i64>]) -> Vec<Option<i64>> {
    wait_committed_at(ADDR, group, topic, want).await
}

pub async fn wait_committed_at(
    addr: &str,
    group: &str,
    topic: &str,
    want: &[Option<i64>],
) -> Vec<Option<i64>> {
    let started = Instant::now();
    loop {
        let got = committed_at(addr, group, topic, want.len() as i32).await;
        if got == want || started.elapsed() > WAIT {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Payloads of the markers [`remaining_at`] writes; never reported as messages.
const SENTINEL: &str = "brook-sentinel-";

/// What a fresh member of `group` would read from `topic` now: every partition from its
/// committed offset (or the beginning) up to a marker written to each partition first. Commits
/// nothing. (A marker instead of the high-water mark, which tansu reports wrongly; instead of
/// "read until quiet", which is slower and guesses.)
///
/// Panics unless it read every offset from the start to the marker exactly once, in order:
/// tansu does not serve a read that starts inside a multi-record batch (it hands out later
/// records instead), and a read that skipped messages would make "nothing remains" pass
/// silently.
pub async fn remaining_at(
    addr: &str,
    group: &str,
    topic: &str,
    partitions: i32,
) -> Vec<(i32, i64, Bytes)> {
    let starts = committed_at(addr, group, topic, partitions).await;
    let marker = fresh(SENTINEL);
    let producer = one_record_per_batch(KafkaBroker::new(addr));
    let mut ends = Vec::new();
    for p in 0..partitions {
        let (_, offset) = producer
            .publish_to_partition(
                brook_runtime::Outgoing::new(topic, Bytes::from(marker.clone())),
                Some(p),
            )
            .await
            .expect("write the end marker");
        ends.push(offset);
    }
    let (addr, group, topic) = (addr.to_owned(), group.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        let c = group_consumer(&addr, &group);
        let mut tpl = TopicPartitionList::new();
        for (p, start) in starts.iter().enumerate() {
            let offset = start.map_or(Offset::Beginning, Offset::Offset);
            tpl.add_partition_offset(&topic, p as i32, offset)
                .expect("offset");
        }
        c.assign(&tpl).expect("assign");
        let mut out = Vec::new();
        let mut done = vec![false; ends.len()];
        // The next offset each partition must yield (a fresh topic starts at 0).
        let mut next: Vec<i64> = starts.iter().map(|s| s.unwrap_or(0)).collect();
        let started = Instant::now();
        while !done.iter().all(|d| *d) {
            assert!(
                started.elapsed() < WAIT,
                "end markers not read within {WAIT:?}; read so far: {out:?}"
            );
            if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
                let (p, o) = (m.partition(), m.offset());
                if done[p as usize] {
                    continue;
                }
                assert_eq!(
                    o, next[p as usize],
                    "partition {p}: read offset {o} where {} was next (started at {:?}, marker \
                     at {}): the broker skipped or repeated records; tansu does so when a read \
                     starts inside a multi-record batch (produce one record per batch)",
                    next[p as usize], starts[p as usize], ends[p as usize]
                );
                next[p as usize] = o + 1;
                if o >= ends[p as usize] {
                    done[p as usize] = true;
                    continue;
                }
                let body = m.payload().unwrap_or_default();
                if !body.starts_with(SENTINEL.as_bytes()) {
                    out.push((p, o, Bytes::copy_from_slice(body)));
                }
            }
        }
        out.sort_by_key(|(p, o, _)| (*p, *o));
        out
    })
    .await
    .expect("join")
}

pub async fn remaining(group: &str, topic: &str, partitions: i32) -> Vec<(i32, i64, Bytes)> {
    remaining_at(ADDR, group, topic, partitions).await
}

/// The conformance adapter: one fresh topic (3 partitions for the concurrency test, so three
/// messages can be handled at once while per-partition order holds) and a fresh group per test.
pub struct KafkaAdapter;

impl KafkaAdapter {
    pub fn new() -> Self {
        KafkaAdapter
    }
}

fn partitions_of(source: &TestSource) -> i32 {
    if source.destination.contains("-concurrency-") {
        3
    } else {
        1
    }
}

fn group_of(source: &TestSource) -> String {
    source
        .args
        .iter()
        .find(|(n, _)| n == "group_id")
        .and_then(|(_, v)| v.as_str().map(str::to_owned))
        .expect("group_id")
}

impl Adapter for KafkaAdapter {
    type Broker = KafkaBroker;
    type Kind = kind::Kafka;

    async fn broker(&self) -> KafkaBroker {
        broker()
    }

    async fn fresh_source(&self, test: &str) -> Result<TestSource, BrokerError> {
        let partitions = if test == "concurrency" { 3 } else { 1 };
        let (topic, group) = fresh_topic(test, partitions).await;
        Ok(TestSource {
            args: vec![
                ("topic".into(), ArgValue::from(topic.clone())),
                ("group_id".into(), ArgValue::from(group)),
                (
                    "auto_offset_reset".into(),
                    ArgValue::Ident("earliest".into()),
                ),
            ],
            destination: topic,
        })
    }

    async fn remaining(&self, source: &TestSource) -> Result<Vec<Bytes>, BrokerError> {
        let group = group_of(source);
        Ok(
            remaining(&group, &source.destination, partitions_of(source))
                .await
                .into_iter()
                .map(|(_, _, b)| b)
                .collect(),
        )
    }

    async fn dead_letters(&self, _: &TestSource) -> Result<Vec<Bytes>, BrokerError> {
        Ok(Vec::new()) // Kafka has no dead-letter place
    }
}

/// A subscription on `topic` for `group` with `policy`, reading from the earliest offset
/// (unvalidated, as a handler gives it; the App validates it, or call `.build()`).
pub fn subscription(topic: &str, group: &str, policy: AckPolicy) -> SubscriptionBuilder {
    Subscription::new(BrokerKind::Kafka, "test")
        .arg("topic", topic.to_owned())
        .arg("group_id", group.to_owned())
        .arg("auto_offset_reset", ArgValue::Ident("earliest".into()))
        .arg("ack_policy", policy)
}

/// What a scripted handler saw.
#[derive(Clone, Debug)]
pub struct Seen {
    pub body: Bytes,
    pub partition: i32,
    pub offset: i64,
    pub delivery: Option<u32>,
}

type Script = dyn Fn(&Seen, usize) -> Result<(), HandlerError> + Send + Sync;

/// A handler that reports every call and returns what its script says.
pub struct Scripted {
    pub sub: SubscriptionBuilder,
    pub seen: mpsc::UnboundedSender<Seen>,
    pub script: Arc<Script>,
    pub count: AtomicU64,
}

impl Scripted {
    pub fn new(
        sub: SubscriptionBuilder,
        script: impl Fn(&Seen, usize) -> Result<(), HandlerError> + Send + Sync + 'static,
    ) -> (Self, mpsc::UnboundedReceiver<Seen>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            Scripted {
                sub,
                seen: tx,
                script: Arc::new(script),
                count: AtomicU64::new(0),
            },
            rx,
        )
    }
}

impl Handler for Scripted {
    type Broker = kind::Kafka;

    fn subscription(&self) -> SubscriptionBuilder {
        self.sub.clone()
    }

    async fn call(&self, msg: &Message, _: &Context) -> brook_runtime::HandlerResult {
        let done: Result<(), HandlerError> = async move {
            let raw = msg
                .raw::<brook_kafka::KafkaMessage>()
                .expect("a Kafka message");
            let seen = Seen {
                body: msg.body().clone(),
                partition: raw.partition(),
                offset: raw.offset(),
                delivery: msg.delivery_count(),
            };
            let n = self.count.fetch_add(1, Ordering::SeqCst) as usize;
            let _ = self.seen.send(seen.clone());
            (self.script)(&seen, n)
        }
        .await;
        done.map(|()| None)
    }
}

/// Receives `n` handler calls (bounded).
pub async fn recv_n(rx: &mut mpsc::UnboundedReceiver<Seen>, n: usize) -> Vec<Seen> {
    let mut out = Vec::new();
    while out.len() < n {
        match tokio::time::timeout(WAIT, rx.recv()).await {
            Ok(Some(s)) => out.push(s),
            _ => panic!(
                "only {} of {n} handler calls within {WAIT:?}: {out:?}",
                out.len()
            ),
        }
    }
    out
}

pub fn failed() -> HandlerError {
    HandlerError::Failed(anyhow::anyhow!("scripted failure"))
}

/// A tansu of its own on a free port, behind a [`TcpProxy`] it advertises: Kafka clients
/// reconnect to the advertised address, so cutting the proxy cuts every connection.
pub struct PrivateTansu {
    child: tokio::process::Child,
    pub proxy: Arc<TcpProxy>,
}

impl PrivateTansu {
    pub async fn start() -> PrivateTansu {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let target = format!("127.0.0.1:{port}").parse().expect("addr");
        let proxy = TcpProxy::start(target).await.expect("proxy");
        let tansu =
            std::env::var("HOME").map_or("tansu".to_owned(), |h| format!("{h}/.cargo/bin/tansu"));
        let child = tokio::process::Command::new(tansu)
            .args([
                "broker",
                "--listener-url",
                &format!("tcp://127.0.0.1:{port}"),
                "--advertised-listener-url",
                &format!("tcp://{}", proxy.addr()),
                "--storage-engine",
                "memory://tansu/",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start a private tansu (scripts/brokers/kafka.sh installs it)");
        let started = Instant::now();
        while tokio::net::TcpStream::connect(target).await.is_err() {
            assert!(started.elapsed() < WAIT, "private tansu did not listen");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        PrivateTansu {
            child,
            proxy: Arc::new(proxy),
        }
    }

    pub fn addr(&self) -> String {
        self.proxy.addr().to_string()
    }
}

impl Drop for PrivateTansu {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

impl brook_runtime::soak::SoakAdapter for KafkaAdapter {
    fn upstream(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], 9092))
    }

    async fn broker_at(&self, addr: std::net::SocketAddr, _: &TestSource) -> KafkaBroker {
        broker_at(&addr.to_string()).commit_every(1)
    }

    /// The soak's App commits after every settled message (`commit_every(1)`): what a new
    /// member reads again is the message being handled when the process died, plus one
    /// whose asynchronous commit had not reached the broker.
    async fn soak_broker(&self, _: &TestSource) -> KafkaBroker {
        broker().commit_every(1)
    }

    fn duplicate_bound(&self) -> usize {
        2 + brook_runtime::soak::CONCURRENCY as usize
    }

    /// Each nack seeks the partition back and waits for a fresh fetch: 200 ids keep the soak
    /// near 20 s.
    fn messages(&self) -> u64 {
        200
    }
}

/// The connection-cut soak's adapter: a Kafka client reconnects to the broker's advertised
/// listener, so a proxy in front of the shared tansu would be bypassed. This one runs the
/// soak on a [`PrivateTansu`] (started in the parent when the soak creates its source) that
/// advertises its proxy; the soak cuts that proxy.
pub struct PrivateKafkaAdapter {
    tansu: tokio::sync::OnceCell<PrivateTansu>,
}

impl PrivateKafkaAdapter {
    pub fn new() -> Self {
        PrivateKafkaAdapter {
            tansu: tokio::sync::OnceCell::new(),
        }
    }

    async fn tansu(&self) -> &PrivateTansu {
        self.tansu.get_or_init(PrivateTansu::start).await
    }
}

impl Adapter for PrivateKafkaAdapter {
    type Broker = KafkaBroker;
    type Kind = kind::Kafka;

    async fn broker(&self) -> KafkaBroker {
        broker_at(&self.tansu().await.addr())
    }

    async fn fresh_source(&self, test: &str) -> Result<TestSource, BrokerError> {
        let addr = self.tansu().await.addr();
        let topic = fresh(test);
        create_topic_at(&addr, &topic, 1).await;
        Ok(TestSource {
            args: vec![
                ("topic".into(), ArgValue::from(topic.clone())),
                ("group_id".into(), ArgValue::from(format!("{topic}-group"))),
                (
                    "auto_offset_reset".into(),
                    ArgValue::Ident("earliest".into()),
                ),
            ],
            destination: topic,
        })
    }

    async fn remaining(&self, source: &TestSource) -> Result<Vec<Bytes>, BrokerError> {
        let addr = self.tansu().await.addr();
        Ok(
            remaining_at(&addr, &group_of(source), &source.destination, 1)
                .await
                .into_iter()
                .map(|(_, _, b)| b)
                .collect(),
        )
    }

    async fn dead_letters(&self, _: &TestSource) -> Result<Vec<Bytes>, BrokerError> {
        Ok(Vec::new())
    }
}

impl brook_runtime::soak::SoakAdapter for PrivateKafkaAdapter {
    async fn cut_point(&self) -> Result<Arc<TcpProxy>, String> {
        Ok(self.tansu().await.proxy.clone())
    }

    fn upstream(&self) -> std::net::SocketAddr {
        unreachable!("cut_point is the private tansu's own proxy")
    }

    async fn broker_at(&self, addr: std::net::SocketAddr, _: &TestSource) -> KafkaBroker {
        broker_at(&addr.to_string())
            .commit_every(1)
            .with_config("reconnect.backoff.ms", "50")
            .with_config("reconnect.backoff.max.ms", "300")
    }

    /// As for the shared broker (`commit_every(1)`), plus what was handled while the
    /// connection was down: acks stored locally reach the broker with the next commit after
    /// the reconnect, so only a rebalance in between could re-read them (one per handler).
    fn duplicate_bound(&self) -> usize {
        2 + 2 * brook_runtime::soak::CONCURRENCY as usize
    }

    fn messages(&self) -> u64 {
        200
    }
}
