//! A RabbitMQ delivery as brook sees it: the [`Message`] built from it, the settler that maps
//! ack / nack / reject onto basic.ack / basic.nack / basic.reject, and [`RabbitMessage`], the
//! delivery itself for handlers that need RabbitMQ's own fields.
//!
//! Delivery counting: quorum queues put `x-delivery-count` (earlier returned deliveries) on
//! redelivered messages, and RabbitMQ 4.3+ adds `x-acquired-count` (earlier deliveries of any
//! kind; there a `basic.nack requeue=true` no longer raises `x-delivery-count`); classic queues
//! only set the `redelivered` flag. So a message that is not flagged `redelivered` gets count 1
//! whatever its headers say (a publisher, or a message forwarded from another queue, may carry
//! these headers: trusting them would reject a message never handled), and a redelivered one
//! `x-acquired-count + 1`, else `x-delivery-count + 1`, else no count at all (a classic queue:
//! brook does not guess, so `max_deliveries` cannot apply).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use brook_runtime::headers::{CONTENT_TYPE, CORRELATION_ID, MESSAGE_ID, REPLY_TO};
use brook_runtime::{
    BrokerKind, BrokerMessage, Headers, Message, MessageId, SettleFuture, Settlement, Settler,
};
use bytes::Bytes;

use crate::acks::Acks;
use lapin::message::Delivery;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::BasicProperties;

/// The header quorum queues use to count earlier (failed) deliveries.
pub const DELIVERY_COUNT_HEADER: &str = "x-delivery-count";

/// The header RabbitMQ 4.3+ quorum queues use to count earlier deliveries of any outcome.
pub const ACQUIRED_COUNT_HEADER: &str = "x-acquired-count";

/// A RabbitMQ delivery, for handlers that need more than [`Message`] gives: the delivery tag,
/// the exchange and routing key it was published with, the `redelivered` flag and every AMQP
/// property.
///
/// ```
/// use brook_rabbit::RabbitMessage;
///
/// // In a handler: `async fn handle(msg: &Message, rabbit: &RabbitMessage) { ... }`
/// fn describe(rabbit: &RabbitMessage) -> String {
///     format!("{} via {} (redelivered: {})", rabbit.routing_key(), rabbit.exchange(), rabbit.redelivered())
/// }
/// ```
#[derive(Debug)]
pub struct RabbitMessage {
    /// The delivery, without its payload (moved into the [`Message`]).
    delivery: Delivery,
    no_ack: bool,
}

impl RabbitMessage {
    /// The delivery tag (unique per channel).
    pub fn delivery_tag(&self) -> u64 {
        self.delivery.delivery_tag
    }

    /// The exchange the message was published to ("" for the default exchange).
    pub fn exchange(&self) -> &str {
        self.delivery.exchange.as_str()
    }

    /// The routing key it was published with.
    pub fn routing_key(&self) -> &str {
        self.delivery.routing_key.as_str()
    }

    /// Whether RabbitMQ delivered it before (to this or another consumer).
    pub fn redelivered(&self) -> bool {
        self.delivery.redelivered
    }

    /// The AMQP properties (content type, correlation id, headers, ...).
    pub fn properties(&self) -> &BasicProperties {
        &self.delivery.properties
    }

    /// Whether the message was consumed with `no_ack` (`ack_policy = AckFirst`): RabbitMQ
    /// considered it acknowledged when it sent it.
    pub fn no_ack(&self) -> bool {
        self.no_ack
    }

    /// `x-delivery-count` as the message carries it (quorum queues; absent on a first
    /// delivery, but a publisher may set it: brook only trusts it on a redelivery).
    pub fn delivery_count_header(&self) -> Option<u64> {
        int_header(&self.delivery.properties, DELIVERY_COUNT_HEADER)
    }

    /// `x-acquired-count` as the message carries it (quorum queues of RabbitMQ 4.3+; the same
    /// caveat as [`delivery_count_header`](Self::delivery_count_header)).
    pub fn acquired_count_header(&self) -> Option<u64> {
        int_header(&self.delivery.properties, ACQUIRED_COUNT_HEADER)
    }
}

fn int_header(props: &BasicProperties, name: &str) -> Option<u64> {
    props
        .headers()
        .as_ref()?
        .inner()
        .get(name)
        .and_then(amqp_int)
}

