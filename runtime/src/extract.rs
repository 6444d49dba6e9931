//! Handler arguments, produced from the message like axum's extractors.
//!
//! Each argument of a `#[subscriber]` function is one of:
//! - a broker's own message type by reference (`&KafkaMessage`, ...: a [`BrokerMessage`]),
//!   available only to handlers declared for that broker (a trait bound says so at compile
//!   time, and `App::start` refuses it on an App of another broker);
//! - a type implementing [`FromMessage`]: `&Message`, `&Headers`, `String`, `&str`, `Vec<u8>`,
//!   `Bytes`, [`State<T>`], [`Context`]. Adding an argument kind is adding an impl, not editing
//!   the macro;
//! - otherwise any `serde::de::DeserializeOwned` type: the payload, decoded by
//!   [`codec::decode`] according to its `content-type`.
//!
//! The macro does not decide which is which; it writes
//! `(&&&Arg::<T, Broker>::new()).extract(msg, ctx)` for every argument and method resolution
//! tries the three in that order (the autoref trick), so `String` means "the text" rather than
//! "a JSON string". [`FromMessage::check`] lets `App::start` refuse arguments that could never
//! be produced (a state that was never registered) before any message arrives.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::marker::PhantomData;
use std::ops::Deref;
use std::sync::Arc;

use bytes::Bytes;
use serde::de::DeserializeOwned;

use brook_caps::BrokerKind;

use crate::codec::{self, Codec};
use crate::error::ExtractError;
use crate::handler::kind::Kind;
use crate::headers::Headers;
use crate::message::Message;
use crate::publisher::Publishers;

/// Shared application state and services, available to every handler.
#[derive(Clone, Default)]
pub struct Context {
    states: Arc<HashMap<TypeId, Arc<dyn Any + Send + Sync>>>,
    publishers: Publishers,
}

impl Context {
    pub(crate) fn publishers(&self) -> &Publishers {
        &self.publishers
    }

    pub(crate) fn publishers_mut(&mut self) -> &mut Publishers {
        &mut self.publishers
    }

    /// The state of type `T`, if the App has one.
    pub fn state<T: Send + Sync + 'static>(&self) -> Option<State<T>> {
        let any = self.states.get(&TypeId::of::<T>())?.clone();
        any.downcast::<T>().ok().map(State)
    }

    /// Whether the App has a state of type `T`.
    pub fn has<T: Send + Sync + 'static>(&self) -> bool {
        self.states.contains_key(&TypeId::of::<T>())
    }

    pub(crate) fn insert<T: Send + Sync + 'static>(&mut self, value: T) {
        Arc::make_mut(&mut self.states).insert(TypeId::of::<T>(), Arc::new(value));
    }
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("states", &self.states.len())
            .finish()
    }
}

/// Shared state registered with [`App::state`](crate::App::state), as a handler argument.
/// It derefs to the state (the field is private so that `state.0` reaches *your* type's field).
///
/// ```
/// use brook_runtime::State;
/// struct Db { url: &'static str }
/// fn url(db: State<Db>) -> &'static str { db.url }
/// ```
#[derive(Debug)]
pub struct State<T>(Arc<T>);

impl<T> State<T> {
    /// The shared pointer, to keep the state beyond the handler.
    pub fn arc(&self) -> Arc<T> {
        self.0.clone()
    }
}

impl<T> Clone for State<T> {
    fn clone(&self) -> Self {
        State(self.0.clone())
    }
}

impl<T> Deref for State<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// What `App::start` knows when it checks a handler's arguments, before anything connects.
#[derive(Clone, Copy, Debug)]
pub struct StartCheck<'a> {
    /// The broker the App runs the handler on.
    pub broker: BrokerKind,
    /// The App's state.
    pub context: &'a Context,
}

/// A handler argument that is taken from the message or the context rather than decoded from
/// the payload.
pub trait FromMessage<'a>: Sized {
    /// Produce the argument.
    fn from_message(msg: &'a Message, ctx: &'a Context) -> Result<Self, ExtractError>;

    /// Whether the argument can be produced at all on this App (registered state, the right
    /// broker), checked by `App::start` so that a configuration mistake stops the start
    /// instead of failing (and dead-lettering) every message. The default: always.
    fn check(cx: &StartCheck<'_>) -> Result<(), ExtractError> {
        let _ = cx;
        Ok(())
    }

    /// What the argument tells documents (AsyncAPI) about the message: an extractor that is
    /// the body (`String`, `Bytes`, ...) describes the payload. The default: nothing.
    fn describe(describe: &mut crate::asyncapi::Describe) {
        let _ = describe;
    }
}

