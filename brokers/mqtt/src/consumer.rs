//! Consumers, settlers and the MQTT-specific message type.
//!
//! A settler maps a settlement onto the connection's ack line (see [`crate::acks`]):
//! - `Ack` releases the PUBACK/PUBREC (in arrival order);
//! - `Nack` keeps it unacknowledged and hands the message back to its consumer, which delivers
//!   it to the handler again after the nack's delay (or [`redelivery_delay`]), counting the
//!   delivery; the connection is left alone;
//! - `Reject` = ack (MQTT has no reject), after publishing the message to the subscriber's
//!   `dead_letter_topic` if it has one.
//!
//! QoS 0 has nothing to settle.

use std::any::Any;
use std::cmp::Ordering as CmpOrdering;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use brook_runtime::{
    BrokerError, BrokerKind, BrokerMessage, Consumer, Headers, Message, MessageId, SettleFuture,
    Settlement, Settler,
};
use bytes::Bytes;
use rumqttc::QoS;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::acks::{Settled, Ticket};
use crate::connection::{fingerprint, Delivery, Fate, Shared};
use crate::proto::Incoming;

/// Header naming the topic a dead-lettered message was published to (MQTT 5 only).
pub const ORIGINAL_TOPIC_HEADER: &str = "x-original-topic";
/// Header saying why a message was dead-lettered (MQTT 5 only).
pub const REASON_HEADER: &str = "x-dead-letter-reason";
/// Header with a dead-lettered message's delivery count (MQTT 5 only).
pub const DELIVERY_COUNT_HEADER: &str = "x-delivery-count";

/// How long brook waits before redelivering a message nacked without a delay, after its
/// `deliveries`-th delivery: 100 ms, doubling with each delivery, at most 5 s.
pub fn redelivery_delay(deliveries: u32) -> Duration {
    const FIRST: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(5);
    let doublings = deliveries.saturating_sub(1).min(16);
    FIRST.saturating_mul(1 << doublings).min(MAX)
}

/// The MQTT side of a delivery, as a handler argument: `msg: &MqttMessage`.
///
/// ```
/// use brook_mqtt::MqttMessage;
/// fn describe(m: &MqttMessage) -> String {
///     format!("{} qos={} retain={} dup={}", m.topic(), m.qos(), m.retain(), m.dup())
/// }
/// ```
#[derive(Clone, Debug)]
pub struct MqttMessage {
    topic: Arc<str>,
    qos: u8,
    retain: bool,
    dup: bool,
    packet_id: u16,
}

impl MqttMessage {
    /// The topic the message was published to (not the subscription's filter).
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The QoS it was delivered with (the lower of the publisher's and the subscription's).
    pub fn qos(&self) -> u8 {
        self.qos
    }

    /// Whether it is a retained message, sent because the subscription was just made.
    pub fn retain(&self) -> bool {
        self.retain
    }

    /// Whether this may not be the first delivery: the broker set the DUP flag (a resend after
    /// the session resumed), or brook redelivers it after a nack. `Message::delivery_count()`
    /// says how many deliveries brook counted.
    pub fn dup(&self) -> bool {
        self.dup
    }

    /// The packet identifier (0 for QoS 0). Only unique among unacknowledged messages of one
    /// connection.
    pub fn packet_id(&self) -> u16 {
        self.packet_id
    }
}

impl BrokerMessage for MqttMessage {
    type Kind = brook_runtime::kind::Mqtt;
}

/// A nacked message waiting for its local redelivery.
struct Retry {
    due: Instant,
    /// Keeps redeliveries due at the same instant in nack order.
    order: u64,
    delivery: Delivery,
}

impl PartialEq for Retry {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.order) == (other.due, other.order)
    }
}

impl Eq for Retry {}

impl PartialOrd for Retry {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}

impl Ord for Retry {
    /// Reversed: the earliest due is the greatest, for `BinaryHeap`'s max-heap.
    fn cmp(&self, other: &Self) -> CmpOrdering {
        (other.due, other.order).cmp(&(self.due, self.order))
    }
}

/// The subscriber's settings a settler needs.
pub(crate) struct SubscriberSettings {
    /// Publish rejected messages here before acking them.
    pub dead_letter_topic: Option<Arc<str>>,
    /// The subscriber's `max_deliveries` (for the dead-letter reason).
    pub max_deliveries: Option<u32>,
}

