//! [`RabbitBroker`]: connection settings, connecting (bounded, with errors that name the
//! address but never the password), publishing with confirms, replies and requests.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, Weak};
use std::time::Duration;

use brook_runtime::headers::REPLY_TO;
use brook_runtime::kind::Rabbit;
use brook_runtime::url::UrlParts;
use brook_runtime::{
    Accepts, Broker, BrokerError, BrokerKind, Message, Outgoing, ServerInfo, Subscription,
};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::uri::{AMQPScheme, AMQPUri};
use lapin::{Channel, Connection, ConnectionProperties, ConnectionStatus};
use tokio::sync::Mutex;

use crate::consumer::{RabbitConsumer, Topology};
use crate::message::properties_from;
use crate::request::{ReplyChannel, DIRECT_REPLY_TO};

const KIND: BrokerKind = BrokerKind::Rabbit;

/// A RabbitMQ client. Cheap to clone: clones share settings and the publishing connection.
///
/// ```
/// use std::time::Duration;
/// use brook_rabbit::RabbitBroker;
///
/// let broker = RabbitBroker::new("amqp://app:s3cret@rabbit.internal:5672/%2f")
///     .connect_timeout(Duration::from_secs(5))
///     .reconnect_backoff(Duration::from_millis(100), Duration::from_secs(10));
/// // The password never shows:
/// assert!(!format!("{broker:?}").contains("s3cret"));
/// ```
#[derive(Clone)]
pub struct RabbitBroker {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    /// The URL as given: it may hold a password, so it is never logged or shown.
    url: String,
    /// Where, without credentials: for errors and logs.
    pub(crate) address: String,
    pub(crate) connect_timeout: Duration,
    pub(crate) backoff_min: Duration,
    pub(crate) backoff_max: Duration,
    publisher: Mutex<Option<Publisher>>,
    /// Counts publishing connections opened (see [`Publisher::generation`]).
    generations: AtomicU64,
    /// The direct reply-to channel of [`Broker::request_message`], opened on the first request.
    pub(crate) requester: Mutex<Option<ReplyChannel>>,
    /// The connections [`Broker::is_connected`] looks at.
    pub(crate) links: Links,
}

/// One consumer's current connection (`None` while it has none: reconnecting, or failing to),
/// as [`Broker::is_connected`] sees it.
pub(crate) type Link = std::sync::Mutex<Option<ConnectionStatus>>;

/// What [`Broker::is_connected`] reads, behind locks of their own (never held across an await)
/// so that sampling it never waits for a publish or a reconnect.
#[derive(Default)]
pub(crate) struct Links {
    publisher: std::sync::Mutex<Option<ConnectionStatus>>,
    /// Every live consumer's [`Link`]; a consumer that is gone leaves a dead `Weak`.
    consumers: std::sync::Mutex<Vec<Weak<Link>>>,
}

impl Links {
    /// A link for a new consumer, connected to `status`.
    pub(crate) fn register(&self, status: &ConnectionStatus) -> Arc<Link> {
        let link = Arc::new(std::sync::Mutex::new(Some(status.clone())));
        let mut consumers = self
            .consumers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        consumers.retain(|l| l.strong_count() > 0);
        consumers.push(Arc::downgrade(&link));
        link
    }

    fn set_publisher(&self, status: Option<&ConnectionStatus>) {
        *self
            .publisher
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = status.cloned();
    }

    /// Every consumer holds a live connection; with no consumer, the publishing connection is
    /// open and live. A lost publishing connection does not count once there are consumers: it
    /// is reopened by the next publish (lapin does not reconnect it, and nothing here waits
    /// for it), while each consumer reconnects by itself.
    fn connected(&self) -> bool {
        let consumers: Vec<Arc<Link>> = self
            .consumers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter_map(Weak::upgrade)
            .collect();
        if consumers.is_empty() {
            return self
                .publisher
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .as_ref()
                .is_some_and(ConnectionStatus::connected);
        }
        consumers.iter().all(|link| {
            link.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .as_ref()
                .is_some_and(ConnectionStatus::connected)
        })
    }
}

