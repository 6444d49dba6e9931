//! The runtime of [brook](https://docs.rs/brook): ack policies and the settlement engine,
//! the traits broker crates implement, handler extractors, codecs, the [`App`], the in-memory
//! broker, a test harness and a conformance suite for broker crates.
//!
//! Most users depend on the `brook` facade, which re-exports this crate; broker crates depend
//! on this crate only (never on each other).
//!
//! # How a message flows
//! 1. A broker crate's [`Consumer`] yields a [`Message`] whose [`Settler`] knows how to
//!    ack/nack/reject it on the wire, and nothing else.
//! 2. The engine ([`engine::process`]) runs the handler (arguments extracted via
//!    [`FromMessage`] or decoded by [`codec`]), catches panics, reads interrupts
//!    ([`Ack`], [`Nack`], [`Reject`]), and settles the message as the subscriber's
//!    [`AckPolicy`] says, at most once.
//! 3. The [`App`] runs one such loop per subscriber, with concurrency and graceful shutdown.

#![warn(missing_docs)]

mod app;
#[cfg(feature = "conformance")]
pub mod bench;
mod broker;
pub mod codec;
#[cfg(feature = "conformance")]
pub mod conformance;
pub mod engine;
mod error;
mod extract;
mod handler;
pub mod headers;
mod interrupt;
pub mod memory;
mod message;
#[cfg(feature = "conformance")]
pub mod proxy;
mod subscription;
pub mod testing;
pub mod url;

pub use app::{App, RunningApp, ShutdownHandle, DEFAULT_GRACEFUL_TIMEOUT};
pub use broker::{Accepts, Broker, Consumer, Outgoing};
/// A subscriber argument's value, for [`Subscription::new`]`(...).arg(name, value)`: strings,
/// integers and booleans convert with `.into()`; names from a fixed set (`on_decode_error =
/// Nack`, `auto_offset_reset = earliest`) are `ArgValue::Ident("earliest".into())`.
pub use brook_caps::Value as ArgValue;
pub use brook_caps::{AckPolicy, BrokerKind, Source};
pub use error::{AppError, BoxError, BrokerError, ExtractError, SubscriptionError};
pub use extract::{Context, FromMessage, State};
pub use handler::{kind, Handler, HandlerError, IntoHandlerResult};
pub use headers::Headers;
pub use interrupt::{Ack, Nack, Reject};
pub use memory::MemoryBroker;
pub use message::{Message, MessageId, SettleFuture, SettleReport, Settled, Settlement, Settler};
pub use subscription::{Subscription, SubscriptionBuilder};

/// What `#[subscriber]` expands to refers to these; not a public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::extract::{Arg, ViaDecode, ViaFromMessage};
    pub use brook_caps::Value;
    pub use std::borrow::Cow;
}
