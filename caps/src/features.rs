//! What each source can do, as data: whether it acknowledges, its default policy, whether it
//! counts deliveries, delays nacks, has a dead-letter place, and what each settlement is on the
//! wire. The conformance suite decides which tests apply from this, and the policy tables in
//! the docs are generated from it (a test keeps them in step), so a fact is written once.

use crate::{AckPolicy, BrokerKind, Source};

/// Who counts a message's deliveries, which `max_deliveries` needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliveryCount {
    /// The broker counts them and sends the count with each delivery.
    Broker,
    /// brook counts them in the consumer process (lost when the process restarts).
    Client,
    /// Nobody: `max_deliveries` cannot apply.
    None,
}

/// Where a rejected message goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeadLetter {
    /// The place, as the docs name it.
    pub place: &'static str,
    /// The subscriber argument that must be set for it (`None`: always there).
    pub needs: Option<&'static str>,
}

/// What a settlement is on the wire, per column of the docs' policy table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Wire {
    /// Acknowledge.
    pub ack: &'static str,
    /// Negatively acknowledge (redeliver).
    pub nack: &'static str,
    /// Reject.
    pub reject: &'static str,
    /// `AckFirst`.
    pub ack_first: &'static str,
}

/// Everything brook relies on about a source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Features {
    /// The broker acknowledges messages from this source at all.
    pub acknowledges: bool,
    /// FastStream's default policy there.
    pub default_policy: AckPolicy,
    /// Who counts deliveries.
    pub delivery_count: DeliveryCount,
    /// A nack can ask for a redelivery delay.
    pub nack_delay: bool,
    /// Where rejected messages go, if anywhere.
    pub dead_letter: Option<DeadLetter>,
    /// The protocol has a reject distinct from ack.
    pub native_reject: bool,
    /// The protocol acknowledges on delivery by itself (used for `AckFirst`).
    pub native_auto_ack: bool,
    /// What each settlement is on the wire.
    pub wire: Wire,
}

impl Features {
    /// Whether rejected messages land somewhere, for a subscriber whose arguments are those
    /// `given` says it has (a dead-letter place may need one, e.g. `dead_letter_exchange`).
    pub fn dead_letters(&self, given: impl Fn(&str) -> bool) -> bool {
        self.dead_letter.is_some_and(|d| d.needs.is_none_or(given))
    }
}

const NOTHING: Wire = Wire {
    ack: "no acknowledgement exists",
    nack: "— (compile error)",
    reject: "—",
    ack_first: "—",
};

impl Source {
    /// Every source shape, in the order the docs list them.
    pub const ALL: [Source; 12] = [
        Source::MemoryTopic,
        Source::KafkaTopic { grouped: true },
        Source::KafkaTopic { grouped: false },
        Source::RabbitQueue { quorum: false },
        Source::RabbitQueue { quorum: true },
        Source::JetStream,
        Source::NatsCore,
        Source::RedisStream { grouped: true },
        Source::RedisStream { grouped: false },
        Source::RedisList,
        Source::RedisChannel,
        Source::MqttTopic { qos: 1 },
    ];

