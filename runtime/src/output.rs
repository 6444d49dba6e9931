//! What a handler's return value publishes: its **output** (`publish = "invoices"`) and its
//! **reply** (to a message's `reply_to`, FastStream's RPC).
//!
//! A handler may return `()`, a value, `Option<T>`, [`Publish<T>`], or any of these in a
//! `Result<_, E>`. A value is encoded as [`Broker::publish`](crate::Broker::publish) encodes
//! it (text as text, bytes raw, anything else as JSON) and published **before** the input
//! message is settled, so a chain of subscribers is at-least-once end to end: if the publish
//! fails, the handler counts as failed and the policy's error path applies (`NackOnError`
//! redelivers the input, `RejectOnError` rejects it, `Ack` acks it after logging).
//!
//! - The output goes to the subscriber's `publish` destination (on `publish_broker`, or the
//!   input's broker), or to the destination a [`Publish::to`] names. `None` publishes nothing.
//! - The reply goes to the input's `reply_to`, on the input's broker, unless the subscriber
//!   says `reply = false`. A handler that returns nothing (`()`, `None`) still replies, with
//!   an empty body, so that a requester is answered rather than left to time out (as FastStream
//!   does).
//! - Both carry a `correlation_id`: the one a [`Publish`] sets, else the input's, else a new
//!   one, so a chain keeps one id from end to end.
//!
//! ```
//! use brook_runtime::output::Publish;
//! #[derive(serde::Serialize)]
//! struct Invoice { order: u64 }
//! // In a handler: `-> anyhow::Result<Publish<Invoice>>`.
//! let out = Publish::new(Invoice { order: 7 })
//!     .to("invoices.eu")
//!     .header("x-tenant", "acme")
//!     .key("customer-42");
//! assert_eq!(out.destination(), Some("invoices.eu"));
//! ```

use bytes::Bytes;
use serde::Serialize;

use crate::broker::Outgoing;
use crate::error::BrokerError;
use crate::handler::HandlerError;
use crate::headers::{Headers, CORRELATION_ID};

/// What a handler returned for brook to publish: the encoded value, with the headers, key and
/// destination a [`Publish`] gave it.
#[derive(Clone, Debug, Default)]
pub struct Output {
    /// The encoded value.
    pub body: Bytes,
    /// Headers set by the handler (content type included).
    pub headers: Headers,
    /// The key set by the handler.
    pub key: Option<Bytes>,
    /// A destination that replaces the subscriber's `publish`.
    pub destination: Option<String>,
}

impl Output {
    /// `value`, encoded.
    pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Self, BrokerError> {
        let Outgoing {
            body, headers, key, ..
        } = Outgoing::encode(value, "")?;
        Ok(Output {
            body,
            headers,
            key,
            destination: None,
        })
    }

    /// The message to publish to `destination`, with `correlation_id` unless the handler set
    /// its own.
    pub(crate) fn to_outgoing(&self, destination: &str, correlation_id: &str) -> Outgoing {
        let mut headers = self.headers.clone();
        if headers.get(CORRELATION_ID).is_none() {
            headers.insert(CORRELATION_ID, correlation_id);
        }
        Outgoing {
            destination: destination.to_owned(),
            body: self.body.clone(),
            headers,
            key: self.key.clone(),
        }
    }
}

/// A handler's result with the destination, headers or key it is published with: return
/// `Publish<T>` (or `Option<Publish<T>>`) instead of `T`.
#[derive(Clone, Debug)]
pub struct Publish<T> {
    value: T,
    destination: Option<String>,
    headers: Headers,
    key: Option<Bytes>,
}

impl<T> Publish<T> {
    /// `value`, published where the subscriber's `publish` says.
    pub fn new(value: T) -> Self {
        Publish {
            value,
            destination: None,
            headers: Headers::new(),
            key: None,
        }
    }

    /// Publishes to `destination` instead (on the same broker). A handler may return a
    /// `Publish` with a destination without declaring `publish` at all.
    pub fn to(mut self, destination: impl Into<String>) -> Self {
        self.destination = Some(destination.into());
        self
    }

