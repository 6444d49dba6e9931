//! The Kafka-specific view of a delivery ([`KafkaMessage`]) and header mapping.

use std::sync::Arc;

use brook_runtime::{BrokerMessage, Headers};
use bytes::Bytes;
use rdkafka::message::{BorrowedMessage, Headers as _};
use rdkafka::Message as _;

/// Where a message came from in Kafka: a handler argument `msg: &KafkaMessage`.
///
/// ```
/// use brook_kafka::KafkaMessage;
/// fn log(msg: &KafkaMessage) -> String {
///     format!("{}[{}]@{}", msg.topic(), msg.partition(), msg.offset())
/// }
/// ```
#[derive(Clone, Debug)]
pub struct KafkaMessage {
    pub(crate) topic: Arc<str>,
    pub(crate) partition: i32,
    pub(crate) offset: i64,
    pub(crate) key: Option<Bytes>,
    pub(crate) timestamp: Option<i64>,
}

impl KafkaMessage {
    /// The topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The partition.
    pub fn partition(&self) -> i32 {
        self.partition
    }

    /// The offset within the partition.
    pub fn offset(&self) -> i64 {
        self.offset
    }

    /// The message key, if it has one.
    pub fn key(&self) -> Option<&Bytes> {
        self.key.as_ref()
    }

    /// The timestamp (milliseconds since the epoch), if the broker gave one.
    pub fn timestamp(&self) -> Option<i64> {
        self.timestamp
    }
}

impl BrokerMessage for KafkaMessage {
    type Kind = brook_runtime::kind::Kafka;
}

/// Kafka record headers → brook headers (non-UTF-8 values lossily; the last of repeated names
/// wins). FastStream writes `content-type`, `correlation_id` and `reply_to` as plain headers,
/// so no renaming is needed.
pub(crate) fn headers(m: &BorrowedMessage<'_>) -> Headers {
    let mut out = Headers::new();
    if let Some(h) = m.headers() {
        for header in h.iter() {
            let value = header
                .value
                .map(String::from_utf8_lossy)
                .unwrap_or_default();
            out.insert(header.key, value);
        }
    }
    out
}
