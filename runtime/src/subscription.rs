//! A validated subscription: what a subscriber reads, under which policy, with which options.
//!
//! `#[subscriber]` builds one from its arguments (already checked at compile time, except the
//! names that come from expressions or the mount site); code that does not use the macro builds
//! one with [`Subscription::new`]. Both go through [`brook_caps::resolve`], the same table the
//! macro reads, so a policy that cannot work on a source, or a name the broker refuses, is
//! refused either way — by `App::start` at the latest, never at the first message.

use std::borrow::Cow;

use brook_caps::{AckPolicy, ArgError, BrokerKind, Options, Resolved, Source, Value};

use crate::error::{BrokerError, SubscriptionError};
use crate::health::SharedHealth;
use crate::layer::Layers;
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
    resolved: Resolved,
    // Read for every message, so worked out once.
    concurrency: usize,
    max_deliveries: Option<u32>,
    on_decode_error: Settlement,
    output: Option<OutputTarget>,
    reply: bool,
    // Set by the App when it starts the subscriber.
    layers: Layers,
    health: SharedHealth,
}

/// Where a subscriber publishes its handler's result (`publish = "..."`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutputTarget {
    /// The topic / exchange / subject / channel / list / stream.
    pub destination: String,
    /// The broker it is on (`publish_broker`, or the input's).
    pub broker: BrokerKind,
}

/// Collects arguments for a [`Subscription`]; [`build`](SubscriptionBuilder::build) validates.
#[derive(Clone, Debug)]
pub struct SubscriptionBuilder {
    name: Cow<'static, str>,
    broker: BrokerKind,
    args: Vec<(Cow<'static, str>, Value)>,
    // Mount-site names that could not be applied, reported by `build`.
    refused: Vec<ArgError>,
}

impl SubscriptionBuilder {
    /// Adds an argument, as it would be written in `#[subscriber(...)]`.
    pub fn arg(mut self, name: impl Into<Cow<'static, str>>, value: impl Into<Value>) -> Self {
        self.args.push((name.into(), value.into()));
        self
    }

    /// Gives the name argument `name`, declared `name = _` in the attribute, its value (what
    /// [`Mount`](crate::Mount)'s methods call). Setting a name the attribute did not leave open
    /// is refused by [`build`](Self::build); use [`override_name`](Self::override_name) to say
    /// that you mean to replace it.
    pub fn mount(mut self, name: &str, value: impl Into<String>) -> Self {
        let value = value.into();
        match self.args.iter_mut().find(|(n, _)| n == name) {
            Some((_, slot @ Value::AtMount)) => *slot = Value::from(value),
            Some((_, fixed)) => {
                let fixed = fixed.to_string();
                self.refused.push(ArgError {
                    argument: None,
                    message: format!(
                        "`{name}` is fixed by the attribute ({name} = {fixed}), so it cannot be set to {value:?} where the subscriber is mounted; write {name} = _ in the attribute to leave it open, or use .override_name(\"{name}\", ...) to replace it on purpose"
                    ),
                });
            }
            None => self.refused.push(ArgError {
                argument: None,
                message: format!(
                    "`{name}` is not declared by the attribute, so it cannot be set to {value:?} where the subscriber is mounted; declare it as {name} = _ (what the compile-time checks see must be in the attribute)"
                ),
            }),
        }
        self
    }

    /// Replaces a name argument the attribute fixed (or left open), on purpose: for a name
    /// that only this deployment spells differently. The argument must be declared.
    pub fn override_name(mut self, name: &str, value: impl Into<String>) -> Self {
        let value = value.into();
        match self.args.iter_mut().find(|(n, _)| n == name) {
            Some((_, slot @ (Value::AtMount | Value::Str(_) | Value::Deferred(_)))) => {
                *slot = Value::from(value)
            }
            _ => self.refused.push(ArgError {
                argument: None,
                message: format!(
                    "`{name}` is not a name declared by the attribute, so .override_name(\"{name}\", {value:?}) has nothing to replace"
                ),
            }),
        }
        self
    }

    /// The subscriber's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Validates the arguments against the capability table.
    pub fn build(self) -> Result<Subscription, SubscriptionError> {
        let error = |source| SubscriptionError {
            subscriber: self.name.to_string(),
            broker: self.broker,
            source,
        };
        if let Some(first) = self.refused.first() {
            return Err(error(first.clone()));
        }
        if let Some((open, _)) = self.args.iter().find(|(_, v)| *v == Value::AtMount) {
            return Err(error(ArgError {
                argument: None,
                message: format!(
                    "`{open} = _` is left to the mount site, but no value was given: mount it as {}.{open}(...) (or .name(\"{open}\", ...))",
                    self.name
                ),
            }));
        }
        let borrowed: Vec<(&str, Value)> = self
            .args
            .iter()
            .map(|(n, v)| (n.as_ref(), v.clone()))
            .collect();
        let resolved = brook_caps::resolve(self.broker, &borrowed).map_err(error)?;
        let value = |name: &str| borrowed.iter().find(|(n, _)| *n == name).map(|(_, v)| v);
        let concurrency = value("concurrency")
            .and_then(Value::as_int)
            .map_or(1, |n| usize::try_from(n).unwrap_or(usize::MAX));
        let max_deliveries = value("max_deliveries")
            .and_then(Value::as_int)
            .map(|n| u32::try_from(n).unwrap_or(u32::MAX));
        let on_decode_error = match value("on_decode_error").and_then(Value::as_str) {
            Some("Nack") => Settlement::NACK,
            _ => Settlement::Reject,
        };
        let output = value("publish")
            .and_then(Value::as_str)
            .map(|destination| OutputTarget {
                destination: destination.to_owned(),
                broker: brook_caps::output_broker(self.broker, &borrowed),
            });
        let reply = value("reply").and_then(Value::as_bool).unwrap_or(true);
        Ok(Subscription {
            name: self.name,
            broker: self.broker,
            resolved,
            concurrency,
            max_deliveries,
            on_decode_error,
            output,
            reply,
            layers: Layers::default(),
            health: SharedHealth::default(),
        })
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
            refused: Vec::new(),
        }
    }

