//! The NATS-specific handler argument ([`NatsMessage`]) and the translation between brook's
//! [`Headers`] and NATS headers.
//!
//! JetStream puts a delivery's metadata (stream, consumer, sequences, delivery count) in the
//! reply subject the server acks on, not in headers; [`JetStreamInfo::parse`] reads it from
//! there, which is what lets brook hand the engine a delivery count without another round trip.

use async_nats::header::HeaderMap;
use brook_runtime::{BrokerKind, BrokerMessage, Headers};

/// The delivery as async-nats received it, for handlers that want NATS specifics:
///
/// ```no_run
/// use brook_nats::NatsMessage;
/// async fn handler(msg: &NatsMessage) {
///     if let Some(info) = msg.info() {
///         tracing::info!(stream = info.stream, seq = info.stream_sequence, "from JetStream");
///     }
/// }
/// ```
#[derive(Debug, Clone)]
pub struct NatsMessage {
    message: async_nats::Message,
    jetstream: bool,
}

impl NatsMessage {
    pub(crate) fn new(message: async_nats::Message, jetstream: bool) -> Self {
        NatsMessage { message, jetstream }
    }

    /// The async-nats message (subject, reply, payload, headers).
    pub fn message(&self) -> &async_nats::Message {
        &self.message
    }

    /// The subject it was published to (the concrete one when the subscriber used wildcards).
    pub fn subject(&self) -> &str {
        self.message.subject.as_str()
    }

    /// The NATS reply subject. On JetStream deliveries this is the ack subject, not a place to
    /// send answers (FastStream and brook carry `reply_to` in a header there).
    pub fn reply(&self) -> Option<&str> {
        self.message.reply.as_ref().map(|r| r.as_str())
    }

    /// The NATS headers, as received.
    pub fn headers(&self) -> Option<&HeaderMap> {
        self.message.headers.as_ref()
    }

    /// Whether the message came through a JetStream consumer (and can be acknowledged).
    pub fn is_jetstream(&self) -> bool {
        self.jetstream
    }

    /// The JetStream metadata of the delivery; `None` for core NATS messages.
    pub fn info(&self) -> Option<JetStreamInfo<'_>> {
        if !self.jetstream {
            return None;
        }
        JetStreamInfo::parse(self.reply()?)
    }
}

/// A JetStream delivery's metadata, read from its ack subject.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JetStreamInfo<'a> {
    /// The stream.
    pub stream: &'a str,
    /// The consumer.
    pub consumer: &'a str,
    /// How many times the message has been delivered, this delivery included.
    pub delivered: u64,
    /// The message's sequence in the stream.
    pub stream_sequence: u64,
    /// This delivery's sequence in the consumer (unique per delivery).
    pub consumer_sequence: u64,
    /// How many messages were still pending for the consumer when this one was sent.
    pub pending: u64,
}

impl<'a> JetStreamInfo<'a> {
    /// Parses `$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>` and the
    /// newer form with a domain and account hash after `$JS.ACK`.
    pub fn parse(reply: &'a str) -> Option<JetStreamInfo<'a>> {
        let mut tokens = [""; 12];
        let mut n = 0;
        for token in reply.split('.') {
            if n == tokens.len() {
                return None;
            }
            tokens[n] = token;
            n += 1;
        }
        if tokens[0] != "$JS" || tokens[1] != "ACK" {
            return None;
        }
        // v1: 9 tokens; v2: 11 or 12 (domain, account hash, ..., optional random suffix).
        let at = match n {
            9 => 2,
            11 | 12 => 4,
            _ => return None,
        };
        let num = |i: usize| tokens[at + i].parse::<u64>().ok();
        Some(JetStreamInfo {
            stream: tokens[at],
            consumer: tokens[at + 1],
            delivered: num(2)?,
            stream_sequence: num(3)?,
            consumer_sequence: num(4)?,
            pending: num(6)?,
        })
    }
}

impl BrokerMessage for NatsMessage {
    type Kind = brook_runtime::kind::Nats;
}

/// NATS headers → brook headers (the last value of repeated headers wins).
pub(crate) fn from_nats(headers: Option<&HeaderMap>) -> Headers {
    let mut out = Headers::new();
    if let Some(headers) = headers {
        for (name, values) in headers.iter() {
            if let Some(value) = values.last() {
                out.insert(name.as_ref() as &str, value.as_str());
            }
        }
    }
    out
}

/// brook headers → NATS headers; `None` when there are none (a message without headers is
/// sent with `PUB`, which is cheaper than `HPUB`).
pub(crate) fn to_nats(headers: &Headers) -> Option<HeaderMap> {
    if headers.is_empty() {
        return None;
    }
    let mut map = HeaderMap::new();
    for (name, value) in headers.iter() {
        map.insert(name, value);
    }
    Some(map)
}

pub(crate) const KIND: BrokerKind = BrokerKind::Nats;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_ack_subject_forms() {
        let v1 =
            JetStreamInfo::parse("$JS.ACK.ORDERS.billing.3.42.7.1700000000000000000.5").unwrap();
        assert_eq!(
            (
                v1.stream,
                v1.consumer,
                v1.delivered,
                v1.stream_sequence,
                v1.consumer_sequence,
                v1.pending
            ),
            ("ORDERS", "billing", 3, 42, 7, 5)
        );
        let v2 = JetStreamInfo::parse(
            "$JS.ACK.hub.ACCHASH.ORDERS.billing.1.42.7.1700000000000000000.0.xyz",
        )
        .unwrap();
        assert_eq!(
            (v2.stream, v2.delivered, v2.stream_sequence),
            ("ORDERS", 1, 42)
        );
        assert_eq!(JetStreamInfo::parse("_INBOX.abc"), None);
        assert_eq!(JetStreamInfo::parse("$JS.ACK.S.C.x.1.1.1.0"), None);
    }

    #[test]
    fn headers_round_trip() {
        let h: Headers = [
            ("content-type", "application/json"),
            ("correlation_id", "c1"),
        ]
        .into_iter()
        .collect();
        let back = from_nats(to_nats(&h).as_ref());
        assert_eq!(back.get("content-type"), Some("application/json"));
        assert_eq!(back.get("correlation_id"), Some("c1"));
        assert!(to_nats(&Headers::new()).is_none());
    }
}