struct Publisher {
    // Kept so the connection lives as long as its channel.
    connection: Connection,
    channel: Channel,
    /// Which connection this is (counts up per reopened connection): with the channel id it
    /// tells whether a failed publish used the current channel or one already replaced.
    generation: u64,
}

/// The channel a publish uses, and which one it is.
struct PublishChannel {
    channel: Channel,
    generation: u64,
}

/// Why a publish was not confirmed.
#[derive(Debug, thiserror::Error)]
#[error("RabbitMQ refused the message (publisher confirm nack)")]
pub(crate) struct Nacked;

/// A URL that cannot be parsed. Neither the URL nor the parser's message is shown: the parser
/// echoes the whole input (`Invalid URL: '<url>'`), password included.
#[derive(Debug, thiserror::Error)]
#[error("the AMQP URL cannot be parsed; expected amqp://user:password@host:port/vhost (URL not shown: it may hold a password)")]
struct BadUrl;

#[derive(Debug, thiserror::Error)]
#[error("no answer within {0:?}")]
struct TimedOut(Duration);

impl RabbitBroker {
    /// A client for the broker at `url` (`amqp://user:password@host:port/vhost`, or `amqps://`
    /// for TLS; the default vhost `/` is written `%2f`). Nothing connects until
    /// [`Broker::connect`] (the App calls it at start).
    pub fn new(url: impl Into<String>) -> Self {
        let url = url.into();
        let address = redact(&url);
        RabbitBroker {
            inner: Arc::new(Inner {
                url,
                address,
                connect_timeout: Duration::from_secs(10),
                backoff_min: Duration::from_millis(100),
                backoff_max: Duration::from_secs(5),
                publisher: Mutex::new(None),
                generations: AtomicU64::new(0),
                requester: Mutex::new(None),
                links: Links::default(),
            }),
        }
    }

    /// How long connecting (TCP, TLS and the AMQP handshake) may take before it fails
    /// (default 10 s).
    pub fn connect_timeout(self, timeout: Duration) -> Self {
        self.with(|inner| inner.connect_timeout = timeout)
    }

    /// The delays between reconnection attempts of a consumer that lost its connection: the
    /// first is `min`, each next one doubles, up to `max` (default 100 ms to 5 s).
    pub fn reconnect_backoff(self, min: Duration, max: Duration) -> Self {
        self.with(|inner| {
            inner.backoff_min = min;
            inner.backoff_max = max.max(min);
        })
    }

    /// The broker's address as shown in errors and logs (no credentials).
    pub fn address(&self) -> &str {
        &self.inner.address
    }

    fn with(self, f: impl FnOnce(&mut Inner)) -> Self {
        let mut inner = Inner {
            url: self.inner.url.clone(),
            address: self.inner.address.clone(),
            connect_timeout: self.inner.connect_timeout,
            backoff_min: self.inner.backoff_min,
            backoff_max: self.inner.backoff_max,
            publisher: Mutex::new(None),
            generations: AtomicU64::new(0),
            requester: Mutex::new(None),
            links: Links::default(),
        };
        f(&mut inner);
        RabbitBroker {
            inner: Arc::new(inner),
        }
    }

