//! What a broker crate implements: connect, subscribe (a [`Consumer`] of [`Message`]s, each
//! with its [`Settler`](crate::Settler)), publish, close. Nothing here decides *when* to
//! settle; that is the engine's job, so broker crates only map protocol calls.

use std::future::Future;
use std::time::Duration;

use brook_caps::BrokerKind;
use bytes::Bytes;
use serde::Serialize;

use crate::codec;
use crate::error::BrokerError;
use crate::handler::kind::Kind;
use crate::headers::{Headers, CONTENT_TYPE, CORRELATION_ID, REPLY_TO};
use crate::message::Message;
use crate::subscription::Subscription;

/// A broker client. Cheap to clone (clones share the connection).
pub trait Broker: Clone + Send + Sync + 'static {
    /// What [`Broker::subscribe`] returns.
    type Consumer: Consumer;

    /// Which broker this is.
    fn kind(&self) -> BrokerKind;

    /// Connect, failing with a clear error (naming the broker and address, never a password)
    /// rather than hanging when the broker is unreachable.
    fn connect(&self) -> impl Future<Output = Result<(), BrokerError>> + Send;

    /// Whether this broker, as configured, can serve `subscription` (connection facts such as
    /// an MQTT clean session); `App::start` calls it for every subscriber before connecting and
    /// reports every refusal at once. The error names the subscriber. The default: always.
    fn check(&self, subscription: &Subscription) -> Result<(), BrokerError> {
        let _ = subscription;
        Ok(())
    }

    /// Start consuming `subscription` (declaring what it needs). The policy is in the
    /// subscription because some brokers consume differently under `AckFirst` (RabbitMQ's
    /// no_ack, Kafka's auto-commit).
    fn subscribe(
        &self,
        subscription: &Subscription,
    ) -> impl Future<Output = Result<Self::Consumer, BrokerError>> + Send;

    /// Publish one message, awaiting the broker's confirmation where it gives one.
    fn publish_message(
        &self,
        message: Outgoing,
    ) -> impl Future<Output = Result<(), BrokerError>> + Send;

    /// Whether the client is connected right now, where it can tell (`None`: it cannot), for
    /// [`RunningApp::health`](crate::RunningApp::health). The default: `None`.
    fn is_connected(&self) -> Option<bool> {
        None
    }

    /// Where this broker is, for documents that describe the App (AsyncAPI `servers`): host
    /// and port, protocol, and never credentials. The default: `None` (not described).
    fn server(&self) -> Option<ServerInfo> {
        None
    }

    /// Publish a reply to a message's `reply_to`. The default publishes to it like any
    /// destination; brokers whose reply addresses are not ordinary destinations override it
    /// (RabbitMQ's `amq.rabbitmq.reply-to` through the default exchange, a NATS inbox on core
    /// NATS rather than JetStream).
    fn publish_reply(
        &self,
        message: Outgoing,
    ) -> impl Future<Output = Result<(), BrokerError>> + Send {
        self.publish_message(message)
    }

    /// Publish `message` as a request and wait at most `timeout` for its reply: the message
    /// gets a `reply_to` the broker routes back to this client and a `correlation_id` (kept if
    /// set), and the reply is the first message back with that id. A timeout is
    /// [`BrokerError::RequestTimeout`], and a reply that arrives later is dropped. The default:
    /// [`BrokerError::Unsupported`], for brokers that have no way to route a reply.
    fn request_message(
        &self,
        message: Outgoing,
        timeout: Duration,
    ) -> impl Future<Output = Result<Message, BrokerError>> + Send {
        let _ = (message, timeout);
        let broker = self.kind();
        async move {
            Err(BrokerError::Unsupported {
                broker,
                what: "request/reply",
                why: "this broker has no way to route a reply back".to_owned(),
            })
        }
    }

    /// Disconnect (after consumers have closed).
    fn close(&self) -> impl Future<Output = Result<(), BrokerError>> + Send;

    /// Publish `value` to `destination`: strings as text, byte strings raw, anything else as
    /// JSON (see [`codec::encode`]), with a new `correlation_id` (as FastStream's `publish`
    /// does), which handlers' outputs and replies then carry on. To publish exactly a message
    /// as built, headers and all, use [`publish_message`](Broker::publish_message).
    fn publish<T: Serialize + ?Sized + Sync>(
        &self,
        value: &T,
        destination: &str,
    ) -> impl Future<Output = Result<(), BrokerError>> + Send {
        let message = Outgoing::encode(value, destination).map(|mut m| {
            m.ensure_correlation_id();
            m
        });
        async move { self.publish_message(message?).await }
    }

    /// Send `value` (encoded as [`publish`](Broker::publish) does) to `destination` as a
    /// request and wait at most `timeout` for the reply; see [`Broker::request_message`].
    ///
    /// ```
    /// # async fn demo(broker: impl brook_runtime::Broker) -> Result<(), brook_runtime::BrokerError> {
    /// use std::time::Duration;
    /// let reply = broker.request(&serde_json::json!({"n": 2}), "square", Duration::from_secs(5)).await?;
    /// let n: u64 = serde_json::from_slice(reply.body()).unwrap_or_default();
    /// # Ok(()) }
    /// ```
    fn request<T: Serialize + ?Sized + Sync>(
        &self,
        value: &T,
        destination: &str,
        timeout: Duration,
    ) -> impl Future<Output = Result<Message, BrokerError>> + Send {
        let message = Outgoing::encode(value, destination);
        async move { self.request_message(message?, timeout).await }
    }
}

