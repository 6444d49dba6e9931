//! The Redis side of a delivery: [`RedisMessage`] (what a handler can ask for) and the settlers
//! that map ack / nack / reject onto XACK, redelivery and the dead-letter stream.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use brook_runtime::{BrokerError, BrokerKind, BrokerMessage, SettleFuture, Settlement, Settler};
use bytes::Bytes;

use crate::consumer::{Deferred, StreamShared};

/// Which kind of Redis source a message came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RedisSource {
    /// A pub/sub channel (SUBSCRIBE or PSUBSCRIBE).
    Channel,
    /// A list (BLPOP / LPOP).
    List,
    /// A stream (XREADGROUP, XCLAIM, XAUTOCLAIM, or XREAD without a group).
    Stream,
}

/// A Redis delivery as Redis gave it, for handlers that need more than [`Message`](brook_runtime::Message):
/// `async fn h(msg: &RedisMessage)`.
///
/// ```
/// # use brook_redis::{RedisMessage, RedisSource};
/// fn describe(m: &RedisMessage) -> String {
///     match m.source() {
///         RedisSource::Stream => format!("{} entry {}", m.key(), m.entry_id().unwrap_or("?")),
///         _ => m.key().to_owned(),
///     }
/// }
/// ```
#[derive(Clone, Debug)]
pub struct RedisMessage {
    pub(crate) source: RedisSource,
    pub(crate) key: Arc<str>,
    pub(crate) pattern: Option<Arc<str>>,
    pub(crate) entry_id: Option<Arc<str>>,
    pub(crate) group: Option<Arc<str>>,
    pub(crate) consumer: Option<Arc<str>>,
    pub(crate) fields: crate::wire::Fields,
    pub(crate) wire: Bytes,
}

impl RedisMessage {
    /// Channel, list or stream.
    pub fn source(&self) -> RedisSource {
        self.source
    }

    /// The channel the message was published to, or the list / stream key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The pattern that matched, for a PSUBSCRIBE subscriber.
    pub fn pattern(&self) -> Option<&str> {
        self.pattern.as_deref()
    }

    /// The stream entry id (`1700000000000-0`).
    pub fn entry_id(&self) -> Option<&str> {
        self.entry_id.as_deref()
    }

    /// The consumer group, for a stream read through one.
    pub fn group(&self) -> Option<&str> {
        self.group.as_deref()
    }

    /// This consumer's name in the group.
    pub fn consumer(&self) -> Option<&str> {
        self.consumer.as_deref()
    }

    /// The stream entry's fields as stored (the payload is in `__data__` when a brook or
    /// FastStream service wrote it). Empty for channels and lists.
    pub fn fields(&self) -> &[(Bytes, Bytes)] {
        &self.fields
    }

    /// The bytes as they came off the wire, before the envelope was taken off.
    pub fn wire_payload(&self) -> &Bytes {
        &self.wire
    }
}

impl BrokerMessage for RedisMessage {
    type Kind = brook_runtime::kind::Redis;
}

/// Settles channel and list messages, which Redis does not acknowledge: every settlement is a
/// no-op (the macro refuses the policies that would expect more).
pub(crate) struct NoAckSettler {
    pub raw: RedisMessage,
}

impl Settler for NoAckSettler {
    fn settle(&self, _: Settlement) -> SettleFuture<'_> {
        SettleFuture::ready(Ok(()))
    }

    fn raw(&self) -> Option<&(dyn std::any::Any + Send + Sync)> {
        Some(&self.raw)
    }
}

/// Settles a stream entry read through a consumer group.
pub(crate) struct StreamSettler {
    pub shared: Arc<StreamShared>,
    pub raw: RedisMessage,
    pub id: Arc<str>,
    /// The id as Redis sent it (an XACK argument without a copy).
    pub wire_id: fred::types::Value,
    /// The id as numbers: its key in the consumer's in-flight set.
    pub num: (u64, u64),
    /// Deliveries so far, this one included.
    pub deliveries: u32,
    /// Whether the entry is in the group's pending list (not read with NOACK).
    pub pending: bool,
    /// `settle` was called (the [`Message`](brook_runtime::Message) calls it at most once).
    pub settled: AtomicBool,
}

