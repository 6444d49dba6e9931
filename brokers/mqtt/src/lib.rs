//! MQTT broker for [brook](https://docs.rs/brook), on [rumqttc](https://docs.rs/rumqttc) with
//! manual acknowledgements: MQTT 3.1.1 (default) and MQTT 5 ([`ProtocolVersion`]), where
//! headers travel as publish properties (content type, correlation data, response topic,
//! user properties).
//!
//! ```no_run
//! use brook_mqtt::MqttBroker;
//! # async fn run() -> Result<(), brook_runtime::BrokerError> {
//! use brook_runtime::Broker as _;
//! let broker = MqttBroker::new("mqtt://127.0.0.1:1883")
//!     .client_id("billing-1")        // a stable id ...
//!     .persistent_session(true);     // ... and a persistent session: nothing unsettled is lost
//! broker.connect().await?;
//! broker.publish(&serde_json::json!({"id": 1}), "orders/created").await?;
//! # Ok(()) }
//! ```
//!
//! # How the ack policies map onto MQTT
//! - **ack** = PUBACK (QoS 1) / PUBREC (QoS 2), sent in the order the messages arrived, as MQTT
//!   requires (except after a message that is being redelivered, see below); QoS 0 has
//!   nothing to ack.
//! - **nack** = keep the PUBACK withheld and redeliver the message to the handler from brook,
//!   after the nack's delay, or [`redelivery_delay`] (100 ms, doubling, at most 5 s); the
//!   connection stays up. A message being redelivered does not hold back the acks of later
//!   messages: its own ack goes out when it is settled, after theirs. The broker redelivers
//!   it only if the connection is lost meanwhile, or if the App stops with it unsettled (on
//!   the next connection with the same client id and a persistent session).
//! - **reject** = ack (MQTT has no reject), after publishing the message to the subscriber's
//!   `dead_letter_topic` (QoS 1, confirmed) if it has one.
//! - **delivery count**: counted by brook (MQTT has only the DUP flag): local redeliveries,
//!   and resends after a resumed session (by packet id), so `max_deliveries` applies. The
//!   count lives in the process: after a restart it starts at 1 again.
//! - `NackOnError` on a clean session is refused before anything connects ([`Broker::check`],
//!   which `App::start` calls) and by `subscribe`: a message still waiting for its redelivery
//!   when the App stops would be lost with the session.
//!
//! # Request/reply
//! MQTT 5 only: [`Broker::request`] publishes with the response topic
//! `brook/replies/<client id>` (subscribed at QoS 1 by the first request, for the
//! connection's life) and correlation data, and returns the reply with that correlation id; a
//! reply after the timeout is dropped. On MQTT 3.1.1, which has no response topic, it fails at
//! once with [`BrokerError::Unsupported`]; handlers' outputs work there, but no header travels
//! (an output arrives without its correlation id).
//!
//! See `docs/brokers/mqtt.md` for the full mapping, defaults and gotchas.

#![warn(missing_docs)]

mod acks;
mod connection;
mod consumer;
mod options;
mod proto;
mod reply;

use std::sync::{Arc, PoisonError, Weak};
use std::time::Duration;

use brook_runtime::{
    kind, Accepts, AckPolicy, Broker, BrokerError, BrokerKind, MqttOptions, Outgoing, ServerInfo,
    Subscription,
};
use tokio::sync::Mutex;

use crate::connection::{qos_from, Shared};
use crate::consumer::SubscriberSettings;
pub use crate::consumer::{
    redelivery_delay, MqttConsumer, MqttMessage, DELIVERY_COUNT_HEADER, ORIGINAL_TOPIC_HEADER,
    REASON_HEADER,
};
pub use crate::options::ProtocolVersion;
use crate::options::{generated_client_id, Config};

/// An MQTT client for brook: one connection (one client id), shared by every subscriber and
/// publisher of the App. Cheap to clone.
#[derive(Clone)]
pub struct MqttBroker {
    config: Arc<Result<Config, String>>,
    conn: Arc<Mutex<Option<Arc<Shared>>>>,
    /// The response topic of the current connection, subscribed by the first request.
    replies: Arc<Mutex<Option<Arc<reply::Replies>>>>,
    /// The current connection, for [`Broker::is_connected`] (which may not wait for `conn`'s
    /// lock: it is held while connecting).
    current: Arc<std::sync::Mutex<Weak<Shared>>>,
}

