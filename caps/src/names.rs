//! What each broker accepts as a name. Literal names are checked by the macro at compile time;
//! names from expressions and the mount site are checked by `App::start` with the same rules,
//! before anything connects, so a bad name never reaches a message.

use crate::BrokerKind;

/// Checks `value` as the name argument `arg` of a subscriber on `broker`; the error says what
/// is wrong (the caller adds who and where).
pub fn check_name(broker: BrokerKind, arg: &str, value: &str) -> Result<(), String> {
    if value.trim().is_empty() {
        return Err("a name cannot be empty".to_owned());
    }
    match (broker, arg) {
        (BrokerKind::Kafka, "topic") => {
            let topics = crate::options::split_topics(value);
            if topics.is_empty() {
                return Err("the topic list names no topic".to_owned());
            }
            for topic in topics {
                kafka_topic(&topic)?;
            }
            Ok(())
        }
        (BrokerKind::Rabbit, _) => {
            if value.len() > 255 {
                return Err(format!(
                    "RabbitMQ names are at most 255 bytes, this one has {}",
                    value.len()
                ));
            }
            Ok(())
        }
        (BrokerKind::Nats, "subject" | "topic") => nats_subject(value),
        (BrokerKind::Nats, "queue_group") => no_whitespace(value, "a NATS queue group"),
        (BrokerKind::Nats, "stream" | "durable") => {
            let what = if arg == "stream" {
                "a JetStream stream name"
            } else {
                "a JetStream consumer name"
            };
            no_whitespace(value, what)?;
            if let Some(c) = value
                .chars()
                .find(|c| matches!(c, '.' | '*' | '>' | '/' | '\\'))
            {
                return Err(format!("{what} cannot contain `{c}`"));
            }
            Ok(())
        }
        (BrokerKind::Mqtt, "topic") => mqtt_filter(value),
        // An output is one destination: no list, no wildcard.
        (BrokerKind::Kafka, "publish") => kafka_topic(value),
        (BrokerKind::Nats, "publish") => {
            nats_subject(value)?;
            no_wildcards(value, "NATS subject", &['*', '>'])
        }
        (BrokerKind::Mqtt, "publish") => {
            mqtt_filter(value)?;
            no_wildcards(value, "MQTT topic", &['+', '#'])
        }
        _ => Ok(()),
    }
}

fn no_wildcards(value: &str, what: &str, wildcards: &[char]) -> Result<(), String> {
    match value.chars().find(|c| wildcards.contains(c)) {
        Some(c) => Err(format!(
            "{what} `{value}` contains the wildcard `{c}`, but a result is published to one destination"
        )),
        None => Ok(()),
    }
}

fn no_whitespace(value: &str, what: &str) -> Result<(), String> {
    if value.chars().any(char::is_whitespace) {
        return Err(format!("{what} cannot contain whitespace"));
    }
    Ok(())
}

fn kafka_topic(topic: &str) -> Result<(), String> {
    if topic.len() > 249 {
        return Err(format!(
            "Kafka topic names are at most 249 characters, `{topic}` has {}",
            topic.len()
        ));
    }
    if topic == "." || topic == ".." {
        return Err(format!("`{topic}` is not a valid Kafka topic name"));
    }
    if let Some(c) = topic
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "Kafka topic `{topic}` contains `{c}`; topic names hold only ASCII letters, digits, `.`, `_` and `-`"
        ));
    }
    Ok(())
}

fn nats_subject(subject: &str) -> Result<(), String> {
    no_whitespace(subject, "a NATS subject")?;
    let tokens: Vec<&str> = subject.split('.').collect();
    for (i, token) in tokens.iter().enumerate() {
        if token.is_empty() {
            return Err(format!(
                "NATS subject `{subject}` has an empty token (a leading, trailing or doubled `.`)"
            ));
        }
        if *token == ">" && i + 1 != tokens.len() {
            return Err(format!(
                "NATS subject `{subject}`: `>` may only be the last token"
            ));
        }
        if token.len() > 1 && (token.contains('*') || token.contains('>')) {
            return Err(format!(
                "NATS subject `{subject}`: wildcards (`*`, `>`) must be whole tokens"
            ));
        }
    }
    Ok(())
}

fn mqtt_filter(filter: &str) -> Result<(), String> {
    if filter.contains('\0') {
        return Err("an MQTT topic filter cannot contain NUL".to_owned());
    }
    if filter.len() > 65_535 {
        return Err("an MQTT topic filter is at most 65535 bytes".to_owned());
    }
    let filter = match filter.strip_prefix("$share/") {
        Some(rest) => match rest.split_once('/') {
            Some((group, inner)) if !group.is_empty() && !inner.is_empty() => {
                if group.contains(['+', '#']) {
                    return Err(format!(
                        "the shared-subscription group `{group}` cannot contain wildcards"
                    ));
                }
                inner
            }
            _ => {
                return Err(
                    "a shared subscription is `$share/<group>/<filter>`, with both parts"
                        .to_owned(),
                )
            }
        },
        None => filter,
    };
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i + 1 != levels.len()) {
            return Err(format!(
                "MQTT topic filter `{filter}`: `#` must be a whole level and the last one"
            ));
        }
        if level.contains('+') && *level != "+" {
            return Err(format!(
                "MQTT topic filter `{filter}`: `+` must be a whole level"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_each_broker_refuses() {
        let bad = [
            (BrokerKind::Memory, "topic", ""),
            (BrokerKind::Kafka, "topic", " , "),
            (BrokerKind::Kafka, "topic", "orders prod"),
            (BrokerKind::Nats, "subject", "orders created"),
            (BrokerKind::Nats, "subject", "orders..created"),
            (BrokerKind::Nats, "subject", "orders.>.x"),
            (BrokerKind::Nats, "stream", "ORDERS.V1"),
            (BrokerKind::Mqtt, "topic", "a/#/b"),
            (BrokerKind::Mqtt, "topic", "a/b+"),
            (BrokerKind::Mqtt, "topic", "$share//a"),
        ];
        for (broker, arg, value) in bad {
            assert!(
                check_name(broker, arg, value).is_err(),
                "{broker} {arg} {value:?}"
            );
        }
        let long = "q".repeat(256);
        assert!(check_name(BrokerKind::Rabbit, "queue", &long).is_err());
    }

    #[test]
    fn ordinary_names_pass() {
        let good = [
            (BrokerKind::Kafka, "topic", "orders-prod,orders.v2"),
            (BrokerKind::Nats, "subject", "orders.*.created.>"),
            (BrokerKind::Nats, "stream", "ORDERS"),
            (BrokerKind::Mqtt, "topic", "$share/g/sensors/+/temp/#"),
            (BrokerKind::Rabbit, "queue", "orders prod"),
            (BrokerKind::Redis, "stream", "orders:prod"),
        ];
        for (broker, arg, value) in good {
            assert_eq!(check_name(broker, arg, value), Ok(()), "{broker} {arg}");
        }
    }
}
