//! The policy/broker capability table of brook.
//!
//! One table, read twice: the `#[subscriber]` macro consults it at compile time to turn an
//! impossible combination (say `NackOnError` on a NATS core subject, which has no
//! acknowledgement) into a compiler error, and the runtime consults it again when a subscription
//! is built by hand, so that both paths agree by construction. Keeping it here, in a crate with
//! no dependencies, is what lets a proc-macro crate and the runtime share it.
//!
//! The table answers four questions:
//! - which arguments a subscriber of each broker accepts ([`arguments`]),
//! - which kind of source those arguments describe ([`resolve`] → [`Source`]),
//! - what the default ack policy is there ([`Source::default_policy`]),
//! - whether a policy works, works in a degraded way, or cannot work there ([`check`]).

use std::borrow::Cow;
use std::fmt;

mod features;
mod names;
mod options;

pub use features::{
    arguments_table, features_table, sources, wire_table, DeadLetter, DeliveryCount, Features, Wire,
};
pub use names::check_name;
pub use options::{
    DeliverPolicy, ExchangeType, JetStreamOptions, KafkaOptions, MemoryOptions, MqttOptions,
    NatsOptions, OffsetReset, Options, QueueType, RabbitOptions, RedisOptions, RedisSource,
    RedisStreamOptions,
};

/// When and how a message is settled (acknowledged, negatively acknowledged or rejected).
///
/// | policy | before handler | handler `Ok` | handler `Err` / panic |
/// |---|---|---|---|
/// | `AckFirst` | ack | — | — (the message may be lost) |
/// | `Ack` | — | ack | ack (logged) |
/// | `RejectOnError` | — | ack | reject |
/// | `NackOnError` | — | ack | nack (redeliver) |
/// | `Manual` | — | — | — (the handler settles) |
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AckPolicy {
    /// Acknowledge on receipt, before the handler runs: at-most-once.
    AckFirst,
    /// Acknowledge after the handler, whatever it returned (errors are logged).
    Ack,
    /// Acknowledge on success; reject (no redelivery, dead-letter where possible) on error.
    RejectOnError,
    /// Acknowledge on success; nack (redeliver) on error.
    NackOnError,
    /// Leave settlement to the handler (`msg.ack()`, `msg.nack()`, `msg.reject()`).
    Manual,
}

impl AckPolicy {
    /// Every policy, in the order the docs list them.
    pub const ALL: [AckPolicy; 5] = [
        AckPolicy::AckFirst,
        AckPolicy::Ack,
        AckPolicy::RejectOnError,
        AckPolicy::NackOnError,
        AckPolicy::Manual,
    ];

    /// The name as written in `ack_policy = ...`.
    pub const fn name(self) -> &'static str {
        match self {
            AckPolicy::AckFirst => "AckFirst",
            AckPolicy::Ack => "Ack",
            AckPolicy::RejectOnError => "RejectOnError",
            AckPolicy::NackOnError => "NackOnError",
            AckPolicy::Manual => "Manual",
        }
    }

    /// Parses a policy name as written in `ack_policy = ...`.
    pub fn from_name(name: &str) -> Option<AckPolicy> {
        AckPolicy::ALL.into_iter().find(|p| p.name() == name)
    }

    /// Whether the policy expects the broker to redeliver or the handler to settle, which only
    /// makes sense on a source that acknowledges.
    pub const fn needs_acknowledgement(self) -> bool {
        matches!(self, AckPolicy::NackOnError | AckPolicy::Manual)
    }
}

impl fmt::Display for AckPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The brokers brook knows. `Memory` is the in-process broker that is always compiled in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BrokerKind {
    /// The in-memory broker of `brook-runtime`.
    Memory,
    /// Apache Kafka (rdkafka).
    Kafka,
    /// RabbitMQ (lapin).
    Rabbit,
    /// NATS core and JetStream (async-nats).
    Nats,
    /// Redis pub/sub, lists and streams (fred).
    Redis,
    /// MQTT 3.1.1 and 5 (rumqttc).
    Mqtt,
}

impl BrokerKind {
    /// Every broker, in the order the docs list them.
    pub const ALL: [BrokerKind; 6] = [
        BrokerKind::Memory,
        BrokerKind::Kafka,
        BrokerKind::Rabbit,
        BrokerKind::Nats,
        BrokerKind::Redis,
        BrokerKind::Mqtt,
    ];

    /// The name as written in `broker = ...`; also the cargo feature that compiles it in.
    pub const fn name(self) -> &'static str {
        match self {
            BrokerKind::Memory => "memory",
            BrokerKind::Kafka => "kafka",
            BrokerKind::Rabbit => "rabbit",
            BrokerKind::Nats => "nats",
            BrokerKind::Redis => "redis",
            BrokerKind::Mqtt => "mqtt",
        }
    }

    /// The name people write in prose.
    pub const fn display_name(self) -> &'static str {
        match self {
            BrokerKind::Memory => "the in-memory broker",
            BrokerKind::Kafka => "Kafka",
            BrokerKind::Rabbit => "RabbitMQ",
            BrokerKind::Nats => "NATS",
            BrokerKind::Redis => "Redis",
            BrokerKind::Mqtt => "MQTT",
        }
    }

    /// Parses a broker name as written in `broker = ...`.
    pub fn from_name(name: &str) -> Option<BrokerKind> {
        BrokerKind::ALL.into_iter().find(|b| b.name() == name)
    }

    /// The broker-specific message type a handler may take instead of `&Message`
    /// (`None` for the in-memory broker, which has only `Message`), as the docs name it.
    pub const fn message_type(self) -> Option<&'static str> {
        match self {
            BrokerKind::Memory => None,
            BrokerKind::Kafka => Some("KafkaMessage"),
            BrokerKind::Rabbit => Some("RabbitMessage"),
            BrokerKind::Nats => Some("NatsMessage"),
            BrokerKind::Redis => Some("RedisMessage"),
            BrokerKind::Mqtt => Some("MqttMessage"),
        }
    }
}

