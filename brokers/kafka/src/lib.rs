//! Kafka broker for brook, on [rdkafka] (librdkafka).
//!
//! Kafka has no per-message acknowledgement: a consumer group commits, per partition, the offset
//! of the next message to read. This crate maps brook's settlements onto that model:
//!
//! - **ack / reject** mark the message settled; the contiguous settled prefix of each partition
//!   is *stored* (`store_offset`) and librdkafka commits stored offsets in the background
//!   (`enable.auto.commit`, `enable.auto.offset.store = false`) every
//!   [`commit_interval`](KafkaBroker::commit_interval) (5 s by default), and after every N
//!   settled messages with [`commit_every`](KafkaBroker::commit_every). Offsets are committed
//!   synchronously on shutdown ([`Consumer::close`](brook_runtime::Consumer::close)) and when a
//!   partition is revoked. With `concurrency > 1` nothing past the lowest unsettled offset of a
//!   partition is ever stored. Kafka has no dead-letter place, so reject is an ack.
//! - **nack** seeks the partition back to the message's offset: it is read again, followed by the
//!   later ones, in order; nothing from that offset on is stored until it is settled again.
//! - **AckFirst** is librdkafka's own auto-commit with automatic offset store (FastStream's
//!   default): the offset is stored when the message is handed out; the settler's ack is a no-op.
//! - **concurrency**: each message's ordering key is its partition; a partition with two
//!   messages out is paused until one is done, so a slow partition does not stall the others
//!   as long as no two partitions share a worker (partition number modulo `concurrency`).
//!
//! Kafka keeps no delivery count: the consumer counts redeliveries caused by its own nacks per
//! (topic, partition, offset), so `max_deliveries` works within one consumer process.
//!
//! **Request/reply** ([`Broker::request`]): the first request creates a reply topic of this
//! client's own, `brook-replies-<uuid>` (one partition; the cluster must allow creating
//! topics), read for the client's life by one consumer assigned to it without a group; replies
//! are matched by `correlation_id`, and one that comes after its request timed out is dropped.
//! A reply (or output) to a topic that does not exist waits for librdkafka's
//! `message.timeout.ms` before it fails, where the broker does not create topics on produce.
//!
//! ```no_run
//! use brook_kafka::KafkaBroker;
//! use brook_runtime::Broker;
//! # async fn run() -> Result<(), brook_runtime::BrokerError> {
//! let broker = KafkaBroker::new("127.0.0.1:9092").with_config("client.id", "billing");
//! broker.connect().await?;
//! broker.publish(&serde_json::json!({"id": 1}), "orders").await?;
//! # Ok(()) }
//! ```

mod consumer;
mod message;
mod reply;

use brook_runtime::url::UrlParts;
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use brook_runtime::kind::Kafka;
use brook_runtime::{Accepts, Broker, BrokerError, BrokerKind, Outgoing, ServerInfo, Subscription};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer as RdFutureProducer, FutureRecord, Producer};
use rdkafka::statistics::Statistics;
use rdkafka::util::Timeout;

pub use consumer::KafkaConsumer;
pub use message::KafkaMessage;
/// The client crate, for what brook does not wrap (admin operations, custom contexts).
pub use rdkafka;

const KIND: BrokerKind = BrokerKind::Kafka;

/// The shared producer, with the context that follows its connections.
type FutureProducer = RdFutureProducer<Link>;

/// How often librdkafka reports the producer's connections (`statistics.interval.ms`), unless
/// the configuration says otherwise: what [`Broker::is_connected`] reads.
const STATS_INTERVAL_MS: &str = "1000";

/// The producer's connections as librdkafka reports them, for [`Broker::is_connected`]: its
/// statistics (every [`STATS_INTERVAL_MS`]) give each broker connection's state, and its error
/// callback says at once when every broker is down. 0: nothing reported yet.
#[derive(Clone, Default)]
struct Link(Arc<AtomicU8>);

impl Link {
    const UP: u8 = 1;
    const DOWN: u8 = 2;

    fn set(&self, up: bool) {
        self.0
            .store(if up { Self::UP } else { Self::DOWN }, Ordering::Relaxed);
    }

    fn get(&self) -> Option<bool> {
        match self.0.load(Ordering::Relaxed) {
            Self::UP => Some(true),
            Self::DOWN => Some(false),
            _ => None,
        }
    }
}

