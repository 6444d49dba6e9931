//! NATS broker for brook (async-nats): core subjects and JetStream pull consumers.
//!
//! Two kinds of source, chosen by the subscriber's arguments (see `docs/brokers/nats.md`):
//! - **core NATS** (`subject = "orders.*"`, optional `queue_group`): fire-and-forget delivery.
//!   Nothing can be acknowledged, so the settler is a no-op and the macro refuses the policies
//!   that would need one (`NackOnError`, `Manual`).
//! - **JetStream** (`stream = "ORDERS"`, usually `durable = "billing"`): a pull consumer with
//!   explicit acks. Ack = `+ACK`, nack = `-NAK` (with the delay, if any), reject = `+TERM`,
//!   `msg.in_progress()` = `+WPI`. The delivery count comes from the ack subject, so
//!   `max_deliveries` works without extra round trips.
//!
//! brook never decides *when* to settle (the runtime's engine does); this crate maps the
//! protocol, creates missing streams/consumers, and refuses to reuse an existing consumer whose
//! configuration differs from what the subscriber asks for (it never reconfigures one silently).
//!
//! ```no_run
//! use brook_nats::NatsBroker;
//! use brook_runtime::Broker;
//! # async fn run() -> Result<(), brook_runtime::BrokerError> {
//! let broker = NatsBroker::new("nats://127.0.0.1:4222");
//! broker.connect().await?;
//! broker.publish(&serde_json::json!({"id": 1}), "orders.created").await?;
//! # Ok(()) }
//! ```

mod consumer;
mod message;
mod request;
mod setup;

use brook_runtime::url::UrlParts;
use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use async_nats::{Client, ConnectOptions, ServerAddr};
use brook_runtime::headers::{MESSAGE_ID, REPLY_TO};
use brook_runtime::{
    kind, Accepts, BoxError, Broker, BrokerError, Message, Outgoing, ServerInfo, Subscription,
};

/// The client crate, re-exported for what brook does not wrap (stream admin, KV, ...).
pub use async_nats;
pub use consumer::NatsConsumer;
pub use message::{JetStreamInfo, NatsMessage};

use message::KIND;

/// How [`Broker::publish_message`] sends a message.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PublishMode {
    /// JetStream publish (awaiting the stream's ack) when a stream captures the subject, core
    /// publish otherwise. Which streams capture a subject is looked up once and cached for a
    /// few seconds; a lookup that gets no answer fails the publish (never an unconfirmed
    /// core publish in its place).
    #[default]
    Auto,
    /// Always core `PUB`: no confirmation (a stream capturing the subject still stores it).
    Core,
    /// Always a JetStream publish; fails when no stream captures the subject.
    JetStream,
}

/// Connection settings. Credentials go in the URL (`nats://user:password@host:4222`,
/// `nats://token@host:4222`) or through the methods here; they never appear in `Debug`
/// output, logs or errors.
///
/// ```
/// use std::time::Duration;
/// use brook_nats::NatsConfig;
/// let config = NatsConfig::new("nats://app:secret@127.0.0.1:4222")
///     .connect_timeout(Duration::from_secs(2))
///     .name("billing");
/// assert!(!format!("{config:?}").contains("secret"));
/// ```
#[derive(Clone)]
pub struct NatsConfig {
    url: String,
    connect_timeout: Duration,
    name: Option<String>,
    require_tls: bool,
    root_certificates: Vec<PathBuf>,
    client_certificate: Option<(PathBuf, PathBuf)>,
    credentials_file: Option<PathBuf>,
    token: Option<String>,
    publish_mode: PublishMode,
}

impl NatsConfig {
    /// Settings for `url`: one server or several, comma-separated
    /// (`nats://a:4222,nats://b:4222`); `tls://` requires TLS.
    pub fn new(url: impl Into<String>) -> Self {
        NatsConfig {
            url: url.into(),
            connect_timeout: Duration::from_secs(5),
            name: None,
            require_tls: false,
            root_certificates: Vec::new(),
            client_certificate: None,
            credentials_file: None,
            token: None,
            publish_mode: PublishMode::Auto,
        }
    }