impl fmt::Display for BrokerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The kind of value an argument takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArgKind {
    /// A name: a string literal (`topic = "orders"`), any Rust expression that yields a
    /// string (`topic = cfg::ORDERS`, evaluated when the App is built), or `_` (given at the
    /// mount site: `bill.topic(&cfg.orders)`).
    Name,
    /// A non-negative integer literal: `concurrency = 4`.
    Int,
    /// `true` or `false`.
    Bool,
    /// One of a fixed set of names: `ack_policy = NackOnError`.
    Ident(&'static [&'static str]),
}

impl ArgKind {
    /// How the docs and errors describe a value of this kind.
    pub fn describe(self) -> String {
        match self {
            ArgKind::Name => "a name: a string literal, an expression that yields a string, or `_` to set it where the subscriber is mounted".to_owned(),
            ArgKind::Int => "a non-negative integer".to_owned(),
            ArgKind::Bool => "`true` or `false`".to_owned(),
            ArgKind::Ident(names) => format!("one of {}", names.join(", ")),
        }
    }
}

/// An argument a subscriber accepts: what it takes, where it applies, what it conflicts with.
/// The macro, the runtime and the docs all read these, so a rule is written once.
#[derive(Clone, Copy, Debug)]
pub struct ArgSpec {
    /// The name as written in the attribute.
    pub name: &'static str,
    /// What it takes.
    pub kind: ArgKind,
    /// One line for docs and errors.
    pub doc: &'static str,
    /// The value used when the argument is not written, as the docs show it.
    pub default: Option<&'static str>,
    /// The smallest and largest integer accepted (integer arguments).
    pub range: Option<(u64, u64)>,
    /// The argument only applies to the source chosen by this other argument (JetStream
    /// options need `stream`, Redis group options need `stream`).
    pub only_with: Option<&'static str>,
    /// The argument is refused when one of these boolean arguments has this value (RabbitMQ's
    /// declare-only options under `passive = true` or `declare = false`).
    pub unless: &'static [(&'static str, bool)],
}

const fn arg(name: &'static str, kind: ArgKind, doc: &'static str) -> ArgSpec {
    ArgSpec {
        name,
        kind,
        doc,
        default: None,
        range: None,
        only_with: None,
        unless: &[],
    }
}

impl ArgSpec {
    const fn default(mut self, default: &'static str) -> Self {
        self.default = Some(default);
        self
    }
    const fn range(mut self, min: u64, max: u64) -> Self {
        self.range = Some((min, max));
        self
    }
    const fn only_with(mut self, source: &'static str) -> Self {
        self.only_with = Some(source);
        self
    }
    const fn unless(mut self, conflicts: &'static [(&'static str, bool)]) -> Self {
        self.unless = conflicts;
        self
    }

    /// Whether the argument's value is a name (topic, queue, group...), which may come from an
    /// expression or the mount site.
    pub const fn is_name(&self) -> bool {
        matches!(self.kind, ArgKind::Name)
    }
}

/// RabbitMQ arguments that only mean something when brook declares the queue.
const DECLARE_ONLY: &[(&str, bool)] = &[("passive", true), ("declare", false)];

const POLICY_NAMES: &[&str] = &["AckFirst", "Ack", "RejectOnError", "NackOnError", "Manual"];
const BROKER_NAMES: &[&str] = &["memory", "kafka", "rabbit", "nats", "redis", "mqtt"];

/// Arguments every subscriber accepts, whatever the broker.
pub const COMMON_ARGUMENTS: &[ArgSpec] = &[
    arg(
        "broker",
        ArgKind::Ident(BROKER_NAMES),
        "which broker the subscriber is for (`brook::subscriber` only; `brook::kafka::subscriber` and the other per-broker paths fix it)",
    )
    .default("memory"),
    arg(
        "ack_policy",
        ArgKind::Ident(POLICY_NAMES),
        "when and how the message is settled",
    )
    .default("FastStream's default for the source"),
    arg(
        "concurrency",
        ArgKind::Int,
        "how many messages of this subscriber are handled at once",
    )
    .default("1")
    .range(1, 65_535),
    arg(
        "max_deliveries",
        ArgKind::Int,
        "reject (dead-letter) a message instead of delivering it more than this many times",
    )
    .range(1, u32::MAX as u64),
    arg(
        "on_decode_error",
        ArgKind::Ident(&["Reject", "Nack"]),
        "what to do with a payload that cannot be decoded",
    )
    .default("Reject"),
    arg(
        "publish",
        ArgKind::Name,
        "publish the handler's result here, before the input message is acknowledged (topic / exchange / subject / channel / list / stream of the output broker)",
    ),
    arg(
        "publish_broker",
        ArgKind::Ident(BROKER_NAMES),
        "the App's broker the result is published on",
    )
    .default("the input's broker")
    .only_with("publish"),
    arg(
        "reply",
        ArgKind::Bool,
        "publish the handler's result to a message's `reply_to`, with its `correlation_id` (FastStream's RPC); `false` never replies",
    )
    .default("true"),
];

