//! Redis broker for [brook](https://docs.rs/brook): pub/sub channels, lists and streams, on
//! [fred](https://docs.rs/fred).
//!
//! ```no_run
//! use brook_redis::RedisBroker;
//! use brook_runtime::{App, Broker};
//! # async fn run() -> anyhow::Result<()> {
//! let broker = RedisBroker::new("redis://127.0.0.1:6379");
//! broker.publish(&serde_json::json!({"id": 1}), "stream:orders").await?;
//! # Ok(()) }
//! ```
//!
//! Subscribers name one source: `channel = "..."` (SUBSCRIBE; a name containing `*`, `?` or
//! `[` is a pattern and uses PSUBSCRIBE), `list = "..."` (BLPOP, or LPOP with COUNT when
//! `batch > 1`), or `stream = "..."`, read with XREADGROUP when `group = "..."` is given and with
//! XREAD otherwise. Only streams read through a group acknowledge; there:
//!
//! | settlement | Redis |
//! |---|---|
//! | ack | `XACK` |
//! | nack | the entry stays pending and this consumer claims it again (`XCLAIM`, after the delay if one was given), so it comes back with its delivery count increased — FastStream leaves it pending forever |
//! | reject | `XACK`; with `dead_letter_stream` set, only after the entry's `XADD` to it succeeded |
//! | AckFirst | `XREADGROUP ... NOACK`: Redis acknowledges on delivery |
//!
//! The delivery count is Redis's own (XPENDING's "times delivered"), so `max_deliveries` works.
//! Every stream consumer of a group keeps a liveness key with a TTL
//! ([`RedisBroker::liveness_timeout`], default 10 s); entries of a consumer that is gone (closed,
//! or its key lapsed after a crash) are taken over by the group's other consumers within about a
//! second, whatever their `min_idle_ms`, and the gone consumer is removed from the group once it
//! holds nothing. `min_idle_ms` (default 60 000; 0 turns it off) is for entries of consumers that
//! are alive but slow or stuck, and of other clients' consumers: `XAUTOCLAIM` takes them once
//! idle that long. A consumer that shuts down hands its unsettled entries back at once (see
//! [`RedisConsumer`]).
//!
//! Payloads travel in FastStream's binary envelope so headers survive ([`envelope`]); publish
//! destinations say which kind of source they go to ([`Destination`]).
//!
//! Request/reply is FastStream's Redis RPC: [`Broker::request`] sends to any destination with
//! `reply_to` naming a fresh pub/sub channel it subscribed to first, and a handler's reply is
//! PUBLISHed to the channel its input's `reply_to` names, whatever the input came from.

#![warn(missing_docs)]

mod consumer;
mod destination;
pub mod envelope;
mod liveness;
mod message;
mod reply;
mod wire;

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use brook_runtime::headers::REPLY_TO;
use brook_runtime::url::{percent_decode, redact, UrlParts};
use brook_runtime::{
    Accepts, AckPolicy, Broker, BrokerError, BrokerKind, Headers, Message, Outgoing,
    RedisSource as RedisOptionsSource, ServerInfo, Subscription,
};
use bytes::Bytes;
use fred::prelude::*;
use fred::types::Value;
use tokio::sync::OnceCell;
use tokio::time::Instant;

/// The fred crate, for what brook does not wrap ([`RedisBroker::fred_client`]).
pub use fred;

pub use consumer::RedisConsumer;
pub use destination::{Destination, MaxLen};
pub use envelope::Envelope;
pub use message::{RedisMessage, RedisSource};

use consumer::{create_group, ChannelConsumer, Kind, ListConsumer, StreamConsumer, StreamShared};
use wire::s;

/// Default `min_idle_ms`: how long an entry must sit unsettled in another consumer's pending
/// list before this consumer claims it.
pub const DEFAULT_MIN_IDLE: Duration = Duration::from_secs(60);
/// Default `batch` for streams (at least the subscriber's concurrency).
pub const DEFAULT_BATCH: u64 = 10;
/// Default [`RedisBroker::liveness_timeout`]: how long after its last heartbeat a stream consumer
/// counts as gone, so that the group's other consumers take over its pending entries.
pub const DEFAULT_LIVENESS_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a stream consumer looks for gone consumers of its group, at most.
const GONE_CHECK: Duration = Duration::from_secs(1);

