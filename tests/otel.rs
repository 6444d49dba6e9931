#![cfg(all(feature = "otel", feature = "nats"))]
//! OpenTelemetry trace context end to end on the local nats-server (127.0.0.1:4222): a
//! producer's span, the `brook.message` span of a handler that publishes its result, and the
//! `brook.message` span of the handler that consumes that result are one trace, exported by
//! an in-memory exporter.
//!
//! Each test runs on a current-thread runtime, so every task the App spawns runs on the test's
//! thread and sees the tracing subscriber the test installs there with `set_default`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use brook::nats::{NatsBroker, NatsConfig, PublishMode};
use brook::otel::{self, TraceContext};
use brook::prelude::*;
use brook::{Broker, Message, Outgoing};
use opentelemetry::trace::{SpanId, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tokio::sync::mpsc;
use tracing::Instrument as _;
use tracing_subscriber::layer::SubscriberExt as _;

const URL: &str = "nats://127.0.0.1:4222";
const WAIT: Duration = Duration::from_secs(10);

/// What the last handler saw: its subject's receiver, by subject.
type Seen = (String, Option<String>);
static SINKS: Mutex<Option<HashMap<String, mpsc::UnboundedSender<Seen>>>> = Mutex::new(None);

/// Forwards the order to the subject given at the mount site (`publish = _`).
#[brook::nats::subscriber(subject = _, publish = _)]
async fn relay(order: String) -> String {
    format!("relayed {order}")
}

/// The end of the chain: tells the test what arrived, with its `traceparent`.
#[brook::nats::subscriber(subject = _)]
async fn sink(body: String, msg: &Message) {
    let traceparent = msg.headers().get("traceparent").map(str::to_owned);
    if let Some(tx) = SINKS
        .lock()
        .unwrap()
        .as_ref()
        .and_then(|s| s.get(msg.topic()))
    {
        let _ = tx.send((body, traceparent));
    }
}

fn fresh(what: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("brook.otel.{}.{nanos}.{what}", std::process::id())
}

fn attribute(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.as_str().into_owned())
}

/// Whether `ancestor` is `span`'s parent, or its parent's, and so on, among `spans`.
fn descends_from(spans: &[SpanData], span: &SpanData, ancestor: SpanId) -> bool {
    let mut parent = span.parent_span_id;
    for _ in 0..spans.len() {
        if parent == ancestor {
            return true;
        }
        match spans.iter().find(|s| s.span_context.span_id() == parent) {
            Some(next) => parent = next.parent_span_id,
            None => return false,
        }
    }
    false
}

/// The spans exported once the producer's and both handlers' spans have ended.
struct Run {
    spans: Vec<SpanData>,
    /// What the sink received and the `traceparent` it had.
    seen: Seen,
}

impl Run {
    fn named<'a>(&'a self, name: &str) -> Vec<&'a SpanData> {
        self.spans.iter().filter(|s| s.name == name).collect()
    }

    fn message_span(&self, subscriber: &str) -> &SpanData {
        let found: Vec<_> = self
            .named("brook.message")
            .into_iter()
            .filter(|s| attribute(s, "subscriber").as_deref() == Some(subscriber))
            .collect();
        assert_eq!(found.len(), 1, "one brook.message span of `{subscriber}`");
        found[0]
    }
}

/// Publishes from a `producer` span to `relay`, which publishes to `sink`; returns what was
/// exported. `context_activation` is the tracing-opentelemetry layer's setting.
async fn run_chain(context_activation: bool) -> Run {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry().with(
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("brook-otel-test"))
            .with_context_activation(context_activation),
    );
    let _default = tracing::subscriber::set_default(subscriber);

    let input = fresh("orders");
    let output = fresh("relayed");
    let (tx, mut rx) = mpsc::unbounded_channel();
    SINKS
        .lock()
        .unwrap()
        .get_or_insert_with(HashMap::new)
        .insert(output.clone(), tx);

    let broker = NatsBroker::with_config(NatsConfig::new(URL).publish_mode(PublishMode::Core));
    let app = App::new(broker.clone())
        .layer(TraceContext::new())
        .subscribe(relay.subject(&input).publish(&output))
        .subscribe(sink.subject(&output))
        .start()
        .await
        .expect("nats-server on 127.0.0.1:4222");
    broker.client().await.unwrap().flush().await.unwrap();

    let producer = tracing::info_span!("producer");
    async {
        let mut message = Outgoing::new(input.clone(), "o-1");
        otel::inject(&mut message);
        assert!(
            message.headers.get("traceparent").is_some(),
            "inject wrote the producer's context"
        );
        broker.publish_message(message).await.unwrap();
    }
    .instrument(producer.clone())
    .await;
    drop(producer);

    let seen = tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("the sink handled the relayed message in time")
        .expect("channel open");

    // The sink's span ends just after it returns: wait (bounded) until both are exported.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let spans = exporter.get_finished_spans().unwrap();
        if spans.iter().filter(|s| s.name == "brook.message").count() >= 2 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "brook.message spans not exported in time: {:?}",
            spans.iter().map(|s| &s.name).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    app.stop().await.unwrap();
    provider.force_flush().unwrap();
    let spans = exporter.get_finished_spans().unwrap();
    provider.shutdown().unwrap();
    Run { spans, seen }
}

/// One trace from the producer through the relay's span to the sink's, with the relay's output
/// carrying its context as W3C traceparent.
fn assert_one_trace(run: &Run) {
    let producer = run.named("producer");
    assert_eq!(producer.len(), 1, "one producer span");
    let producer = producer[0];
    let trace = producer.span_context.trace_id();
    let relayed = run.message_span("relay");
    let sunk = run.message_span("sink");

    for span in run.named("brook.message") {
        assert_eq!(
            span.span_context.trace_id(),
            trace,
            "every brook.message span is in the producer's trace: {span:?}"
        );
    }
    assert_eq!(
        relayed.parent_span_id,
        producer.span_context.span_id(),
        "the relay's span is the producer's child"
    );
    assert!(
        relayed.parent_span_is_remote,
        "its parent came over the wire"
    );
    assert!(
        descends_from(&run.spans, sunk, relayed.span_context.span_id()),
        "the sink's span descends from the relay's: {sunk:?}"
    );
    assert_eq!(sunk.parent_span_id, relayed.span_context.span_id());

    // The output carried the relay's span as W3C traceparent, as FastStream reads it.
    let (body, traceparent) = &run.seen;
    assert_eq!(body, "relayed o-1");
    assert_eq!(
        traceparent.as_deref(),
        Some(format!("00-{}-{}-01", trace, relayed.span_context.span_id()).as_str())
    );

    // The layer's messaging attributes.
    assert_eq!(
        attribute(relayed, "messaging.system").as_deref(),
        Some("nats")
    );
    assert!(
        attribute(relayed, "messaging.destination.name").is_some_and(|d| d.ends_with(".orders"))
    );
}

#[tokio::test(flavor = "current_thread")]
async fn one_trace_spans_producer_broker_handler_and_its_output() {
    assert_one_trace(&run_chain(true).await);
}

/// With tracing-opentelemetry's context activation off, the same.
#[tokio::test(flavor = "current_thread")]
async fn one_trace_without_context_activation_too() {
    assert_one_trace(&run_chain(false).await);
}