    /// Publishes to `exchange` with `routing_key` (the generic [`Broker::publish_message`]
    /// maps `destination` and `key` onto these).
    pub async fn publish_to(
        &self,
        exchange: &str,
        routing_key: &str,
        message: &Outgoing,
    ) -> Result<(), BrokerError> {
        let mut retry = Retry::No;
        loop {
            let used = match retry {
                Retry::Private => self.inner.private_channel().await?,
                _ => self.inner.publisher_channel().await?,
            };
            let result = async {
                let confirm = used
                    .channel
                    .basic_publish(
                        exchange.into(),
                        routing_key.into(),
                        BasicPublishOptions::default(),
                        &message.body,
                        properties_from(&message.headers),
                    )
                    .await?
                    .await?;
                Ok::<_, lapin::Error>(confirm)
            }
            .await;
            if retry == Retry::Private && used.channel.status().connected() {
                if let Err(e) = used.channel.close(200, "done".into()).await {
                    tracing::debug!(error = %e, "closing a retry channel");
                }
            }
            let e = match result {
                Ok(confirm) if confirm.is_nack() => {
                    return Err(BrokerError::operation(KIND, "basic.publish", Nacked))
                }
                Ok(_) => return Ok(()),
                Err(e) => e,
            };
            if retry != Retry::No {
                return Err(BrokerError::operation(KIND, "basic.publish", e));
            }
            // Unconfirmed: publish again, once (at-least-once: RabbitMQ may have routed the
            // first copy).
            retry = if self.inner.forget_if_lost(&used, &e).await {
                // On a new connection.
                Retry::Shared
            } else if e.is_amqp_soft_error()
                || matches!(e.kind(), lapin::ErrorKind::InvalidChannelState(..))
            {
                // A channel error (404 missing exchange, 406, ...) closes the channel, and
                // lapin fails every publish still waiting on it with that error, whichever
                // publish caused it. On a channel of its own, a publish that only shared the
                // closed channel goes through, and the guilty one fails again, alone (on the
                // shared channel, its retry would close that one too).
                Retry::Private
            } else {
                return Err(BrokerError::operation(KIND, "basic.publish", e));
            };
            tracing::debug!(
                address = self.inner.address,
                error = %e,
                "publishing failed (lost connection or closed channel); retrying once"
            );
        }
    }
}

/// How a publish is being retried.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// First attempt.
    No,
    /// Again on the shared publishing channel (a new connection).
    Shared,
    /// Again on a channel of its own, closed afterwards.
    Private,
}

/// Whether `e` says the connection (not just the channel) is gone.
fn connection_lost(e: &lapin::Error) -> bool {
    e.is_io_error()
        || e.is_amqp_hard_error()
        || matches!(
            e.kind(),
            lapin::ErrorKind::MissingHeartbeatError | lapin::ErrorKind::InvalidConnectionState(_)
        )
}

impl Inner {
    /// Opens a connection, within the connect timeout, mapping every failure to
    /// [`BrokerError::Connect`] with the redacted address.
    pub(crate) async fn open(&self, name: &str) -> Result<Connection, BrokerError> {
        let connect_error = |source: brook_runtime::BoxError| BrokerError::Connect {
            broker: KIND,
            address: self.address.clone(),
            source,
        };
        let uri: AMQPUri = self
            .url
            .parse()
            .map_err(|_: String| connect_error(Box::new(BadUrl)))?;
        let properties = ConnectionProperties::default().with_connection_name(name.into());
        match tokio::time::timeout(
            self.connect_timeout,
            Connection::connect_uri(uri, properties),
        )
        .await
        {
            Ok(Ok(connection)) => Ok(connection),
            Ok(Err(e)) => Err(connect_error(Box::new(e))),
            Err(_) => Err(connect_error(Box::new(TimedOut(self.connect_timeout)))),
        }
    }

    /// The publishing channel (in confirm mode): a new channel on the same connection when
    /// RabbitMQ closed the last one over an error, a new connection if there is none or the
    /// last one died.
    async fn publisher_channel(&self) -> Result<PublishChannel, BrokerError> {
        let mut publisher = self.publisher.lock().await;
        if let Some(p) = publisher.as_mut() {
            if p.connection.status().connected() {
                if !p.channel.status().connected() {
                    p.channel = confirm_channel(&p.connection).await?;
                }
                return Ok(PublishChannel {
                    channel: p.channel.clone(),
                    generation: p.generation,
                });
            }
        }
        publisher.take();
        let connection = self.open("brook publisher").await?;
        let channel = confirm_channel(&connection).await?;
        let generation = self.generations.fetch_add(1, Ordering::Relaxed) + 1;
        self.links.set_publisher(Some(connection.status()));
        *publisher = Some(Publisher {
            connection,
            channel: channel.clone(),
            generation,
        });
        Ok(PublishChannel {
            channel,
            generation,
        })
    }

