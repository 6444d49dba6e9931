//! Handler arguments, produced from the message like axum's extractors.
//!
//! Each argument of a `#[subscriber]` function is one of:
//! - a type implementing [`FromMessage`]: `&Message`, `&Headers`, `String`, `&str`, `Vec<u8>`,
//!   `Bytes`, [`State<T>`], [`Context`], broker-specific message types. Adding an argument kind
//!   is adding an impl, not editing the macro;
//! - otherwise any `serde::de::DeserializeOwned` type: the payload, decoded by
//!   [`codec::decode`](crate::codec::decode) according to its `content-type`.
//!
//! The macro does not decide which is which; it writes `(&&Arg::<T>::new()).extract(msg, ctx)`
//! for every argument and method resolution prefers [`FromMessage`] (the autoref trick), so
//! `String` means "the text" rather than "a JSON string".

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::marker::PhantomData;
use std::ops::Deref;
use std::sync::Arc;

use bytes::Bytes;
use serde::de::DeserializeOwned;

use crate::codec::{self, Codec};
use crate::error::ExtractError;
use crate::headers::Headers;
use crate::message::Message;

/// Shared application state and services, available to every handler.
#[derive(Clone, Default)]
pub struct Context {
    states: Arc<HashMap<TypeId, Arc<dyn Any + Send + Sync>>>,
}

impl Context {
    /// The state of type `T`, if the App has one.
    pub fn state<T: Send + Sync + 'static>(&self) -> Option<State<T>> {
        let any = self.states.get(&TypeId::of::<T>())?.clone();
        any.downcast::<T>().ok().map(State)
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

/// A handler argument that is taken from the message or the context rather than decoded from
/// the payload.
pub trait FromMessage<'a>: Sized {
    /// Produce the argument.
    fn from_message(msg: &'a Message, ctx: &'a Context) -> Result<Self, ExtractError>;
}

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
    fn from_message(msg: &'a Message, _: &'a Context) -> Result<Self, ExtractError> {
        Ok(msg.body().clone())
    }
}

impl<'a> FromMessage<'a> for Vec<u8> {
    fn from_message(msg: &'a Message, _: &'a Context) -> Result<Self, ExtractError> {
        Ok(msg.body().to_vec())
    }
}

impl<'a> FromMessage<'a> for &'a [u8] {
    fn from_message(msg: &'a Message, _: &'a Context) -> Result<Self, ExtractError> {
        Ok(msg.body())
    }
}

/// The payload as text. A JSON payload that is a JSON string is unquoted, as FastStream does.
impl<'a> FromMessage<'a> for String {
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
    fn from_message(msg: &'a Message, _: &'a Context) -> Result<Self, ExtractError> {
        Ok(std::str::from_utf8(msg.body())?)
    }
}

impl<'a, T: Send + Sync + 'static> FromMessage<'a> for State<T> {
    fn from_message(_: &'a Message, ctx: &'a Context) -> Result<Self, ExtractError> {
        ctx.state::<T>()
            .ok_or(ExtractError::MissingState(std::any::type_name::<T>()))
    }
}

impl<'a> FromMessage<'a> for &'a Context {
    fn from_message(_: &'a Message, ctx: &'a Context) -> Result<Self, ExtractError> {
        Ok(ctx)
    }
}

/// Macro support: selects [`FromMessage`] when `T` implements it, payload decoding otherwise.
#[doc(hidden)]
pub struct Arg<T>(PhantomData<fn() -> T>);

impl<T> Arg<T> {
    #[doc(hidden)]
    #[allow(clippy::new_without_default)]
    pub const fn new() -> Self {
        Arg(PhantomData)
    }
}

#[doc(hidden)]
pub trait ViaFromMessage<'a, T> {
    fn extract(&self, msg: &'a Message, ctx: &'a Context) -> Result<T, ExtractError>;
}

impl<'a, T: FromMessage<'a>> ViaFromMessage<'a, T> for &Arg<T> {
    fn extract(&self, msg: &'a Message, ctx: &'a Context) -> Result<T, ExtractError> {
        T::from_message(msg, ctx)
    }
}

#[doc(hidden)]
pub trait ViaDecode<'a, T> {
    fn extract(&self, msg: &'a Message, ctx: &'a Context) -> Result<T, ExtractError>;
}

impl<'a, T: DeserializeOwned> ViaDecode<'a, T> for Arg<T> {
    fn extract(&self, msg: &'a Message, _: &'a Context) -> Result<T, ExtractError> {
        codec::decode(msg.body(), msg.content_type())
    }
}

#[cfg(test)]
#[allow(clippy::needless_borrow)] // the autoref trick needs the `&&`: it is how priority works
mod tests {
    use super::*;
    use crate::headers::CONTENT_TYPE;
    use crate::message::{SettleFuture, Settlement, Settler};
    use brook_caps::BrokerKind;

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
        let order: Order = (&&Arg::<Order>::new()).extract(&msg, &ctx).unwrap();
        assert_eq!(order, Order { id: 3 });
        // String is the text, not a JSON string decode (which would fail on an object).
        let text: String = (&&Arg::<String>::new()).extract(&msg, &ctx).unwrap();
        assert_eq!(text, r#"{"id":3}"#);
        let raw: Vec<u8> = (&&Arg::<Vec<u8>>::new()).extract(&msg, &ctx).unwrap();
        assert_eq!(raw, br#"{"id":3}"#);
        let m: &Message = (&&Arg::<&Message>::new()).extract(&msg, &ctx).unwrap();
        assert_eq!(m.topic(), "t");
        let quoted = message(br#""hello""#, Some("application/json"));
        let s: String = (&&Arg::<String>::new()).extract(&quoted, &ctx).unwrap();
        assert_eq!(s, "hello");
    }

    #[test]
    fn missing_state_is_a_clear_error() {
        let msg = message(b"", None);
        let mut ctx = Context::default();
        let e = (&&Arg::<State<u32>>::new())
            .extract(&msg, &ctx)
            .unwrap_err();
        assert!(e.to_string().contains("no state of type `u32`"), "{e}");
        ctx.insert(7u32);
        let s: State<u32> = (&&Arg::<State<u32>>::new()).extract(&msg, &ctx).unwrap();
        assert_eq!(*s, 7);
    }
}