const MEMORY_ARGUMENTS: &[ArgSpec] = &[
    arg("topic", ArgKind::Name, "the topic to consume"),
    arg(
        "group_id",
        ArgKind::Name,
        "consumers of one group compete for messages; each group gets every message",
    ),
];

const KAFKA_ARGUMENTS: &[ArgSpec] = &[
    arg(
        "topic",
        ArgKind::Name,
        "the topic to consume (several: comma-separated)",
    ),
    arg(
        "group_id",
        ArgKind::Name,
        "the consumer group; needed by every policy that commits offsets",
    ),
    arg(
        "auto_offset_reset",
        ArgKind::Ident(&["earliest", "latest"]),
        "where a group with no committed offset starts",
    )
    .default("latest"),
];

const RABBIT_ARGUMENTS: &[ArgSpec] = &[
    arg("queue", ArgKind::Name, "the queue to consume"),
    arg("topic", ArgKind::Name, "alias of `queue`"),
    arg("exchange", ArgKind::Name, "bind the queue to this exchange").unless(DECLARE_ONLY),
    arg("routing_key", ArgKind::Name, "the binding key")
        .default("the queue name")
        .unless(DECLARE_ONLY),
    arg(
        "exchange_type",
        ArgKind::Ident(&["direct", "fanout", "topic", "headers"]),
        "the exchange's type when brook declares it",
    )
    .default("direct")
    .unless(DECLARE_ONLY),
    arg("durable", ArgKind::Bool, "declare the queue durable")
        .default("true")
        .unless(DECLARE_ONLY),
    arg("auto_delete", ArgKind::Bool, "declare the queue auto-delete")
        .default("false")
        .unless(DECLARE_ONLY),
    arg(
        "declare",
        ArgKind::Bool,
        "declare the queue and exchange if missing",
    )
    .default("true"),
    arg("passive", ArgKind::Bool, "only check that the queue exists").default("false"),
    arg(
        "queue_type",
        ArgKind::Ident(&["classic", "quorum", "stream"]),
        "x-queue-type of a declared queue; with declare = false or passive = true, the type of the existing queue (quorum queues count deliveries, which max_deliveries needs)",
    )
    .default("classic"),
    arg(
        "dead_letter_exchange",
        ArgKind::Name,
        "x-dead-letter-exchange of a declared queue",
    )
    .unless(DECLARE_ONLY),
    arg("prefetch", ArgKind::Int, "basic.qos prefetch count (0: unlimited)")
        .default("max(64, 2 x concurrency)")
        .range(0, 65_535),
];

const NATS_ARGUMENTS: &[ArgSpec] = &[
    arg(
        "subject",
        ArgKind::Name,
        "the subject to consume (wildcards allowed)",
    ),
    arg("topic", ArgKind::Name, "alias of `subject`"),
    arg("queue_group", ArgKind::Name, "core NATS queue group"),
    arg(
        "stream",
        ArgKind::Name,
        "consume through this JetStream stream",
    ),
    arg(
        "durable",
        ArgKind::Name,
        "the durable JetStream pull consumer",
    )
    .only_with("stream"),
    arg(
        "deliver_policy",
        ArgKind::Ident(&["all", "new", "last"]),
        "where a new JetStream consumer starts",
    )
    .default("all")
    .only_with("stream"),
    arg("max_ack_pending", ArgKind::Int, "JetStream max_ack_pending")
        .range(1, i64::MAX as u64)
        .only_with("stream"),
    arg("max_deliver", ArgKind::Int, "JetStream's own max_deliver")
        .range(1, i64::MAX as u64)
        .only_with("stream"),
    arg("batch", ArgKind::Int, "JetStream pull batch size")
        .default("64")
        .range(1, 1_000_000)
        .only_with("stream"),
    arg(
        "create",
        ArgKind::Bool,
        "create the stream/consumer if missing (also when deleted while running)",
    )
    .default("true")
    .only_with("stream"),
    arg(
        "ack_wait_ms",
        ArgKind::Int,
        "JetStream ack_wait in milliseconds",
    )
    .default("the server's (30000)")
    .range(1, u32::MAX as u64)
    .only_with("stream"),
];

const REDIS_ARGUMENTS: &[ArgSpec] = &[
    arg(
        "channel",
        ArgKind::Name,
        "pub/sub channel (patterns allowed)",
    ),
    arg("list", ArgKind::Name, "list to pop from"),
    arg("stream", ArgKind::Name, "stream to read"),
    arg(
        "group",
        ArgKind::Name,
        "stream consumer group; needed by every policy that acknowledges",
    )
    .only_with("stream"),
    arg("consumer", ArgKind::Name, "consumer name in the group")
        .default("unique per process")
        .only_with("stream"),
    arg(
        "min_idle_ms",
        ArgKind::Int,
        "claim live consumers' pending entries idle this long (0: off; gone consumers' entries are always taken over)",
    )
    .range(0, u32::MAX as u64)
    .only_with("stream"),
    arg(
        "batch",
        ArgKind::Int,
        "entries per read (lists: LPOP count)",
    )
    .default("1 (streams: at least the concurrency)")
    .range(1, 100_000),
    arg(
        "dead_letter_stream",
        ArgKind::Name,
        "XADD rejected entries here",
    )
    .only_with("stream"),
];

const MQTT_ARGUMENTS: &[ArgSpec] = &[
    arg(
        "topic",
        ArgKind::Name,
        "topic filter (`+` and `#` allowed; `$share/group/...` for shared subscriptions)",
    ),
    arg("qos", ArgKind::Int, "the subscription's QoS")
        .default("1")
        .range(0, 2),
    arg(
        "dead_letter_topic",
        ArgKind::Name,
        "publish rejected messages here (QoS 1) before acknowledging them",
    ),
];