impl Settler for StreamSettler {
    fn settle(&self, settlement: Settlement) -> SettleFuture<'_> {
        self.settled.store(true, Ordering::Release);
        if !self.pending {
            // Read with NOACK (AckFirst): Redis acknowledged it on delivery.
            self.shared.forget(self.num);
            return SettleFuture::ready(Ok(()));
        }
        match settlement {
            Settlement::Ack => SettleFuture::new(self.shared.ack(self.id.clone(), self.deliveries)),
            Settlement::Nack { delay } => {
                self.shared.nack(self.id.clone(), self.deliveries, delay);
                SettleFuture::ready(Ok(()))
            }
            Settlement::Reject => SettleFuture::new(self.shared.reject(
                self.id.clone(),
                self.deliveries,
                &self.raw.fields,
            )),
        }
    }

    /// Acks and rejects go to the consumer's settlement pipeline (see [`Deferred`]), which
    /// acknowledges many entries with one XACK; a nack and a NOACK entry involve no command and
    /// are settled at once, as when the pipeline is gone (the consumer closed).
    fn settle_later(&self, settlement: Settlement) -> SettleFuture<'_> {
        if !self.pending || matches!(settlement, Settlement::Nack { .. }) {
            return self.settle(settlement);
        }
        let deferred = match (settlement, &self.shared.dead_letter) {
            (Settlement::Reject, Some(_)) => Deferred::DeadLetter {
                id: self.id.clone(),
                wire_id: self.wire_id.clone(),
                num: self.num,
                deliveries: self.deliveries,
                fields: self.raw.fields.clone(),
            },
            _ => Deferred::Ack {
                id: self.id.clone(),
                wire_id: self.wire_id.clone(),
                num: self.num,
                deliveries: self.deliveries,
            },
        };
        // Settled from here on: the entry is the pipeline's, and this settler's drop must not
        // take it out of the in-flight set.
        self.settled.store(true, Ordering::Release);
        if self.shared.defer(deferred) {
            SettleFuture::ready(Ok(()))
        } else {
            self.settle(settlement)
        }
    }

    fn raw(&self) -> Option<&(dyn std::any::Any + Send + Sync)> {
        Some(&self.raw)
    }
}

impl Drop for StreamSettler {
    /// A message dropped unsettled (`Manual` without a settlement, a handler cut off by the
    /// graceful timeout, a batch entry never handed out) is no longer this consumer's to track:
    /// it stays pending in Redis, so XAUTOCLAIM (this consumer's included) redelivers it after
    /// `min_idle_ms`, and a close hands it back. Kept as "in flight", it would never come back
    /// while this consumer runs, and this consumer's own XAUTOCLAIM would keep raising its
    /// delivery count without delivering it.
    ///
    /// A NOACK message (AckFirst) dropped unsettled never reached a handler (the engine acks
    /// it first thing): Redis acknowledged it on delivery, so the consumer puts it back in the
    /// pending list when it closes.
    fn drop(&mut self) {
        if self.settled.load(Ordering::Acquire) {
            return;
        }
        if self.pending {
            self.shared.forget(self.num);
        } else {
            self.shared.abandon(self.id.clone());
        }
    }
}

pub(crate) fn op_error(operation: &'static str, e: fred::error::Error) -> BrokerError {
    BrokerError::operation(BrokerKind::Redis, operation, e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use brook_runtime::{Context, ExtractError, FromMessage, Message};

    struct Nothing;

    impl Settler for Nothing {
        fn settle(&self, _: Settlement) -> SettleFuture<'_> {
            SettleFuture::ready(Ok(()))
        }
    }

    #[test]
    fn redis_message_is_only_on_redis_messages() {
        let ctx = Context::default();
        let other = Message::new(BrokerKind::Memory, "t".into(), Bytes::new(), Nothing);
        assert!(matches!(
            <&RedisMessage>::from_message(&other, &ctx),
            Err(ExtractError::WrongBroker {
                wanted: "RedisMessage",
                ..
            })
        ));
        let raw = RedisMessage {
            source: RedisSource::List,
            key: "jobs".into(),
            pattern: None,
            entry_id: None,
            group: None,
            consumer: None,
            fields: Default::default(),
            wire: Bytes::from_static(b"x"),
        };
        let ours = Message::new(
            BrokerKind::Redis,
            "jobs".into(),
            Bytes::from_static(b"x"),
            NoAckSettler { raw },
        );
        let got = <&RedisMessage>::from_message(&ours, &ctx).unwrap();
        assert_eq!((got.source(), got.key()), (RedisSource::List, "jobs"));
    }
}