/// Reads one subscription's messages from the shared connection, plus the ones it
/// redelivers itself after a nack.
pub struct MqttConsumer {
    pub(crate) shared: Arc<Shared>,
    pub(crate) route: u64,
    pub(crate) rx: mpsc::UnboundedReceiver<Delivery>,
    retry_tx: mpsc::UnboundedSender<Retry>,
    retry_rx: mpsc::UnboundedReceiver<Retry>,
    retries: BinaryHeap<Retry>,
    /// A delivery taken from `rx` or `retries` and not handed out yet (kept here, not in a
    /// future, so a cancelled `next()` loses nothing).
    held: Option<Delivery>,
    connacks: watch::Receiver<u64>,
    settings: Arc<SubscriberSettings>,
}

impl MqttConsumer {
    pub(crate) fn new(
        shared: Arc<Shared>,
        route: u64,
        rx: mpsc::UnboundedReceiver<Delivery>,
        settings: SubscriberSettings,
    ) -> Self {
        let (retry_tx, retry_rx) = mpsc::unbounded_channel();
        let connacks = shared.connacks();
        MqttConsumer {
            shared,
            route,
            rx,
            retry_tx,
            retry_rx,
            retries: BinaryHeap::new(),
            held: None,
            connacks,
            settings: Arc::new(settings),
        }
    }

    fn message(&self, delivery: Delivery) -> Message {
        let Delivery {
            publish: p,
            ticket,
            deliveries,
        } = delivery;
        let topic: Arc<str> = p.topic.into();
        let raw = MqttMessage {
            topic: topic.clone(),
            qos: p.qos as u8,
            retain: p.retain,
            dup: p.dup || deliveries > 1,
            packet_id: p.pkid,
        };
        let (id, retry) = match p.qos {
            QoS::AtMostOnce => (MessageId::None, None),
            _ => (
                MessageId::Number(u64::from(p.pkid)),
                Some(self.retry_tx.clone()),
            ),
        };
        let settler = MqttSettler {
            shared: self.shared.clone(),
            ticket,
            raw,
            payload: p.payload.clone(),
            headers: p.headers.clone(),
            deliveries,
            retry,
            settings: self.settings.clone(),
        };
        let msg = Message::new(BrokerKind::Mqtt, topic, p.payload, settler)
            .with_id(id)
            .with_delivery_count(deliveries);
        if p.headers.is_empty() {
            msg
        } else {
            msg.with_headers(p.headers)
        }
    }
}

impl Consumer for MqttConsumer {
    async fn next(&mut self) -> Option<Result<Message, BrokerError>> {
        loop {
            if let Some(delivery) = self.held.take() {
                let Some(ticket) = delivery.ticket else {
                    return Some(Ok(self.message(delivery)));
                };
                // Seen before the fate is read: a CONNACK after this wakes `changed()`.
                self.connacks.mark_unchanged();
                match self.shared.fate(ticket) {
                    Fate::Live => {
                        if delivery.deliveries > 1 {
                            // A local redelivery: a resend by the broker continues its count.
                            let p = &delivery.publish;
                            self.shared.record_deliveries(
                                ticket,
                                p.pkid,
                                fingerprint(&p.topic, &p.payload),
                                delivery.deliveries,
                            );
                        }
                        return Some(Ok(self.message(delivery)));
                    }
                    // Nobody else has it any more: handled, its ack is a no-op.
                    Fate::Lost => return Some(Ok(self.message(delivery))),
                    // The resumed session sends it again (DUP, same packet id).
                    Fate::Resumed => continue,
                    Fate::Unknown => {
                        self.held = Some(delivery);
                        if self.shared.driver_done() {
                            return None;
                        }
                        // Until the next CONNACK says whether the session survived.
                        if self.connacks.changed().await.is_err() {
                            return None;
                        }
                        continue;
                    }
                }
            }
            while let Ok(retry) = self.retry_rx.try_recv() {
                self.retries.push(retry);
            }
            let delivery = match self.retries.peek().map(|r| r.due) {
                // A redelivery that is due comes first.
                Some(due) => tokio::select! {
                    biased;
                    _ = tokio::time::sleep_until(due) => {
                        self.held = self.retries.pop().map(|r| r.delivery);
                        continue;
                    }
                    Some(retry) = self.retry_rx.recv() => {
                        self.retries.push(retry);
                        continue;
                    }
                    delivery = self.rx.recv() => delivery,
                },
                None => tokio::select! {
                    biased;
                    Some(retry) = self.retry_rx.recv() => {
                        self.retries.push(retry);
                        continue;
                    }
                    delivery = self.rx.recv() => delivery,
                },
            };
            match delivery {
                Some(delivery) => self.held = Some(delivery),
                None => return None, // the connection was closed
            }
        }
    }