impl ClientContext for Link {
    /// Up while a connection to a real broker (a bootstrap server or one learned from the
    /// metadata, not librdkafka's internal or logical ones) is up; down while none is and one
    /// is down or being (re)connected. An idle producer may hold no connection at all
    /// (librdkafka connects sparsely: learned brokers stay `INIT` until needed, the bootstrap
    /// connection may be dropped once they are known): that changes nothing.
    fn stats(&self, statistics: Statistics) {
        let real: Vec<&str> = statistics
            .brokers
            .values()
            .filter(|b| matches!(b.source.as_str(), "configured" | "learned"))
            .map(|b| b.state.as_str())
            .collect();
        if real.contains(&"UP") {
            self.set(true);
        } else if real.iter().any(|state| *state != "INIT") {
            self.set(false);
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            self.set(false);
        }
        tracing::error!(broker = "kafka", %error, reason, "librdkafka error");
    }
}

/// How long [`Broker::connect`] waits for the cluster's metadata before failing.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A Kafka cluster client: one producer shared by clones, one librdkafka consumer per
/// subscription.
///
/// Configure it with a bootstrap address (`host:port[,host:port...]`) or a URL
/// `kafka://[user:password@]host:port[,...]` (`kafkas://` for TLS); credentials in the URL
/// turn on SASL (`PLAIN` unless [`KafkaBroker::with_config`] sets `sasl.mechanism`). Any
/// librdkafka property can be passed through with [`KafkaBroker::with_config`] (both producer
/// and consumers) or [`KafkaBroker::with_consumer_config`] (consumers only).
#[derive(Clone)]
pub struct KafkaBroker {
    inner: Arc<Inner>,
}

struct Inner {
    /// `host:port` list, without credentials: what errors and logs show.
    address: String,
    /// Client properties common to producer and consumers (credentials included).
    config: Vec<(String, String)>,
    consumer_config: Vec<(String, String)>,
    producer_config: Vec<(String, String)>,
    connect_timeout: Duration,
    round_robin: bool,
    /// Commit after every this many settled messages per consumer (0: only in the background).
    commit_every: u32,
    producer: Mutex<Option<FutureProducer>>,
    /// The connection state of the current producer.
    link: Mutex<Link>,
    next_partition: AtomicU64,
    partitions: Mutex<Vec<(String, i32)>>,
    /// The reply topic and its reader, started by the first request (async lock: concurrent
    /// first requests wait for the one that creates it).
    replies: tokio::sync::Mutex<Option<Arc<reply::Replies>>>,
}

impl fmt::Debug for KafkaBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The config may hold `sasl.password` and the like: never print those values.
        let config: Vec<(&str, &str)> = self
            .inner
            .config
            .iter()
            .chain(&self.inner.consumer_config)
            .chain(&self.inner.producer_config)
            .map(|(k, v)| {
                (
                    k.as_str(),
                    if is_secret(k) {
                        "<redacted>"
                    } else {
                        v.as_str()
                    },
                )
            })
            .collect();
        f.debug_struct("KafkaBroker")
            .field("address", &self.inner.address)
            .field("config", &config)
            .finish_non_exhaustive()
    }
}

/// Configuration keys whose values never appear in `Debug` output or logs
/// (`sasl.oauthbearer.config` may carry a client secret).
fn is_secret(key: &str) -> bool {
    key.contains("password")
        || key.contains("secret")
        || key.ends_with(".key.pem")
        || key.contains("oauthbearer.config")
}

/// Why [`Broker::connect`] failed: the source of [`BrokerError::Connect`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The cluster sent no metadata within the connect timeout (unreachable address, refused
    /// credentials, TLS failure).
    #[error("no metadata from the cluster within {timeout:?}: {source}")]
    NoMetadata {
        /// The connect timeout.
        timeout: Duration,
        /// What librdkafka said.
        #[source]
        source: KafkaError,
    },
}