/// A broker's own message type (`KafkaMessage`, `RabbitMessage`, ...), which a handler may take
/// by reference instead of `&Message`. Implementing it is all a broker crate does: the
/// extraction, the compile-time check that the handler is declared for that broker, and the
/// start-time check are brook's.
pub trait BrokerMessage: Send + Sync + 'static {
    /// The broker, as a type.
    type Kind: Kind;
}

/// `T` is the same broker as `K`: the bound that refuses a broker's message type in a handler
/// declared for another broker.
#[diagnostic::on_unimplemented(
    message = "this handler takes the message type of `{Self}`, but it is declared for `{K}`",
    label = "not available on `{K}`",
    note = "take `&Message` (any broker), or declare the subscriber for the broker whose message type it takes"
)]
pub trait SameBroker<K> {}

impl<K: Kind> SameBroker<K> for K {}

/// A payload type: what a handler argument is when it is not extracted ([`FromMessage`]).
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be a handler argument",
    label = "neither decoded from the payload nor extracted from the message",
    note = "a payload type implements `serde::Deserialize` (add #[derive(serde::Deserialize)]); an extracted one implements `brook::FromMessage`"
)]
pub trait Payload: DeserializeOwned {}

impl<T: DeserializeOwned> Payload for T {}

impl<'a> FromMessage<'a> for &'a Message {
    fn from_message(msg: &'a Message, _: &'a Context) -> Result<Self, ExtractError> {
        Ok(msg)
    }
}

impl<'a> FromMessage<'a> for &'a Headers {
    fn from_message(msg: &'a Message, _: &'a Context) -> Result<Self, ExtractError> {
        Ok(msg.headers())
    }
}

impl<'a> FromMessage<'a> for Headers {
    fn from_message(msg: &'a Message, _: &'a Context) -> Result<Self, ExtractError> {
        Ok(msg.headers().clone())
    }
}

impl<'a> FromMessage<'a> for Bytes {
    fn describe(describe: &mut crate::asyncapi::Describe) {
        describe.bytes_payload();
    }

    fn from_message(msg: &'a Message, _: &'a Context) -> Result<Self, ExtractError> {
        Ok(msg.body().clone())
    }
}

impl<'a> FromMessage<'a> for Vec<u8> {
    fn describe(describe: &mut crate::asyncapi::Describe) {
        describe.bytes_payload();
    }

    fn from_message(msg: &'a Message, _: &'a Context) -> Result<Self, ExtractError> {
        Ok(msg.body().to_vec())
    }
}

impl<'a> FromMessage<'a> for &'a [u8] {
    fn describe(describe: &mut crate::asyncapi::Describe) {
        describe.bytes_payload();
    }

    fn from_message(msg: &'a Message, _: &'a Context) -> Result<Self, ExtractError> {
        Ok(msg.body())
    }
}

/// The payload as text. A JSON payload that is a JSON string is unquoted, as FastStream does.
impl<'a> FromMessage<'a> for String {
    fn describe(describe: &mut crate::asyncapi::Describe) {
        describe.text_payload();
    }

    fn from_message(msg: &'a Message, _: &'a Context) -> Result<Self, ExtractError> {
        let text = std::str::from_utf8(msg.body())?;
        if Codec::for_content_type(msg.content_type()).ok() == Some(Codec::Json)
            && text.trim_start().starts_with('"')
        {
            return codec::decode(msg.body(), msg.content_type());
        }
        Ok(text.to_owned())
    }
}

/// The payload as text, borrowed (no JSON unquoting).
impl<'a> FromMessage<'a> for &'a str {
    fn describe(describe: &mut crate::asyncapi::Describe) {
        describe.text_payload();
    }

    fn from_message(msg: &'a Message, _: &'a Context) -> Result<Self, ExtractError> {
        Ok(std::str::from_utf8(msg.body())?)
    }
}