/// The broker-specific arguments of `broker` (the [`COMMON_ARGUMENTS`] come on top).
pub fn arguments(broker: BrokerKind) -> &'static [ArgSpec] {
    match broker {
        BrokerKind::Memory => MEMORY_ARGUMENTS,
        BrokerKind::Kafka => KAFKA_ARGUMENTS,
        BrokerKind::Rabbit => RABBIT_ARGUMENTS,
        BrokerKind::Nats => NATS_ARGUMENTS,
        BrokerKind::Redis => REDIS_ARGUMENTS,
        BrokerKind::Mqtt => MQTT_ARGUMENTS,
    }
}

/// Looks an argument up among the common ones and those of `broker`.
pub fn argument(broker: BrokerKind, name: &str) -> Option<&'static ArgSpec> {
    COMMON_ARGUMENTS
        .iter()
        .chain(arguments(broker))
        .find(|a| a.name == name)
}

/// An argument's value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    /// A string.
    Str(Cow<'static, str>),
    /// A name computed at run time: what the macro sees of `topic = cfg::ORDERS` (the
    /// expression's source text, for messages). The App evaluates the expression when it is
    /// built and validates the name then.
    Deferred(Cow<'static, str>),
    /// A name to be given where the subscriber is mounted (`topic = _`, then
    /// `bill.topic(&cfg.orders)`).
    AtMount,
    /// A non-negative integer.
    Int(u64),
    /// A boolean.
    Bool(bool),
    /// A name from a fixed set.
    Ident(Cow<'static, str>),
}

impl Value {
    /// The string of a `Str` or `Ident`.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) | Value::Ident(s) => Some(s),
            _ => None,
        }
    }

    /// The integer of an `Int`.
    pub fn as_int(&self) -> Option<u64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// The boolean of a `Bool`.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    fn fits(&self, kind: ArgKind) -> bool {
        match (self, kind) {
            (Value::Str(_) | Value::Deferred(_) | Value::AtMount, ArgKind::Name) => true,
            (Value::Int(_), ArgKind::Int) => true,
            (Value::Bool(_), ArgKind::Bool) => true,
            (Value::Ident(name), ArgKind::Ident(names)) => names.contains(&name.as_ref()),
            _ => false,
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Str(s) => write!(f, "{s:?}"),
            Value::Deferred(s) => f.write_str(s),
            Value::AtMount => f.write_str("_"),
            Value::Int(i) => write!(f, "{i}"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Ident(s) => f.write_str(s),
        }
    }
}

impl From<&'static str> for Value {
    fn from(s: &'static str) -> Self {
        Value::Str(Cow::Borrowed(s))
    }
}

impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::Str(Cow::Owned(s))
    }
}

impl From<u64> for Value {
    fn from(i: u64) -> Self {
        Value::Int(i)
    }
}

impl From<u32> for Value {
    fn from(i: u32) -> Self {
        Value::Int(u64::from(i))
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value::Bool(b)
    }
}

impl From<AckPolicy> for Value {
    fn from(p: AckPolicy) -> Self {
        Value::Ident(Cow::Borrowed(p.name()))
    }
}

impl From<BrokerKind> for Value {
    fn from(b: BrokerKind) -> Self {
        Value::Ident(Cow::Borrowed(b.name()))
    }
}

/// What a subscriber reads from, as far as acknowledgement is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Source {
    /// A topic of the in-memory broker.
    MemoryTopic,
    /// A Kafka topic; `grouped` when a `group_id` is set (offsets can be committed).
    KafkaTopic {
        /// A `group_id` is set.
        grouped: bool,
    },
    /// A RabbitMQ queue; `quorum` when declared with `queue_type = quorum` (quorum queues
    /// count deliveries).
    RabbitQueue {
        /// `queue_type = quorum`.
        quorum: bool,
    },
    /// A core NATS subject: no acknowledgement exists.
    NatsCore,
    /// A JetStream pull consumer.
    JetStream,
    /// A Redis pub/sub channel: no acknowledgement exists.
    RedisChannel,
    /// A Redis list: no acknowledgement exists.
    RedisList,
    /// A Redis stream; `grouped` when read through a consumer group (XACK exists).
    RedisStream {
        /// A `group` is set.
        grouped: bool,
    },
    /// An MQTT topic filter at a QoS.
    MqttTopic {
        /// 0, 1 or 2.
        qos: u8,
    },
}

impl Source {
    /// The broker the source belongs to.
    pub const fn broker(self) -> BrokerKind {
        match self {
            Source::MemoryTopic => BrokerKind::Memory,
            Source::KafkaTopic { .. } => BrokerKind::Kafka,
            Source::RabbitQueue { .. } => BrokerKind::Rabbit,
            Source::NatsCore | Source::JetStream => BrokerKind::Nats,
            Source::RedisChannel | Source::RedisList | Source::RedisStream { .. } => {
                BrokerKind::Redis
            }
            Source::MqttTopic { .. } => BrokerKind::Mqtt,
        }
    }