impl std::fmt::Debug for MqttBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Config's Debug redacts the password.
        match &*self.config {
            Ok(c) => f.debug_tuple("MqttBroker").field(c).finish(),
            Err(e) => f.debug_tuple("MqttBroker").field(e).finish(),
        }
    }
}

impl MqttBroker {
    /// A broker at `url`: `mqtt://[user[:password]@]host[:port][?client_id=..&clean_session=false]`
    /// (port 1883 by default), or `mqtts://` for TLS (port 8883). Nothing is contacted until
    /// [`Broker::connect`]; an invalid URL is reported there.
    ///
    /// Defaults: a generated client id, a clean session, QoS 1 publishes, keep-alive 30 s,
    /// connect timeout 5 s.
    pub fn new(url: &str) -> Self {
        MqttBroker {
            config: Arc::new(Config::parse(url).map_err(|e| e.to_string())),
            conn: Arc::new(Mutex::new(None)),
            replies: Arc::new(Mutex::new(None)),
            current: Arc::new(std::sync::Mutex::new(Weak::new())),
        }
    }

    fn with(mut self, f: impl FnOnce(&mut Config)) -> Self {
        if let Ok(config) = Arc::make_mut(&mut self.config) {
            f(config);
        }
        self
    }

    /// The client id. The broker keeps one session per client id; a persistent session (and
    /// so redelivery of nacked messages) needs a stable one.
    pub fn client_id(self, id: impl Into<String>) -> Self {
        let id = id.into();
        self.with(|c| c.client_id = id)
    }

    /// `true`: connect with `clean_session = false`, so the broker keeps the subscriptions and
    /// unacknowledged messages while the client is away, and redelivers them when it comes
    /// back (needed by `NackOnError`, so that a message waiting for its redelivery when the
    /// App stops is not lost). Set a stable [`MqttBroker::client_id`] with it.
    pub fn persistent_session(self, persistent: bool) -> Self {
        self.with(|c| c.clean_session = !persistent)
    }

    /// User name and password (kept out of `Debug` output and error messages).
    pub fn credentials(self, user: impl Into<String>, password: impl Into<String>) -> Self {
        let (user, password) = (user.into(), password.into());
        self.with(|c| {
            c.username = Some(user);
            c.password = Some(password);
        })
    }

    /// Keep-alive interval (default 30 s).
    pub fn keep_alive(self, interval: Duration) -> Self {
        self.with(|c| c.keep_alive = interval)
    }

    /// How long [`Broker::connect`] may take before it fails (default 5 s).
    pub fn connect_timeout(self, timeout: Duration) -> Self {
        self.with(|c| c.connect_timeout = timeout)
    }

    /// QoS of [`Broker::publish`] (0, 1 or 2; default 1).
    pub fn publish_qos(self, qos: u8) -> Self {
        self.with(|c| c.publish_qos = qos.min(2))
    }

    /// How many of our QoS 1/2 publishes may await the broker's ack at once (default 100).
    pub fn inflight(self, n: u16) -> Self {
        self.with(|c| c.inflight = n.max(1))
    }

    /// Capacity of rumqttc's request queue (publishes, acks, subscribes waiting for the
    /// connection; default 10 000). Acks that do not fit wait in an unbounded queue of brook's.
    pub fn request_capacity(self, n: usize) -> Self {
        self.with(|c| c.request_capacity = n.max(10))
    }

    /// Connect over TLS (also chosen by an `mqtts://` URL, whose default port is 8883). Needs
    /// the `tls` feature (on by default): rustls with ring, trusting the system's root
    /// certificates and those given to [`MqttBroker::tls_ca_pem`].
    pub fn tls(self, on: bool) -> Self {
        self.with(|c| c.tls = on)
    }

    /// Also trust the CA certificate(s) in `pem` (e.g. a private CA's `ca.crt`).
    pub fn tls_ca_pem(self, pem: impl Into<Vec<u8>>) -> Self {
        let pem = Arc::new(pem.into());
        self.with(|c| c.ca_pem = Some(pem))
    }

    /// The protocol version: MQTT 3.1.1 (default) or 5 (headers as properties).
    pub fn protocol(self, version: ProtocolVersion) -> Self {
        self.with(|c| c.protocol = version)
    }

