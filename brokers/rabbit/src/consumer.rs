//! [`RabbitConsumer`]: one subscriber's connection, channel and `basic.consume`, recovered
//! after a connection loss.
//!
//! lapin does not reconnect consumers by itself, so this does: when the delivery stream fails
//! (connection lost), the consumer drops the dead connection, and its next `next()` reconnects
//! with an exponential backoff bounded by [`RabbitBroker::reconnect_backoff`](crate::RabbitBroker::reconnect_backoff),
//! declares its queue (and exchange and binding) again, sets the prefetch and consumes. Nothing
//! is lost: deliveries of the dead channel were never acknowledged, so RabbitMQ requeues them
//! (marked `redelivered`), and settling them fails cleanly instead of touching the new channel.
//!
//! Each failed attempt is returned from `next()` as an error (the engine logs it), so a
//! failure that never clears (a queue redeclared with other arguments, access refused, a
//! missing queue with `declare = false`) is visible instead of retried in silence.
//!
//! When the stream ends without an error (RabbitMQ sent `basic.cancel`: the queue was deleted,
//! or a quorum queue moved), the connection is still healthy and handlers may still be running
//! on its deliveries: closing it would make RabbitMQ requeue them and they would be handled
//! twice. So that session is retired, kept open until [`Consumer::close`], and a new one
//! consumes.

use std::sync::Arc;
use std::time::Duration;

use brook_runtime::{
    AckPolicy, BrokerError, BrokerKind, Consumer, ExchangeType, Message, QueueType, Subscription,
};
use futures_util::StreamExt as _;
use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, Connection, ExchangeKind};

use crate::acks::Acks;
use crate::broker::{Inner, Link};
use crate::message::to_message;

const KIND: BrokerKind = BrokerKind::Rabbit;

/// The prefetch when the subscriber sets none: enough to keep the handler busy while acks
/// travel, at least twice the concurrency.
pub(crate) const DEFAULT_PREFETCH: u16 = 64;

/// What a subscriber consumes and declares, from its options.
#[derive(Clone, Debug)]
pub(crate) struct Topology {
    queue: Arc<str>,
    exchange: Option<String>,
    routing_key: String,
    exchange_kind: ExchangeKind,
    durable: bool,
    auto_delete: bool,
    declare: bool,
    passive: bool,
    queue_type: Option<QueueType>,
    dead_letter_exchange: Option<String>,
    prefetch: u16,
    no_ack: bool,
    subscriber: String,
}

impl Topology {
    /// The topology of `sub`. brook-caps refused what cannot work when the subscription was
    /// built (a prefetch out of range, declare-only options with `passive = true` or
    /// `declare = false`); only a subscription declared for another broker is refused here.
    pub(crate) fn from_subscription(sub: &Subscription) -> Result<Topology, BrokerError> {
        let opts = sub
            .options()
            .rabbit()
            .ok_or_else(|| sub.declared_for_another(KIND))?;
        let exchange_kind = match opts.exchange_type {
            ExchangeType::Direct => ExchangeKind::Direct,
            ExchangeType::Fanout => ExchangeKind::Fanout,
            ExchangeType::Topic => ExchangeKind::Topic,
            ExchangeType::Headers => ExchangeKind::Headers,
        };
        let concurrency = u16::try_from(sub.concurrency()).unwrap_or(u16::MAX);
        let prefetch = opts
            .prefetch
            .unwrap_or_else(|| DEFAULT_PREFETCH.max(concurrency.saturating_mul(2)));
        Ok(Topology {
            queue: opts.queue.as_str().into(),
            routing_key: opts
                .routing_key
                .clone()
                .unwrap_or_else(|| opts.queue.clone()),
            exchange: opts.exchange.clone(),
            exchange_kind,
            durable: opts.durable,
            auto_delete: opts.auto_delete,
            declare: opts.declare,
            passive: opts.passive,
            queue_type: opts.queue_type,
            dead_letter_exchange: opts.dead_letter_exchange.clone(),
            prefetch,
            no_ack: sub.policy() == AckPolicy::AckFirst,
            subscriber: sub.name().to_owned(),
        })
    }