    /// How errors name the source, e.g. "NATS core subject".
    pub const fn describe(self) -> &'static str {
        match self {
            Source::MemoryTopic => "in-memory topic",
            Source::KafkaTopic { .. } => "Kafka topic",
            Source::RabbitQueue { .. } => "RabbitMQ queue",
            Source::NatsCore => "NATS core subject",
            Source::JetStream => "NATS JetStream stream",
            Source::RedisChannel => "Redis pub/sub channel",
            Source::RedisList => "Redis list",
            Source::RedisStream { .. } => "Redis stream",
            Source::MqttTopic { qos: 0 } => "MQTT QoS 0 topic",
            Source::MqttTopic { .. } => "MQTT topic",
        }
    }

    /// Whether the broker acknowledges messages from this source at all.
    pub const fn acknowledges(self) -> bool {
        match self {
            Source::NatsCore | Source::RedisChannel | Source::RedisList => false,
            Source::KafkaTopic { grouped } | Source::RedisStream { grouped } => grouped,
            Source::MqttTopic { qos } => qos > 0,
            Source::MemoryTopic | Source::RabbitQueue { .. } | Source::JetStream => true,
        }
    }

    /// The policy used when the subscriber names none: FastStream's default for the broker,
    /// so FastStream users find what they expect; `AckFirst` where nothing can be acknowledged.
    pub const fn default_policy(self) -> AckPolicy {
        match self {
            Source::KafkaTopic { .. } => AckPolicy::AckFirst,
            Source::RedisStream { grouped: false } => AckPolicy::AckFirst,
            Source::MqttTopic { .. } => AckPolicy::Ack,
            _ => AckPolicy::RejectOnError,
        }
    }

    /// What to write instead when this source cannot acknowledge.
    const fn without_acknowledgement_hint(self) -> &'static str {
        match self {
            Source::NatsCore => {
                "use ack_policy = AckFirst, or consume through JetStream (add stream = \"...\" and durable = \"...\") to get acknowledgements"
            }
            Source::RedisChannel | Source::RedisList => {
                "use ack_policy = AckFirst, or read a Redis stream through a group (stream = \"...\", group = \"...\") to get acknowledgements"
            }
            Source::RedisStream { .. } => {
                "add group = \"...\" to read through a consumer group, or use ack_policy = AckFirst"
            }
            Source::KafkaTopic { .. } => {
                "add group_id = \"...\", or use ack_policy = AckFirst to read without committing"
            }
            Source::MqttTopic { .. } => "subscribe with qos = 1 (or 2), or use ack_policy = AckFirst",
            _ => "use ack_policy = AckFirst",
        }
    }
}

/// How well a policy works on a source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// It does what the docs say.
    Supported,
    /// It compiles and runs, but means less than its name: a compile-time warning.
    Degraded(String),
    /// It cannot mean what it says: a compile-time error.
    Unsupported(String),
}

/// Whether `policy` works on `source`; `source_name` (the topic, queue, ...) goes into the
/// message. Messages name the broker, the source and the policy, and say what to write instead.
pub fn check(source: Source, source_name: &str, policy: AckPolicy) -> Verdict {
    let broker = source.broker().display_name();
    let what = source.describe();
    if !source.acknowledges() {
        let commits_or_acks = match source {
            Source::KafkaTopic { .. } | Source::RedisStream { .. } => policy != AckPolicy::AckFirst,
            _ => policy.needs_acknowledgement(),
        };
        if commits_or_acks {
            let why = match (source, policy) {
                (Source::KafkaTopic { .. }, _) => "without group_id, a Kafka consumer has no group to commit offsets for".to_owned(),
                (Source::RedisStream { .. }, _) => "without group, entries are read with XREAD and have no pending list to acknowledge".to_owned(),
                (_, AckPolicy::Manual) => format!("{broker} has no acknowledgement there, so msg.ack()/nack()/reject() would do nothing"),
                _ => format!("{broker} has no acknowledgement there, so nothing would ever be redelivered"),
            };
            return Verdict::Unsupported(format!(
                "ack_policy = {policy} cannot work on {what} `{source_name}`: {why}; {}",
                source.without_acknowledgement_hint()
            ));
        }
        return Verdict::Supported;
    }
    match (source, policy) {
        (Source::KafkaTopic { .. }, AckPolicy::RejectOnError) => Verdict::Degraded(format!(
            "Kafka has no reject: on {what} `{source_name}`, ack_policy = RejectOnError commits a failed message's offset exactly like Ack; write ack_policy = Ack to say so, or NackOnError to read the message again"
        )),
        (Source::MqttTopic { .. }, AckPolicy::RejectOnError) => Verdict::Degraded(format!(
            "MQTT has no reject: on {what} `{source_name}`, ack_policy = RejectOnError acknowledges a failed message (PUBACK) exactly like Ack, unless the subscriber has a dead_letter_topic (then it is published there first); write ack_policy = Ack to say so"
        )),
        (Source::MqttTopic { .. }, AckPolicy::NackOnError) => Verdict::Degraded(format!(
            "on {what} `{source_name}`, ack_policy = NackOnError withholds the PUBACK and brook redelivers a failed message itself (after a delay, counted for max_deliveries); a message still unsettled when the App stops comes back only from a persistent session, with its count starting at 1 again; set max_deliveries (and dead_letter_topic) so a message that always fails stops"
        )),
        _ => Verdict::Supported,
    }
}

/// Why a set of subscriber arguments was refused. `argument` names the argument the message is
/// about, so the macro can point at it (`None`: the attribute as a whole).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArgError {
    /// The offending argument, if one is to blame.
    pub argument: Option<&'static str>,
    /// What is wrong and what to write instead.
    pub message: String,
}

impl fmt::Display for ArgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ArgError {}

fn arg_error(argument: Option<&'static str>, message: String) -> ArgError {
    ArgError { argument, message }
}