    async fn close(self) -> Result<(), BrokerError> {
        // Dropping does the work (also for a consumer dropped without `close`).
        drop(self);
        Ok(())
    }
}

impl Drop for MqttConsumer {
    fn drop(&mut self) {
        self.shared.remove_route(self.route);
        // Messages received but never handed out (or waiting for their redelivery) stay
        // unacknowledged: the broker resends them when the session resumes. Abandon them, so
        // they neither look pending forever nor hold back the acks of other consumers on this
        // connection still finishing.
        self.rx.close();
        self.retry_rx.close();
        let mut left: Vec<Delivery> = self.held.take().into_iter().collect();
        while let Ok(delivery) = self.rx.try_recv() {
            left.push(delivery);
        }
        while let Ok(retry) = self.retry_rx.try_recv() {
            left.push(retry.delivery);
        }
        left.extend(self.retries.drain().map(|r| r.delivery));
        let (mut lost, mut unknown) = (0usize, 0usize);
        for ticket in left.iter().filter_map(|d| d.ticket) {
            match self.shared.fate(ticket) {
                Fate::Live => self.shared.abandon(ticket),
                Fate::Resumed => {}
                Fate::Lost => lost += 1,
                Fate::Unknown => unknown += 1,
            }
        }
        if lost > 0 {
            tracing::error!(
                lost,
                "an MQTT consumer stopped with {lost} messages not handled from a broker session that is gone: nobody delivers them again, they are lost"
            );
        }
        if unknown > 0 {
            tracing::warn!(
                unknown,
                "an MQTT consumer stopped with {unknown} messages not handled from a connection that was lost; the broker resends them if it resumes the session"
            );
        }
    }
}

/// Orders redeliveries due at the same instant.
static RETRY_ORDER: AtomicU64 = AtomicU64::new(0);

/// Settles one delivery on its connection.
struct MqttSettler {
    shared: Arc<Shared>,
    ticket: Option<Ticket>,
    raw: MqttMessage,
    payload: Bytes,
    headers: Headers,
    deliveries: u32,
    /// Where a nacked message goes back for its redelivery (its consumer).
    retry: Option<mpsc::UnboundedSender<Retry>>,
    settings: Arc<SubscriberSettings>,
}

impl MqttSettler {
    fn ack(&self, ticket: Ticket) -> Result<(), BrokerError> {
        if self.shared.settle(ticket, true) != Settled::Stale {
            return Ok(());
        }
        match self.shared.fate(ticket) {
            // Settled already or given up on this connection: nothing to send.
            Fate::Live => Ok(()),
            Fate::Lost => {
                tracing::debug!(topic = %self.raw.topic, "the broker session this message came from is gone: there is nothing to acknowledge");
                Ok(())
            }
            Fate::Resumed => Err(BrokerError::operation(
                BrokerKind::Mqtt,
                "PUBACK",
                "the connection this message arrived on was lost before its acknowledgement was sent; the broker resends it on the resumed session",
            )),
            Fate::Unknown => Err(BrokerError::operation(
                BrokerKind::Mqtt,
                "PUBACK",
                "the connection this message arrived on was lost before its acknowledgement was sent; the broker resends it if it resumes the session",
            )),
        }
    }

    /// Keeps the message unacknowledged and hands it back to its consumer for a redelivery
    /// after `delay`.
    fn nack(&self, ticket: Ticket, delay: Option<Duration>) -> Result<(), BrokerError> {
        if self.shared.settle(ticket, false) == Settled::Stale {
            match self.shared.fate(ticket) {
                // Abandoned on this connection (its consumer is gone): the broker keeps it.
                Fate::Live => return Ok(()),
                // The resumed session sends it again.
                Fate::Resumed => return Ok(()),
                // Redelivered locally; when it is due, the consumer looks at its fate again.
                Fate::Lost | Fate::Unknown => {}
            }
        }
        self.redeliver(
            ticket,
            delay.unwrap_or_else(|| redelivery_delay(self.deliveries)),
        );
        Ok(())
    }