/// A stream of deliveries for one subscription.
pub trait Consumer: Send + 'static {
    /// The next delivery; `None` when the consumer has ended for good. Transient failures
    /// (a broker restart) are the consumer's to recover from; it yields `Err` only for what the
    /// App should log.
    fn next(&mut self) -> impl Future<Output = Option<Result<Message, BrokerError>>> + Send;

    /// Stop consuming, after every message handed out has been settled or abandoned. Brokers
    /// that need it commit here (Kafka, synchronously) and hand unsettled messages back.
    fn close(self) -> impl Future<Output = Result<(), BrokerError>> + Send;
}

/// Which handlers a broker can run: its own, and for the in-memory broker, everyone's (so
/// handlers written for Kafka can be tested in memory).
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot run a handler declared for another broker (`{K}`)",
    label = "this handler was checked against `{K}`'s rules",
    note = "declare the subscriber with the broker the App uses (`broker = ...` in #[subscriber]), or test it with MemoryBroker"
)]
pub trait Accepts<K: Kind> {}

/// `Self` is the broker `K`: how a broker crate says which handlers it runs, so that a handler
/// of another broker gets this error rather than a type mismatch:
/// `impl<K: Kind + SameKind<kind::Rabbit>> Accepts<K> for RabbitBroker {}`.
#[diagnostic::on_unimplemented(
    message = "a handler declared for `{Self}` cannot run on a broker of `{K}`",
    label = "declared for `{Self}`",
    note = "add a broker of that kind to the App with App::with_broker(...), declare the subscriber for one of the App's brokers, or test it on an App of MemoryBroker (which runs every handler)"
)]
pub trait SameKind<K> {}

impl<K: Kind> SameKind<K> for K {}

/// A message to publish.
///
/// ```
/// use brook_runtime::Outgoing;
/// #[derive(serde::Serialize)]
/// struct Order { id: u64 }
/// let out = Outgoing::encode(&Order { id: 1 }, "orders").unwrap()
///     .with_correlation_id("abc")
///     .with_header("x-tenant", "acme")
///     .with_key("customer-42");
/// assert_eq!(out.headers.get("content-type"), Some("application/json"));
/// assert_eq!(&out.body[..], br#"{"id":1}"#);
/// ```
#[derive(Clone, Debug, Default)]
pub struct Outgoing {
    /// Topic / exchange / subject / channel / list / stream to publish to.
    pub destination: String,
    /// The payload.
    pub body: Bytes,
    /// Headers, with FastStream's names for the well-known ones.
    pub headers: Headers,
    /// Partitioning / ordering key where the broker has one (Kafka key, routing key...).
    pub key: Option<Bytes>,
}

