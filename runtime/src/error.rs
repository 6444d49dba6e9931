//! Typed errors of the runtime. Handlers and applications use `anyhow`; the library does not.

use std::error::Error as StdError;

use brook_caps::{ArgError, BrokerKind};

/// A boxed error from a client library, kept as the `source` of a [`BrokerError`].
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// Something a broker (or its client library) could not do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// The broker could not be reached or refused the credentials. `address` never carries a
    /// password.
    #[error("cannot connect to {} at {address}: {source}", .broker.display_name())]
    Connect {
        /// Which broker.
        broker: BrokerKind,
        /// Where, without credentials.
        address: String,
        /// What the client said.
        #[source]
        source: BoxError,
    },
    /// A protocol operation failed (declare, subscribe, publish, ack, ...).
    #[error("{} {operation} failed: {source}", .broker.display_name())]
    Operation {
        /// Which broker.
        broker: BrokerKind,
        /// What was attempted, e.g. "basic.ack".
        operation: &'static str,
        /// What the client said.
        #[source]
        source: BoxError,
    },
    /// The subscription or message cannot be served by this broker as configured.
    #[error("{}: {message}", .broker.display_name())]
    Invalid {
        /// Which broker.
        broker: BrokerKind,
        /// What is wrong and what to do instead.
        message: String,
    },
    /// A payload could not be encoded for publishing.
    #[error("cannot encode the payload: {0}")]
    Encode(#[source] serde_json::Error),
    /// The broker was closed.
    #[error("{} is closed", .0.display_name())]
    Closed(BrokerKind),
    /// No reply to a request arrived in time. A reply that comes later is dropped.
    #[error("no reply from `{destination}` on {} within {timeout:?}", .broker.display_name())]
    RequestTimeout {
        /// Which broker.
        broker: BrokerKind,
        /// Where the request was sent.
        destination: String,
        /// How long brook waited.
        timeout: std::time::Duration,
    },
    /// The broker, as configured, cannot do this at all (request/reply on MQTT 3.1.1, which
    /// carries no reply address).
    #[error("{} cannot {what}: {why}", .broker.display_name())]
    Unsupported {
        /// Which broker.
        broker: BrokerKind,
        /// What was asked, e.g. "request/reply".
        what: &'static str,
        /// Why, and what to do instead.
        why: String,
    },
    /// The App has no broker of this kind (an output's `publish_broker`, a
    /// [`Publisher::on`](crate::Publisher::on)).
    #[error("the App has no {} broker: add it with App::with_broker(...)", .0.display_name())]
    NoSuchBroker(BrokerKind),
}

impl BrokerError {
    /// Wraps a client error as a failed `operation`.
    pub fn operation(
        broker: BrokerKind,
        operation: &'static str,
        source: impl Into<BoxError>,
    ) -> Self {
        BrokerError::Operation {
            broker,
            operation,
            source: source.into(),
        }
    }
}

/// A subscription that brook refuses: unknown or ill-typed arguments, or a policy that cannot
/// work on its source. The same checks run at compile time in `#[subscriber]`.
#[derive(Debug, thiserror::Error)]
#[error("subscriber `{subscriber}` on {}: {source}", .broker.display_name())]
pub struct SubscriptionError {
    /// The subscriber's name.
    pub subscriber: String,
    /// The broker it was declared for.
    pub broker: BrokerKind,
    /// What is wrong.
    #[source]
    pub source: ArgError,
}