/// A Redis client for brook. Cheap to clone; clones share the connection used for publishing
/// and settling. Each subscriber gets a connection of its own, since blocking reads (XREADGROUP,
/// BLPOP) and SUBSCRIBE hold theirs.
///
/// The URL is fred's: `redis://[[user]:password@]host[:port][/db]`, `rediss://` for TLS
/// (rustls). The password never appears in `Debug` output, logs or errors.
///
/// ```
/// use brook_redis::RedisBroker;
/// use std::time::Duration;
/// let broker = RedisBroker::new("redis://:s3cret@127.0.0.1:6379/0")
///     .connect_timeout(Duration::from_secs(2));
/// let shown = format!("{broker:?}");
/// assert!(shown.contains("127.0.0.1:6379") && !shown.contains("s3cret"));
/// ```
#[derive(Clone)]
pub struct RedisBroker {
    settings: Arc<Settings>,
    client: Arc<OnceCell<Client>>,
    // The pub/sub connection replies to this client's requests arrive on (first request).
    replies: Arc<OnceCell<reply::Replies>>,
}

#[derive(Clone)]
struct Settings {
    url: String,
    address: String,
    connect_timeout: Duration,
    command_timeout: Duration,
    reconnect_max_delay: Duration,
    envelope: Envelope,
    broadcast_capacity: usize,
    liveness_timeout: Duration,
}

impl RedisBroker {
    /// A broker for `url` (not connected until [`Broker::connect`] or first use).
    pub fn new(url: impl Into<String>) -> Self {
        let url = url.into();
        RedisBroker {
            settings: Arc::new(Settings {
                address: redact(&url),
                url,
                connect_timeout: Duration::from_secs(5),
                command_timeout: Duration::from_secs(10),
                reconnect_max_delay: Duration::from_secs(2),
                envelope: Envelope::Binary,
                broadcast_capacity: 4096,
                liveness_timeout: DEFAULT_LIVENESS_TIMEOUT,
            }),
            client: Arc::new(OnceCell::new()),
            replies: Arc::new(OnceCell::new()),
        }
    }

    fn settings_mut(&mut self) -> &mut Settings {
        Arc::make_mut(&mut self.settings)
    }