impl KafkaBroker {
    /// A client of the cluster at `url`: `host:port[,host:port]`, or
    /// `kafka://[user:password@]host:port[,...]` / `kafkas://...` (TLS).
    pub fn new(url: &str) -> Self {
        let (address, config) = parse_url(url);
        KafkaBroker {
            inner: Arc::new(Inner {
                address,
                config,
                consumer_config: Vec::new(),
                producer_config: Vec::new(),
                connect_timeout: DEFAULT_CONNECT_TIMEOUT,
                round_robin: false,
                commit_every: 0,
                producer: Mutex::new(None),
                link: Mutex::default(),
                next_partition: AtomicU64::new(0),
                partitions: Mutex::new(Vec::new()),
                replies: tokio::sync::Mutex::new(None),
            }),
        }
    }

    fn inner_mut(&mut self) -> &mut Inner {
        // Builders run before the broker is shared; if it already was, copy the settings.
        if Arc::get_mut(&mut self.inner).is_none() {
            let i = &self.inner;
            self.inner = Arc::new(Inner {
                address: i.address.clone(),
                config: i.config.clone(),
                consumer_config: i.consumer_config.clone(),
                producer_config: i.producer_config.clone(),
                connect_timeout: i.connect_timeout,
                round_robin: i.round_robin,
                commit_every: i.commit_every,
                producer: Mutex::new(None),
                link: Mutex::default(),
                next_partition: AtomicU64::new(0),
                partitions: Mutex::new(Vec::new()),
                replies: tokio::sync::Mutex::new(None),
            });
        }
        Arc::get_mut(&mut self.inner).unwrap_or_else(|| unreachable!("just made unique"))
    }

    /// Sets a librdkafka property for the producer and every consumer (passthrough, e.g.
    /// `client.id`, `security.protocol`, `ssl.ca.location`, `sasl.mechanism`).
    pub fn with_config(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.inner_mut().config.push((key.into(), value.into()));
        self
    }

    /// Sets a librdkafka property for consumers only (e.g. `fetch.min.bytes`,
    /// `session.timeout.ms`, `auto.commit.interval.ms`).
    pub fn with_consumer_config(
        mut self,
        key: impl Into<String>,
        value: impl Into<String>,
    ) -> Self {
        self.inner_mut()
            .consumer_config
            .push((key.into(), value.into()));
        self
    }

    /// Sets a librdkafka property for the producer only (e.g. `linger.ms`, `acks`).
    pub fn with_producer_config(
        mut self,
        key: impl Into<String>,
        value: impl Into<String>,
    ) -> Self {
        self.inner_mut()
            .producer_config
            .push((key.into(), value.into()));
        self
    }

