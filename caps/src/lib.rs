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
    /// (`None` for the in-memory broker, which has only `Message`).
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
    /// A string literal: `topic = "orders"`.
    Str,
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
            ArgKind::Str => "a string literal".to_owned(),
            ArgKind::Int => "a non-negative integer".to_owned(),
            ArgKind::Bool => "`true` or `false`".to_owned(),
            ArgKind::Ident(names) => format!("one of {}", names.join(", ")),
        }
    }
}

/// An argument a subscriber accepts.
#[derive(Clone, Copy, Debug)]
pub struct ArgSpec {
    /// The name as written in the attribute.
    pub name: &'static str,
    /// What it takes.
    pub kind: ArgKind,
    /// One line for docs and errors.
    pub doc: &'static str,
}

const fn arg(name: &'static str, kind: ArgKind, doc: &'static str) -> ArgSpec {
    ArgSpec { name, kind, doc }
}

const POLICY_NAMES: &[&str] = &["AckFirst", "Ack", "RejectOnError", "NackOnError", "Manual"];
const BROKER_NAMES: &[&str] = &["memory", "kafka", "rabbit", "nats", "redis", "mqtt"];

/// Arguments every subscriber accepts, whatever the broker.
pub const COMMON_ARGUMENTS: &[ArgSpec] = &[
    arg(
        "broker",
        ArgKind::Ident(BROKER_NAMES),
        "which broker the subscriber is for (optional when only one is compiled in)",
    ),
    arg(
        "ack_policy",
        ArgKind::Ident(POLICY_NAMES),
        "when and how the message is settled",
    ),
    arg(
        "concurrency",
        ArgKind::Int,
        "how many messages of this subscriber are handled at once (default 1)",
    ),
    arg(
        "max_deliveries",
        ArgKind::Int,
        "reject (dead-letter) a message instead of delivering it more than this many times",
    ),
    arg(
        "on_decode_error",
        ArgKind::Ident(&["Reject", "Nack"]),
        "what to do with a payload that cannot be decoded (default Reject)",
    ),
];

const MEMORY_ARGUMENTS: &[ArgSpec] = &[
    arg("topic", ArgKind::Str, "the topic to consume"),
    arg(
        "group_id",
        ArgKind::Str,
        "consumers of one group compete for messages; each group gets every message",
    ),
];

const KAFKA_ARGUMENTS: &[ArgSpec] = &[
    arg(
        "topic",
        ArgKind::Str,
        "the topic to consume (several: comma-separated)",
    ),
    arg(
        "group_id",
        ArgKind::Str,
        "the consumer group; needed by every policy that commits offsets",
    ),
    arg(
        "auto_offset_reset",
        ArgKind::Ident(&["earliest", "latest"]),
        "where a group with no committed offset starts",
    ),
];

const RABBIT_ARGUMENTS: &[ArgSpec] = &[
    arg("queue", ArgKind::Str, "the queue to consume"),
    arg("topic", ArgKind::Str, "alias of `queue`"),
    arg("exchange", ArgKind::Str, "bind the queue to this exchange"),
    arg(
        "routing_key",
        ArgKind::Str,
        "the binding key (default: the queue name)",
    ),
    arg(
        "exchange_type",
        ArgKind::Ident(&["direct", "fanout", "topic", "headers"]),
        "the exchange's type when brook declares it",
    ),
    arg(
        "durable",
        ArgKind::Bool,
        "declare the queue durable (default true)",
    ),
    arg(
        "auto_delete",
        ArgKind::Bool,
        "declare the queue auto-delete",
    ),
    arg(
        "declare",
        ArgKind::Bool,
        "declare the queue and exchange if missing (default true)",
    ),
    arg("passive", ArgKind::Bool, "only check that the queue exists"),
    arg(
        "queue_type",
        ArgKind::Ident(&["classic", "quorum", "stream"]),
        "x-queue-type of a declared queue",
    ),
    arg(
        "dead_letter_exchange",
        ArgKind::Str,
        "x-dead-letter-exchange of a declared queue",
    ),
    arg("prefetch", ArgKind::Int, "basic.qos prefetch count"),
];

const NATS_ARGUMENTS: &[ArgSpec] = &[
    arg(
        "subject",
        ArgKind::Str,
        "the subject to consume (wildcards allowed)",
    ),
    arg("topic", ArgKind::Str, "alias of `subject`"),
    arg("queue_group", ArgKind::Str, "core NATS queue group"),
    arg(
        "stream",
        ArgKind::Str,
        "consume through this JetStream stream",
    ),
    arg(
        "durable",
        ArgKind::Str,
        "the durable JetStream pull consumer",
    ),
    arg(
        "deliver_policy",
        ArgKind::Ident(&["all", "new", "last"]),
        "where a new JetStream consumer starts",
    ),
    arg("max_ack_pending", ArgKind::Int, "JetStream max_ack_pending"),
    arg("max_deliver", ArgKind::Int, "JetStream's own max_deliver"),
    arg("batch", ArgKind::Int, "JetStream pull batch size"),
    arg(
        "create",
        ArgKind::Bool,
        "create the stream/consumer if missing (default true)",
    ),
    arg(
        "ack_wait_ms",
        ArgKind::Int,
        "JetStream ack_wait in milliseconds (server default 30000)",
    ),
];