    /// MQTT 5: how long the broker keeps a persistent session after the connection ends
    /// (default: forever, like a 3.1.1 persistent session).
    pub fn session_expiry(self, expiry: Duration) -> Self {
        let secs = u32::try_from(expiry.as_secs()).unwrap_or(u32::MAX);
        self.with(|c| c.session_expiry_secs = secs)
    }

    /// A fresh client id: `brook-<pid>-<nanos>-<n>`.
    pub fn generate_client_id() -> String {
        generated_client_id()
    }

    fn config(&self) -> Result<&Config, BrokerError> {
        self.config
            .as_ref()
            .as_ref()
            .map_err(|message| BrokerError::Invalid {
                broker: BrokerKind::Mqtt,
                message: message.clone(),
            })
    }

    async fn shared(&self) -> Result<Arc<Shared>, BrokerError> {
        let mut conn = self.conn.lock().await;
        if let Some(shared) = conn.as_ref() {
            if !shared.closing() {
                return Ok(shared.clone());
            }
        }
        let shared = connection::connect(self.config()?.clone()).await?;
        *conn = Some(shared.clone());
        *self.current.lock().unwrap_or_else(PoisonError::into_inner) = Arc::downgrade(&shared);
        Ok(shared)
    }

    /// The connection's response topic, subscribed on first use (again after a new
    /// connection).
    async fn replies(&self) -> Result<Arc<reply::Replies>, BrokerError> {
        let mut slot = self.replies.lock().await;
        let shared = self.shared().await?;
        if let Some(r) = slot.as_ref().filter(|r| r.serves(&shared)) {
            return Ok(r.clone());
        }
        let r = Arc::new(reply::Replies::start(shared).await?);
        *slot = Some(r.clone());
        Ok(r)
    }

    /// Publishes `message` with an explicit QoS (0, 1, 2) and retain flag, waiting for the
    /// broker's PUBACK (QoS 1) or PUBCOMP (QoS 2).
    ///
    /// MQTT 5 sends `message.headers` as properties (see the crate docs); MQTT 3.1.1 has no
    /// headers, so they are not sent there. `message.key` is never sent.
    pub async fn publish_with(
        &self,
        message: Outgoing,
        qos: u8,
        retain: bool,
    ) -> Result<(), BrokerError> {
        if qos > 2 {
            return Err(BrokerError::Invalid {
                broker: BrokerKind::Mqtt,
                message: format!("MQTT QoS is 0, 1 or 2, not {qos}"),
            });
        }
        let shared = self.shared().await?;
        if !message.headers.is_empty() && shared.config.protocol == ProtocolVersion::V311 {
            tracing::trace!(
                topic = %message.destination,
                "MQTT 3.1.1 carries no headers; they are not sent"
            );
        }
        let timeout = shared.config.connect_timeout.max(Duration::from_secs(10));
        shared
            .publish(
                message.destination,
                qos_from(qos),
                retain,
                message.body,
                &message.headers,
                timeout,
            )
            .await
    }

    /// How many times the connection has been established (1 after connecting; more after
    /// reconnects). For tests and monitoring.
    pub async fn connection_count(&self) -> u64 {
        match self.conn.lock().await.as_ref() {
            Some(shared) => shared
                .connections
                .load(std::sync::atomic::Ordering::Relaxed),
            None => 0,
        }
    }

    /// How many QoS 1/2 messages of the current connection brook holds unacknowledged: being
    /// handled, waiting for a handler or for a redelivery, or acked and waiting for an earlier
    /// message's ack (0 when not connected). For tests and monitoring.
    pub async fn unacknowledged(&self) -> usize {
        match self.conn.lock().await.as_ref() {
            Some(shared) => shared.unacknowledged(),
            None => 0,
        }
    }
}

impl<K: kind::Kind + brook_runtime::SameKind<kind::Mqtt>> Accepts<K> for MqttBroker {}

impl Broker for MqttBroker {
    type Consumer = MqttConsumer;

    fn kind(&self) -> BrokerKind {
        BrokerKind::Mqtt
    }

    async fn connect(&self) -> Result<(), BrokerError> {
        self.shared().await.map(drop)
    }

    /// Whether the connection (shared by every subscriber) has its CONNACK and was not lost
    /// since, as the event loop brook drives reports it: `Some(false)` while it reconnects,
    /// before [`connect`](Broker::connect) and once [`close`](Broker::close) began.
    fn is_connected(&self) -> Option<bool> {
        let current = self
            .current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .upgrade();
        Some(current.is_some_and(|shared| shared.is_up()))
    }