    /// What brook relies on about this source.
    pub const fn features(self) -> Features {
        let acknowledges = self.acknowledges();
        let default_policy = self.default_policy();
        let none = Features {
            acknowledges,
            default_policy,
            delivery_count: DeliveryCount::None,
            nack_delay: false,
            dead_letter: None,
            native_reject: false,
            native_auto_ack: false,
            wire: NOTHING,
        };
        match self {
            Source::MemoryTopic => Features {
                delivery_count: DeliveryCount::Broker,
                nack_delay: true,
                dead_letter: Some(DeadLetter { place: "the topic's dead-letter list", needs: None }),
                native_reject: true,
                wire: Wire {
                    ack: "removes the message",
                    nack: "back to the head of the queue (after the delay, if any); delivery count kept",
                    reject: "moves it to the topic's dead-letter list",
                    ack_first: "ack on receipt",
                },
                ..none
            },
            Source::KafkaTopic { grouped: true } => Features {
                delivery_count: DeliveryCount::Client,
                native_auto_ack: true,
                wire: Wire {
                    ack: "commit offset+1 (stored, committed in the background; synchronously on stop and on revocation; only the contiguous settled prefix per partition)",
                    nack: "seek back to the offset: read again, then the later ones, in order; nothing past it committed; no delay",
                    reject: "= ack (warning; no dead-letter place)",
                    ack_first: "`enable.auto.commit` with automatic offset store",
                },
                ..none
            },
            Source::KafkaTopic { grouped: false } => Features {
                wire: Wire {
                    ack: "nothing to commit without `group_id` (only AckFirst compiles)",
                    ..NOTHING
                },
                ..none
            },
            Source::RabbitQueue { quorum } => Features {
                delivery_count: if quorum { DeliveryCount::Broker } else { DeliveryCount::None },
                // Whether the queue has a dead-letter exchange is the queue's (declared by brook
                // with `dead_letter_exchange`, or elsewhere), not the subscriber's.
                dead_letter: Some(DeadLetter {
                    place: "the queue's dead-letter exchange, if it has one",
                    needs: None,
                }),
                native_reject: true,
                native_auto_ack: true,
                wire: Wire {
                    ack: "basic.ack",
                    nack: if quorum {
                        "basic.nack requeue=true (no delay); delivery count from `x-acquired-count` (RabbitMQ ≥ 4.3) or `x-delivery-count`"
                    } else {
                        "basic.nack requeue=true (no delay); classic queues only flag `redelivered`, so there is no delivery count"
                    },
                    reject: "basic.reject requeue=false (to the queue's dead-letter exchange, if set)",
                    ack_first: "consume with no_ack",
                },
                ..none
            },
            Source::JetStream => Features {
                delivery_count: DeliveryCount::Broker,
                nack_delay: true,
                dead_letter: Some(DeadLetter {
                    place: "the MSG_TERMINATED advisory",
                    needs: None,
                }),
                native_reject: true,
                wire: Wire {
                    ack: "+ACK",
                    nack: "-NAK (`-NAK {\"delay\": ns}` with a delay); delivery count from the ack subject",
                    reject: "+TERM (no DLQ: MSG_TERMINATED advisory)",
                    ack_first: "+ACK (confirmed by the server) before the handler",
                },
                ..none
            },
            Source::RedisStream { grouped: true } => Features {
                delivery_count: DeliveryCount::Broker,
                nack_delay: true,
                dead_letter: Some(DeadLetter {
                    place: "the dead-letter stream",
                    needs: Some("dead_letter_stream"),
                }),
                native_auto_ack: true,
                wire: Wire {
                    ack: "XACK; the policy's settlements are batched per consumer (`XACK key group id1 id2 …` per flush, sent as soon as nothing else is in flight); a handler's own `msg.ack()` is awaited",
                    nack: "stays pending; the consumer claims it again (XCLAIM, after the delay if given), delivery count from Redis; entries of gone consumers (liveness key lapsed, ~10 s; at once after a close) are taken over whatever `min_idle_ms`, stuck ones by XAUTOCLAIM after `min_idle_ms`",
                    reject: "XACK, batched like acks (+ XADD to `dead_letter_stream` if set; an entry joins the XACK only after its XADD succeeded)",
                    ack_first: "XREADGROUP NOACK (a graceful stop puts entries read but not handled back in the pending list: XCLAIM FORCE)",
                },
                ..none
            },
            Source::RedisStream { grouped: false } => Features {
                wire: Wire {
                    ack: "no acknowledgement exists (XREAD; only AckFirst compiles)",
                    ..NOTHING
                },
                ..none
            },
            Source::RedisList => Features {
                wire: Wire {
                    ack: "no acknowledgement exists (BLPOP / LPOP)",
                    ..NOTHING
                },
                ..none
            },
            Source::RedisChannel => Features {
                wire: Wire {
                    ack: "no acknowledgement exists (SUBSCRIBE / PSUBSCRIBE)",
                    ..NOTHING
                },
                ..none
            },
            Source::NatsCore => Features {
                wire: Wire {
                    ack: "no acknowledgement exists (the settler is a no-op)",
                    ..NOTHING
                },
                ..none
            },
            Source::MqttTopic { qos: 0 } => Features {
                wire: Wire {
                    ack: "nothing to acknowledge at QoS 0",
                    ..NOTHING
                },
                ..none
            },
            Source::MqttTopic { .. } => Features {
                delivery_count: DeliveryCount::Client,
                nack_delay: true,
                dead_letter: Some(DeadLetter {
                    place: "the dead-letter topic",
                    needs: Some("dead_letter_topic"),
                }),
                native_auto_ack: true,
                wire: Wire {
                    ack: "PUBACK / PUBREC, released in arrival order (an unsettled earlier message holds later acks back; one being redelivered does not, and is acked after them)",
                    nack: "withhold the PUBACK and redeliver from brook after the delay (default 100 ms, doubling to 5 s), no reconnect; delivery count kept by brook (continued across a resumed session, from 1 again after a restart)",
                    reject: "= ack (warning: MQTT has no reject); with `dead_letter_topic`, published there (QoS 1, confirmed) before the PUBACK",
                    ack_first: "PUBACK before the handler",
                },
                ..none
            },
        }
    }