    /// Adds a header.
    pub fn header(
        mut self,
        name: impl AsRef<str> + Into<String>,
        value: impl AsRef<str> + Into<String>,
    ) -> Self {
        self.headers.insert(name, value);
        self
    }

    /// Sets the `correlation_id` (by default the input's).
    pub fn correlation_id(self, id: impl Into<String>) -> Self {
        self.header(CORRELATION_ID, id.into())
    }

    /// Sets the key (Kafka key, RabbitMQ routing key, ...).
    pub fn key(mut self, key: impl Into<Bytes>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// The destination set with [`Publish::to`].
    pub fn destination(&self) -> Option<&str> {
        self.destination.as_deref()
    }
}

/// What a handler's return value publishes: nothing (`()`, `None`) or an [`Output`]. Plain
/// serializable values are outputs too; `#[subscriber]` handles them without this trait.
pub trait IntoOutput {
    /// Encode the value.
    fn into_output(self) -> Result<Option<Output>, BrokerError>;
}

impl IntoOutput for () {
    fn into_output(self) -> Result<Option<Output>, BrokerError> {
        Ok(None)
    }
}

impl<T: Serialize> IntoOutput for Option<T> {
    fn into_output(self) -> Result<Option<Output>, BrokerError> {
        self.map(|value| Output::encode(&value)).transpose()
    }
}

impl<T: Serialize> IntoOutput for Publish<T> {
    fn into_output(self) -> Result<Option<Output>, BrokerError> {
        let mut out = Output::encode(&self.value)?;
        for (name, value) in self.headers.iter() {
            out.headers.insert(name, value);
        }
        out.key = self.key;
        out.destination = self.destination;
        Ok(Some(out))
    }
}

impl<T: Serialize> IntoOutput for Option<Publish<T>> {
    fn into_output(self) -> Result<Option<Output>, BrokerError> {
        self.map_or(Ok(None), IntoOutput::into_output)
    }
}

/// A new correlation id (a random UUID, as FastStream makes them).
pub fn new_correlation_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Macro support, not an API: `(&returned).brook_result().split(returned)` takes a `Result`
/// apart (its error is the handler's failure) and passes anything else through; then
/// `(&value).brook_output().output(value)` encodes the value ([`IntoOutput`] first, any
/// `Serialize` type otherwise). Autoref specialization, as for arguments.
#[doc(hidden)]
pub mod dispatch {
    use super::*;

    #[doc(hidden)]
    pub struct ResultTag;
    #[doc(hidden)]
    pub struct ValueTag;
    #[doc(hidden)]
    pub struct IntoOutputTag;
    #[doc(hidden)]
    pub struct SerializeTag;

    #[doc(hidden)]
    pub trait ViaResult {
        fn brook_result(&self) -> ResultTag {
            ResultTag
        }
    }
    impl<T, E> ViaResult for Result<T, E> {}

    #[doc(hidden)]
    pub trait ViaValue {
        fn brook_result(&self) -> ValueTag {
            ValueTag
        }
    }
    impl<T> ViaValue for &T {}