    /// Host and port, `mqtt` (`secure-mqtt` over TLS, AsyncAPI's name), the protocol version
    /// (`3.1.1` or `5`); never the user name or password.
    fn server(&self) -> Option<ServerInfo> {
        let config = self.config.as_ref().as_ref().ok()?;
        let protocol = if config.tls { "secure-mqtt" } else { "mqtt" };
        let version = match config.protocol {
            ProtocolVersion::V311 => "3.1.1",
            ProtocolVersion::V5 => "5",
        };
        Some(ServerInfo::new(config.address(), protocol).with_protocol_version(version))
    }

    /// Refuses `NackOnError` on a clean session (at QoS 1 and 2): a message waiting for its
    /// redelivery when the App stops would be lost with the session. Refuses a
    /// `dead_letter_topic` that is not a plain topic, that the subscriber's own filter matches
    /// (rejected messages would come back to it), or at QoS 0 (nothing is settled there). An
    /// invalid URL is left for [`Broker::connect`] to report.
    fn check(&self, subscription: &Subscription) -> Result<(), BrokerError> {
        let opts = options(subscription)?;
        let invalid = |message: String| BrokerError::Invalid {
            broker: BrokerKind::Mqtt,
            message,
        };
        if let Some(dead) = &opts.dead_letter_topic {
            if let Some(problem) = dead_letter_problem(dead, opts) {
                return Err(invalid(format!(
                    "subscriber `{}` on `{}`: dead_letter_topic `{dead}` {problem}",
                    subscription.name(),
                    opts.topic
                )));
            }
        }
        let Ok(config) = self.config.as_ref() else {
            return Ok(());
        };
        if opts.qos > 0 && config.clean_session && subscription.policy() == AckPolicy::NackOnError {
            return Err(invalid(format!(
                "subscriber `{}` on `{}` uses ack_policy = NackOnError, but the connection uses a clean session: brook redelivers a nacked message itself while the App runs, but one still waiting for its redelivery when the App stops would be lost with the session; give the broker a stable client id and a persistent session: MqttBroker::new(..).client_id(\"...\").persistent_session(true)",
                subscription.name(),
                opts.topic
            )));
        }
        Ok(())
    }

    async fn subscribe(&self, subscription: &Subscription) -> Result<MqttConsumer, BrokerError> {
        self.check(subscription)?;
        let opts = options(subscription)?;
        let config = self.config()?;
        if opts.qos > 0 && config.clean_session && subscription.policy() == AckPolicy::Manual {
            tracing::warn!(
                subscriber = subscription.name(),
                "ack_policy = Manual on a clean MQTT session: a message nacked or left unsettled when the App stops is lost with the session"
            );
        }
        let filter = opts.topic.as_str();
        let shared = self.shared().await?;
        let qos = qos_from(opts.qos);
        let (route, rx) = shared.add_route(filter, qos);
        // A consumer from here on: if subscribing fails, dropping it gives up the parked
        // messages it may have taken, which would otherwise hold later acks back for good.
        let settings = SubscriberSettings {
            dead_letter_topic: opts.dead_letter_topic.as_deref().map(Arc::from),
            max_deliveries: subscription.max_deliveries(),
        };
        let consumer = MqttConsumer::new(shared, route, rx, settings);
        let timeout = config.connect_timeout.max(Duration::from_secs(10));
        consumer.shared.subscribe(filter, qos, timeout).await?;
        Ok(consumer)
    }

    async fn publish_message(&self, message: Outgoing) -> Result<(), BrokerError> {
        let qos = self.config()?.publish_qos;
        self.publish_with(message, qos, false).await
    }

    /// MQTT 5: sends `message` with the response topic `brook/replies/<client id>` (subscribed
    /// at QoS 1 by the first request, kept for the connection's life) and its correlation
    /// data, and waits for the reply with that correlation id; a reply after the timeout is
    /// dropped. MQTT 3.1.1 has no response topic: [`BrokerError::Unsupported`] at once.
    async fn request_message(
        &self,
        message: Outgoing,
        timeout: Duration,
    ) -> Result<brook_runtime::Message, BrokerError> {
        if self.config()?.protocol == ProtocolVersion::V311 {
            return Err(BrokerError::Unsupported {
                broker: BrokerKind::Mqtt,
                what: "request/reply",
                why: "MQTT 3.1.1 carries no reply address; connect with MQTT 5 \
                      (MqttBroker::new(..).protocol(ProtocolVersion::V5), or `?protocol=5` in the URL)"
                    .to_owned(),
            });
        }
        let replies = self.replies().await?;
        replies.request(self, message, timeout).await
    }

