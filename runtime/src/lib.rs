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
pub mod asyncapi;
#[cfg(feature = "conformance")]
pub mod bench;
mod broker;
pub mod codec;
#[cfg(feature = "conformance")]
pub mod conformance;
/// One `#[tokio::test]` per conformance test against an adapter, those its source cannot run
/// generated as skipped (from brook-caps):
/// `conformance_tests!(MyAdapter::new(); broker = rabbit, queue = _, dead_letter_exchange = _)`.
/// The arguments after `;` are the subscriber arguments that give the adapter's source its
/// shape (names as `_`); a generated test checks them against the adapter's real source.
#[cfg(feature = "conformance")]
pub use brook_macros::conformance_tests;
pub mod engine;
mod error;
pub mod extract;
mod handler;
pub mod headers;
pub mod health;
#[cfg(feature = "conformance")]
pub mod interop;
mod interrupt;
pub mod layer;
pub mod memory;
mod message;
#[cfg(feature = "prometheus")]
pub mod metrics;
#[cfg(feature = "otel")]
pub mod otel;
pub mod output;
#[cfg(feature = "conformance")]
pub mod proxy;
mod publisher;
pub mod reply;
#[cfg(feature = "conformance")]
pub mod soak;
mod subscription;
pub mod testing;
pub mod url;

pub use app::{
    App, Before, Brokers, Here, Hosts, Restart, RunningApp, ShutdownHandle, With,
    DEFAULT_GRACEFUL_TIMEOUT,
};
pub use broker::{Accepts, Broker, Consumer, Outgoing, SameKind, ServerInfo};
/// A subscriber argument's value, for [`Subscription::new`]`(...).arg(name, value)`: strings,
/// integers and booleans convert with `.into()`; names from a fixed set (`on_decode_error =
/// Nack`, `auto_offset_reset = earliest`) are `ArgValue::Ident("earliest".into())`.
pub use brook_caps::Value as ArgValue;
pub use brook_caps::{AckPolicy, BrokerKind, Source};
pub use error::{
    AppError, BoxError, BrokerError, ExtractError, StartError, StartErrors, SubscriptionError,
};
pub use extract::{BrokerMessage, Context, FromMessage, StartCheck, State};
pub use handler::{kind, Handler, HandlerError, HandlerResult, Mount, MountNames, Mounted};
pub use headers::Headers;
pub use health::{Health, HealthHandle, HealthTimeout, SubscriberHealth};
pub use interrupt::{Ack, Nack, Reject};
pub use layer::{Layer, Layered, Timeout};
pub use memory::MemoryBroker;
pub use message::{Message, MessageId, SettleFuture, SettleReport, Settled, Settlement, Settler};
pub use output::Publish;
pub use publisher::Publisher;
pub use subscription::{OutputTarget, Subscription, SubscriptionBuilder};

pub use brook_caps::{
    DeliverPolicy, ExchangeType, JetStreamOptions, KafkaOptions, MemoryOptions, MqttOptions,
    NatsOptions, OffsetReset, Options, QueueType, RabbitOptions, RedisOptions, RedisSource,
    RedisStreamOptions,
};