    /// Declares what the subscriber asked for (again, after a reconnect: declarations are
    /// idempotent while the arguments stay the same).
    async fn declare(&self, channel: &Channel) -> Result<(), BrokerError> {
        let op = |operation| move |e| BrokerError::operation(KIND, operation, e);
        if self.passive {
            let options = QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            };
            channel
                .queue_declare(self.queue.as_ref().into(), options, FieldTable::default())
                .await
                .map_err(op("queue.declare (passive)"))?;
            return Ok(());
        }
        if !self.declare {
            return Ok(());
        }
        let mut arguments = FieldTable::default();
        if let Some(kind) = &self.queue_type {
            arguments.insert(
                "x-queue-type".into(),
                AMQPValue::LongString(kind.name().into()),
            );
        }
        if let Some(dlx) = &self.dead_letter_exchange {
            arguments.insert(
                "x-dead-letter-exchange".into(),
                AMQPValue::LongString(dlx.as_str().into()),
            );
        }
        let options = QueueDeclareOptions {
            durable: self.durable,
            auto_delete: self.auto_delete,
            ..QueueDeclareOptions::default()
        };
        channel
            .queue_declare(self.queue.as_ref().into(), options, arguments)
            .await
            .map_err(op("queue.declare"))?;
        let Some(exchange) = self.exchange.as_deref().filter(|e| !e.is_empty()) else {
            return Ok(()); // the default exchange routes by queue name already
        };
        let options = ExchangeDeclareOptions {
            // `amq.*` exchanges exist already and may not be declared, only checked.
            passive: exchange.starts_with("amq."),
            durable: self.durable,
            ..ExchangeDeclareOptions::default()
        };
        channel
            .exchange_declare(
                exchange.into(),
                self.exchange_kind.clone(),
                options,
                FieldTable::default(),
            )
            .await
            .map_err(op("exchange.declare"))?;
        channel
            .queue_bind(
                self.queue.as_ref().into(),
                exchange.into(),
                self.routing_key.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(op("queue.bind"))
    }
}

/// One live connection of a consumer.
struct Session {
    connection: Connection,
    channel: Channel,
    deliveries: lapin::Consumer,
    /// The channel's settlement pipeline; `None` with `no_ack` (AckFirst).
    acks: Option<Arc<Acks>>,
}

/// The deliveries of one subscription; see the module docs for reconnection.
pub struct RabbitConsumer {
    broker: Arc<Inner>,
    topology: Topology,
    session: Option<Session>,
    /// Sessions whose consumer RabbitMQ cancelled, kept open so their in-flight deliveries can
    /// still be settled; closed by [`Consumer::close`].
    retired: Vec<Session>,
    backoff: Duration,
    /// Set after a failed reconnect: wait this long before the next attempt.
    retry_in: Option<Duration>,
    /// The current session's connection, for [`Broker::is_connected`](brook_runtime::Broker::is_connected).
    link: Arc<Link>,
}

impl RabbitConsumer {
    pub(crate) async fn start(
        broker: Arc<Inner>,
        topology: Topology,
    ) -> Result<RabbitConsumer, BrokerError> {
        let session = open_session(&broker, &topology).await?;
        let link = broker.links.register(session.connection.status());
        Ok(RabbitConsumer {
            link,
            backoff: broker.backoff_min,
            broker,
            topology,
            session: Some(session),
            retired: Vec::new(),
            retry_in: None,
        })
    }

    /// The queue consumed.
    pub fn queue(&self) -> &str {
        &self.topology.queue
    }

    fn set_link(&self, session: Option<&Session>) {
        *self
            .link
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) =
            session.map(|s| s.connection.status().clone());
    }

    /// One reconnection attempt, after the backoff if the last one failed. A failure is
    /// returned (for `next()` to hand to the engine, which logs it) and the backoff grows.
    async fn reconnect(&mut self) -> Result<(), BrokerError> {
        if let Some(delay) = self.retry_in {
            tokio::time::sleep(delay).await;
            // Cleared only after the sleep: a `next()` cancelled mid-wait waits again.
            self.retry_in = None;
        }
        match open_session(&self.broker, &self.topology).await {
            Ok(session) => {
                tracing::info!(
                    subscriber = self.topology.subscriber,
                    queue = &*self.topology.queue,
                    address = self.broker.address,
                    "RabbitMQ consumer reconnected"
                );
                self.backoff = self.broker.backoff_min;
                self.set_link(Some(&session));
                self.session = Some(session);
                Ok(())
            }
            Err(error) => {
                // The engine logs the returned error; this only adds when the next try is.
                tracing::debug!(
                    subscriber = self.topology.subscriber,
                    queue = &*self.topology.queue,
                    %error,
                    retry_in = ?self.backoff,
                    "RabbitMQ consumer cannot reconnect yet"
                );
                self.retry_in = Some(self.backoff);
                self.backoff = (self.backoff * 2).min(self.broker.backoff_max);
                Err(error)
            }
        }
    }
}