/// The delivery count brook reports; see the module docs.
fn delivery_count(redelivered: bool, props: &BasicProperties) -> Option<u32> {
    if !redelivered {
        return Some(1);
    }
    let previous = int_header(props, ACQUIRED_COUNT_HEADER)
        .or_else(|| int_header(props, DELIVERY_COUNT_HEADER))?;
    Some(u32::try_from(previous.saturating_add(1)).unwrap_or(u32::MAX))
}

impl BrokerMessage for RabbitMessage {
    type Kind = brook_runtime::kind::Rabbit;
}

/// Turns a delivery into a [`Message`] settled through `acks` (`None`: consumed with `no_ack`).
pub(crate) fn to_message(
    queue: &Arc<str>,
    mut delivery: Delivery,
    acks: Option<&Arc<Acks>>,
) -> Message {
    let body = Bytes::from(std::mem::take(&mut delivery.data));
    let headers = headers_from(&delivery.properties);
    let id = match delivery.properties.message_id() {
        Some(id) => MessageId::Text(id.as_str().into()),
        None => MessageId::Number(delivery.delivery_tag),
    };
    let count = delivery_count(delivery.redelivered, &delivery.properties);
    let raw = RabbitMessage {
        delivery,
        no_ack: acks.is_none(),
    };
    let settler = RabbitSettler {
        raw,
        acks: acks.cloned(),
        settled: AtomicBool::new(false),
    };
    let mut msg = Message::new(BrokerKind::Rabbit, queue.clone(), body, settler)
        .with_headers(headers)
        .with_id(id);
    if let Some(count) = count {
        msg = msg.with_delivery_count(count);
    }
    msg
}

/// FastStream's header names for the AMQP properties it uses, then the headers table.
pub(crate) fn headers_from(props: &BasicProperties) -> Headers {
    let mut headers = Headers::new();
    let fields = [
        (CONTENT_TYPE, props.content_type()),
        (CORRELATION_ID, props.correlation_id()),
        (REPLY_TO, props.reply_to()),
        (MESSAGE_ID, props.message_id()),
    ];
    for (name, value) in fields {
        if let Some(value) = value {
            headers.insert(name, value.as_str());
        }
    }
    if let Some(table) = props.headers() {
        for (name, value) in table {
            if let Some(text) = amqp_text(value) {
                headers.insert(name.as_str(), text);
            }
        }
    }
    headers
}

/// A header value as text (numbers and booleans formatted; tables and arrays left out).
fn amqp_text(value: &AMQPValue) -> Option<String> {
    Some(match value {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ShortString(s) => s.as_str().to_owned(),
        AMQPValue::Boolean(b) => b.to_string(),
        AMQPValue::Float(f) => f.to_string(),
        AMQPValue::Double(f) => f.to_string(),
        AMQPValue::Timestamp(t) => t.to_string(),
        other => amqp_int(other)?.to_string(),
    })
}

fn amqp_int(value: &AMQPValue) -> Option<u64> {
    match *value {
        AMQPValue::ShortShortInt(n) => u64::try_from(n).ok(),
        AMQPValue::ShortShortUInt(n) => Some(n.into()),
        AMQPValue::ShortInt(n) => u64::try_from(n).ok(),
        AMQPValue::ShortUInt(n) => Some(n.into()),
        AMQPValue::LongInt(n) => u64::try_from(n).ok(),
        AMQPValue::LongUInt(n) => Some(n.into()),
        AMQPValue::LongLongInt(n) => u64::try_from(n).ok(),
        _ => None,
    }
}

/// brook headers as AMQP properties: FastStream's names go to their properties, the rest to
/// the headers table (as long strings).
pub(crate) fn properties_from(headers: &Headers) -> BasicProperties {
    // delivery_mode 2: persistent (survives a broker restart on a durable queue).
    let mut props = BasicProperties::default().with_delivery_mode(2);
    let mut table = FieldTable::default();
    for (name, value) in headers.iter() {
        match name {
            CONTENT_TYPE => props = props.with_content_type(value.into()),
            CORRELATION_ID => props = props.with_correlation_id(value.into()),
            REPLY_TO => props = props.with_reply_to(value.into()),
            MESSAGE_ID => props = props.with_message_id(value.into()),
            _ => {
                table.insert(ShortString::from(name), AMQPValue::LongString(value.into()));
            }
        }
    }
    if !table.inner().is_empty() {
        props = props.with_headers(table);
    }
    props
}