    /// How long the first connection may take before `connect()` fails (default 5 s).
    /// Reconnections after a connection loss are retried forever.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The connection name the server shows.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Require TLS.
    pub fn require_tls(mut self, required: bool) -> Self {
        self.require_tls = required;
        self
    }

    /// Trust this PEM CA certificate (in addition to the system roots).
    pub fn root_certificate(mut self, path: impl Into<PathBuf>) -> Self {
        self.root_certificates.push(path.into());
        self
    }

    /// Authenticate with this client certificate and key (PEM).
    pub fn client_certificate(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.client_certificate = Some((cert.into(), key.into()));
        self
    }

    /// Authenticate with a `.creds` file (JWT + nkey seed).
    pub fn credentials_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.credentials_file = Some(path.into());
        self
    }

    /// Authenticate with a token.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// How `publish` chooses between core and JetStream publishing (default [`PublishMode::Auto`]).
    pub fn publish_mode(mut self, mode: PublishMode) -> Self {
        self.publish_mode = mode;
        self
    }
}

impl fmt::Debug for NatsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsConfig")
            .field("servers", &redact(&self.url))
            .field("connect_timeout", &self.connect_timeout)
            .field("name", &self.name)
            .field("require_tls", &self.require_tls)
            .field("credentials_file", &self.credentials_file.is_some())
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("publish_mode", &self.publish_mode)
            .finish()
    }
}

/// The server list without credentials: `nats://user:pw@host:4222` → `nats://host:4222`, each
/// server by the rule of [`UrlParts`] (user information ends at its last `@`).
fn redact(url: &str) -> String {
    url.split(',')
        .map(brook_runtime::url::redact)
        .collect::<Vec<_>>()
        .join(",")
}

/// `host:port` of one server of the list (`nats://h:4222`, `tls://h`, `h:4222`; port 4222
/// when none is given), without credentials.
fn host_port(server: &str) -> Option<String> {
    let rest = UrlParts::split(server).rest;
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if host.is_empty() {
        return None;
    }
    let has_port = host
        .rsplit_once(':')
        .is_some_and(|(_, port)| !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()));
    Some(match has_port {
        true => host.to_owned(),
        false => format!("{host}:4222"),
    })
}

/// The first server of the list, the others in the description.
fn server_info(url: &str) -> Option<ServerInfo> {
    let mut servers = url.split(',').filter_map(host_port);
    let server = ServerInfo::new(servers.next()?, "nats");
    let more: Vec<String> = servers.collect();
    Some(match more.is_empty() {
        true => server,
        false => server.with_description(format!("more servers: {}", more.join(", "))),
    })
}

/// The credentials of the first server that has some: (user, password) or (token, None).
/// Read here rather than by a URL parser, so that an unencoded password cannot end up in a
/// parse error or be taken for a path.
fn url_credentials(url: &str) -> Option<(String, Option<String>)> {
    url.split(',').find_map(|one| {
        let parts = UrlParts::split(one);
        Some((parts.user()?, parts.password()))
    })
}

/// A live connection: the client, its JetStream context, and its request inbox (made on the
/// first request).
#[derive(Clone)]
pub(crate) struct Conn {
    pub(crate) client: Client,
    pub(crate) js: jetstream::Context,
    requests: Arc<tokio::sync::OnceCell<request::Requests>>,
}

impl Conn {
    async fn requests(&self) -> Result<&request::Requests, BrokerError> {
        self.requests
            .get_or_try_init(|| request::Requests::start(&self.client))
            .await
    }
}

struct Inner {
    config: NatsConfig,
    address: String,
    conn: Mutex<Option<Conn>>,
    connecting: tokio::sync::Mutex<()>,
    /// subject → (captured by a stream?, when looked up), for [`PublishMode::Auto`].
    captured: Mutex<HashMap<String, (bool, Instant)>>,
}

/// How long [`PublishMode::Auto`] trusts a "which stream captures this subject" lookup.
const CAPTURE_TTL: Duration = Duration::from_secs(5);