    /// The error type of a handler's `Result`.
    #[diagnostic::on_unimplemented(
        message = "a handler's error type must convert into `anyhow::Error`, and `{Self}` does not",
        label = "the error of this handler's Result",
        note = "return `anyhow::Result<T>`, or a `Result<T, E>` whose `E` implements `std::error::Error + Send + Sync + 'static`"
    )]
    pub trait HandlerFailure: Into<anyhow::Error> {}
    impl<E: Into<anyhow::Error>> HandlerFailure for E {}

    impl ResultTag {
        #[doc(hidden)]
        pub fn split<T, E: HandlerFailure>(
            self,
            returned: Result<T, E>,
        ) -> Result<T, HandlerError> {
            returned.map_err(|e| HandlerError::Failed(e.into()))
        }
    }

    impl ValueTag {
        #[doc(hidden)]
        pub fn split<T>(self, returned: T) -> Result<T, HandlerError> {
            Ok(returned)
        }
    }

    #[doc(hidden)]
    pub trait ViaIntoOutput {
        fn brook_output(&self) -> IntoOutputTag {
            IntoOutputTag
        }
    }
    impl<T: IntoOutput> ViaIntoOutput for T {}

    #[doc(hidden)]
    pub trait ViaSerialize {
        fn brook_output(&self) -> SerializeTag {
            SerializeTag
        }
    }
    impl<T> ViaSerialize for &T {}

    /// A value a handler can return.
    #[diagnostic::on_unimplemented(
        message = "`{Self}` cannot be a handler's result",
        label = "brook publishes what a handler returns, so it must be serializable",
        note = "return `()`, a type that implements `serde::Serialize` (add #[derive(serde::Serialize)]), `Option<T>` or `brook::Publish<T>`, optionally in a `Result`"
    )]
    pub trait Returnable: Serialize {}
    impl<T: Serialize> Returnable for T {}

    impl IntoOutputTag {
        #[doc(hidden)]
        pub fn output<T: IntoOutput>(self, value: T) -> Result<Option<Box<Output>>, HandlerError> {
            value
                .into_output()
                .map(|out| out.map(Box::new))
                .map_err(HandlerError::Output)
        }
    }

    impl SerializeTag {
        #[doc(hidden)]
        pub fn output<T: Returnable>(self, value: T) -> Result<Option<Box<Output>>, HandlerError> {
            Output::encode(&value)
                .map(|out| Some(Box::new(out)))
                .map_err(HandlerError::Output)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::dispatch::*;
    use super::*;

    #[derive(Serialize)]
    struct Invoice {
        order: u64,
    }

    fn output_of<T: IntoOutput>(value: T) -> Option<Output> {
        value.into_output().unwrap()
    }

    #[test]
    fn nothing_publishes_nothing() {
        assert!(output_of(()).is_none());
        assert!(output_of(None::<Invoice>).is_none());
        assert!(output_of(None::<Publish<Invoice>>).is_none());
    }

    #[test]
    fn a_publish_carries_its_destination_headers_and_key() {
        let out = output_of(
            Publish::new(Invoice { order: 1 })
                .to("elsewhere")
                .header("x-tenant", "acme")
                .correlation_id("c-1")
                .key("k"),
        )
        .unwrap();
        assert_eq!(&out.body[..], br#"{"order":1}"#);
        assert_eq!(out.destination.as_deref(), Some("elsewhere"));
        assert_eq!(out.headers.get("x-tenant"), Some("acme"));
        assert_eq!(out.headers.get("content-type"), Some("application/json"));
        assert_eq!(out.key.as_deref(), Some(&b"k"[..]));
        // The handler's correlation id wins over the input's.
        let sent = out.to_outgoing("elsewhere", "input-id");
        assert_eq!(sent.headers.get(CORRELATION_ID), Some("c-1"));
    }

    #[test]
    #[allow(clippy::needless_borrow, clippy::let_unit_value)] // as the macro writes it
    fn the_macro_dispatch_splits_results_and_encodes_values() {
        let returned: anyhow::Result<Invoice> = Ok(Invoice { order: 2 });
        let value = (&returned).brook_result().split(returned).unwrap();
        let out = (&value).brook_output().output(value).unwrap().unwrap();
        assert_eq!(&out.body[..], br#"{"order":2}"#);
        assert!(out.to_outgoing("d", "input-id").headers.get(CORRELATION_ID) == Some("input-id"));

        let unit = ();
        let value = (&unit).brook_result().split(unit).unwrap();
        assert!((&value).brook_output().output(value).unwrap().is_none());

        let failed: Result<(), std::io::Error> = Err(std::io::Error::other("disk"));
        let error = (&failed).brook_result().split(failed).unwrap_err();
        assert!(matches!(error, HandlerError::Failed(e) if e.to_string() == "disk"));

        let text = "plain".to_owned();
        let out = (&text).brook_output().output(text).unwrap().unwrap();
        assert_eq!(&out.body[..], b"plain");
    }
}