    /// How the docs' per-broker table names the source.
    pub const fn table_name(self) -> &'static str {
        match self {
            Source::MemoryTopic => "in-memory topic",
            Source::KafkaTopic { grouped: true } => "Kafka topic, `group_id`",
            Source::KafkaTopic { grouped: false } => "Kafka topic, no `group_id`",
            Source::RabbitQueue { quorum: false } => "RabbitMQ classic queue",
            Source::RabbitQueue { quorum: true } => "RabbitMQ quorum queue",
            Source::JetStream => "NATS JetStream (pull consumer)",
            Source::NatsCore => "NATS core subject",
            Source::RedisStream { grouped: true } => "Redis stream, `group`",
            Source::RedisStream { grouped: false } => "Redis stream, no `group`",
            Source::RedisList => "Redis list",
            Source::RedisChannel => "Redis pub/sub channel",
            Source::MqttTopic { qos: 0 } => "MQTT QoS 0",
            Source::MqttTopic { .. } => "MQTT QoS 1/2",
        }
    }
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

fn delivery_count(d: DeliveryCount) -> &'static str {
    match d {
        DeliveryCount::Broker => "yes (the broker's)",
        DeliveryCount::Client => "yes (counted by the consumer process)",
        DeliveryCount::None => "no",
    }
}

/// The sources of `broker`, in the docs' order (MQTT QoS 0 after QoS 1/2).
pub fn sources(broker: BrokerKind) -> Vec<Source> {
    let mut all: Vec<Source> = Source::ALL
        .into_iter()
        .filter(|s| s.broker() == broker)
        .collect();
    if broker == BrokerKind::Mqtt {
        all.push(Source::MqttTopic { qos: 0 });
    }
    all
}

/// The per-broker wire table of `docs/ack-policies.md`, generated from [`Source::features`].
pub fn wire_table() -> String {
    let mut out = String::from(
        "| source | ack | nack | reject | AckFirst | default policy |\n|---|---|---|---|---|---|\n",
    );
    for broker in BrokerKind::ALL {
        for source in sources(broker) {
            let f = source.features();
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} |\n",
                source.table_name(),
                f.wire.ack,
                f.wire.nack,
                f.wire.reject,
                f.wire.ack_first,
                f.default_policy
            ));
        }
    }
    out
}

/// The features table of one broker's page in `docs/brokers/`, generated from
/// [`Source::features`].
pub fn features_table(broker: BrokerKind) -> String {
    let mut out = String::from(
        "| source | acknowledges | default policy | delivery count (`max_deliveries`) | nack delay | dead-letter place | native reject |\n|---|---|---|---|---|---|---|\n",
    );
    for source in sources(broker) {
        let f = source.features();
        let dead_letter = match f.dead_letter {
            Some(DeadLetter {
                place,
                needs: Some(arg),
            }) => format!("{place} (`{arg}`)"),
            Some(DeadLetter { place, needs: None }) => place.to_owned(),
            None => "none".to_owned(),
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} |\n",
            source.table_name(),
            yes_no(f.acknowledges),
            f.default_policy,
            delivery_count(f.delivery_count),
            yes_no(f.nack_delay),
            dead_letter,
            yes_no(f.native_reject),
        ));
    }
    out
}

/// The argument table of one broker (the common arguments first), generated from the
/// argument specs.
pub fn arguments_table(broker: BrokerKind) -> String {
    let mut out = String::from("| argument | takes | default | meaning |\n|---|---|---|---|\n");
    for spec in crate::COMMON_ARGUMENTS
        .iter()
        .filter(|a| a.name != "broker")
        .chain(crate::arguments(broker))
    {
        let takes = match spec.kind {
            crate::ArgKind::Name => "name".to_owned(),
            crate::ArgKind::Int => match spec.range {
                Some((min, max)) if max < u64::from(u32::MAX) => format!("{min}..={max}"),
                Some((min, _)) => format!("integer ≥ {min}"),
                None => "integer".to_owned(),
            },
            crate::ArgKind::Bool => "`true` / `false`".to_owned(),
            crate::ArgKind::Ident(names) => names
                .iter()
                .map(|n| format!("`{n}`"))
                .collect::<Vec<_>>()
                .join(", "),
        };
        let mut meaning = spec.doc.to_owned();
        if let Some(source) = spec.only_with {
            meaning.push_str(&format!(" (with `{source}` only)"));
        }
        if !spec.unless.is_empty() {
            meaning.push_str(" (only when brook declares the queue)");
        }
        out.push_str(&format!(
            "| `{}` | {} | {} | {} |\n",
            spec.name,
            takes,
            spec.default.unwrap_or("—"),
            meaning
        ));
    }
    out
}