/// The NATS broker. Clones share one connection, made on [`Broker::connect`] (or on first
/// use) and re-established by async-nats after a connection loss.
#[derive(Clone)]
pub struct NatsBroker {
    inner: Arc<Inner>,
}

impl fmt::Debug for NatsBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsBroker")
            .field("servers", &self.inner.address)
            .field("connected", &lock(&self.inner.conn).is_some())
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The guarded data is a cache or an Option swap: still consistent after a panic elsewhere.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl NatsBroker {
    /// A broker for `url` with default settings (see [`NatsConfig::new`]).
    pub fn new(url: impl Into<String>) -> Self {
        Self::with_config(NatsConfig::new(url))
    }

    /// A broker with explicit settings.
    pub fn with_config(config: NatsConfig) -> Self {
        NatsBroker {
            inner: Arc::new(Inner {
                address: redact(&config.url),
                config,
                conn: Mutex::new(None),
                connecting: tokio::sync::Mutex::new(()),
                captured: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The server list, without credentials.
    pub fn address(&self) -> &str {
        &self.inner.address
    }

    /// The async-nats client (connecting first if needed), for what brook does not wrap.
    pub async fn client(&self) -> Result<Client, BrokerError> {
        Ok(self.conn().await?.client)
    }

    /// The JetStream context (connecting first if needed).
    pub async fn jetstream(&self) -> Result<jetstream::Context, BrokerError> {
        Ok(self.conn().await?.js)
    }

    pub(crate) async fn conn(&self) -> Result<Conn, BrokerError> {
        if let Some(conn) = lock(&self.inner.conn).as_ref() {
            return Ok(conn.clone());
        }
        let _one_at_a_time = self.inner.connecting.lock().await;
        if let Some(conn) = lock(&self.inner.conn).as_ref() {
            return Ok(conn.clone());
        }
        let client = self.dial().await?;
        let conn = Conn {
            js: jetstream::new(client.clone()),
            client,
            requests: Arc::default(),
        };
        *lock(&self.inner.conn) = Some(conn.clone());
        Ok(conn)
    }

    fn connect_error(&self, source: impl Into<brook_runtime::BoxError>) -> BrokerError {
        BrokerError::Connect {
            broker: KIND,
            address: self.inner.address.clone(),
            source: source.into(),
        }
    }

    async fn dial(&self) -> Result<Client, BrokerError> {
        let config = &self.inner.config;
        // async-nats does not read credentials from the URL: take them out and pass them as
        // options (the first server that has some wins), and hand it addresses without them.
        let url_auth = url_credentials(&config.url);
        let servers = self
            .inner
            .address
            .split(',')
            .map(|s| s.trim().parse::<ServerAddr>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| self.connect_error("invalid server URL"))?;
        let address = self.inner.address.clone();
        let mut options = ConnectOptions::new()
            .connection_timeout(config.connect_timeout)
            .require_tls(config.require_tls)
            // After the first connection, retry forever, quickly at first: a restarted broker
            // is usually back within seconds.
            .max_reconnects(None)
            .reconnect_delay_callback(|attempts| {
                // async-nats asks for a delay before the *first* attempt too (attempts = 1),
                // the initial connection included: that one must not wait.
                if attempts <= 1 {
                    Duration::ZERO
                } else {
                    Duration::from_millis(100u64 << (attempts - 2).min(5))
                        .min(Duration::from_secs(2))
                }
            })
            .event_callback(move |event| {
                let address = address.clone();
                async move {
                    match event {
                        async_nats::Event::Connected => {
                            tracing::info!(broker = "nats", %address, "connected")
                        }
                        async_nats::Event::Disconnected => {
                            tracing::warn!(broker = "nats", %address, "disconnected; reconnecting")
                        }
                        other => tracing::debug!(broker = "nats", %address, event = %other, "client event"),
                    }
                }
            });
        if let Some(name) = &config.name {
            options = options.name(name);
        }
        for ca in &config.root_certificates {
            options = options.add_root_certificates(ca.clone());
        }
        if let Some((cert, key)) = &config.client_certificate {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        match url_auth {
            Some((user, Some(password))) => options = options.user_and_password(user, password),
            Some((token, None)) => options = options.token(token),
            None => {}
        }
        if let Some(token) = &config.token {
            options = options.token(token.clone());
        }
        if let Some(path) = &config.credentials_file {
            options = options.credentials_file(path).await.map_err(|e| {
                self.connect_error(format!("cannot read the credentials file: {e}"))
            })?;
        }
        // async-nats tries each server once without `retry_on_initial_connect`; the outer
        // timeout is a second guard so that connect() can never hang.
        let limit = config
            .connect_timeout
            .saturating_mul(servers.len().max(1) as u32)
            + Duration::from_secs(1);
        match tokio::time::timeout(limit, options.connect(servers)).await {
            Ok(Ok(client)) => Ok(client),
            Ok(Err(e)) => Err(self.connect_error(e)),
            Err(_) => Err(self.connect_error(format!("no connection within {limit:?}"))),
        }
    }

    /// Publishes with core NATS (`PUB`/`HPUB`): no confirmation. A `reply_to` header also
    /// becomes the NATS reply subject, as FastStream does on core NATS.
    pub async fn publish_core(&self, message: Outgoing) -> Result<(), BrokerError> {
        let conn = self.conn().await?;
        let headers = message::to_nats(&message.headers);
        let subject = message.destination;
        let result = match (message.headers.get(REPLY_TO), headers) {
            (Some(reply), Some(headers)) => {
                conn.client
                    .publish_with_reply_and_headers(
                        subject,
                        reply.to_owned(),
                        headers,
                        message.body,
                    )
                    .await
            }
            (None, Some(headers)) => {
                conn.client
                    .publish_with_headers(subject, headers, message.body)
                    .await
            }
            (_, None) => conn.client.publish(subject, message.body).await,
        };
        result.map_err(|e| BrokerError::operation(KIND, "publish", e))
    }

    /// Publishes through JetStream and waits for the stream's ack; returns the stream and the
    /// sequence the message got. Headers (`reply_to` included, as FastStream does on JetStream)
    /// travel as NATS headers; a `message_id` header is also sent as `Nats-Msg-Id`, so the
    /// stream drops duplicates within its de-duplication window.
    pub async fn publish_jetstream(
        &self,
        message: Outgoing,
    ) -> Result<jetstream::publish::PublishAck, BrokerError> {
        let conn = self.conn().await?;
        let mut headers = message::to_nats(&message.headers);
        // FastStream's message_id doubles as JetStream's de-duplication id.
        if let (Some(id), Some(h)) = (message.headers.get(MESSAGE_ID), headers.as_mut()) {
            h.insert("Nats-Msg-Id", id);
        }
        let pending = match headers {
            Some(headers) => {
                conn.js
                    .publish_with_headers(message.destination, headers, message.body)
                    .await
            }
            None => conn.js.publish(message.destination, message.body).await,
        }
        .map_err(|e| BrokerError::operation(KIND, "JetStream publish", e))?;
        pending
            .await
            .map_err(|e| BrokerError::operation(KIND, "JetStream publish ack", e))
    }

    /// Whether a stream captures `subject` (cached for a few seconds).
    ///
    /// Only a definite answer is cached and acted on: "no stream" (or no JetStream on the
    /// server at all) means core publishing. A lookup that fails (timeout, connection lost)
    /// is an error: silently falling back to an unconfirmed core publish would turn "publish
    /// awaits the stream's ack" into "publish may lose the message".
    async fn captured(&self, conn: &Conn, subject: &str) -> Result<bool, BrokerError> {
        if let Some((yes, at)) = lock(&self.inner.captured).get(subject) {
            if at.elapsed() < CAPTURE_TTL {
                return Ok(*yes);
            }
        }
        let lookup_error = |e: BoxError| BrokerError::operation(KIND, "JetStream stream lookup", e);
        let request = serde_json::json!({ "subject": subject }).to_string();
        let yes = match conn
            .client
            .request("$JS.API.STREAM.NAMES", request.into())
            .await
        {
            Ok(reply) => {
                let answer: serde_json::Value =
                    serde_json::from_slice(&reply.payload).map_err(|e| lookup_error(e.into()))?;
                if let Some(error) = answer.get("error") {
                    return Err(lookup_error(error.to_string().into()));
                }
                answer
                    .get("streams")
                    .and_then(|s| s.as_array())
                    .is_some_and(|s| !s.is_empty())
            }
            // Nobody serves the JetStream API: a server without JetStream.
            Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders => false,
            Err(e) => return Err(lookup_error(e.into())),
        };
        lock(&self.inner.captured).insert(subject.to_owned(), (yes, Instant::now()));
        Ok(yes)
    }
}

impl<K: kind::Kind + brook_runtime::SameKind<kind::Nats>> Accepts<K> for NatsBroker {}

impl Broker for NatsBroker {
    type Consumer = NatsConsumer;

    fn kind(&self) -> brook_runtime::BrokerKind {
        KIND
    }

    async fn connect(&self) -> Result<(), BrokerError> {
        self.conn().await.map(|_| ())
    }

    /// async-nats's connection state (`Client::connection_state`): `Some(false)` while it
    /// reconnects after a connection loss, before [`connect`](Broker::connect) and after
    /// [`close`](Broker::close). Every subscriber shares this one connection.
    fn is_connected(&self) -> Option<bool> {
        Some(lock(&self.inner.conn).as_ref().is_some_and(|conn| {
            conn.client.connection_state() == async_nats::connection::State::Connected
        }))
    }

    /// The first server's host and port (4222 by default), `nats`, the other servers in the
    /// description; never a user name, password or token.
    fn server(&self) -> Option<ServerInfo> {
        server_info(&self.inner.address)
    }

    async fn subscribe(&self, subscription: &Subscription) -> Result<NatsConsumer, BrokerError> {
        let opts = subscription
            .options()
            .nats()
            .ok_or_else(|| subscription.declared_for_another(KIND))?;
        let conn = self.conn().await?;
        match &opts.jetstream {
            None => consumer::core(&conn, opts).await,
            Some(js) => {
                let target = setup::ensure(&conn.js, subscription, js).await?;
                consumer::jetstream(&conn, subscription, js, target).await
            }
        }
    }

    async fn publish_message(&self, message: Outgoing) -> Result<(), BrokerError> {
        let jetstream = match self.inner.config.publish_mode {
            PublishMode::Core => false,
            PublishMode::JetStream => true,
            PublishMode::Auto => {
                let conn = self.conn().await?;
                self.captured(&conn, &message.destination).await?
            }
        };
        if jetstream {
            self.publish_jetstream(message).await.map(|_| ())
        } else {
            self.publish_core(message).await
        }
    }

    /// Always a core NATS publish, whatever the [`PublishMode`]: a reply address is an inbox,
    /// which no stream captures (a JetStream publish to it would fail), and the requester
    /// listens on it with a plain subscription. The brook headers (`correlation_id`, ...) go
    /// with it.
    async fn publish_reply(&self, message: Outgoing) -> Result<(), BrokerError> {
        self.publish_core(message).await
    }

    /// Sends the request as [`Broker::publish_message`] does (core NATS, or JetStream when
    /// the mode says so), with the reply subject both as the NATS reply subject (core
    /// NATS, FastStream's convention there) and as the `reply_to` header (JetStream, where
    /// the NATS reply subject is the ack subject). Replies come to a per-connection inbox
    /// subscription; a reply that arrives after the wait ended is dropped. With core NATS
    /// and nobody subscribed to the subject, the server says so at once: an error rather
    /// than a wait for the timeout. (With [`PublishMode::Core`], a request to a subject a
    /// stream captures is answered by the stream's publish ack: use `Auto` there.)
    async fn request_message(
        &self,
        mut message: Outgoing,
        timeout: Duration,
    ) -> Result<Message, BrokerError> {
        let destination = message.destination.clone();
        let exchange = async {
            let conn = self.conn().await?;
            let correlation_id = message.ensure_correlation_id();
            let mut pending = conn.requests().await?.register(correlation_id)?;
            message.headers.insert(REPLY_TO, pending.subject.clone());
            self.publish_message(message).await?;
            let reply = pending.reply(&destination).await?;
            Ok(
                Message::detached(KIND, reply.subject.as_str().into(), reply.payload.clone())
                    .with_headers(message::from_nats(reply.headers.as_ref())),
            )
        };
        // The whole exchange is bounded, the JetStream publish ack included; dropping it
        // unregisters the request.
        match tokio::time::timeout(timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(BrokerError::RequestTimeout {
                broker: KIND,
                destination,
                timeout,
            }),
        }
    }

    /// Flushes what is buffered and drains the connection (a later use reconnects).
    async fn close(&self) -> Result<(), BrokerError> {
        let conn = lock(&self.inner.conn).take();
        if let Some(conn) = conn {
            conn.client
                .flush()
                .await
                .map_err(|e| BrokerError::operation(KIND, "flush", e))?;
            conn.client
                .drain()
                .await
                .map_err(|e| BrokerError::operation(KIND, "drain", e))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_credentials() {
        assert_eq!(redact("nats://u:p@127.0.0.1:4222"), "nats://127.0.0.1:4222");
        assert_eq!(redact("tok@h:1, nats://h2:2"), "h:1,nats://h2:2");
        assert_eq!(redact("127.0.0.1:4222"), "127.0.0.1:4222");
        assert_eq!(
            url_credentials("nats://u:p%40ss%2Fx@h:1"),
            Some(("u".to_owned(), Some("p@ss/x".to_owned())))
        );
        // Unencoded `/`, `?`, `#`, `@` in a password: still user information, never kept.
        for raw in ["pa/ss", "pa?ss", "pa#ss", "p@ss", "p/a@s?s#"] {
            let url = format!("nats://app:{raw}@127.0.0.1:4222");
            assert_eq!(redact(&url), "nats://127.0.0.1:4222", "{raw}");
            assert_eq!(
                url_credentials(&url),
                Some(("app".to_owned(), Some(raw.to_owned())))
            );
            let b = NatsBroker::new(url);
            assert!(!format!("{b:?}").contains(raw), "{raw}");
        }
        assert_eq!(
            url_credentials("nats://h:1,tok%2F1@h2:2"),
            Some(("tok/1".to_owned(), None))
        );
        assert_eq!(url_credentials("nats://h:1"), None);
        let b = NatsBroker::new("nats://u:secret@127.0.0.1:4222");
        assert!(!format!("{b:?}").contains("secret"));
        let c = NatsConfig::new("nats://h:1").token("tkn-secret");
        assert!(!format!("{c:?}").contains("tkn-secret"));
    }

    #[test]
    fn the_server_has_no_credentials() {
        let b = NatsBroker::new("nats://app:s3cret@n1.internal:4333, tok3n@n2.internal,tls://n3");
        let server = b.server().expect("a server");
        assert_eq!(server.host, "n1.internal:4333");
        assert_eq!(server.protocol, "nats");
        assert_eq!(
            server.description.as_deref(),
            Some("more servers: n2.internal:4222, n3:4222")
        );
        let shown = format!("{server:?}");
        for secret in ["app", "s3cret", "tok3n"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        // Unencoded `/`, `?`, `#`, `@` in a password: still user information, never shown.
        for raw in ["pa/ss", "pa?ss", "pa#ss", "p@ss", "p/a@s?s#"] {
            let server = NatsBroker::new(format!("nats://app:{raw}@127.0.0.1"))
                .server()
                .expect("a server");
            assert_eq!(server.host, "127.0.0.1:4222", "{raw}");
            assert!(!format!("{server:?}").contains("ss"), "{raw}: {server:?}");
        }
        let server = NatsBroker::new("[::1]").server().expect("a server");
        assert_eq!(server.host, "[::1]:4222");
        assert_eq!(NatsBroker::new("").server(), None);
    }

    #[test]
    fn not_connected_before_connect() {
        assert_eq!(
            NatsBroker::new("nats://127.0.0.1:4222").is_connected(),
            Some(false)
        );
    }
}