    /// How long [`Broker::connect`] waits for the cluster (default 10 s).
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.inner_mut().connect_timeout = timeout;
        self
    }

    /// Spreads messages published without a key over the topic's partitions in turn, instead
    /// of librdkafka's sticky partitioning (which sends a burst of unkeyed messages to one
    /// partition). Costs one metadata request per topic.
    pub fn with_round_robin_unkeyed(mut self) -> Self {
        self.inner_mut().round_robin = true;
        self
    }

    /// Commits each consumer's settled offsets after every `n` messages it settled (acked or
    /// rejected; under `AckFirst`, handed out), in addition to the background commit every
    /// [`commit_interval`](Self::commit_interval). `0` (the default) turns it off.
    ///
    /// The commit is asynchronous (librdkafka's `rd_kafka_commit` of the stored offsets, in
    /// the background; a failure is logged), so it does not slow the handler down, but it is
    /// one commit request per `n` messages. What a crash (no graceful stop) costs: a new
    /// member of the group reads again what was settled after the last commit that reached
    /// the broker, so at most about `n` messages per consumer (plus the messages still being
    /// handled), instead of up to an interval's worth. A consumer without a `group_id`
    /// commits nothing, so this does nothing there.
    ///
    /// ```
    /// use std::time::Duration;
    /// let broker = brook_kafka::KafkaBroker::new("127.0.0.1:9092")
    ///     .commit_every(100)                         // at most ~100 re-read after a crash
    ///     .commit_interval(Duration::from_secs(1));  // and at most ~1 s's worth
    /// ```
    pub fn commit_every(mut self, n: u32) -> Self {
        self.inner_mut().commit_every = n;
        self
    }

    /// How often librdkafka commits every consumer's settled (stored) offsets in the
    /// background: `auto.commit.interval.ms`, 5 s by default. Shorter: fewer messages read
    /// again after a crash, more commit requests. [`Duration::ZERO`] turns the background
    /// commit off (then only [`commit_every`](Self::commit_every), a revocation and a
    /// graceful stop commit). Sugar for `with_consumer_config("auto.commit.interval.ms", ms)`
    /// (the later of the two wins); librdkafka accepts up to 24 h, and refuses more when the
    /// consumer is created. A non-zero interval under a millisecond counts as 1 ms.
    pub fn commit_interval(self, interval: Duration) -> Self {
        let mut ms = interval.as_millis();
        if ms == 0 && !interval.is_zero() {
            ms = 1;
        }
        self.with_consumer_config("auto.commit.interval.ms", ms.to_string())
    }

    /// The bootstrap address, without credentials.
    pub fn address(&self) -> &str {
        &self.inner.address
    }

    pub(crate) fn client_config(&self, extra: &[(String, String)]) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.inner.address);
        for (k, v) in self.inner.config.iter().chain(extra) {
            config.set(k, v);
        }
        config
    }

    pub(crate) fn consumer_config(&self) -> ClientConfig {
        self.client_config(&self.inner.consumer_config)
    }

    pub(crate) fn commit_every_n(&self) -> u32 {
        self.inner.commit_every
    }

    fn connect_error(&self, source: impl Into<brook_runtime::BoxError>) -> BrokerError {
        BrokerError::Connect {
            broker: KIND,
            address: self.inner.address.clone(),
            source: source.into(),
        }
    }

    fn producer(&self) -> Result<FutureProducer, BrokerError> {
        let mut slot = self
            .inner
            .producer
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(p) = slot.as_ref() {
            return Ok(p.clone());
        }
        let mut config = self.client_config(&self.inner.producer_config);
        if config.get("statistics.interval.ms").is_none() {
            config.set("statistics.interval.ms", STATS_INTERVAL_MS);
        }
        let link = Link::default();
        let producer: FutureProducer = config
            .create_with_context(link.clone())
            .map_err(|e| self.connect_error(e))?;
        *self
            .inner
            .link
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = link;
        *slot = Some(producer.clone());
        Ok(producer)
    }

    /// Whether librdkafka reports the producer's connections (`statistics.interval.ms` not
    /// turned off).
    fn reports_connections(&self) -> bool {
        self.inner
            .config
            .iter()
            .chain(&self.inner.producer_config)
            .rfind(|(k, _)| k == "statistics.interval.ms")
            .is_none_or(|(_, v)| v.trim() != "0")
    }

    /// The topic's partition count (cached), for round-robin publishing.
    async fn partition_count(
        &self,
        producer: &FutureProducer,
        topic: &str,
    ) -> Result<i32, BrokerError> {
        if let Some((_, n)) = self
            .inner
            .partitions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .find(|(t, _)| t == topic)
        {
            return Ok(*n);
        }
        let producer = producer.clone();
        let name = topic.to_owned();
        let timeout = self.inner.connect_timeout;
        let n = tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(Some(&name), Timeout::After(timeout))
                .map(|m| {
                    m.topics()
                        .first()
                        .map_or(0, |t| t.partitions().len() as i32)
                })
        })
        .await
        .map_err(|e| BrokerError::operation(KIND, "metadata", e))?
        .map_err(|e| BrokerError::operation(KIND, "metadata", e))?;
        if n > 0 {
            self.inner
                .partitions
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push((topic.to_owned(), n));
        }
        Ok(n.max(1))
    }

    /// Creates `topic` with `partitions` partitions (replication factor 1) unless it exists.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), brook_runtime::BrokerError> {
    /// brook_kafka::KafkaBroker::new("127.0.0.1:9092").create_topic("orders", 3).await?;
    /// # Ok(()) }
    /// ```
    pub async fn create_topic(&self, topic: &str, partitions: i32) -> Result<(), BrokerError> {
        let admin: AdminClient<DefaultClientContext> = self
            .client_config(&[])
            .create()
            .map_err(|e| self.connect_error(e))?;
        let options = AdminOptions::new().request_timeout(Some(self.inner.connect_timeout));
        let results = admin
            .create_topics(
                &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
                &options,
            )
            .await
            .map_err(|e| BrokerError::operation(KIND, "create topic", e))?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((_, code)) => {
                    return Err(BrokerError::operation(
                        KIND,
                        "create topic",
                        KafkaError::AdminOp(code),
                    ))
                }
            }
        }
        Ok(())
    }

    /// This client's reply topic and its reader, started on first use.
    async fn replies(&self) -> Result<Arc<reply::Replies>, BrokerError> {
        let mut slot = self.inner.replies.lock().await;
        if let Some(r) = slot.as_ref() {
            return Ok(r.clone());
        }
        let r = Arc::new(reply::Replies::start(self).await?);
        *slot = Some(r.clone());
        Ok(r)
    }

    /// Publishes `message` to an explicit `partition` (`None`: by key, or librdkafka's
    /// partitioner), awaiting the broker's acknowledgement; returns the (partition, offset) the
    /// message was written at.
    pub async fn publish_to_partition(
        &self,
        message: Outgoing,
        partition: Option<i32>,
    ) -> Result<(i32, i64), BrokerError> {
        let producer = self.producer()?;
        let partition = match (partition, &message.key) {
            (Some(p), _) => Some(p),
            (None, None) if self.inner.round_robin => {
                let n = self
                    .partition_count(&producer, &message.destination)
                    .await?;
                let i = self.inner.next_partition.fetch_add(1, Ordering::Relaxed);
                Some((i % n as u64) as i32)
            }
            _ => None,
        };
        let mut headers = OwnedHeaders::new_with_capacity(message.headers.len());
        for (name, value) in message.headers.iter() {
            headers = headers.insert(Header {
                key: name,
                value: Some(value),
            });
        }
        let mut record: FutureRecord<'_, [u8], [u8]> =
            FutureRecord::to(&message.destination).payload(&message.body[..]);
        if !message.headers.is_empty() {
            record = record.headers(headers);
        }
        if let Some(key) = &message.key {
            record = record.key(&key[..]);
        }
        if let Some(p) = partition {
            record = record.partition(p);
        }
        match producer.send(record, Timeout::Never).await {
            Ok(delivery) => Ok((delivery.partition, delivery.offset)),
            Err((e, _)) => Err(BrokerError::operation(KIND, "produce", e)),
        }
    }
}