    /// How long connecting may take before `connect()` fails (default 5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.settings_mut().connect_timeout = timeout;
        self
    }

    /// How long a command may wait for its reply, reconnection included (default 10 s).
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.settings_mut().command_timeout = timeout;
        self
    }

    /// The longest pause between reconnection attempts (default 2 s; attempts never stop).
    pub fn reconnect_max_delay(mut self, delay: Duration) -> Self {
        self.settings_mut().reconnect_max_delay = delay;
        self
    }

    /// How published payloads are wrapped (default: FastStream's binary envelope).
    pub fn envelope(mut self, envelope: Envelope) -> Self {
        self.settings_mut().envelope = envelope;
        self
    }

    /// How many pub/sub messages a channel subscriber may fall behind before messages are
    /// dropped (default 4096).
    pub fn channel_capacity(mut self, capacity: usize) -> Self {
        self.settings_mut().broadcast_capacity = capacity.max(1);
        self
    }

    /// How long a stream consumer of a group may go without renewing its liveness key before
    /// the group's other consumers treat it as gone and take over its pending entries (default
    /// [`DEFAULT_LIVENESS_TIMEOUT`], 10 s; at least 100 ms). The key is renewed four times per
    /// timeout by a task of its own, so long handler runs do not count; a process that cannot
    /// reach Redis for this long (or is frozen) does. This is how long entries of a crashed
    /// consumer wait, plus up to a second; a consumer that closes hands its entries over at once.
    ///
    /// Set on the broker that runs the consumer: each consumer writes its own key with its own
    /// timeout.
    pub fn liveness_timeout(mut self, timeout: Duration) -> Self {
        self.settings_mut().liveness_timeout = timeout.max(Duration::from_millis(100));
        self
    }

    /// The address, without credentials.
    pub fn address(&self) -> &str {
        &self.settings.address
    }

    fn connect_error(&self, source: impl Into<brook_runtime::BoxError>) -> BrokerError {
        BrokerError::Connect {
            broker: BrokerKind::Redis,
            address: self.settings.address.clone(),
            source: source.into(),
        }
    }

    fn builder(&self) -> Result<Builder, BrokerError> {
        let st = &self.settings;
        // fred's URL errors can quote the URL; say what is wrong without it.
        let config = Config::from_url(&st.url).map_err(|e| {
            self.connect_error(format!(
                "invalid Redis URL ({:?}); expected redis://[[user]:password@]host[:port][/db] or rediss://...",
                e.kind()
            ))
        })?;
        let mut builder = Builder::from_config(config);
        let (connect_timeout, command_timeout, capacity) = (
            st.connect_timeout,
            st.command_timeout,
            st.broadcast_capacity,
        );
        builder
            .with_connection_config(|c| {
                c.connection_timeout = connect_timeout;
                c.internal_command_timeout = connect_timeout;
                c.tcp.nodelay = Some(true);
            })
            .with_performance_config(|p| {
                p.default_command_timeout = command_timeout;
                p.broadcast_channel_capacity = capacity;
            })
            .set_policy(ReconnectPolicy::new_exponential(
                0,
                50,
                st.reconnect_max_delay.as_millis().min(u32::MAX as u128) as u32,
                2,
            ));
        Ok(builder)
    }

    /// Connects a client made by `builder`, within the connect timeout.
    async fn init<C: ClientLike>(&self, client: C) -> Result<C, BrokerError> {
        let limit = self.settings.connect_timeout + Duration::from_millis(500);
        match tokio::time::timeout(limit, client.init()).await {
            Ok(Ok(_task)) => Ok(client),
            Ok(Err(e)) => Err(self.connect_error(e)),
            Err(_) => {
                let _ = client.quit().await;
                Err(self.connect_error(format!("no answer within {limit:?}")))
            }
        }
    }

    async fn client(&self) -> Result<&Client, BrokerError> {
        self.client
            .get_or_try_init(|| async {
                let client = self.builder()?.build().map_err(|e| self.connect_error(e))?;
                self.init(client).await
            })
            .await
    }

    async fn replies(&self) -> Result<&reply::Replies, BrokerError> {
        self.replies
            .get_or_try_init(|| async {
                let client = self
                    .builder()?
                    .build_subscriber_client()
                    .map_err(|e| self.connect_error(e))?;
                Ok(reply::Replies::start(self.init(client).await?))
            })
            .await
    }

    async fn reader(&self) -> Result<Client, BrokerError> {
        let client = self.builder()?.build().map_err(|e| self.connect_error(e))?;
        self.init(client).await
    }

    /// Publishes `body` with `headers` to `destination`, wrapped as [`RedisBroker::envelope`]
    /// says. [`Broker::publish`] and [`Broker::publish_message`] end here.
    pub async fn publish_to(
        &self,
        destination: &Destination,
        body: Bytes,
        headers: &Headers,
    ) -> Result<(), BrokerError> {
        let payload = match self.settings.envelope {
            Envelope::Binary => {
                envelope::encode(&body, headers).map_err(|e| BrokerError::Invalid {
                    broker: BrokerKind::Redis,
                    message: e.to_string(),
                })?
            }
            Envelope::Raw => body,
        };
        let client = self.client().await?;
        let payload = Value::Bytes(payload);
        let (name, args) = match destination {
            Destination::Channel(ch) => ("PUBLISH", vec![s(ch), payload]),
            Destination::List(key) => ("RPUSH", vec![s(key), payload]),
            Destination::Stream { name, maxlen } => {
                let mut args = vec![s(name)];
                if let Some(cap) = maxlen {
                    args.push(s("MAXLEN"));
                    if cap.approximate {
                        args.push(s("~"));
                    }
                    args.push(Value::from(cap.len.min(i64::MAX as u64) as i64));
                }
                args.extend([
                    s("*"),
                    Value::Bytes(Bytes::from_static(wire::DATA_FIELD)),
                    payload,
                ]);
                ("XADD", args)
            }
        };
        wire::call(client, name, false, args)
            .await
            .map(drop)
            .map_err(|e| BrokerError::operation(BrokerKind::Redis, name, e))
    }

    /// The shared fred client (connected on first use), for what brook does not wrap.
    pub async fn fred_client(&self) -> Result<Client, BrokerError> {
        self.client().await.cloned()
    }
}