impl Outgoing {
    /// A raw payload with no headers.
    pub fn new(destination: impl Into<String>, body: impl Into<Bytes>) -> Self {
        Outgoing {
            destination: destination.into(),
            body: body.into(),
            headers: Headers::new(),
            key: None,
        }
    }

    /// `value` encoded as [`codec::encode`] does, with its content type.
    pub fn encode<T: Serialize + ?Sized>(
        value: &T,
        destination: impl Into<String>,
    ) -> Result<Self, BrokerError> {
        let (body, content_type) = codec::encode(value).map_err(BrokerError::Encode)?;
        let mut out = Outgoing::new(destination, body);
        if let Some(ct) = content_type {
            out.headers.insert(CONTENT_TYPE, ct);
        }
        Ok(out)
    }

    /// Adds a header.
    pub fn with_header(
        mut self,
        name: impl AsRef<str> + Into<String>,
        value: impl AsRef<str> + Into<String>,
    ) -> Self {
        self.headers.insert(name, value);
        self
    }

    /// Sets `correlation_id`.
    pub fn with_correlation_id(self, id: impl Into<String>) -> Self {
        self.with_header(CORRELATION_ID, id.into())
    }

    /// Sets `reply_to`.
    pub fn with_reply_to(self, destination: impl Into<String>) -> Self {
        self.with_header(REPLY_TO, destination.into())
    }

    /// Sets the key.
    pub fn with_key(mut self, key: impl Into<Bytes>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// The `correlation_id`, set to a new one first if there is none (what a request does).
    pub fn ensure_correlation_id(&mut self) -> String {
        match self.headers.get(CORRELATION_ID) {
            Some(id) => id.to_owned(),
            None => {
                let id = crate::output::new_correlation_id();
                self.headers.insert(CORRELATION_ID, id.clone());
                id
            }
        }
    }
}

/// Where a broker is, as documents describing an App show it ([`Broker::server`]): no user
/// names, passwords or tokens, ever.
///
/// ```
/// use brook_runtime::ServerInfo;
/// let server = ServerInfo::new("127.0.0.1:5672", "amqp").with_protocol_version("0.9.1").with_pathname("/");
/// assert_eq!(server.host, "127.0.0.1:5672");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerInfo {
    /// Host and port (`127.0.0.1:9092`); for a broker with several addresses (Kafka's
    /// bootstrap servers), the first, with the rest in `description`.
    pub host: String,
    /// The protocol, as AsyncAPI names it: `kafka`, `amqp`, `nats`, `redis`, `mqtt`; over TLS
    /// `kafka-secure`, `amqps`, `rediss`, `secure-mqtt`.
    pub protocol: String,
    /// The protocol's version (`0.9.1`, `5`, ...), where the client knows it.
    pub protocol_version: Option<String>,
    /// A path on the server: a RabbitMQ virtual host, a Redis database number.
    pub pathname: Option<String>,
    /// Anything else worth saying (more bootstrap servers, a cluster name).
    pub description: Option<String>,
}

impl ServerInfo {
    /// A server at `host` speaking `protocol`.
    pub fn new(host: impl Into<String>, protocol: impl Into<String>) -> Self {
        ServerInfo {
            host: host.into(),
            protocol: protocol.into(),
            protocol_version: None,
            pathname: None,
            description: None,
        }
    }

    /// With the protocol's version.
    pub fn with_protocol_version(mut self, version: impl Into<String>) -> Self {
        self.protocol_version = Some(version.into());
        self
    }

    /// With a path on the server.
    pub fn with_pathname(mut self, pathname: impl Into<String>) -> Self {
        self.pathname = Some(pathname.into());
        self
    }

    /// With a description.
    pub fn with_description(mut self, description: impl Into<String>) -> Self {
        self.description = Some(description.into());
        self
    }
}