    /// What `#[subscriber]` generates: the arguments as written, names from expressions
    /// evaluated; validated when the App is built.
    #[doc(hidden)]
    pub fn from_macro(
        broker: BrokerKind,
        name: &'static str,
        args: impl IntoIterator<Item = (&'static str, Value)>,
    ) -> SubscriptionBuilder {
        SubscriptionBuilder {
            name: Cow::Borrowed(name),
            broker,
            args: args
                .into_iter()
                .map(|(n, v)| (Cow::Borrowed(n), v))
                .collect(),
            refused: Vec::new(),
        }
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

    /// The warnings the macro gives at compile time (a degraded policy, `max_deliveries` where
    /// nothing counts deliveries), for the App to log at start.
    pub fn warnings(&self) -> impl Iterator<Item = &str> {
        self.resolved
            .warning
            .iter()
            .chain(&self.resolved.max_deliveries_warning)
            .map(String::as_str)
    }

    /// The broker's typed options ([`Options::kafka`], [`Options::rabbit`], ...).
    pub fn options(&self) -> &Options {
        &self.resolved.options
    }

    /// The error for a broker asked to serve a subscription declared for another broker (its
    /// [`options`](Self::options) are not that broker's).
    pub fn declared_for_another(&self, broker: BrokerKind) -> BrokerError {
        BrokerError::Invalid {
            broker,
            message: format!(
                "subscriber `{}` is declared for {}, not {}",
                self.name,
                self.broker.display_name(),
                broker.display_name()
            ),
        }
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

    /// Where the handler's result is published (`publish`, `publish_broker`), if anywhere.
    pub fn output(&self) -> Option<&OutputTarget> {
        self.output.as_ref()
    }

    /// Whether the handler's result is published to a message's `reply_to` (`reply`, default
    /// true).
    pub fn replies(&self) -> bool {
        self.reply
    }

    /// The layers its messages go through (the App's, then its own).
    pub(crate) fn layers(&self) -> &Layers {
        &self.layers
    }

    pub(crate) fn set_layers(&mut self, layers: Layers) {
        self.layers = layers;
    }

    /// The subscription with these layers around its handler, for code that drives
    /// [`engine::process`](crate::engine::process) itself (benchmarks); an App sets them from
    /// `App::layer` and `.layer(..)`.
    #[doc(hidden)]
    pub fn with_layers(mut self, layers: Vec<std::sync::Arc<dyn crate::Layer>>) -> Self {
        self.layers = Layers::new(layers);
        self
    }

    pub(crate) fn health(&self) -> &SharedHealth {
        &self.health
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

    #[test]
    fn names_left_open_take_the_mount_site_value_and_nothing_else() {
        let open = || {
            Subscription::new(BrokerKind::Kafka, "bill")
                .arg("topic", Value::AtMount)
                .arg("group_id", "billing")
        };
        let s = open().mount("topic", "orders-prod").build().unwrap();
        assert_eq!(s.source_name(), "orders-prod");
        assert_eq!(
            s.options().kafka().map(|k| k.topics.clone()),
            Some(vec!["orders-prod".to_owned()])
        );

        let e = open().build().unwrap_err().to_string();
        assert!(
            e.contains("`topic = _`") && e.contains("bill.topic(...)"),
            "{e}"
        );

        let e = open()
            .mount("topic", "t")
            .mount("group_id", "other")
            .build()
            .unwrap_err()
            .to_string();
        assert!(e.contains("`group_id` is fixed by the attribute"), "{e}");
        let s = open()
            .mount("topic", "t")
            .override_name("group_id", "other")
            .build()
            .unwrap();
        assert_eq!(
            s.options().kafka().and_then(|k| k.group_id.clone()),
            Some("other".to_owned())
        );
    }

    #[test]
    fn run_time_names_are_checked_like_literals() {
        let e = Subscription::new(BrokerKind::Nats, "h")
            .arg("subject", String::from("orders created"))
            .build()
            .unwrap_err()
            .to_string();
        assert!(e.contains("subscriber `h` on NATS"), "{e}");
        assert!(e.contains("`subject = \"orders created\"`"), "{e}");
        assert!(e.contains("whitespace"), "{e}");
    }
}