async fn open_session(broker: &Inner, topology: &Topology) -> Result<Session, BrokerError> {
    let connection = broker
        .open(&format!("brook consumer {}", topology.subscriber))
        .await?;
    let channel = connection
        .create_channel()
        .await
        .map_err(|e| BrokerError::operation(KIND, "channel.open", e))?;
    topology.declare(&channel).await?;
    if !topology.no_ack {
        channel
            .basic_qos(topology.prefetch, BasicQosOptions::default())
            .await
            .map_err(|e| BrokerError::operation(KIND, "basic.qos", e))?;
    }
    let options = BasicConsumeOptions {
        no_ack: topology.no_ack,
        ..BasicConsumeOptions::default()
    };
    let deliveries = channel
        .basic_consume(
            topology.queue.as_ref().into(),
            ShortString::from(""),
            options,
            FieldTable::default(),
        )
        .await
        .map_err(|e| BrokerError::operation(KIND, "basic.consume", e))?;
    let acks = (!topology.no_ack).then(|| Acks::start(channel.clone(), topology.queue.clone()));
    Ok(Session {
        connection,
        channel,
        deliveries,
        acks,
    })
}

impl Consumer for RabbitConsumer {
    async fn next(&mut self) -> Option<Result<Message, BrokerError>> {
        loop {
            let Some(session) = self.session.as_mut() else {
                if let Err(error) = self.reconnect().await {
                    return Some(Err(error));
                }
                continue;
            };
            match session.deliveries.next().await {
                Some(Ok(delivery)) => {
                    return Some(Ok(to_message(
                        &self.topology.queue,
                        delivery,
                        session.acks.as_ref(),
                    )))
                }
                Some(Err(error)) => tracing::warn!(
                    subscriber = self.topology.subscriber,
                    queue = &*self.topology.queue,
                    %error,
                    "RabbitMQ connection lost; reconnecting (unacknowledged messages are requeued by RabbitMQ)"
                ),
                None => {
                    tracing::warn!(
                        subscriber = self.topology.subscriber,
                        queue = &*self.topology.queue,
                        "RabbitMQ cancelled the consumer (queue deleted?); consuming again"
                    );
                    // Still connected: keep it (see the module docs). Drop retired sessions
                    // whose connection died meanwhile: nothing can be settled there any more.
                    self.retired.retain(|s| s.connection.status().connected());
                    if let Some(session) = self.session.take() {
                        if session.connection.status().connected() {
                            self.retired.push(session);
                        }
                    }
                    self.set_link(None);
                    continue;
                }
            }
            self.session = None;
            self.set_link(None);
        }
    }

    /// Sends the settlements still in the pipeline, then cancels the consumer and closes its
    /// channel and connection: RabbitMQ requeues every delivery still unacknowledged
    /// (prefetched, or left unsettled by the handler).
    async fn close(mut self) -> Result<(), BrokerError> {
        self.set_link(None);
        let sessions: Vec<Session> = self
            .session
            .take()
            .into_iter()
            .chain(self.retired.drain(..))
            .collect();
        if sessions.is_empty() {
            return Ok(());
        }
        let closing = futures_util::future::join_all(sessions.into_iter().map(close_session));
        if tokio::time::timeout(self.broker.connect_timeout, closing)
            .await
            .is_err()
        {
            tracing::warn!(
                queue = &*self.topology.queue,
                "RabbitMQ did not confirm closing the consumer in time; dropping the connection"
            );
        }
        Ok(())
    }
}

/// Flushes the settlement pipeline, cancels the consumer (if RabbitMQ has not), closes the
/// channel and the connection.
async fn close_session(session: Session) {
    if let Some(acks) = &session.acks {
        if let Err(error) = acks.flush().await {
            tracing::warn!(%error, "settling the last deliveries while closing failed; RabbitMQ requeues them");
        }
    }
    let tag = session.deliveries.tag();
    if let Err(e) = session
        .channel
        .basic_cancel(tag, BasicCancelOptions::default())
        .await
    {
        tracing::debug!(error = %e, "basic.cancel while closing");
    }
    if let Err(e) = session.channel.close(200, "bye".into()).await {
        tracing::debug!(error = %e, "channel.close while closing");
    }
    if let Err(e) = session.connection.close(200, "bye".into()).await {
        tracing::debug!(error = %e, "connection.close while closing");
    }
}
