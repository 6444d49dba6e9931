//! A validated subscription: what a subscriber reads, under which policy, with which options.
//!
//! `#[subscriber]` builds one from its arguments (already checked at compile time); code that
//! does not use the macro builds one with [`Subscription::new`]. Both go through
//! [`brook_caps::resolve`], the same table the macro reads, so a policy that cannot work on a
//! source is refused either way.

use std::borrow::Cow;
use std::time::Duration;

use brook_caps::{AckPolicy, BrokerKind, Resolved, Source, Value};

use crate::error::SubscriptionError;
use crate::message::Settlement;

/// A subscriber's validated arguments.
///
/// ```
/// use brook_runtime::{AckPolicy, BrokerKind, Subscription};
/// let sub = Subscription::new(BrokerKind::Memory, "billing")
///     .arg("topic", "orders")
///     .arg("ack_policy", AckPolicy::NackOnError)
///     .arg("concurrency", 4u32)
///     .build()
///     .unwrap();
/// assert_eq!(sub.policy(), AckPolicy::NackOnError);
/// assert_eq!(sub.source_name(), "orders");
/// assert_eq!(sub.concurrency(), 4);
/// ```
#[derive(Clone, Debug)]
pub struct Subscription {
    name: Cow<'static, str>,
    broker: BrokerKind,
    args: Vec<(Cow<'static, str>, Value)>,
    resolved: Resolved,
    // Read for every message, so worked out once.
    concurrency: usize,
    max_deliveries: Option<u32>,
    on_decode_error: Settlement,
}

/// Collects arguments for a [`Subscription`].
#[derive(Clone, Debug)]
pub struct SubscriptionBuilder {
    name: Cow<'static, str>,
    broker: BrokerKind,
    args: Vec<(Cow<'static, str>, Value)>,
}

impl SubscriptionBuilder {
    /// Adds an argument, as it would be written in `#[subscriber(...)]`.
    pub fn arg(mut self, name: impl Into<Cow<'static, str>>, value: impl Into<Value>) -> Self {
        self.args.push((name.into(), value.into()));
        self
    }

    /// Validates the arguments against the capability table.
    pub fn build(self) -> Result<Subscription, SubscriptionError> {
        let borrowed: Vec<(&str, Value)> = self
            .args
            .iter()
            .map(|(n, v)| (n.as_ref(), v.clone()))
            .collect();
        match brook_caps::resolve(self.broker, &borrowed) {
            Ok(resolved) => {
                let mut sub = Subscription {
                    name: self.name,
                    broker: self.broker,
                    args: self.args,
                    resolved,
                    concurrency: 1,
                    max_deliveries: None,
                    on_decode_error: Settlement::Reject,
                };
                sub.concurrency = sub.int("concurrency").map_or(1, |n| n as usize);
                sub.max_deliveries = sub
                    .int("max_deliveries")
                    .map(|n| u32::try_from(n).unwrap_or(u32::MAX));
                if sub.str("on_decode_error") == Some("Nack") {
                    sub.on_decode_error = Settlement::NACK;
                }
                Ok(sub)
            }
            Err(source) => Err(SubscriptionError {
                subscriber: self.name.into_owned(),
                broker: self.broker,
                source,
            }),
        }
    }
}

impl Subscription {
    /// Starts a subscription named `name` (the handler's name in logs) for `broker`; finish
    /// it with [`SubscriptionBuilder::build`], which validates it.
    #[allow(clippy::new_ret_no_self)] // a subscription only exists validated: `new` starts one
    pub fn new(broker: BrokerKind, name: impl Into<Cow<'static, str>>) -> SubscriptionBuilder {
        SubscriptionBuilder {
            name: name.into(),
            broker,
            args: Vec::new(),
        }
    }

    /// What `#[subscriber]` generates: the arguments as written, validated again at run time
    /// (they were at compile time, so this cannot fail for macro-generated subscribers).
    #[doc(hidden)]
    pub fn from_macro(
        broker: BrokerKind,
        name: &'static str,
        args: &[(&'static str, Value)],
    ) -> Result<Subscription, SubscriptionError> {
        args.iter()
            .fold(Subscription::new(broker, name), |b, (n, v)| {
                b.arg(*n, v.clone())
            })
            .build()
    }

    /// The subscriber's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The broker it was declared for.
    pub fn broker(&self) -> BrokerKind {
        self.broker
    }

    /// The kind of source.
    pub fn source(&self) -> Source {
        self.resolved.source
    }

    /// The topic / queue / subject / channel / list / stream name.
    pub fn source_name(&self) -> &str {
        &self.resolved.source_name
    }

    /// The ack policy in force (written, or the source's default).
    pub fn policy(&self) -> AckPolicy {
        self.resolved.policy
    }

    /// The degradation warning, if the policy means less than its name on this source.
    pub fn warning(&self) -> Option<&str> {
        self.resolved.warning.as_deref()
    }

    /// How many messages are handled at once (default 1).
    pub fn concurrency(&self) -> usize {
        self.concurrency
    }

    /// The most deliveries a message gets before it is rejected, if set.
    pub fn max_deliveries(&self) -> Option<u32> {
        self.max_deliveries
    }

    /// What a payload that cannot be decoded gets: `Reject` unless `on_decode_error = Nack`.
    pub fn on_decode_error(&self) -> Settlement {
        self.on_decode_error
    }

    /// A string argument (`Str` or `Ident`).
    pub fn str(&self, name: &str) -> Option<&str> {
        self.value(name).and_then(Value::as_str)
    }

    /// An integer argument.
    pub fn int(&self, name: &str) -> Option<u64> {
        self.value(name).and_then(Value::as_int)
    }

    /// A boolean argument.
    pub fn bool(&self, name: &str) -> Option<bool> {
        self.value(name).and_then(Value::as_bool)
    }

    /// A duration argument given in milliseconds (`*_ms`).
    pub fn millis(&self, name: &str) -> Option<Duration> {
        self.int(name).map(Duration::from_millis)
    }

    fn value(&self, name: &str) -> Option<&Value> {
        self.args.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_what_the_macro_refuses() {
        let e = Subscription::new(BrokerKind::Redis, "h")
            .arg("channel", "c")
            .arg("ack_policy", AckPolicy::NackOnError)
            .build()
            .unwrap_err();
        let text = e.to_string();
        assert!(text.contains("subscriber `h` on Redis"), "{text}");
        assert!(text.contains("Redis pub/sub channel `c`"), "{text}");
    }

    #[test]
    fn defaults() {
        let s = Subscription::new(BrokerKind::Memory, "h")
            .arg("topic", "t")
            .build()
            .unwrap();
        assert_eq!(
            (s.concurrency(), s.max_deliveries(), s.on_decode_error()),
            (1, None, Settlement::Reject)
        );
        assert_eq!(s.policy(), AckPolicy::RejectOnError);
    }
}