const REDIS_ARGUMENTS: &[ArgSpec] = &[
    arg(
        "channel",
        ArgKind::Str,
        "pub/sub channel (patterns allowed)",
    ),
    arg("list", ArgKind::Str, "list to pop from"),
    arg("stream", ArgKind::Str, "stream to read"),
    arg(
        "group",
        ArgKind::Str,
        "stream consumer group; needed by every policy that acknowledges",
    ),
    arg(
        "consumer",
        ArgKind::Str,
        "consumer name in the group (default: unique per process)",
    ),
    arg(
        "min_idle_ms",
        ArgKind::Int,
        "claim other consumers' pending entries idle this long",
    ),
    arg("batch", ArgKind::Int, "entries per XREADGROUP"),
    arg(
        "dead_letter_stream",
        ArgKind::Str,
        "XADD rejected entries here",
    ),
];

const MQTT_ARGUMENTS: &[ArgSpec] = &[
    arg(
        "topic",
        ArgKind::Str,
        "topic filter (`+` and `#` allowed; `$share/group/...` for shared subscriptions)",
    ),
    arg("qos", ArgKind::Int, "0, 1 or 2 (default 1)"),
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
            (Value::Str(_), ArgKind::Str) | (Value::Int(_), ArgKind::Int) => true,
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
    /// A RabbitMQ queue.
    RabbitQueue,
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
            Source::RabbitQueue => BrokerKind::Rabbit,
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
            Source::RabbitQueue => "RabbitMQ queue",
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
            Source::MemoryTopic | Source::RabbitQueue | Source::JetStream => true,
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
            "MQTT has no reject: on {what} `{source_name}`, ack_policy = RejectOnError acknowledges a failed message (PUBACK) exactly like Ack; write ack_policy = Ack to say so"
        )),
        (Source::MqttTopic { .. }, AckPolicy::NackOnError) => Verdict::Degraded(format!(
            "on {what} `{source_name}`, ack_policy = NackOnError withholds the PUBACK, and an MQTT broker redelivers only when a persistent session resumes: brook reconnects after a nack, so every unacknowledged message of the connection comes back, and handlers may see duplicates; use ack_policy = Ack if a failed message need not come back"
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

/// A validated subscriber: where it reads, the name of that place, and the policy in force.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    /// The kind of source.
    pub source: Source,
    /// The topic / queue / subject / channel / list / stream name.
    pub source_name: String,
    /// The policy written, or the source's default.
    pub policy: AckPolicy,
    /// Whether `ack_policy` was written (warnings name only written policies).
    pub policy_written: bool,
    /// A degradation warning, if the policy means less than its name here.
    pub warning: Option<String>,
}

/// Validates subscriber arguments for `broker`: every argument known and of the right kind,
/// exactly one source, and a policy that can work there. The same function runs in the macro and
/// when a subscription is built at run time.
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
    }
    let get = |name: &str| args.iter().find(|(n, _)| *n == name).map(|(_, v)| v);
    let text = |name: &str| get(name).and_then(Value::as_str).map(str::to_owned);

    let (source, source_name) = source_of(broker, &get, &text)?;
    if let Some(v) = get("concurrency").and_then(Value::as_int) {
        if v == 0 {
            return Err(arg_error(
                Some("concurrency"),
                "`concurrency` must be at least 1".to_owned(),
            ));
        }
    }
    if let Some(v) = get("max_deliveries").and_then(Value::as_int) {
        if v == 0 {
            return Err(arg_error(
                Some("max_deliveries"),
                "`max_deliveries` must be at least 1 (the first delivery counts)".to_owned(),
            ));
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
    Ok(Resolved {
        source,
        source_name,
        policy,
        policy_written: written.is_some(),
        warning: if written.is_some() { warning } else { None },
    })
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
            " (`{name}` is an argument of subscribers on {}: broker = {})",
            other.display_name(),
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
            (Source::RabbitQueue, queue)
        }
        BrokerKind::Nats => {
            let subject =
                one_of(&["subject", "topic"])?.ok_or_else(|| missing("subject = \"...\""))?;
            if get("stream").is_some() {
                (Source::JetStream, subject)
            } else {
                for js in [
                    "durable",
                    "deliver_policy",
                    "max_ack_pending",
                    "max_deliver",
                    "batch",
                    "ack_wait_ms",
                    "create",
                ] {
                    if get(js).is_some() {
                        return Err(arg_error(
                            Some(js),
                            format!("`{js}` configures a JetStream consumer; add stream = \"...\" to consume `{subject}` through JetStream"),
                        ));
                    }
                }
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
                    if !matches!(source, Source::RedisStream { .. }) {
                        for s in ["group", "consumer", "min_idle_ms", "dead_letter_stream"] {
                            if get(s).is_some() {
                                return Err(arg_error(
                                    Some(s),
                                    format!("`{s}` applies to Redis streams only, not to {one} `{name}`"),
                                ));
                            }
                        }
                    }
                    (source, name)
                }
            }
        }
        BrokerKind::Mqtt => {
            let topic = one_of(&["topic"])?.ok_or_else(|| missing("topic = \"...\""))?;
            let qos = get("qos").and_then(Value::as_int).unwrap_or(1);
            if qos > 2 {
                return Err(arg_error(
                    Some("qos"),
                    format!("MQTT QoS is 0, 1 or 2, not {qos}"),
                ));
            }
            (Source::MqttTopic { qos: qos as u8 }, topic)
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
            Source::RabbitQueue,
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
            Source::RabbitQueue.default_policy(),
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
            Source::RabbitQueue,
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
