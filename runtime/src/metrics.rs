//! Prometheus metrics as a ready [`Layer`] (feature `prometheus`).
//!
//! ```
//! use brook_runtime::metrics::Metrics;
//! use brook_runtime::{App, MemoryBroker};
//!
//! let metrics = Metrics::new();
//! let app = App::new(MemoryBroker::new()).layer(metrics.clone());
//! // Serve `metrics.encode()` at /metrics (see `examples/metrics.rs` for an axum endpoint).
//! assert!(metrics.encode().ends_with("# EOF\n"));
//! ```
//!
//! Built on [`prometheus-client`](https://docs.rs/prometheus-client), the Prometheus project's
//! own Rust client: an explicit registry instead of process-global state (two Apps in one
//! process, or tests in parallel, never mix their numbers), typed label sets, and OpenMetrics
//! text output. Use [`Metrics::register`] to add brook's metrics to a registry you already
//! serve.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `brook_messages_received_total` | counter | broker, subscriber, source |
//! | `brook_messages_handled_total` | counter | broker, subscriber, source, outcome (`acked`, `nacked`, `rejected`, `unsettled`, `settle_failed`, `cancelled`, `superseded`) |
//! | `brook_decode_failures_total` | counter | broker, subscriber, source |
//! | `brook_redeliveries_total` | counter | broker, subscriber, source (deliveries after the first, where the broker counts) |
//! | `brook_handler_duration_seconds` | histogram | broker, subscriber, source (the handler and the layers inside this one, outputs excluded) |
//! | `brook_messages_in_flight` | gauge | broker, subscriber, source |
//! | `brook_published_total` | counter | broker, kind (`output`, `reply`, `publisher`), result (`ok`, `error`) |
//! | `brook_publish_duration_seconds` | histogram | broker, kind |
//!
//! Cardinality is bounded: labels name brokers, subscribers and their sources, never message
//! ids or publish destinations (a reply's destination is a one-off inbox). Per message, the
//! layer does one map lookup by subscriber and a few atomic operations.

use std::sync::{Arc, OnceLock, PoisonError, RwLock};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::engine::Outcome;
use crate::error::ExtractError;
use crate::handler::{HandlerError, HandlerResult};
use crate::layer::{BoxFuture, Delivery, Layer, Next, PublishKind, Published};
use crate::message::Settled;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SubscriberLabels {
    broker: String,
    subscriber: String,
    source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    broker: String,
    subscriber: String,
    source: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PublishLabels {
    broker: String,
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PublishResultLabels {
    broker: String,
    kind: String,
    result: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn handler_buckets() -> Histogram {
    // 0.5 ms .. ~16 s
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// The metric families, registered once.
struct Families {
    received: Family<SubscriberLabels, Counter>,
    handled: Family<OutcomeLabels, Counter>,
    decode_failures: Family<SubscriberLabels, Counter>,
    redeliveries: Family<SubscriberLabels, Counter>,
    duration: HistogramFamily<SubscriberLabels>,
    in_flight: Family<SubscriberLabels, Gauge>,
    published: Family<PublishResultLabels, Counter>,
    publish_duration: HistogramFamily<PublishLabels>,
}

/// One subscriber's metrics, looked up once and then shared.
struct SubscriberMetrics {
    labels: SubscriberLabels,
    received: Counter,
    decode_failures: Counter,
    redeliveries: Counter,
    duration: Histogram,
    in_flight: Gauge,
    /// Outcome counters by [`outcome_index`], created on first use.
    handled: [OnceLock<Counter>; OUTCOMES],
}

const OUTCOMES: usize = 7;

/// Each subscriber's metrics, by the address of its `Subscription`.
type BySubscriber = Vec<(usize, Arc<SubscriberMetrics>)>;

fn outcome_index(outcome: Outcome) -> usize {
    match outcome {
        Outcome::Settled(Settled::Acked) => 0,
        Outcome::Settled(Settled::Nacked) => 1,
        Outcome::Settled(Settled::Rejected) => 2,
        Outcome::Unsettled => 3,
        Outcome::Cancelled => 4,
        Outcome::SettleFailed => 5,
        Outcome::Superseded => 6,
    }
}

/// brook's Prometheus metrics, and the [`Layer`] that records them. Cheap to clone (clones
/// share the metrics): add it to the App with `.layer(metrics.clone())` and serve
/// [`encode`](Metrics::encode).
#[derive(Clone)]
pub struct Metrics {
    families: Arc<Families>,
    // By the address of the subscriber's `Subscription`, which lives as long as its App; a
    // short list scanned per message is cheaper than hashing the name.
    by_subscriber: Arc<RwLock<BySubscriber>>,
    // Set when brook made the registry (`new`), so that `encode` can serve it.
    registry: Option<Arc<Registry>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// brook's metrics in a registry of their own, served by [`encode`](Metrics::encode).
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let mut metrics = Metrics::register(&mut registry);
        metrics.registry = Some(Arc::new(registry));
        metrics
    }

    /// brook's metrics, registered in `registry` (to serve them with your own metrics, encode
    /// that registry).
    pub fn register(registry: &mut Registry) -> Self {
        let families = Families {
            received: Family::default(),
            handled: Family::default(),
            decode_failures: Family::default(),
            redeliveries: Family::default(),
            duration: Family::new_with_constructor(handler_buckets),
            in_flight: Family::default(),
            published: Family::default(),
            publish_duration: Family::new_with_constructor(handler_buckets),
        };
        let brook = registry.sub_registry_with_prefix("brook");
        brook.register(
            "messages_received",
            "Messages received by a subscriber",
            families.received.clone(),
        );
        brook.register(
            "messages_handled",
            "Messages the engine is done with, by outcome",
            families.handled.clone(),
        );
        brook.register(
            "decode_failures",
            "Payloads that could not be decoded for the handler",
            families.decode_failures.clone(),
        );
        brook.register(
            "redeliveries",
            "Deliveries after the first, where the broker counts deliveries",
            families.redeliveries.clone(),
        );
        brook.register(
            "handler_duration_seconds",
            "Time spent in the handler",
            families.duration.clone(),
        );
        brook.register(
            "messages_in_flight",
            "Messages received and not yet settled",
            families.in_flight.clone(),
        );
        brook.register(
            "published",
            "Outputs, replies and Publisher publishes, by result",
            families.published.clone(),
        );
        brook.register(
            "publish_duration_seconds",
            "Time to publish (and have confirmed) an output, reply or Publisher publish",
            families.publish_duration.clone(),
        );
        Metrics {
            families: Arc::new(families),
            by_subscriber: Arc::default(),
            registry: None,
        }
    }

    /// The metrics in the OpenMetrics text format, for a `/metrics` endpoint
    /// (content type [`CONTENT_TYPE`]). Empty for metrics made with
    /// [`register`](Metrics::register): encode your registry then.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        if let Some(registry) = &self.registry {
            // Writing to a String cannot fail.
            let _ = prometheus_client::encoding::text::encode(&mut text, registry);
        }
        text
    }

    fn subscriber(&self, delivery: &Delivery<'_>) -> Arc<SubscriberMetrics> {
        let key = std::ptr::from_ref(delivery.subscription()) as usize;
        let found = self
            .by_subscriber
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, m)| m.clone());
        if let Some(found) = found {
            return found;
        }
        let labels = SubscriberLabels {
            broker: delivery.broker().name().to_owned(),
            subscriber: delivery.subscriber().to_owned(),
            source: delivery.subscription().source_name().to_owned(),
        };
        let f = &self.families;
        let metrics = Arc::new(SubscriberMetrics {
            received: f.received.get_or_create_owned(&labels),
            decode_failures: f.decode_failures.get_or_create_owned(&labels),
            redeliveries: f.redeliveries.get_or_create_owned(&labels),
            duration: f.duration.get_or_create_owned(&labels),
            in_flight: f.in_flight.get_or_create_owned(&labels),
            handled: Default::default(),
            labels,
        });
        let mut all = self
            .by_subscriber
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        match all.iter().find(|(k, _)| *k == key) {
            Some((_, m)) => m.clone(),
            None => {
                all.push((key, metrics.clone()));
                metrics
            }
        }
    }
}