/// A validated subscriber: where it reads, the name of that place, the policy in force and
/// the broker's typed options.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    /// The kind of source.
    pub source: Source,
    /// The topic / queue / subject / channel / list / stream name (at compile time, for a name
    /// from an expression: the expression).
    pub source_name: String,
    /// The policy written, or the source's default.
    pub policy: AckPolicy,
    /// Whether `ack_policy` was written (warnings name only written policies).
    pub policy_written: bool,
    /// A degradation warning, if the policy means less than its name here.
    pub warning: Option<String>,
    /// A warning about `max_deliveries` on a source that does not count deliveries.
    pub max_deliveries_warning: Option<String>,
    /// The broker's options.
    pub options: Options,
}

/// Validates subscriber arguments for `broker`: every argument known, of the right kind and in
/// range, applicable to the source and to the other arguments, names the broker accepts,
/// exactly one source, and a policy that can work there. The same function runs in the macro
/// and when a subscription is built at run time.
pub fn resolve(broker: BrokerKind, args: &[(&str, Value)]) -> Result<Resolved, ArgError> {
    for (i, (name, value)) in args.iter().enumerate() {
        let Some(spec) = argument(broker, name) else {
            return Err(unknown_argument(broker, name));
        };
        if args[..i].iter().any(|(n, _)| n == name) {
            return Err(arg_error(
                Some(spec.name),
                format!("argument `{name}` is given twice"),
            ));
        }
        if !value.fits(spec.kind) {
            let mut message = format!("`{name}` takes {}, not `{value}`", spec.kind.describe());
            if let (Value::Ident(got), ArgKind::Ident(names)) = (value, spec.kind) {
                if let Some(close) = did_you_mean(got, names.iter().copied()) {
                    message = format!("{message}; did you mean `{close}`?");
                }
            }
            return Err(arg_error(Some(spec.name), message));
        }
        if let (Some((min, max)), Some(v)) = (spec.range, value.as_int()) {
            if v < min || v > max {
                return Err(arg_error(Some(spec.name), range_message(broker, spec, v)));
            }
        }
        if let Value::Str(text) = value {
            if spec.is_name() {
                // An output's name follows the rules of the broker it is published on.
                let rules = match *name {
                    "publish" => output_broker(broker, args),
                    _ => broker,
                };
                check_name(rules, name, text).map_err(|why| {
                    arg_error(Some(spec.name), format!("`{name} = {text:?}`: {why}"))
                })?;
            }
        }
    }
    let get = |name: &str| args.iter().find(|(n, _)| *n == name).map(|(_, v)| v);
    let text = |name: &str| get(name).map(options::name_text);

    let (source, source_name) = source_of(broker, &get, &text)?;
    // Arguments that apply to one source only, or not together with others.
    for (name, _) in args {
        let Some(spec) = argument(broker, name) else {
            continue;
        };
        if let Some(needed) = spec.only_with {
            if get(needed).is_none() {
                return Err(arg_error(
                    Some(spec.name),
                    not_applicable(broker, spec.name, needed, source, &source_name),
                ));
            }
        }
        for (flag, value) in spec.unless {
            if get(flag).and_then(Value::as_bool) == Some(*value) {
                return Err(arg_error(
                    Some(spec.name),
                    format!(
                        "`{}` only applies when brook declares the queue, but `{flag} = {value}` declares nothing; remove `{}` or declare the queue elsewhere with it",
                        spec.name, spec.name
                    ),
                ));
            }
        }
    }
    let written = get("ack_policy")
        .and_then(Value::as_str)
        .and_then(AckPolicy::from_name);
    let policy = written.unwrap_or(source.default_policy());
    let warning = match check(source, &source_name, policy) {
        Verdict::Supported => None,
        Verdict::Degraded(w) => Some(w),
        Verdict::Unsupported(e) => {
            let at = if written.is_some() {
                Some("ack_policy")
            } else {
                None
            };
            return Err(arg_error(at, e));
        }
    };
    let max_deliveries_warning =
        max_deliveries_warning(source, &source_name, get("max_deliveries").is_some());
    Ok(Resolved {
        source,
        source_name,
        policy,
        policy_written: written.is_some(),
        warning: if written.is_some() { warning } else { None },
        max_deliveries_warning,
        options: Options::build(broker, &get),
    })
}

/// The broker a subscriber's result is published on: `publish_broker`, or the input's.
pub fn output_broker(broker: BrokerKind, args: &[(&str, Value)]) -> BrokerKind {
    args.iter()
        .find(|(n, _)| *n == "publish_broker")
        .and_then(|(_, v)| v.as_str())
        .and_then(BrokerKind::from_name)
        .unwrap_or(broker)
}

fn max_deliveries_warning(source: Source, source_name: &str, given: bool) -> Option<String> {
    if !given || source.features().delivery_count != DeliveryCount::None {
        return None;
    }
    let what = source.describe();
    Some(match source {
        Source::RabbitQueue { .. } => format!(
            "max_deliveries needs a delivery count, which RabbitMQ keeps for quorum queues only: on classic {what} `{source_name}` it acts on first deliveries only; declare queue_type = quorum (or ignore this if the queue is a quorum queue declared elsewhere)"
        ),
        _ => format!(
            "max_deliveries needs a delivery count, and {what} `{source_name}` has none, so it never applies; remove it"
        ),
    })
}