    /// A new confirm channel on the publishing connection, for one retried publish (the
    /// shared channel when there is no working connection to open it on).
    async fn private_channel(&self) -> Result<PublishChannel, BrokerError> {
        {
            let publisher = self.publisher.lock().await;
            if let Some(p) = publisher
                .as_ref()
                .filter(|p| p.connection.status().connected())
            {
                return Ok(PublishChannel {
                    channel: confirm_channel(&p.connection).await?,
                    generation: p.generation,
                });
            }
        }
        self.publisher_channel().await
    }

    /// After a failed publish on `used`: whether its connection is lost. Forgets the
    /// publisher only if it is still the one `used` belongs to, so a concurrent publish that
    /// already reopened it keeps the fresh connection.
    async fn forget_if_lost(&self, used: &PublishChannel, e: &lapin::Error) -> bool {
        let mut publisher = self.publisher.lock().await;
        match publisher.as_ref() {
            Some(p) if p.generation == used.generation => {
                let lost = connection_lost(e) || !p.connection.status().connected();
                if lost && p.channel.id() == used.channel.id() {
                    publisher.take();
                }
                lost
            }
            // Replaced since: that connection was lost (only a lost connection is replaced).
            _ => true,
        }
    }
}

pub(crate) async fn confirm_channel(connection: &Connection) -> Result<Channel, BrokerError> {
    let channel = connection
        .create_channel()
        .await
        .map_err(|e| BrokerError::operation(KIND, "channel.open", e))?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(|e| BrokerError::operation(KIND, "confirm.select", e))?;
    Ok(channel)
}

impl fmt::Debug for RabbitBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RabbitBroker")
            .field("address", &self.inner.address)
            .field("connect_timeout", &self.inner.connect_timeout)
            .finish_non_exhaustive()
    }
}

/// The exchange and routing key `message` goes to: without a key, the default exchange and
/// `destination` (a queue); with one, `destination` is the exchange.
fn route(message: &Outgoing) -> (String, String) {
    match &message.key {
        Some(key) => (
            message.destination.clone(),
            String::from_utf8_lossy(key).into_owned(),
        ),
        None => (String::new(), message.destination.clone()),
    }
}

/// `url` without its user information, parsed: the user information ends at the last `@`
/// ([`UrlParts`]), so an unencoded `/`, `?` or `#` in a password cannot make a URL parser take
/// part of it for the host, port or vhost.
fn parse_without_credentials(url: &str) -> Option<AMQPUri> {
    let parts = UrlParts::split(url);
    let bare = match parts.scheme {
        Some(scheme) => format!("{scheme}://{}", parts.rest),
        None => parts.rest.to_owned(),
    };
    bare.parse().ok()
}

/// `scheme://host:port/vhost`: the URL without user name and password.
fn redact(url: &str) -> String {
    match parse_without_credentials(url) {
        Some(uri) => {
            let scheme = match uri.scheme {
                AMQPScheme::AMQP => "amqp",
                AMQPScheme::AMQPS => "amqps",
            };
            let vhost = if uri.vhost == "/" { "%2f" } else { &uri.vhost };
            format!(
                "{scheme}://{}:{}/{vhost}",
                uri.authority.host, uri.authority.port
            )
        }
        None => "(unparsable AMQP URL)".to_owned(),
    }
}