    fn redeliver(&self, ticket: Ticket, delay: Duration) {
        // Delivered this often so far: a resend by the broker (if the connection is lost
        // meanwhile and the session resumes) continues from here.
        self.shared.record_deliveries(
            ticket,
            self.raw.packet_id,
            fingerprint(&self.raw.topic, &self.payload),
            self.deliveries,
        );
        let deliveries = self.deliveries.saturating_add(1);
        let retry = Retry {
            due: Instant::now() + delay,
            order: RETRY_ORDER.fetch_add(1, Ordering::Relaxed),
            delivery: Delivery {
                publish: Incoming {
                    topic: self.raw.topic.to_string(),
                    payload: self.payload.clone(),
                    qos: crate::connection::qos_from(self.raw.qos),
                    pkid: self.raw.packet_id,
                    dup: true,
                    retain: self.raw.retain,
                    headers: self.headers.clone(),
                },
                ticket: Some(ticket),
                deliveries,
            },
        };
        let sent = self.retry.as_ref().map(|tx| tx.send(retry).is_ok());
        if sent != Some(true) {
            // Its consumer is gone: leave the message to the broker (next session).
            self.shared.abandon(ticket);
        }
    }

    /// Why the engine rejected the message, as far as the settler can tell.
    fn reason(&self) -> String {
        match self.settings.max_deliveries {
            Some(max) if self.deliveries >= max => format!(
                "max_deliveries reached: delivery {} of at most {max}",
                self.deliveries
            ),
            _ => "rejected".to_owned(),
        }
    }

    /// Publishes the message to the dead-letter topic (QoS 1, confirmed), then acks it.
    async fn dead_letter(&self, ticket: Ticket, topic: &str) -> Result<(), BrokerError> {
        if self.shared.fate(ticket) == Fate::Resumed {
            // The broker resends it; dead-lettering now would do it twice.
            return self.ack(ticket);
        }
        let mut headers = self.headers.clone();
        headers.insert(ORIGINAL_TOPIC_HEADER, self.raw.topic.to_string());
        headers.insert(REASON_HEADER, self.reason());
        headers.insert(DELIVERY_COUNT_HEADER, self.deliveries.to_string());
        let timeout = self
            .shared
            .config
            .connect_timeout
            .max(Duration::from_secs(10));
        let published = self
            .shared
            .publish(
                topic.to_owned(),
                QoS::AtLeastOnce,
                false,
                self.payload.clone(),
                &headers,
                timeout,
            )
            .await;
        match published {
            Ok(()) => self.ack(ticket),
            Err(error) => {
                let what = match self.shared.fate(ticket) {
                    Fate::Resumed => "the broker resends it on the resumed session",
                    // Live too: left unacknowledged, a clean session would never resend it.
                    // Delivered again by brook (with the backoff), it is rejected and
                    // dead-lettered again then.
                    Fate::Live | Fate::Lost | Fate::Unknown => {
                        self.redeliver(ticket, redelivery_delay(self.deliveries));
                        "brook delivers it again"
                    }
                };
                Err(BrokerError::operation(
                    BrokerKind::Mqtt,
                    "dead-letter publish",
                    format!(
                        "could not publish the rejected message to `{topic}` ({error}); {what}"
                    ),
                ))
            }
        }
    }
}

impl Settler for MqttSettler {
    fn settle(&self, settlement: Settlement) -> SettleFuture<'_> {
        let Some(ticket) = self.ticket else {
            return SettleFuture::ready(Ok(())); // QoS 0: nothing to acknowledge
        };
        match settlement {
            Settlement::Ack => SettleFuture::ready(self.ack(ticket)),
            Settlement::Nack { delay } => SettleFuture::ready(self.nack(ticket, delay)),
            Settlement::Reject => match self.settings.dead_letter_topic.as_deref() {
                None => SettleFuture::ready(self.ack(ticket)), // MQTT has no reject
                Some(topic) => SettleFuture::new(self.dead_letter(ticket, topic)),
            },
        }
    }

    /// A message of a session that was resumed since it arrived is resent by the broker:
    /// handling this copy too would handle it twice.
    fn superseded(&self) -> bool {
        self.ticket
            .is_some_and(|t| self.shared.fate(t) == Fate::Resumed)
    }

    fn raw(&self) -> Option<&(dyn Any + Send + Sync)> {
        Some(&self.raw)
    }
}

#[cfg(test)]
mod tests {
    use super::redelivery_delay;
    use std::time::Duration;

    #[test]
    fn the_default_redelivery_delay_doubles_up_to_five_seconds() {
        let ms = |n| redelivery_delay(n).as_millis();
        assert_eq!(
            [1, 2, 3, 4, 5, 6, 7].map(ms),
            [100, 200, 400, 800, 1600, 3200, 5000]
        );
        assert_eq!(redelivery_delay(0), Duration::from_millis(100));
        assert_eq!(redelivery_delay(u32::MAX), Duration::from_secs(5));
    }
}