/// The content type of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

fn outcome_label(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Settled(settled) => settled.as_str(),
        Outcome::Unsettled => "unsettled",
        Outcome::Cancelled => "cancelled",
        Outcome::SettleFailed => "settle_failed",
        Outcome::Superseded => "superseded",
    }
}

impl Layer for Metrics {
    fn received(&self, delivery: Delivery<'_>) {
        let m = self.subscriber(&delivery);
        m.received.inc();
        m.in_flight.inc();
        // Each delivery after the first is one redelivery.
        if delivery.delivery_count().is_some_and(|n| n > 1) {
            m.redeliveries.inc();
        }
    }

    fn call<'a>(&'a self, delivery: Delivery<'a>, next: Next<'a>) -> BoxFuture<'a, HandlerResult> {
        Box::pin(async move {
            let started = Instant::now();
            let result = next.run().await;
            let m = self.subscriber(&delivery);
            m.duration.observe(started.elapsed().as_secs_f64());
            if matches!(result, Err(HandlerError::Extract(ref e)) if is_decode(e)) {
                m.decode_failures.inc();
            }
            result
        })
    }

    fn settled(&self, delivery: Delivery<'_>, outcome: Outcome, _: Duration) {
        let m = self.subscriber(&delivery);
        m.in_flight.dec();
        let label = outcome_label(outcome);
        m.handled[outcome_index(outcome)]
            .get_or_init(|| {
                self.families.handled.get_or_create_owned(&OutcomeLabels {
                    broker: m.labels.broker.clone(),
                    subscriber: m.labels.subscriber.clone(),
                    source: m.labels.source.clone(),
                    outcome: label.to_owned(),
                })
            })
            .inc();
    }

    fn published(&self, event: &Published<'_>) {
        let kind = match event.kind {
            PublishKind::Output => "output",
            PublishKind::Reply => "reply",
            PublishKind::Publisher => "publisher",
        };
        let broker = event.broker.name().to_owned();
        self.families
            .publish_duration
            .get_or_create(&PublishLabels {
                broker: broker.clone(),
                kind: kind.to_owned(),
            })
            .observe(event.elapsed.as_secs_f64());
        self.families
            .published
            .get_or_create(&PublishResultLabels {
                broker,
                kind: kind.to_owned(),
                result: if event.error.is_none() { "ok" } else { "error" }.to_owned(),
            })
            .inc();
    }
}

fn is_decode(error: &ExtractError) -> bool {
    matches!(
        error,
        ExtractError::Decode { .. }
            | ExtractError::UnsupportedContentType(_)
            | ExtractError::NotUtf8(_)
    )
}