fn range_message(broker: BrokerKind, spec: &ArgSpec, v: u64) -> String {
    let (min, max) = spec.range.unwrap_or((0, u64::MAX));
    match (broker, spec.name) {
        (BrokerKind::Mqtt, "qos") => format!("MQTT QoS is 0, 1 or 2, not {v}"),
        _ if v < min && min == 1 => match spec.name {
            "max_deliveries" => {
                "`max_deliveries` must be at least 1 (the first delivery counts)".to_owned()
            }
            name => format!("`{name}` must be at least 1"),
        },
        _ if v < min => format!("`{}` must be at least {min}", spec.name),
        _ => format!(
            "`{} = {v}` is more than {} allows ({max})",
            spec.name,
            broker.display_name()
        ),
    }
}

fn not_applicable(
    broker: BrokerKind,
    arg: &str,
    needed: &str,
    source: Source,
    source_name: &str,
) -> String {
    match (broker, source) {
        _ if needed == "publish" => format!(
            "`{arg}` says where the handler's result is published, but no output is declared; add publish = \"...\" or remove `{arg}`"
        ),
        (BrokerKind::Nats, _) => format!(
            "`{arg}` configures a JetStream consumer; add {needed} = \"...\" to consume `{source_name}` through JetStream"
        ),
        (BrokerKind::Redis, Source::RedisList) => {
            format!("`{arg}` applies to Redis streams only, not to list `{source_name}`")
        }
        (BrokerKind::Redis, Source::RedisChannel) => {
            format!("`{arg}` applies to Redis streams only, not to channel `{source_name}`")
        }
        _ => format!("`{arg}` needs `{needed}`"),
    }
}

/// The error for an argument `name` that `broker` does not know, with a "did you mean" or the list.
pub fn unknown_argument(broker: BrokerKind, name: &str) -> ArgError {
    let known = COMMON_ARGUMENTS
        .iter()
        .chain(arguments(broker))
        .map(|a| a.name);
    let mut message = format!(
        "unknown argument `{name}` for a subscriber on {}",
        broker.display_name()
    );
    if let Some(close) = did_you_mean(name, known.clone()) {
        message.push_str(&format!("; did you mean `{close}`?"));
    } else {
        let list: Vec<_> = known.collect();
        message.push_str(&format!("; valid arguments: {}", list.join(", ")));
    }
    if let Some(other) = BrokerKind::ALL
        .into_iter()
        .find(|b| *b != broker && arguments(*b).iter().any(|a| a.name == name))
    {
        message.push_str(&format!(
            " (`{name}` is an argument of subscribers on {}: use brook::{}::subscriber, or broker = {})",
            other.display_name(),
            other.name(),
            other.name()
        ));
    }
    arg_error(None, message)
}

type Getter<'a> = dyn Fn(&str) -> Option<&'a Value> + 'a;

fn source_of<'a>(
    broker: BrokerKind,
    get: &Getter<'a>,
    text: &dyn Fn(&str) -> Option<String>,
) -> Result<(Source, String), ArgError> {
    // The first name is the canonical one; the others are aliases.
    let one_of = |names: &[&'static str]| -> Result<Option<String>, ArgError> {
        let given: Vec<_> = names.iter().filter(|n| get(n).is_some()).collect();
        if given.len() > 1 {
            return Err(arg_error(
                Some(given[1]),
                format!(
                    "`{}` and `{}` name the same thing; write only one",
                    given[0], given[1]
                ),
            ));
        }
        Ok(given.first().and_then(|n| text(n)))
    };
    let missing = |what: &str| {
        arg_error(
            None,
            format!("a subscriber on {} needs {what}", broker.display_name()),
        )
    };
    Ok(match broker {
        BrokerKind::Memory => {
            let topic = one_of(&["topic"])?.ok_or_else(|| missing("topic = \"...\""))?;
            (Source::MemoryTopic, topic)
        }
        BrokerKind::Kafka => {
            let topic = one_of(&["topic"])?.ok_or_else(|| missing("topic = \"...\""))?;
            let grouped = get("group_id").is_some();
            (Source::KafkaTopic { grouped }, topic)
        }
        BrokerKind::Rabbit => {
            let queue = one_of(&["queue", "topic"])?.ok_or_else(|| missing("queue = \"...\""))?;
            let quorum = get("queue_type").and_then(Value::as_str) == Some("quorum");
            (Source::RabbitQueue { quorum }, queue)
        }
        BrokerKind::Nats => {
            let subject =
                one_of(&["subject", "topic"])?.ok_or_else(|| missing("subject = \"...\""))?;
            if get("stream").is_some() {
                (Source::JetStream, subject)
            } else {
                (Source::NatsCore, subject)
            }
        }
        BrokerKind::Redis => {
            let kinds = ["channel", "list", "stream"];
            let given: Vec<_> = kinds.iter().filter(|n| get(n).is_some()).collect();
            match given.as_slice() {
                [] => {
                    return Err(missing(
                        "one of channel = \"...\", list = \"...\" or stream = \"...\"",
                    ))
                }
                [_, second, ..] => {
                    return Err(arg_error(
                        Some(second),
                        format!(
                        "a Redis subscriber reads one source: `{}` and `{second}` are both given",
                        given[0]
                    ),
                    ))
                }
                [one] => {
                    let name = text(one).unwrap_or_default();
                    let source = match **one {
                        "channel" => Source::RedisChannel,
                        "list" => Source::RedisList,
                        _ => Source::RedisStream {
                            grouped: get("group").is_some(),
                        },
                    };
                    (source, name)
                }
            }
        }
        BrokerKind::Mqtt => {
            let topic = one_of(&["topic"])?.ok_or_else(|| missing("topic = \"...\""))?;
            let qos = get("qos").and_then(Value::as_int).unwrap_or(1);
            (
                Source::MqttTopic {
                    qos: qos.min(2) as u8,
                },
                topic,
            )
        }
    })
}