/// Settles one delivery through its channel's settlement pipeline ([`Acks`]).
struct RabbitSettler {
    raw: RabbitMessage,
    /// `None` when consumed with `no_ack` (AckFirst): nothing to send.
    acks: Option<Arc<Acks>>,
    /// Whether a settlement was handed to the pipeline (else dropping it abandons the tag).
    settled: AtomicBool,
}

impl RabbitSettler {
    /// The pipeline to settle through, or `None` (after a warning where it matters) when the
    /// delivery was consumed with `no_ack`.
    fn acks(&self, settlement: Settlement) -> Option<&Acks> {
        let acks = self.acks.as_deref();
        match acks {
            Some(_) => self.settled.store(true, Ordering::Relaxed),
            // Consumed with no_ack (AckFirst): RabbitMQ took the delivery as acknowledged.
            None if settlement != Settlement::Ack => tracing::warn!(
                delivery_tag = self.raw.delivery_tag(),
                "ack_policy = AckFirst consumes with no_ack: the message was acknowledged on delivery, so {:?} has no effect",
                settlement.kind()
            ),
            None => {}
        }
        acks
    }
}

impl Settler for RabbitSettler {
    fn settle(&self, settlement: Settlement) -> SettleFuture<'_> {
        match self.acks(settlement) {
            Some(acks) => SettleFuture::new(acks.settle_now(self.raw.delivery_tag(), settlement)),
            None => SettleFuture::ready(Ok(())),
        }
    }

    fn settle_later(&self, settlement: Settlement) -> SettleFuture<'_> {
        if let Some(acks) = self.acks(settlement) {
            acks.queue(self.raw.delivery_tag(), settlement);
        }
        SettleFuture::ready(Ok(()))
    }

    fn raw(&self) -> Option<&(dyn std::any::Any + Send + Sync)> {
        Some(&self.raw)
    }
}

impl Drop for RabbitSettler {
    fn drop(&mut self) {
        if let Some(acks) = &self.acks {
            if !self.settled.load(Ordering::Relaxed) {
                acks.abandon(self.raw.delivery_tag());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faststream_headers_become_properties_and_back() {
        let mut h = Headers::new();
        h.insert(CONTENT_TYPE, "application/json");
        h.insert(CORRELATION_ID, "c-1");
        h.insert(REPLY_TO, "replies");
        h.insert(MESSAGE_ID, "m-1");
        h.insert("x-tenant", "acme");
        let props = properties_from(&h);
        assert_eq!(props.delivery_mode(), &Some(2));
        assert_eq!(
            props.correlation_id().as_ref().map(|s| s.as_str()),
            Some("c-1")
        );
        assert!(props
            .headers()
            .as_ref()
            .is_some_and(|t| !t.contains_key(CONTENT_TYPE) && t.contains_key("x-tenant")));
        let back = headers_from(&props);
        for (name, value) in h.iter() {
            assert_eq!(back.get(name), Some(value), "{name}");
        }
    }

    #[test]
    fn delivery_counting_trusts_headers_only_on_redeliveries() {
        let with = |pairs: &[(&str, i64)]| {
            let mut table = FieldTable::default();
            for (name, n) in pairs {
                table.insert(ShortString::from(*name), AMQPValue::LongLongInt(*n));
            }
            BasicProperties::default().with_headers(table)
        };
        let forged = with(&[(DELIVERY_COUNT_HEADER, 5), (ACQUIRED_COUNT_HEADER, 9)]);
        assert_eq!(delivery_count(false, &forged), Some(1), "first delivery");
        assert_eq!(
            delivery_count(true, &forged),
            Some(10),
            "x-acquired-count first"
        );
        assert_eq!(
            delivery_count(true, &with(&[(DELIVERY_COUNT_HEADER, 2)])),
            Some(3)
        );
        assert_eq!(delivery_count(true, &BasicProperties::default()), None);
        assert_eq!(delivery_count(false, &BasicProperties::default()), Some(1));
    }

    #[test]
    fn numeric_headers_are_text() {
        assert_eq!(amqp_text(&AMQPValue::LongLongInt(3)).as_deref(), Some("3"));
        assert_eq!(amqp_int(&AMQPValue::LongInt(-1)), None);
        assert_eq!(
            amqp_text(&AMQPValue::FieldTable(FieldTable::default())),
            None
        );
    }
}