impl<'a, T: Send + Sync + 'static> FromMessage<'a> for State<T> {
    fn from_message(_: &'a Message, ctx: &'a Context) -> Result<Self, ExtractError> {
        ctx.state::<T>()
            .ok_or(ExtractError::MissingState(std::any::type_name::<T>()))
    }

    fn check(cx: &StartCheck<'_>) -> Result<(), ExtractError> {
        match cx.context.has::<T>() {
            true => Ok(()),
            false => Err(ExtractError::MissingState(std::any::type_name::<T>())),
        }
    }
}

impl<'a> FromMessage<'a> for &'a Context {
    fn from_message(_: &'a Message, ctx: &'a Context) -> Result<Self, ExtractError> {
        Ok(ctx)
    }
}

impl<'a, T: BrokerMessage> FromMessage<'a> for &'a T {
    fn from_message(msg: &'a Message, _: &'a Context) -> Result<Self, ExtractError> {
        msg.raw::<T>().ok_or_else(|| ExtractError::WrongBroker {
            got: msg.broker(),
            wanted: short_type_name::<T>(),
        })
    }

    fn check(cx: &StartCheck<'_>) -> Result<(), ExtractError> {
        if cx.broker == T::Kind::KIND {
            return Ok(());
        }
        Err(ExtractError::WrongBroker {
            got: cx.broker,
            wanted: short_type_name::<T>(),
        })
    }
}

fn short_type_name<T>() -> &'static str {
    let full = std::any::type_name::<T>();
    full.rsplit("::").next().unwrap_or(full)
}

/// Macro support, not an API: `(&&&Arg::<T>::new()).extract(..)` picks, in this order, a
/// broker's own message type (checked against the handler's broker), a [`FromMessage`]
/// extractor, or payload decoding (autoref specialization: method resolution tries `&&Arg`
/// impls before `&Arg` before `Arg`).
#[doc(hidden)]
pub struct Arg<T, K>(PhantomData<fn() -> (T, K)>);

impl<T, K> Arg<T, K> {
    #[doc(hidden)]
    #[allow(clippy::new_without_default)]
    pub const fn new() -> Self {
        Arg(PhantomData)
    }
}

#[doc(hidden)]
pub trait ViaBrokerMessage<'a, T: BrokerMessage, K> {
    fn extract(&self, msg: &'a Message, ctx: &'a Context) -> Result<&'a T, ExtractError>
    where
        T::Kind: SameBroker<K>;
    fn check(&self, cx: &StartCheck<'_>) -> Result<(), ExtractError>;
}

impl<'a, T: BrokerMessage, K> ViaBrokerMessage<'a, T, K> for &&Arg<&'a T, K> {
    fn extract(&self, msg: &'a Message, ctx: &'a Context) -> Result<&'a T, ExtractError>
    where
        T::Kind: SameBroker<K>,
    {
        <&'a T>::from_message(msg, ctx)
    }
    fn check(&self, cx: &StartCheck<'_>) -> Result<(), ExtractError> {
        <&'a T as FromMessage<'a>>::check(cx)
    }
}

#[doc(hidden)]
pub trait ViaFromMessage<'a, T> {
    fn extract(&self, msg: &'a Message, ctx: &'a Context) -> Result<T, ExtractError>;
    fn check(&self, cx: &StartCheck<'_>) -> Result<(), ExtractError>;
}

impl<'a, T: FromMessage<'a>, K> ViaFromMessage<'a, T> for &Arg<T, K> {
    fn extract(&self, msg: &'a Message, ctx: &'a Context) -> Result<T, ExtractError> {
        T::from_message(msg, ctx)
    }
    fn check(&self, cx: &StartCheck<'_>) -> Result<(), ExtractError> {
        T::check(cx)
    }
}

#[doc(hidden)]
pub trait ViaDecode<'a, T> {
    fn extract(&self, msg: &'a Message, ctx: &'a Context) -> Result<T, ExtractError>
    where
        T: Payload;
    fn check(&self, _: &StartCheck<'_>) -> Result<(), ExtractError> {
        Ok(())
    }
}

impl<'a, T, K> ViaDecode<'a, T> for Arg<T, K> {
    fn extract(&self, msg: &'a Message, _: &'a Context) -> Result<T, ExtractError>
    where
        T: Payload,
    {
        codec::decode(msg.body(), msg.content_type())
    }
}

