//! RabbitMQ for [brook](https://docs.rs/brook), on [lapin](https://docs.rs/lapin).
//!
//! This crate only maps brook's calls onto AMQP 0-9-1; when to settle is the runtime's
//! decision (its settlement engine), never this crate's.
//!
//! | brook | RabbitMQ |
//! |---|---|
//! | ack | `basic.ack` (a run of acks from the lowest unsettled delivery as one `multiple = true`) |
//! | nack | `basic.nack` with `requeue = true` (no delay: RabbitMQ has none) |
//! | reject | `basic.reject` with `requeue = false`: the queue's dead-letter exchange gets it, if it has one |
//! | `AckFirst` | `basic.consume` with `no_ack` (RabbitMQ forgets the message once sent) |
//! | default policy | `RejectOnError` (FastStream's) |
//!
//! Each subscriber gets its own connection and channel, so a lost connection is recovered per
//! consumer: [`RabbitConsumer`] reconnects with a bounded exponential backoff, declares its
//! topology again and resumes consuming. Deliveries of the lost channel cannot be settled any
//! more (their settlement fails cleanly); RabbitMQ requeues them itself.
//!
//! Publishing goes through one shared connection with publisher confirms: `publish` returns
//! once RabbitMQ has taken responsibility for the message.
//!
//! Replies to a message's `reply_to` go through the default exchange (a queue name or a
//! direct reply-to address), and [`Broker::request`](brook_runtime::Broker::request) uses
//! RabbitMQ's direct reply-to (`amq.rabbitmq.reply-to`) on one reply channel per client, as
//! FastStream does: either side can be FastStream.
//!
//! ```no_run
//! use brook_rabbit::RabbitBroker;
//! use brook_runtime::{Broker, Outgoing};
//! # async fn run() -> Result<(), brook_runtime::BrokerError> {
//! let broker = RabbitBroker::new("amqp://guest:guest@127.0.0.1:5672/%2f");
//! broker.connect().await?;
//! broker.publish(&serde_json::json!({"id": 1}), "orders").await?; // default exchange -> queue `orders`
//! // To an exchange, with a routing key:
//! broker.publish_message(Outgoing::new("events", "hi").with_key("user.created")).await?;
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

mod acks;
mod broker;
mod consumer;
mod message;
mod request;

pub use broker::RabbitBroker;
pub use consumer::RabbitConsumer;
pub use message::{RabbitMessage, DELIVERY_COUNT_HEADER};

/// The lapin version this crate is built on, re-exported for [`RabbitMessage::properties`]
/// and friends.
pub use lapin;