/// The broker's [`ServerInfo`]: host and port, `amqp` or `amqps`, AMQP 0.9.1, the vhost.
fn server_info(url: &str) -> Option<ServerInfo> {
    let uri = parse_without_credentials(url)?;
    let protocol = match uri.scheme {
        AMQPScheme::AMQP => "amqp",
        AMQPScheme::AMQPS => "amqps",
    };
    let host = &uri.authority.host;
    let host = match host.contains(':') {
        true => format!("[{host}]:{}", uri.authority.port),
        false => format!("{host}:{}", uri.authority.port),
    };
    Some(
        ServerInfo::new(host, protocol)
            .with_protocol_version("0.9.1")
            .with_pathname(uri.vhost),
    )
}

impl<K: brook_runtime::kind::Kind + brook_runtime::SameKind<Rabbit>> Accepts<K> for RabbitBroker {}

impl Broker for RabbitBroker {
    type Consumer = RabbitConsumer;

    fn kind(&self) -> BrokerKind {
        KIND
    }

    /// Opens the publishing connection: a wrong address, port or password fails here, within
    /// the connect timeout, naming RabbitMQ and the address.
    async fn connect(&self) -> Result<(), BrokerError> {
        self.inner.publisher_channel().await.map(drop)
    }

    /// Whether every subscriber's connection is up (a consumer that lost its connection has
    /// none until it reconnected, and one that cannot consume again, e.g. its queue is gone
    /// with `declare = false`, has none either), from lapin's connection state; with no
    /// subscriber, whether the publishing connection is. `Some(false)` before
    /// [`connect`](Broker::connect) and after [`close`](Broker::close).
    fn is_connected(&self) -> Option<bool> {
        Some(self.inner.links.connected())
    }

    /// Host and port, `amqp` / `amqps`, AMQP `0.9.1` and the vhost (`/` by default), from the
    /// URL; never the user name or password.
    fn server(&self) -> Option<ServerInfo> {
        server_info(&self.inner.url)
    }

    async fn subscribe(&self, subscription: &Subscription) -> Result<RabbitConsumer, BrokerError> {
        let topology = Topology::from_subscription(subscription)?;
        RabbitConsumer::start(self.inner.clone(), topology).await
    }

    /// Publishes with publisher confirms, persistent. Without a key, `destination` is a queue
    /// (the default exchange routes by queue name); with a key, `destination` is the exchange
    /// and the key the routing key.
    async fn publish_message(&self, message: Outgoing) -> Result<(), BrokerError> {
        let (exchange, routing_key) = route(&message);
        self.publish_to(&exchange, &routing_key, &message).await
    }

    /// Publishes a reply through the default exchange with `reply_to` as the routing key, as
    /// FastStream does: a queue name or a direct reply-to address
    /// (`amq.rabbitmq.reply-to.…`), whatever key the handler set. FastStream's
    /// `queue|exchange` form goes to that exchange with `queue` as the routing key.
    async fn publish_reply(&self, message: Outgoing) -> Result<(), BrokerError> {
        match message.destination.split_once('|') {
            Some((queue, exchange)) => self.publish_to(exchange, queue, &message).await,
            None => self.publish_to("", &message.destination, &message).await,
        }
    }

    /// Publishes `message` as [`publish_message`](Broker::publish_message) would, with
    /// `reply_to = amq.rabbitmq.reply-to` (RabbitMQ's direct reply-to, as FastStream's
    /// `broker.request`), and waits at most `timeout` for the reply with its `correlation_id`.
    /// The reply channel is opened on the first request (within the connect timeout, not
    /// counted in `timeout`) and shared by all requests of this client.
    async fn request_message(
        &self,
        mut message: Outgoing,
        timeout: Duration,
    ) -> Result<Message, BrokerError> {
        let correlation_id = message.ensure_correlation_id();
        message.headers.insert(REPLY_TO, DIRECT_REPLY_TO);
        let (exchange, routing_key) = route(&message);
        let request = self.inner.prepare_request(&correlation_id).await?;
        match tokio::time::timeout(timeout, request.send(&exchange, &routing_key, &message)).await {
            Ok(reply) => reply,
            // Dropping the request took it out of the waiting map: a late reply is dropped.
            Err(_) => Err(BrokerError::RequestTimeout {
                broker: KIND,
                destination: message.destination,
                timeout,
            }),
        }
    }