/// The closest of `candidates` to `word`, if one is close enough to be a likely typo.
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let limit = (word.chars().count() / 3).max(1);
    candidates
        .into_iter()
        .map(|c| (edit_distance(&word.to_lowercase(), &c.to_lowercase()), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &'static str) -> Value {
        Value::Str(Cow::Borrowed(v))
    }
    fn id(v: &'static str) -> Value {
        Value::Ident(Cow::Borrowed(v))
    }

    #[test]
    fn every_policy_is_supported_where_the_broker_acknowledges() {
        for source in [
            Source::MemoryTopic,
            Source::RabbitQueue { quorum: false },
            Source::JetStream,
            Source::RedisStream { grouped: true },
        ] {
            for policy in AckPolicy::ALL {
                assert_eq!(
                    check(source, "x", policy),
                    Verdict::Supported,
                    "{source:?} {policy}"
                );
            }
        }
    }

    #[test]
    fn redelivering_and_manual_policies_are_refused_where_nothing_acknowledges() {
        for source in [
            Source::NatsCore,
            Source::RedisChannel,
            Source::RedisList,
            Source::MqttTopic { qos: 0 },
        ] {
            for policy in [AckPolicy::NackOnError, AckPolicy::Manual] {
                assert!(
                    matches!(check(source, "x", policy), Verdict::Unsupported(_)),
                    "{source:?} {policy}"
                );
            }
            for policy in [
                AckPolicy::AckFirst,
                AckPolicy::Ack,
                AckPolicy::RejectOnError,
            ] {
                assert_eq!(
                    check(source, "x", policy),
                    Verdict::Supported,
                    "{source:?} {policy}"
                );
            }
        }
    }

    #[test]
    fn committing_without_a_group_is_refused() {
        for source in [
            Source::KafkaTopic { grouped: false },
            Source::RedisStream { grouped: false },
        ] {
            assert_eq!(check(source, "t", AckPolicy::AckFirst), Verdict::Supported);
            for policy in [
                AckPolicy::Ack,
                AckPolicy::RejectOnError,
                AckPolicy::NackOnError,
                AckPolicy::Manual,
            ] {
                assert!(
                    matches!(check(source, "t", policy), Verdict::Unsupported(_)),
                    "{source:?} {policy}"
                );
            }
        }
    }

    #[test]
    fn degraded_combinations_warn() {
        for (source, policy) in [
            (
                Source::KafkaTopic { grouped: true },
                AckPolicy::RejectOnError,
            ),
            (Source::MqttTopic { qos: 1 }, AckPolicy::RejectOnError),
            (Source::MqttTopic { qos: 2 }, AckPolicy::NackOnError),
        ] {
            assert!(
                matches!(check(source, "t", policy), Verdict::Degraded(_)),
                "{source:?} {policy}"
            );
        }
    }

    #[test]
    fn defaults_are_fastream_s_and_always_valid() {
        assert_eq!(
            Source::KafkaTopic { grouped: true }.default_policy(),
            AckPolicy::AckFirst
        );
        assert_eq!(
            Source::RabbitQueue { quorum: false }.default_policy(),
            AckPolicy::RejectOnError
        );
        assert_eq!(Source::JetStream.default_policy(), AckPolicy::RejectOnError);
        assert_eq!(
            Source::MqttTopic { qos: 1 }.default_policy(),
            AckPolicy::Ack
        );
        for source in [
            Source::MemoryTopic,
            Source::KafkaTopic { grouped: false },
            Source::RabbitQueue { quorum: true },
            Source::NatsCore,
            Source::JetStream,
            Source::RedisChannel,
            Source::RedisList,
            Source::RedisStream { grouped: false },
            Source::MqttTopic { qos: 0 },
        ] {
            assert!(
                !matches!(
                    check(source, "t", source.default_policy()),
                    Verdict::Unsupported(_)
                ),
                "{source:?}"
            );
        }
    }

    #[test]
    fn resolve_finds_the_source_and_the_policy() {
        let r = resolve(
            BrokerKind::Nats,
            &[
                ("subject", s("a.b")),
                ("stream", s("S")),
                ("ack_policy", id("NackOnError")),
            ],
        )
        .unwrap();
        assert_eq!(
            (r.source, r.source_name.as_str(), r.policy),
            (Source::JetStream, "a.b", AckPolicy::NackOnError)
        );
        let e = resolve(
            BrokerKind::Nats,
            &[("subject", s("a.b")), ("ack_policy", id("NackOnError"))],
        )
        .unwrap_err();
        assert_eq!(e.argument, Some("ack_policy"));
        assert!(e.message.contains("NATS core subject `a.b`"), "{e}");
        assert!(e.message.contains("stream = "), "{e}");
    }

    #[test]
    fn unknown_names_get_a_suggestion() {
        let e = resolve(BrokerKind::Memory, &[("topik", s("t"))]).unwrap_err();
        assert!(e.message.contains("did you mean `topic`"), "{e}");
        let e = resolve(
            BrokerKind::Memory,
            &[("topic", s("t")), ("ack_policy", id("NackOnErorr"))],
        )
        .unwrap_err();
        assert!(e.message.contains("did you mean `NackOnError`"), "{e}");
        let e = resolve(BrokerKind::Memory, &[("topic", s("t")), ("queue", s("q"))]).unwrap_err();
        assert!(e.message.contains("broker = rabbit"), "{e}");
    }
}