    async fn close(&self) -> Result<(), BrokerError> {
        let shared = self.conn.lock().await.take();
        let result = match shared {
            Some(shared) => shared.close(Duration::from_secs(10)).await,
            None => Ok(()),
        };
        // After the connection: its response topic's reader has ended with it.
        drop(self.replies.lock().await.take());
        result
    }
}

/// What is wrong with `dead` as the dead-letter topic of a subscriber with `opts`, if anything.
fn dead_letter_problem(dead: &str, opts: &MqttOptions) -> Option<String> {
    if dead.is_empty() {
        Some("is empty".to_owned())
    } else if dead.contains(['+', '#', '\0']) {
        Some("holds a wildcard (`+`, `#`) or NUL: it must be a topic, not a filter".to_owned())
    } else if dead.len() > 65_535 {
        Some("is longer than 65535 bytes".to_owned())
    } else if connection::filter_matches(&opts.topic, dead) {
        Some(format!(
            "matches the subscriber's own filter `{}`, so rejected messages would come back to it",
            opts.topic
        ))
    } else if opts.qos == 0 {
        Some(
            "is set on a QoS 0 subscription, where nothing is settled; subscribe with qos = 1 or 2"
                .to_owned(),
        )
    } else {
        None
    }
}

/// The subscription's MQTT options; a subscription declared for another broker is refused.
fn options(subscription: &Subscription) -> Result<&MqttOptions, BrokerError> {
    subscription
        .options()
        .mqtt()
        .ok_or_else(|| subscription.declared_for_another(BrokerKind::Mqtt))
}

/// Whether `topic` matches the subscription `filter` (`+`, `#` and `$share/group/...`).
///
/// ```
/// assert!(brook_mqtt::topic_matches("sensors/+/temp", "sensors/kitchen/temp"));
/// assert!(brook_mqtt::topic_matches("$share/g/sensors/#", "sensors/a/b"));
/// assert!(!brook_mqtt::topic_matches("sensors/+", "sensors/a/b"));
/// ```
pub fn topic_matches(filter: &str, topic: &str) -> bool {
    connection::filter_matches(filter, topic)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_has_no_credentials() {
        let broker = MqttBroker::new("mqtt://app:s3cret@mqtt.internal:1884?protocol=5")
            .credentials("other", "t0psecret");
        let server = broker.server().expect("a server");
        assert_eq!(server.host, "mqtt.internal:1884");
        assert_eq!(server.protocol, "mqtt");
        assert_eq!(server.protocol_version.as_deref(), Some("5"));
        let shown = format!("{server:?}");
        for secret in ["app", "s3cret", "other", "t0psecret"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        let server = MqttBroker::new("mqtt://127.0.0.1")
            .server()
            .expect("a server");
        assert_eq!(server.host, "127.0.0.1:1883");
        assert_eq!(server.protocol_version.as_deref(), Some("3.1.1"));
        // Unencoded `/`, `?`, `#`, `@` in a password: still user information, never shown.
        for raw in ["pa/ss", "pa#ss", "p@ss", "12"] {
            let server = MqttBroker::new(&format!("mqtt://app:{raw}@host:1883"))
                .server()
                .expect("a server");
            assert_eq!(server.host, "host:1883", "{raw}");
            assert!(!format!("{server:?}").contains("app"), "{raw}: {server:?}");
        }
        assert_eq!(MqttBroker::new("mqtt://h:notaport").server(), None);
    }

    #[cfg(feature = "tls")]
    #[test]
    fn the_server_over_tls() {
        let server = MqttBroker::new("mqtts://u:pw@mqtt.internal")
            .server()
            .expect("a server");
        assert_eq!(server.host, "mqtt.internal:8883");
        assert_eq!(server.protocol, "secure-mqtt");
    }

    #[test]
    fn not_connected_before_connect() {
        assert_eq!(
            MqttBroker::new("mqtt://127.0.0.1:1883").is_connected(),
            Some(false)
        );
    }
}