    async fn close(&self) -> Result<(), BrokerError> {
        if let Some(requester) = self.inner.take_requester().await {
            requester.close().await;
        }
        let publisher = self.inner.publisher.lock().await.take();
        self.inner.links.set_publisher(None);
        if let Some(p) = publisher {
            if let Err(e) = p.connection.close(200, "bye".into()).await {
                tracing::debug!(error = %e, "closing the publishing connection");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_address_has_no_credentials() {
        assert_eq!(
            redact("amqp://u:secret@example.org:5673/prod"),
            "amqp://example.org:5673/prod"
        );
        assert_eq!(
            redact("amqp://u:secret@127.0.0.1:5672/%2f"),
            "amqp://127.0.0.1:5672/%2f"
        );
        assert!(!redact("amqp://u:secret@host:notaport").contains("secret"));
    }

    #[test]
    fn the_server_has_no_credentials() {
        let server = RabbitBroker::new("amqps://app:s3cret@rabbit.internal:5671/prod")
            .server()
            .expect("a server");
        assert_eq!(server.host, "rabbit.internal:5671");
        assert_eq!(server.protocol, "amqps");
        assert_eq!(server.protocol_version.as_deref(), Some("0.9.1"));
        assert_eq!(server.pathname.as_deref(), Some("prod"));
        let server = RabbitBroker::new("amqp://guest:guest@127.0.0.1:5672/%2f")
            .server()
            .expect("a server");
        assert_eq!(server.host, "127.0.0.1:5672");
        assert_eq!(server.protocol, "amqp");
        assert_eq!(server.pathname.as_deref(), Some("/"));
        // Unencoded `/`, `?`, `#`, `:`, `@` in a password: still user information, never shown
        // (a URL parser alone would take `app` for the host and `12` for the port).
        for url in [
            "amqp://app:12/se@cret@rabbit:5672/prod",
            "amqp://app:se?cret@rabbit:5672/prod",
            "amqp://app:se#cret@rabbit:5672/prod",
            "amqp://app:12@rabbit/prod",
        ] {
            let server = RabbitBroker::new(url).server().expect("a server");
            let shown = format!("{server:?}");
            assert!(
                !shown.contains("app") && !shown.contains("cret") && !shown.contains("12"),
                "{url} -> {shown}"
            );
            assert!(server.host.starts_with("rabbit:"), "{url} -> {shown}");
            assert!(!redact(url).contains("cret"), "{url} -> {}", redact(url));
        }
        assert_eq!(RabbitBroker::new("amqp:user:secret@host").server(), None);
    }

    #[test]
    fn not_connected_before_connect() {
        assert_eq!(
            RabbitBroker::new("amqp://127.0.0.1:5672").is_connected(),
            Some(false)
        );
    }

    /// amq-protocol-uri's error for a cannot-be-a-base URL is `Invalid URL: '<url>'`.
    #[tokio::test]
    async fn an_unparsable_url_never_shows_its_password() {
        for url in [
            "amqp:user:secret@host",
            "amqp://user:secret@host:notaport/x",
        ] {
            let broker = RabbitBroker::new(url);
            let err = broker.connect().await.expect_err("unparsable");
            assert!(matches!(err, BrokerError::Connect { .. }), "{err:?}");
            let shown = format!("{err} / {err:?} / {broker:?}");
            assert!(!shown.contains("secret"), "{shown}");
            assert!(shown.contains("cannot be parsed"), "{shown}");
        }
    }
}
