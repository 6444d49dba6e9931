//! Typed options per broker, built from validated subscriber arguments: broker crates read
//! fields (`opts.group_id`, `opts.prefetch`), never argument names, so a typo in a broker crate
//! is a compile error and the argument list lives here only.

use std::time::Duration;

use crate::{BrokerKind, Value};

/// A broker's options for one subscriber.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Options {
    /// The in-memory broker.
    Memory(MemoryOptions),
    /// Kafka.
    Kafka(KafkaOptions),
    /// RabbitMQ.
    Rabbit(RabbitOptions),
    /// NATS.
    Nats(NatsOptions),
    /// Redis.
    Redis(RedisOptions),
    /// MQTT.
    Mqtt(MqttOptions),
}

/// In-memory subscriber options.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryOptions {
    /// `topic`.
    pub topic: String,
    /// `group_id`: consumers of one group compete.
    pub group_id: Option<String>,
}

/// Where a Kafka group with no committed offset starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum OffsetReset {
    /// The oldest retained offset.
    Earliest,
    /// New messages only (FastStream's default).
    #[default]
    Latest,
}

impl OffsetReset {
    /// The librdkafka value.
    pub const fn name(self) -> &'static str {
        match self {
            OffsetReset::Earliest => "earliest",
            OffsetReset::Latest => "latest",
        }
    }
}

/// Kafka subscriber options.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KafkaOptions {
    /// The topics (`topic = "a,b"`), never empty.
    pub topics: Vec<String>,
    /// The consumer group.
    pub group_id: Option<String>,
    /// `auto_offset_reset`.
    pub auto_offset_reset: OffsetReset,
}

/// A RabbitMQ exchange type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ExchangeType {
    /// `direct` (default).
    #[default]
    Direct,
    /// `fanout`.
    Fanout,
    /// `topic`.
    Topic,
    /// `headers`.
    Headers,
}

/// A RabbitMQ queue type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueType {
    /// `classic`.
    Classic,
    /// `quorum`.
    Quorum,
    /// `stream`.
    Stream,
}

impl QueueType {
    /// The `x-queue-type` value.
    pub const fn name(self) -> &'static str {
        match self {
            QueueType::Classic => "classic",
            QueueType::Quorum => "quorum",
            QueueType::Stream => "stream",
        }
    }
}

/// RabbitMQ subscriber options.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RabbitOptions {
    /// The queue.
    pub queue: String,
    /// Bind the queue to this exchange.
    pub exchange: Option<String>,
    /// The binding key (default: the queue name).
    pub routing_key: Option<String>,
    /// The exchange's type when brook declares it.
    pub exchange_type: ExchangeType,
    /// Declare the queue durable (default true).
    pub durable: bool,
    /// Declare the queue auto-delete.
    pub auto_delete: bool,
    /// Declare what is missing (default true).
    pub declare: bool,
    /// Only check that the queue exists.
    pub passive: bool,
    /// `x-queue-type` of a declared queue.
    pub queue_type: Option<QueueType>,
    /// `x-dead-letter-exchange` of a declared queue.
    pub dead_letter_exchange: Option<String>,
    /// `basic.qos` prefetch (checked to fit 1..=65535).
    pub prefetch: Option<u16>,
}

/// Where a new JetStream consumer starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DeliverPolicy {
    /// Every message in the stream (default).
    #[default]
    All,
    /// Only messages published after the consumer was created.
    New,
    /// The last message, then new ones.
    Last,
}

/// JetStream pull-consumer options (NATS with `stream`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JetStreamOptions {
    /// The stream.
    pub stream: String,
    /// The durable consumer (`None`: ephemeral).
    pub durable: Option<String>,
    /// Where a new consumer starts (`None`: not written, the default applies).
    pub deliver_policy: Option<DeliverPolicy>,
    /// `max_ack_pending`, if written.
    pub max_ack_pending: Option<i64>,
    /// JetStream's own `max_deliver`, if written.
    pub max_deliver: Option<i64>,
    /// Messages per pull, if written.
    pub batch: Option<usize>,
    /// Create a missing stream/consumer (default true).
    pub create: bool,
    /// `ack_wait`, if written.
    pub ack_wait: Option<Duration>,
}

/// NATS subscriber options.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NatsOptions {
    /// The subject (JetStream: the consumer's filter subject).
    pub subject: String,
    /// Core NATS queue group.
    pub queue_group: Option<String>,
    /// JetStream, when `stream` is given.
    pub jetstream: Option<JetStreamOptions>,
}

/// What a Redis subscriber reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RedisSource {
    /// A pub/sub channel or pattern.
    Channel(String),
    /// A list.
    List(String),
    /// A stream.
    Stream(RedisStreamOptions),
}

/// Redis stream options.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisStreamOptions {
    /// The stream key.
    pub stream: String,
    /// The consumer group (`None`: XREAD).
    pub group: Option<String>,
    /// The consumer name (`None`: generated, unique per consumer).
    pub consumer: Option<String>,
    /// Claim other consumers' pending entries idle this long (`None`: the default).
    pub min_idle: Option<Duration>,
    /// XADD rejected entries here.
    pub dead_letter_stream: Option<String>,
}

/// Redis subscriber options.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisOptions {
    /// What it reads.
    pub source: RedisSource,
    /// Entries per read, if written.
    pub batch: Option<usize>,
}

/// MQTT subscriber options.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MqttOptions {
    /// The topic filter.
    pub topic: String,
    /// The subscription's QoS (0, 1 or 2).
    pub qos: u8,
    /// Where rejected messages are published before they are acknowledged.
    pub dead_letter_topic: Option<String>,
}

