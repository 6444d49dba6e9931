//! Publishing from inside an App: the App's brokers as one registry that the engine (outputs,
//! replies) and the [`Publisher`] handler argument both use, with each broker's type erased
//! (a boxed future per publish; nothing on the consuming path).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use brook_caps::BrokerKind;
use serde::Serialize;

use tokio::time::Instant;

use crate::broker::{Broker, Outgoing};
use crate::engine::tell_layers;
use crate::error::{BrokerError, ExtractError};
use crate::extract::{Context, FromMessage};
use crate::headers::CORRELATION_ID;
use crate::layer::{Layers, PublishKind};
use crate::message::Message;

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A [`Broker`] behind a pointer.
pub(crate) trait DynBroker: Send + Sync {
    fn publish(&self, message: Outgoing) -> BoxFuture<'_, Result<(), BrokerError>>;
    fn publish_reply(&self, message: Outgoing) -> BoxFuture<'_, Result<(), BrokerError>>;
    fn request(
        &self,
        message: Outgoing,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<Message, BrokerError>>;
}

impl<B: Broker> DynBroker for B {
    fn publish(&self, message: Outgoing) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(self.publish_message(message))
    }

    fn publish_reply(&self, message: Outgoing) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(Broker::publish_reply(self, message))
    }

    fn request(
        &self,
        message: Outgoing,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<Message, BrokerError>> {
        Box::pin(self.request_message(message, timeout))
    }
}

/// The App's brokers, by kind.
#[derive(Clone, Default)]
pub struct Publishers {
    brokers: Arc<Vec<(BrokerKind, Arc<dyn DynBroker>)>>,
    /// The App's layers, told of every `Publisher` publish.
    layers: Layers,
}

impl Publishers {
    pub(crate) fn set_layers(&mut self, layers: Layers) {
        self.layers = layers;
    }

    pub(crate) fn add<B: Broker>(&mut self, broker: B) {
        Arc::make_mut(&mut self.brokers).push((broker.kind(), Arc::new(broker)));
    }

    /// The broker of kind `kind`; on an App of the in-memory broker, that one stands in for
    /// every broker it does not have (a Kafka handler's output to RabbitMQ, tested in memory).
    pub(crate) fn get(&self, kind: BrokerKind) -> Result<&dyn DynBroker, BrokerError> {
        let find = |k: BrokerKind| self.brokers.iter().find(|(b, _)| *b == k);
        find(kind)
            .or_else(|| find(BrokerKind::Memory))
            .map(|(_, b)| &**b)
            .ok_or(BrokerError::NoSuchBroker(kind))
    }
}

/// A handler argument that publishes to any destination on any of the App's brokers: for
/// fan-out and side messages that a return value cannot express. What it publishes carries
/// the input's `correlation_id` (unless the message sets its own; a new one if the input has
/// none), so a chain keeps one id.
///
/// ```
/// use brook_runtime::{BrokerError, Publisher};
/// # #[derive(serde::Serialize)] struct Line { sku: String }
/// // #[subscriber(topic = "orders")]
/// async fn split(lines: Vec<String>, publisher: Publisher<'_>) -> Result<(), BrokerError> {
///     for sku in lines {
///         publisher.publish(&Line { sku }, "order-lines").await?;
///     }
///     Ok(())
/// }
/// ```
///
/// Each publish is awaited (confirmed by the broker where it confirms), so a handler that
/// returns after its publishes has them on the broker before its input is acknowledged.
#[derive(Clone, Copy)]
pub struct Publisher<'a> {
    publishers: &'a Publishers,
    broker: BrokerKind,
    correlation_id: Option<&'a str>,
}

impl<'a> Publisher<'a> {
    /// The same publisher, publishing on the App's `broker` instead of the input's (on an App
    /// of the in-memory broker, the in-memory broker).
    pub fn on(&self, broker: BrokerKind) -> Publisher<'a> {
        Publisher { broker, ..*self }
    }

    /// Publishes `value` (encoded as [`Broker::publish`] does) to `destination`.
    pub async fn publish<T: Serialize + ?Sized>(
        &self,
        value: &T,
        destination: &str,
    ) -> Result<(), BrokerError> {
        self.publish_message(Outgoing::encode(value, destination)?)
            .await
    }

    /// Publishes a prepared message.
    pub async fn publish_message(&self, mut message: Outgoing) -> Result<(), BrokerError> {
        if message.headers.get(CORRELATION_ID).is_none() {
            match self.correlation_id {
                Some(id) => message.headers.insert(CORRELATION_ID, id),
                None => drop(message.ensure_correlation_id()),
            }
        }
        self.publishers
            .layers
            .publishing(&mut message, PublishKind::Publisher);
        let destination = message.destination.clone();
        let started = Instant::now();
        let published = match self.publishers.get(self.broker) {
            Ok(broker) => broker.publish(message).await,
            Err(e) => Err(e),
        };
        tell_layers(
            &self.publishers.layers,
            self.broker,
            &destination,
            PublishKind::Publisher,
            started,
            &published,
        );
        published
    }

    /// Sends `value` to `destination` as a request and waits at most `timeout` for the reply
    /// (see [`Broker::request_message`]).
    pub async fn request<T: Serialize + ?Sized>(
        &self,
        value: &T,
        destination: &str,
        timeout: Duration,
    ) -> Result<Message, BrokerError> {
        let message = Outgoing::encode(value, destination)?;
        self.publishers
            .get(self.broker)?
            .request(message, timeout)
            .await
    }
}

impl std::fmt::Debug for Publisher<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("broker", &self.broker)
            .finish_non_exhaustive()
    }
}

impl<'a> FromMessage<'a> for Publisher<'a> {
    fn from_message(msg: &'a Message, ctx: &'a Context) -> Result<Self, ExtractError> {
        Ok(Publisher {
            publishers: ctx.publishers(),
            broker: msg.broker(),
            correlation_id: msg.correlation_id(),
        })
    }
}