/// A handler argument that could not be produced from the message: above all, a payload that
/// does not decode into the handler's type.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExtractError {
    /// The payload does not decode into the requested type.
    #[error("cannot decode the payload ({content_type}) as `{type_name}`: {source}")]
    Decode {
        /// The Rust type asked for.
        type_name: &'static str,
        /// The message's content type (or "no content-type").
        content_type: String,
        /// serde's message.
        #[source]
        source: BoxError,
    },
    /// brook has no codec for the message's content type.
    #[error("unsupported content-type `{0}`: brook decodes application/json, text/plain and application/octet-stream")]
    UnsupportedContentType(String),
    /// A text argument was asked for, but the payload is not UTF-8.
    #[error("the payload is not UTF-8 text: {0}")]
    NotUtf8(#[from] std::str::Utf8Error),
    /// A `State<T>` argument was asked for, but no such state was registered on the App.
    #[error("no state of type `{0}` was registered: add it with App::state(...)")]
    MissingState(&'static str),
    /// A broker-specific message type was asked for on a message of another broker.
    #[error("`{wanted}` is not available on a message from {}", .got.display_name())]
    WrongBroker {
        /// The broker the message came from.
        got: BrokerKind,
        /// The type asked for.
        wanted: &'static str,
    },
}

/// One thing `App::start` found wrong before connecting.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// A subscriber's arguments are invalid (a name from configuration the broker refuses, a
    /// mount-site name missing or not allowed, ...).
    #[error(transparent)]
    Subscription(#[from] SubscriptionError),
    /// A handler argument can never be produced on this App: every message would fail.
    #[error("subscriber `{subscriber}`: argument `{argument}` can never be produced on this App: {source}")]
    Argument {
        /// The subscriber.
        subscriber: String,
        /// The argument, as written in the function.
        argument: &'static str,
        /// Why.
        #[source]
        source: ExtractError,
    },
    /// The broker cannot serve the subscription as its connection is configured (an MQTT
    /// clean session under NackOnError, ...). The broker's message names the subscriber.
    #[error("{source}")]
    Broker {
        /// The subscriber.
        subscriber: String,
        /// Why.
        #[source]
        source: BrokerError,
    },
    /// A subscriber publishes its result on a broker the App does not have.
    #[error("subscriber `{subscriber}` publishes its result on {} (publish_broker = {}), but the App has no {} broker: add it with App::with_broker(...)", .broker.display_name(), .broker.name(), .broker.display_name())]
    NoOutputBroker {
        /// The subscriber.
        subscriber: String,
        /// The broker it publishes on.
        broker: BrokerKind,
    },
}

/// Every problem `App::start` found, so that one start shows them all.
#[derive(Debug)]
pub struct StartErrors(pub Vec<StartError>);

impl std::fmt::Display for StartErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.as_slice() {
            [one] => write!(f, "the App cannot start: {one}"),
            all => {
                write!(f, "the App cannot start: {} problems", all.len())?;
                for (i, e) in all.iter().enumerate() {
                    write!(f, "\n  {}. {e}", i + 1)?;
                }
                Ok(())
            }
        }
    }
}

impl StdError for StartErrors {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.0.first().map(|e| e as &(dyn StdError + 'static))
    }
}

/// Why an [`App`](crate::App) could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AppError {
    /// Subscribers are misconfigured: every problem found, before anything connected.
    #[error(transparent)]
    Invalid(StartErrors),
    /// The broker failed (connect, subscribe, close).
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// A subscriber's consumer ended for good while the App ran (a deleted JetStream durable
    /// that may not be recreated, a fatal broker error): the App stopped the others gracefully.
    #[error("subscriber `{subscriber}` stopped consuming for good: {reason}")]
    SubscriberEnded {
        /// The subscriber.
        subscriber: String,
        /// The consumer's last error.
        reason: String,
    },
    /// A startup or shutdown hook failed.
    #[error("{stage} hook failed: {source}")]
    Hook {
        /// "startup" or "shutdown".
        stage: &'static str,
        /// The hook's error.
        source: anyhow::Error,
    },
    /// Waiting for the OS signal failed.
    #[error("cannot listen for shutdown signals: {0}")]
    Signal(#[source] std::io::Error),
}

impl From<SubscriptionError> for AppError {
    fn from(e: SubscriptionError) -> Self {
        AppError::Invalid(StartErrors(vec![e.into()]))
    }
}