/// Splits a URL into the credential-free address and the client properties it implies.
fn parse_url(url: &str) -> (String, Vec<(String, String)>) {
    let mut config = Vec::new();
    let parts = UrlParts::split(url);
    let tls = parts.scheme == Some("kafkas");
    let hosts = parts.rest.trim_end_matches('/');
    let user = parts.user();
    if let Some(user) = &user {
        config.push(("sasl.username".into(), user.clone()));
        config.push(("sasl.password".into(), parts.password().unwrap_or_default()));
        config.push(("sasl.mechanism".into(), "PLAIN".into()));
    }
    let protocol = match (tls, user.is_some()) {
        (false, false) => "plaintext",
        (true, false) => "ssl",
        (false, true) => "sasl_plaintext",
        (true, true) => "sasl_ssl",
    };
    config.push(("security.protocol".into(), protocol.into()));
    (hosts.to_owned(), config)
}

impl<K: brook_runtime::kind::Kind + brook_runtime::SameKind<Kafka>> Accepts<K> for KafkaBroker {}

impl Broker for KafkaBroker {
    type Consumer = KafkaConsumer;

    fn kind(&self) -> BrokerKind {
        KIND
    }

    /// librdkafka never fails to "connect" by itself (it retries forever in the background), so
    /// this fetches the cluster metadata with a timeout: an unreachable address or refused
    /// credentials fail here.
    async fn connect(&self) -> Result<(), BrokerError> {
        let producer = self.producer()?;
        let timeout = self.inner.connect_timeout;
        let result = tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(None, Timeout::After(timeout))
                .map(|_| ())
        })
        .await
        .map_err(|e| self.connect_error(e))?;
        result
            .map_err(|source| self.connect_error(ConnectError::NoMetadata { timeout, source }))?;
        // The metadata came over a live connection; librdkafka's next statistics take over.
        self.inner
            .link
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .set(true);
        tracing::debug!(address = %self.inner.address, "connected to Kafka");
        Ok(())
    }

    /// Whether the shared producer has a connection to a broker up, from librdkafka's
    /// statistics of its connections (every second: `statistics.interval.ms`, set to 1000
    /// unless configured) and its "all brokers down" error. `Some(false)` before
    /// [`connect`](Broker::connect) and after [`close`](Broker::close). `None` when
    /// `statistics.interval.ms` is configured to 0 (librdkafka then reports nothing), or when
    /// the producer was made by a publish and has not reported yet. Each subscriber's consumer
    /// is a client of its own, connected to the same cluster, and reconnects by itself.
    fn is_connected(&self) -> Option<bool> {
        if self
            .inner
            .producer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_none()
        {
            return Some(false);
        }
        if !self.reports_connections() {
            return None;
        }
        self.inner
            .link
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get()
    }

    /// The first bootstrap server (port 9092 if it has none), the others in the description;
    /// `kafka`, or `kafka-secure` (AsyncAPI's name) when `security.protocol` is `ssl` or
    /// `sasl_ssl`; never the SASL user name or password.
    fn server(&self) -> Option<ServerInfo> {
        let mut hosts = self
            .inner
            .address
            .split(',')
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .map(|h| match h.rsplit_once(':') {
                Some((_, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => {
                    h.to_owned()
                }
                _ => format!("{h}:9092"),
            });
        let first = hosts.next()?;
        let tls = self
            .inner
            .config
            .iter()
            .chain(&self.inner.producer_config)
            .rfind(|(k, _)| k == "security.protocol")
            .is_some_and(|(_, v)| v.trim().to_ascii_lowercase().ends_with("ssl"));
        let server = ServerInfo::new(first, if tls { "kafka-secure" } else { "kafka" });
        let more: Vec<String> = hosts.collect();
        Some(match more.is_empty() {
            true => server,
            false => {
                server.with_description(format!("more bootstrap servers: {}", more.join(", ")))
            }
        })
    }

    /// Refuses passthrough consumer settings that brook derives from the subscription and
    /// its ack policy (`group.id`, `enable.auto.offset.store`).
    fn check(&self, subscription: &Subscription) -> Result<(), BrokerError> {
        consumer::check(self, subscription)
    }

    async fn subscribe(&self, subscription: &Subscription) -> Result<KafkaConsumer, BrokerError> {
        self.check(subscription)?;
        consumer::subscribe(self, subscription).await
    }

    async fn publish_message(&self, message: Outgoing) -> Result<(), BrokerError> {
        self.publish_to_partition(message, None).await.map(|_| ())
    }

    /// Sends `message` with `reply_to` = this client's reply topic (`brook-replies-<uuid>`,
    /// created with one partition by the first request; the cluster must allow creating
    /// topics) and waits for the reply with its `correlation_id`. One consumer, assigned to
    /// the reply topic without a group, reads replies for every request of this client (and its
    /// clones) until [`Broker::close`]; a reply that comes after its request timed out is
    /// dropped.
    async fn request_message(
        &self,
        message: Outgoing,
        timeout: Duration,
    ) -> Result<brook_runtime::Message, BrokerError> {
        let replies = self.replies().await?;
        replies.request(self, message, timeout).await
    }

    async fn close(&self) -> Result<(), BrokerError> {
        // Stops the reply reader (a later request starts a new reply topic).
        drop(self.inner.replies.lock().await.take());
        let producer = self
            .inner
            .producer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(producer) = producer {
            tokio::task::spawn_blocking(move || {
                producer.flush(Timeout::After(Duration::from_secs(10)))
            })
            .await
            .map_err(|e| BrokerError::operation(KIND, "flush", e))?
            .map_err(|e| BrokerError::operation(KIND, "flush", e))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_settings() {
        let interval = |b: &KafkaBroker| {
            b.consumer_config()
                .get("auto.commit.interval.ms")
                .map(str::to_owned)
        };
        let b = KafkaBroker::new("h:9092");
        assert_eq!(interval(&b), None, "librdkafka's default (5 s)");
        assert_eq!(b.commit_every_n(), 0, "off by default");
        let b = b
            .commit_every(100)
            .commit_interval(Duration::from_millis(1500));
        assert_eq!(interval(&b).as_deref(), Some("1500"));
        assert_eq!(b.commit_every_n(), 100);
        let zero = KafkaBroker::new("h:9092").commit_interval(Duration::ZERO);
        assert_eq!(
            interval(&zero).as_deref(),
            Some("0"),
            "0: no background commit"
        );
        let tiny = KafkaBroker::new("h:9092").commit_interval(Duration::from_micros(10));
        assert_eq!(
            interval(&tiny).as_deref(),
            Some("1"),
            "not 0, which would mean off"
        );
        // The later of commit_interval and the passthrough wins.
        let b = KafkaBroker::new("h:9092")
            .with_consumer_config("auto.commit.interval.ms", "200")
            .commit_interval(Duration::from_secs(600));
        assert_eq!(interval(&b).as_deref(), Some("600000"));
        // A clone shared before the builder keeps its own settings.
        let shared = KafkaBroker::new("h:9092");
        let _other = shared.clone();
        assert_eq!(shared.commit_every(7).commit_every_n(), 7);
    }

    #[test]
    fn the_server_has_no_credentials() {
        let b = KafkaBroker::new("kafkas://svc:s3cret@k1.internal:9093,k2.internal,k3:9095");
        let server = b.server().expect("a server");
        assert_eq!(server.host, "k1.internal:9093");
        assert_eq!(server.protocol, "kafka-secure");
        assert_eq!(
            server.description.as_deref(),
            Some("more bootstrap servers: k2.internal:9092, k3:9095")
        );
        let shown = format!("{server:?}");
        assert!(
            !shown.contains("svc") && !shown.contains("s3cret"),
            "{shown}"
        );
        // Unencoded `/`, `?`, `#`, `@` in a password: still user information, never shown.
        for raw in ["pa/ss", "pa?ss", "pa#ss", "p@ss"] {
            let server = KafkaBroker::new(&format!("kafka://svc:{raw}@k1:9092"))
                .server()
                .expect("a server");
            assert_eq!(server.host, "k1:9092", "{raw}");
            assert_eq!(server.protocol, "kafka");
            assert!(!format!("{server:?}").contains("ss"), "{raw}: {server:?}");
        }
        let plain = KafkaBroker::new("127.0.0.1:9092");
        assert_eq!(plain.server().map(|s| s.protocol), Some("kafka".into()));
        let tls = plain.with_config("security.protocol", "SSL");
        assert_eq!(
            tls.server().map(|s| s.protocol),
            Some("kafka-secure".into())
        );
        assert_eq!(KafkaBroker::new("").server(), None);
    }

    #[test]
    fn connections_are_reported_unless_statistics_are_off() {
        let b = KafkaBroker::new("127.0.0.1:9092");
        assert_eq!(b.is_connected(), Some(false), "before connect");
        assert!(b.reports_connections());
        let off = b.with_producer_config("statistics.interval.ms", "0");
        assert!(!off.reports_connections());
        assert_eq!(off.is_connected(), Some(false), "no producer yet");
    }

    #[test]
    fn urls_keep_credentials_out_of_the_address_and_debug() {
        let b = KafkaBroker::new("kafkas://user:s3cret@h1:9093,h2:9093");
        assert_eq!(b.address(), "h1:9093,h2:9093");
        let debug = format!("{b:?}");
        assert!(!debug.contains("s3cret"), "{debug}");
        let (_, config) = parse_url("kafkas://user:s3cret@h1:9093");
        assert!(config.contains(&("security.protocol".into(), "sasl_ssl".into())));
        assert!(config.contains(&("sasl.password".into(), "s3cret".into())));
        assert!(is_secret("sasl.password"));
        assert!(is_secret("sasl.oauthbearer.config"));
        let b = KafkaBroker::new("h:9092").with_config(
            "sasl.oauthbearer.config",
            "principal=svc clientSecret=t0psecret",
        );
        assert!(!format!("{b:?}").contains("t0psecret"), "{b:?}");
        assert_eq!(parse_url("127.0.0.1:9092").0, "127.0.0.1:9092");
        // Userinfo is percent-decoded, as in any URL.
        let (address, config) = parse_url("kafka://svc%40corp:p%3Aw%2Fd%40x%zz%@h1:9092");
        assert_eq!(address, "h1:9092");
        assert!(config.contains(&("sasl.username".into(), "svc@corp".into())));
        assert!(config.contains(&("sasl.password".into(), "p:w/d@x%zz%".into())));
    }
}