macro_rules! accessor {
    ($fn:ident, $variant:ident, $ty:ident) => {
        #[doc = concat!("The ", stringify!($variant), " options, if these are.")]
        pub fn $fn(&self) -> Option<&$ty> {
            match self {
                Options::$variant(o) => Some(o),
                _ => None,
            }
        }
    };
}

impl Options {
    accessor!(memory, Memory, MemoryOptions);
    accessor!(kafka, Kafka, KafkaOptions);
    accessor!(rabbit, Rabbit, RabbitOptions);
    accessor!(nats, Nats, NatsOptions);
    accessor!(redis, Redis, RedisOptions);
    accessor!(mqtt, Mqtt, MqttOptions);

    /// Builds the options from arguments `resolve` accepted (kinds and ranges are checked
    /// there, so conversions here cannot fail).
    pub(crate) fn build<'v>(
        broker: BrokerKind,
        get: &dyn Fn(&str) -> Option<&'v Value>,
    ) -> Options {
        let name = |n: &str| get(n).map(name_text);
        let int = |n: &str| get(n).and_then(Value::as_int);
        let flag = |n: &str| get(n).and_then(Value::as_bool);
        let ident = |n: &str| get(n).and_then(Value::as_str).map(str::to_owned);
        let size = |n: &str| int(n).map(|v| usize::try_from(v).unwrap_or(usize::MAX));
        let signed = |n: &str| int(n).map(|v| i64::try_from(v).unwrap_or(i64::MAX));
        let either = |a: &str, b: &str| name(a).or_else(|| name(b)).unwrap_or_default();
        match broker {
            BrokerKind::Memory => Options::Memory(MemoryOptions {
                topic: name("topic").unwrap_or_default(),
                group_id: name("group_id"),
            }),
            BrokerKind::Kafka => Options::Kafka(KafkaOptions {
                topics: split_topics(&name("topic").unwrap_or_default()),
                group_id: name("group_id"),
                auto_offset_reset: match ident("auto_offset_reset").as_deref() {
                    Some("earliest") => OffsetReset::Earliest,
                    _ => OffsetReset::Latest,
                },
            }),
            BrokerKind::Rabbit => Options::Rabbit(RabbitOptions {
                queue: either("queue", "topic"),
                exchange: name("exchange"),
                routing_key: name("routing_key"),
                exchange_type: match ident("exchange_type").as_deref() {
                    Some("fanout") => ExchangeType::Fanout,
                    Some("topic") => ExchangeType::Topic,
                    Some("headers") => ExchangeType::Headers,
                    _ => ExchangeType::Direct,
                },
                durable: flag("durable").unwrap_or(true),
                auto_delete: flag("auto_delete").unwrap_or(false),
                declare: flag("declare").unwrap_or(true),
                passive: flag("passive").unwrap_or(false),
                queue_type: match ident("queue_type").as_deref() {
                    Some("classic") => Some(QueueType::Classic),
                    Some("quorum") => Some(QueueType::Quorum),
                    Some("stream") => Some(QueueType::Stream),
                    _ => None,
                },
                dead_letter_exchange: name("dead_letter_exchange"),
                prefetch: int("prefetch").map(|p| u16::try_from(p).unwrap_or(u16::MAX)),
            }),
            BrokerKind::Nats => Options::Nats(NatsOptions {
                subject: either("subject", "topic"),
                queue_group: name("queue_group"),
                jetstream: name("stream").map(|stream| JetStreamOptions {
                    stream,
                    durable: name("durable"),
                    deliver_policy: match ident("deliver_policy").as_deref() {
                        Some("all") => Some(DeliverPolicy::All),
                        Some("new") => Some(DeliverPolicy::New),
                        Some("last") => Some(DeliverPolicy::Last),
                        _ => None,
                    },
                    max_ack_pending: signed("max_ack_pending"),
                    max_deliver: signed("max_deliver"),
                    batch: size("batch"),
                    create: flag("create").unwrap_or(true),
                    ack_wait: int("ack_wait_ms").map(Duration::from_millis),
                }),
            }),
            BrokerKind::Redis => Options::Redis(RedisOptions {
                source: if let Some(channel) = name("channel") {
                    RedisSource::Channel(channel)
                } else if let Some(list) = name("list") {
                    RedisSource::List(list)
                } else {
                    RedisSource::Stream(RedisStreamOptions {
                        stream: name("stream").unwrap_or_default(),
                        group: name("group"),
                        consumer: name("consumer"),
                        min_idle: int("min_idle_ms").map(Duration::from_millis),
                        dead_letter_stream: name("dead_letter_stream"),
                    })
                },
                batch: size("batch"),
            }),
            BrokerKind::Mqtt => Options::Mqtt(MqttOptions {
                topic: name("topic").unwrap_or_default(),
                qos: int("qos").map_or(1, |q| u8::try_from(q).unwrap_or(2)),
                dead_letter_topic: name("dead_letter_topic"),
            }),
        }
    }
}

/// A name's text: the string, or (at compile time) the expression it comes from.
pub(crate) fn name_text(v: &Value) -> String {
    match v {
        Value::Str(s) | Value::Deferred(s) | Value::Ident(s) => s.to_string(),
        other => other.to_string(),
    }
}

/// Kafka's `topic = "a,b"`: the topics, trimmed.
pub(crate) fn split_topics(topic: &str) -> Vec<String> {
    topic
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect()
}