impl fmt::Debug for RedisBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBroker")
            .field("address", &self.settings.address)
            .field("connected", &self.client.initialized())
            .finish()
    }
}

static CONSUMERS: AtomicU64 = AtomicU64::new(0);

/// `hostname-pid-n-random`: unique per consumer, so two subscribers of one group in one
/// process never share a pending list.
fn generated_consumer_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "brook".to_owned());
    let n = CONSUMERS.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{host}-{}-{n}-{nanos:08x}", std::process::id())
}

/// `host` with `default_port` unless it has a port (`[::1]` has none, `[::1]:1` has one).
fn with_port(host: &str, default_port: u16) -> String {
    let has_port = host
        .rsplit_once(':')
        .is_some_and(|(_, port)| !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()));
    match has_port {
        true => host.to_owned(),
        false => format!("{host}:{default_port}"),
    }
}

/// What fred connects to for `url` (`redis[s][-cluster|-sentinel]://[[user]:password@]host[:port][/db][?node=host:port...]`),
/// read without the user information (which ends at the last `@`, see [`UrlParts`]) and
/// without any query value but `node` (a sentinel password travels in the query).
fn server_info(url: &str) -> Option<ServerInfo> {
    let parts = UrlParts::split(url);
    let scheme = parts.scheme?;
    let (tls, topology) = match scheme.strip_prefix("rediss") {
        Some(topology) => (true, topology),
        None => (false, scheme.strip_prefix("redis")?),
    };
    let (kind, default_port) = match topology {
        "" => (None, 6379),
        "-cluster" => (Some("Redis Cluster"), 6379),
        "-sentinel" => (Some("Redis Sentinel"), 26379),
        _ => return None,
    };
    let rest = parts.rest.split('#').next().unwrap_or_default();
    let (location, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (host, path) = location.split_once('/').unwrap_or((location, ""));
    if host.is_empty() {
        return None;
    }
    let mut server = ServerInfo::new(
        with_port(host, default_port),
        if tls { "rediss" } else { "redis" },
    );
    let db = path.trim_matches('/');
    if !db.is_empty() {
        server = server.with_pathname(db);
    }
    let nodes: Vec<String> = query
        .split('&')
        .filter_map(|pair| pair.strip_prefix("node="))
        .map(|node| with_port(UrlParts::split(&percent_decode(node)).rest, default_port))
        .collect();
    let description = match (kind, nodes.is_empty()) {
        (None, _) => None,
        (Some(kind), true) => Some(kind.to_owned()),
        (Some(kind), false) => Some(format!("{kind}; more nodes: {}", nodes.join(", "))),
    };
    Some(match description {
        Some(d) => server.with_description(d),
        None => server,
    })
}

/// Whether a channel name is a PSUBSCRIBE pattern.
fn is_pattern(channel: &str) -> bool {
    channel.contains(['*', '?', '['])
}

impl<K: brook_runtime::kind::Kind + brook_runtime::SameKind<brook_runtime::kind::Redis>> Accepts<K>
    for RedisBroker
{
}

impl Broker for RedisBroker {
    type Consumer = RedisConsumer;

    fn kind(&self) -> BrokerKind {
        BrokerKind::Redis
    }

    async fn connect(&self) -> Result<(), BrokerError> {
        self.client().await.map(drop)
    }

    /// Whether the shared connection (publishing, settling) is up, as fred's client state
    /// says (`Client::is_connected`): `Some(false)` while fred reconnects after a connection
    /// loss, before [`connect`](Broker::connect) and after [`close`](Broker::close). Each
    /// subscriber's own connection to the same server reconnects by itself.
    fn is_connected(&self) -> Option<bool> {
        Some(
            self.client
                .get()
                .is_some_and(|client| client.is_connected()),
        )
    }

    /// Host and port (6379 by default), `redis` / `rediss`, the database number as the
    /// pathname if the URL has one; never the user name or password.
    fn server(&self) -> Option<ServerInfo> {
        server_info(&self.settings.url)
    }

    /// Refuses a `list` or `stream` key that exists and holds another type (it would fail every
    /// read): at `App::start`, naming the subscriber, the argument and the key.
    async fn subscribe(&self, sub: &Subscription) -> Result<RedisConsumer, BrokerError> {
        let opts = sub
            .options()
            .redis()
            .ok_or_else(|| sub.declared_for_another(BrokerKind::Redis))?;
        let inner = match &opts.source {
            RedisOptionsSource::Channel(channel) => {
                let name: Arc<str> = channel.as_str().into();
                let client = self
                    .builder()?
                    .build_subscriber_client()
                    .map_err(|e| self.connect_error(e))?;
                let client = self.init(client).await?;
                let rx = client.message_rx();
                let manage = client.manage_subscriptions();
                let pattern = is_pattern(&name);
                let r = if pattern {
                    client.psubscribe(&*name).await
                } else {
                    client.subscribe(&*name).await
                };
                // fred resolves (P)SUBSCRIBE once it is written; the PING's answer comes after
                // Redis ran it, so messages published once `App::start` returned are received.
                let r = match r {
                    Ok(()) => client.ping::<Value>(None).await.map(drop),
                    Err(e) => Err(e),
                };
                if r.is_err() {
                    manage.abort();
                    consumer::quit(&client, "channel subscriber").await;
                }
                r.map_err(|e| {
                    BrokerError::operation(
                        BrokerKind::Redis,
                        if pattern { "PSUBSCRIBE" } else { "SUBSCRIBE" },
                        e,
                    )
                })?;
                Kind::Channel(ChannelConsumer {
                    client,
                    rx,
                    pattern: pattern.then(|| name.clone()),
                    manage,
                })
            }
            RedisOptionsSource::List(list) => Kind::List(ListConsumer {
                client: {
                    key_holds(self.client().await?, sub, "list", list, "list").await?;
                    self.reader().await?
                },
                key: list.as_str().into(),
                batch: opts.batch.unwrap_or(1).max(1),
                buffer: Default::default(),
                read: None,
            }),
            RedisOptionsSource::Stream(stream) => {
                let name: Arc<str> = stream.stream.as_str().into();
                key_holds(self.client().await?, sub, "stream", &name, "stream").await?;
                let batch = opts
                    .batch
                    .map_or(DEFAULT_BATCH, |b| b as u64)
                    .max(sub.concurrency() as u64)
                    .max(1);
                let shared_client = self.client().await?.clone();
                let (group, consumer, generated) = match &stream.group {
                    Some(group) => {
                        let group: Arc<str> = group.as_str().into();
                        create_group(&shared_client, &name, &group).await?;
                        let (consumer, generated) = match &stream.consumer {
                            Some(c) => (c.clone(), false),
                            None => (generated_consumer_name(), true),
                        };
                        (Some(group), consumer, generated)
                    }
                    None => (None, String::new(), false),
                };
                let last_id = if group.is_some() {
                    ">".to_owned()
                } else {
                    // XREAD with `$` on every call would miss entries added between calls.
                    let v = wire::call(
                        &shared_client,
                        "XREVRANGE",
                        false,
                        vec![s(&name), s("+"), s("-"), s("COUNT"), Value::from(1i64)],
                    )
                    .await
                    .map_err(|e| BrokerError::operation(BrokerKind::Redis, "XREVRANGE", e))?;
                    wire::entries(v)
                        .first()
                        .map_or_else(|| "0-0".to_owned(), |(id, _)| id.to_string())
                };
                // Registered (and alive) before the first read, so that no other consumer
                // mistakes it for a gone one.
                let liveness = match &group {
                    Some(group) => {
                        let ttl = self.settings.liveness_timeout;
                        let keys = liveness::Keys::new(&name, group);
                        let beat = liveness::Beat {
                            client: shared_client.clone(),
                            keys: keys.clone(),
                            consumer: consumer.as_str().into(),
                            generated,
                            ttl,
                        };
                        beat.once().await?;
                        Some(consumer::Liveness {
                            keys,
                            heartbeat: Some(beat.spawn()),
                            next_check: Instant::now(),
                            check_every: (ttl / 4).min(GONE_CHECK),
                        })
                    }
                    None => None,
                };
                // Opened last: a failure above must not leave a connection (and its reconnect
                // loop) behind. (A liveness key left by a failure here lapses, and the
                // registration is removed by the group's other consumers.)
                let reader = self.reader().await?;
                let min_idle = match stream.min_idle {
                    Some(d) if d.is_zero() => None,
                    Some(d) => Some(d),
                    None => Some(DEFAULT_MIN_IDLE),
                };
                let reconnects = vec![reader.reconnect_rx(), shared_client.reconnect_rx()];
                let dead_letter = stream.dead_letter_stream.as_deref().map(Arc::from);
                tracing::debug!(stream = %name, group = ?group, consumer = %consumer, "stream consumer started");
                let (shared, pipeline) =
                    StreamShared::start(shared_client, name, group, consumer.into(), dead_letter);
                Kind::Stream(Box::new(StreamConsumer {
                    shared,
                    pipeline,
                    reader,
                    batch,
                    noack: sub.policy() == AckPolicy::AckFirst,
                    min_idle,
                    generated_name: generated,
                    last_id,
                    reconnects,
                    buffer: Default::default(),
                    read: None,
                    next_claim: Instant::now(),
                    claim_cursor: "0-0".to_owned(),
                    liveness,
                }))
            }
        };
        Ok(RedisConsumer { inner })
    }

    async fn publish_message(&self, message: Outgoing) -> Result<(), BrokerError> {
        let destination = Destination::parse(&message.destination)?;
        self.publish_to(&destination, message.body, &message.headers)
            .await
    }

    /// A reply goes to the pub/sub channel `reply_to` names, taken as is (no `list:` /
    /// `stream:` prefix is read): FastStream's requesters wait on a channel of that name.
    async fn publish_reply(&self, message: Outgoing) -> Result<(), BrokerError> {
        let destination = Destination::channel(message.destination);
        self.publish_to(&destination, message.body, &message.headers)
            .await
    }

    /// FastStream's RPC: the request goes to `destination` (a channel, `list:` or `stream:`)
    /// with `reply_to` set to a fresh channel (`brook:reply:<uuid>`) that this client
    /// subscribed to first, and the reply is the first message published there with the
    /// request's `correlation_id` (or none, from a raw client). The channel is unsubscribed
    /// once the reply came or `timeout` (which covers subscribing and publishing too) ran
    /// out; later replies are dropped.
    async fn request_message(
        &self,
        mut message: Outgoing,
        timeout: Duration,
    ) -> Result<Message, BrokerError> {
        let destination = Destination::parse(&message.destination)?;
        let correlation_id = message.ensure_correlation_id();
        let requested = message.destination.clone();
        let timed_out = || BrokerError::RequestTimeout {
            broker: BrokerKind::Redis,
            destination: requested.clone(),
            timeout,
        };
        let deadline = Instant::now() + timeout;
        let replies = tokio::time::timeout_at(deadline, self.replies())
            .await
            .map_err(|_| timed_out())??;
        let mut pending = tokio::time::timeout_at(deadline, replies.open(&correlation_id))
            .await
            .map_err(|_| timed_out())??;
        message.headers.insert(REPLY_TO, pending.channel.clone());
        let outcome = tokio::time::timeout_at(deadline, async {
            self.publish_to(&destination, message.body.clone(), &message.headers)
                .await?;
            pending
                .reply()
                .await
                .ok_or(BrokerError::Closed(BrokerKind::Redis))
        })
        .await;
        pending.finish().await;
        outcome.map_err(|_| timed_out())?
    }

    async fn close(&self) -> Result<(), BrokerError> {
        if let Some(replies) = self.replies.get() {
            replies.close().await;
        }
        if let Some(client) = self.client.get() {
            consumer::quit(client, "broker").await;
        }
        Ok(())
    }
}

/// `key` is missing or holds a Redis `expected` (`TYPE`); otherwise the subscription is refused.
async fn key_holds(
    client: &Client,
    sub: &Subscription,
    argument: &str,
    key: &str,
    expected: &str,
) -> Result<(), BrokerError> {
    let reply = wire::call(client, "TYPE", false, vec![wire::s(key)])
        .await
        .map_err(|e| BrokerError::operation(BrokerKind::Redis, "TYPE", e))?;
    let found = wire::text(reply).unwrap_or_else(|| Arc::from("none"));
    if &*found == "none" || &*found == expected {
        return Ok(());
    }
    Err(BrokerError::Invalid {
        broker: BrokerKind::Redis,
        message: format!(
            "subscriber `{}`: `{argument} = {key:?}` is an existing Redis key of type {found}, not a {expected}; choose another name or remove the key",
            sub.name()
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_credentials() {
        // The rule itself is tested in brook_runtime::url; here: Redis URLs use it.
        assert_eq!(redact("redis://user:pw@host:1/2"), "redis://host:1/2");
        assert_eq!(redact("redis://:pw@host:1"), "redis://host:1");
        assert_eq!(redact("rediss://host"), "rediss://host");
        assert_eq!(redact("redis://h:1/0?sentinelPassword=x"), "redis://h:1/0");
        // Unencoded `/`, `?`, `#`, `@` in a password never show.
        for url in [
            "redis://:se/cret@host:1/2",
            "redis://u:se?cret@host:1",
            "redis://u:se#cret@host:1",
            "redis://:se@cret@host:1",
        ] {
            let shown = redact(url);
            assert!(!shown.contains("cret"), "{url} -> {shown}");
        }
        assert_eq!(redact("redis://:a/b@host:1/2"), "redis://host:1/2");
    }

    #[test]
    fn the_server_has_no_credentials() {
        let server = RedisBroker::new("rediss://app:s3cret@cache.internal:6380/2")
            .server()
            .expect("a server");
        assert_eq!(server.host, "cache.internal:6380");
        assert_eq!(server.protocol, "rediss");
        assert_eq!(server.pathname.as_deref(), Some("2"));
        assert_eq!(server.description, None);
        let server = RedisBroker::new("redis://127.0.0.1")
            .server()
            .expect("a server");
        assert_eq!(
            (
                server.host.as_str(),
                server.protocol.as_str(),
                server.pathname
            ),
            ("127.0.0.1:6379", "redis", None)
        );
        let server = RedisBroker::new(
            "redis-sentinel://:pw@s1/1?node=s2:26380&sentinelServiceName=main&sentinelPassword=x5ecret",
        )
        .server()
        .expect("a server");
        assert_eq!(server.host, "s1:26379");
        assert_eq!(server.pathname.as_deref(), Some("1"));
        assert_eq!(
            server.description.as_deref(),
            Some("Redis Sentinel; more nodes: s2:26380")
        );
        assert!(!format!("{server:?}").contains("x5ecret"));
        // Unencoded `/`, `?`, `#`, `@` in a password: still user information, never shown.
        for url in [
            "redis://app:se/cret@host:1/2",
            "redis://app:se?cret@host:1",
            "redis://app:se#cret@host:1",
            "redis://:se@cret@host:1",
            "redis://app:12@host",
        ] {
            let server = RedisBroker::new(url).server().expect("a server");
            let shown = format!("{server:?}");
            assert!(
                !shown.contains("cret") && !shown.contains("app") && !shown.contains("12"),
                "{url} -> {shown}"
            );
            assert!(server.host.starts_with("host:"), "{url} -> {shown}");
        }
        assert_eq!(RedisBroker::new("127.0.0.1:6379").server(), None);
    }

    #[tokio::test]
    async fn not_connected_before_connect() {
        assert_eq!(
            RedisBroker::new("redis://127.0.0.1:6379").is_connected(),
            Some(false)
        );
    }

    #[test]
    fn patterns() {
        assert!(is_pattern("orders.*") && is_pattern("a?c") && is_pattern("h[ae]llo"));
        assert!(!is_pattern("orders.eu"));
    }

    #[test]
    fn consumer_names_are_unique() {
        assert_ne!(generated_consumer_name(), generated_consumer_name());
    }
}