/// What a name-valued argument (`topic = ...`, `queue = ...`) may be given: anything that
/// converts into a `String` (`&str`, `String`, `&String`, `Cow<str>`...).
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a name",
    label = "a name (topic, queue, group...) must be an expression that yields a string",
    note = "convert it, e.g. `topic = value.to_string()`"
)]
pub trait IntoName {
    /// The name.
    fn into_name(self) -> String;
}

macro_rules! into_name {
    ($($ty:ty),*) => {$(
        impl IntoName for $ty {
            fn into_name(self) -> String {
                self.into()
            }
        }
    )*};
}

into_name!(
    &str,
    String,
    &String,
    &mut str,
    Box<str>,
    std::borrow::Cow<'_, str>
);

impl IntoName for Arc<str> {
    fn into_name(self) -> String {
        self.as_ref().to_owned()
    }
}

/// Macro support: a name from an expression (`topic = cfg::ORDERS`), as an argument value.
#[doc(hidden)]
pub fn name(value: impl IntoName) -> brook_caps::Value {
    brook_caps::Value::from(value.into_name())
}

/// Macro support: one argument's start-time check, with the argument named for the error.
#[doc(hidden)]
pub fn checked(
    argument: &'static str,
    result: Result<(), ExtractError>,
) -> Option<(&'static str, ExtractError)> {
    result.err().map(|e| (argument, e))
}

#[cfg(test)]
#[allow(clippy::needless_borrow)] // the autoref trick needs the `&&`: it is how priority works
mod tests {
    use super::*;
    use crate::handler::kind::Memory;
    use crate::headers::CONTENT_TYPE;
    use crate::message::{SettleFuture, Settlement, Settler};

    struct Nothing;
    impl Settler for Nothing {
        fn settle(&self, _: Settlement) -> SettleFuture<'_> {
            SettleFuture::ready(Ok(()))
        }
    }

    fn message(body: &'static [u8], content_type: Option<&str>) -> Message {
        let mut h = Headers::new();
        if let Some(ct) = content_type {
            h.insert(CONTENT_TYPE, ct);
        }
        Message::new(
            BrokerKind::Memory,
            "t".into(),
            Bytes::from_static(body),
            Nothing,
        )
        .with_headers(h)
    }

    #[derive(serde::Deserialize, Debug, PartialEq)]
    struct Order {
        id: u64,
    }

    #[test]
    fn extractors_win_over_decoding_and_decoding_covers_the_rest() {
        let ctx = Context::default();
        let msg = message(br#"{"id":3}"#, Some("application/json"));
        let order: Order = (&&&Arg::<Order, Memory>::new())
            .extract(&msg, &ctx)
            .unwrap();
        assert_eq!(order, Order { id: 3 });
        // String is the text, not a JSON string decode (which would fail on an object).
        let text: String = (&&&Arg::<String, Memory>::new())
            .extract(&msg, &ctx)
            .unwrap();
        assert_eq!(text, r#"{"id":3}"#);
        let raw: Vec<u8> = (&&&Arg::<Vec<u8>, Memory>::new())
            .extract(&msg, &ctx)
            .unwrap();
        assert_eq!(raw, br#"{"id":3}"#);
        let m: &Message = (&&&Arg::<&Message, Memory>::new())
            .extract(&msg, &ctx)
            .unwrap();
        assert_eq!(m.topic(), "t");
        let quoted = message(br#""hello""#, Some("application/json"));
        let s: String = (&&&Arg::<String, Memory>::new())
            .extract(&quoted, &ctx)
            .unwrap();
        assert_eq!(s, "hello");
    }

    #[test]
    fn missing_state_is_a_clear_error() {
        let msg = message(b"", None);
        let mut ctx = Context::default();
        let e = (&&&Arg::<State<u32>, Memory>::new())
            .extract(&msg, &ctx)
            .unwrap_err();
        assert!(e.to_string().contains("no state of type `u32`"), "{e}");
        ctx.insert(7u32);
        let s: State<u32> = (&&&Arg::<State<u32>, Memory>::new())
            .extract(&msg, &ctx)
            .unwrap();
        assert_eq!(*s, 7);
    }
}
