#![cfg(all(feature = "otel", feature = "nats"))]
//! OpenTelemetry trace context end to end on the local nats-server (127.0.0.1:4222): a
//! producer's span, the `brook.message` span of a handler that publishes its result, the
//! `brook.publish` producer span of that result, and the `brook.message` span of the handler
//! that consumes it are one trace, exported by an in-memory exporter; the producer's W3C
//! baggage reaches the last handler.
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
use opentelemetry::baggage::BaggageExt as _;
use opentelemetry::trace::{SpanId, SpanKind, TracerProvider as _};
use opentelemetry::KeyValue;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tokio::sync::mpsc;
use tracing::Instrument as _;
use tracing_subscriber::layer::SubscriberExt as _;

const URL: &str = "nats://127.0.0.1:4222";
const WAIT: Duration = Duration::from_secs(10);
/// The producer's baggage entry; the value needs percent-encoding.
const TENANT: &str = "acme/café=1,x";

/// What the last handler saw.
#[derive(Debug)]
struct Seen {
    body: String,
    traceparent: Option<String>,
    baggage_header: Option<String>,
    /// `tenant` in the OpenTelemetry context's baggage while the handler ran.
    tenant: Option<String>,
}

/// The last handler's receiver, by subject.
static SINKS: Mutex<Option<HashMap<String, mpsc::UnboundedSender<Seen>>>> = Mutex::new(None);

/// Forwards the order to the subject given at the mount site (`publish = _`).
#[brook::nats::subscriber(subject = _, publish = _)]
async fn relay(order: String) -> String {
    format!("relayed {order}")
}

/// The end of the chain: tells the test what arrived, with its trace headers.
#[brook::nats::subscriber(subject = _)]
async fn sink(body: String, msg: &Message) {
    let tenant = opentelemetry::Context::current()
        .baggage()
        .get("tenant")
        .map(|v| v.as_str().to_owned());
    let seen = Seen {
        body,
        traceparent: msg.headers().get("traceparent").map(str::to_owned),
        baggage_header: msg.headers().get("baggage").map(str::to_owned),
        tenant,
    };
    if let Some(tx) = SINKS
        .lock()
        .unwrap()
        .as_ref()
        .and_then(|s| s.get(msg.topic()))
    {
        let _ = tx.send(seen);
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
    /// What the sink received.
    seen: Seen,
    /// The relay's output subject.
    output: String,
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

/// Publishes from a `producer` span (with baggage) to `relay`, which publishes to `sink`;
/// returns what was exported. `context_activation` is the tracing-opentelemetry layer's
/// setting, `producer_spans` the layer's.
async fn run_chain(context_activation: bool, producer_spans: bool) -> Run {
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
        .layer(TraceContext::new().producer_spans(producer_spans))
        .subscribe(relay.subject(&input).publish(&output))
        .subscribe(sink.subject(&output))
        .start()
        .await
        .expect("nats-server on 127.0.0.1:4222");
    broker.client().await.unwrap().flush().await.unwrap();

    // The baggage is the current OpenTelemetry context's when the span begins; the guard is
    // dropped before anything is awaited (the App's tasks share this thread).
    let producer = {
        let _baggage =
            opentelemetry::Context::current_with_baggage([KeyValue::new("tenant", TENANT)])
                .attach();
        tracing::info_span!("producer")
    };
    async {
        let mut message = Outgoing::new(input.clone(), "o-1");
        otel::inject(&mut message);
        assert!(
            message.headers.get("traceparent").is_some(),
            "inject wrote the producer's context"
        );
        assert_eq!(
            message.headers.get("baggage"),
            Some("tenant=acme%2Fcaf%C3%A9%3D1%2Cx"),
            "inject wrote the producer's baggage"
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
    Run {
        spans,
        seen,
        output,
    }
}

/// One trace from the producer through the relay's span (and, with `producer_spans`, the
/// `brook.publish` span of its output) to the sink's, with the output carrying that context as
/// W3C traceparent and the producer's baggage.
fn assert_one_trace(run: &Run, producer_spans: bool) {
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

    // The output's context: the producer span of the publish, or the relay's own.
    let published = run.named("brook.publish");
    let sent_from = if producer_spans {
        assert_eq!(published.len(), 1, "one brook.publish span: {published:?}");
        let publish = published[0];
        assert_eq!(publish.span_kind, SpanKind::Producer, "{publish:?}");
        assert_eq!(publish.span_context.trace_id(), trace);
        assert_eq!(
            publish.parent_span_id,
            relayed.span_context.span_id(),
            "the publish span is the relay's child"
        );
        assert_eq!(
            attribute(publish, "messaging.destination.name").as_deref(),
            Some(run.output.as_str())
        );
        assert_eq!(
            attribute(publish, "messaging.operation.type").as_deref(),
            Some("create")
        );
        assert_eq!(attribute(publish, "kind").as_deref(), Some("output"));
        publish.span_context.span_id()
    } else {
        assert!(published.is_empty(), "no brook.publish span: {published:?}");
        relayed.span_context.span_id()
    };
    assert_eq!(sunk.parent_span_id, sent_from);
    assert!(sunk.parent_span_is_remote);

    // The output carried it as W3C traceparent, as FastStream reads it, and the baggage.
    let seen = &run.seen;
    assert_eq!(seen.body, "relayed o-1");
    assert_eq!(
        seen.traceparent.as_deref(),
        Some(format!("00-{trace}-{sent_from}-01").as_str())
    );
    assert_eq!(
        seen.baggage_header.as_deref(),
        Some("tenant=acme%2Fcaf%C3%A9%3D1%2Cx"),
        "the relay's output carried the producer's baggage"
    );
    assert_eq!(
        seen.tenant.as_deref(),
        Some(TENANT),
        "the sink's OpenTelemetry context had it"
    );

    // The layer's messaging attributes.
    assert_eq!(
        attribute(relayed, "messaging.system").as_deref(),
        Some("nats")
    );
    assert!(
        attribute(relayed, "messaging.destination.name").is_some_and(|d| d.ends_with(".orders"))
    );
    assert_eq!(
        attribute(relayed, "messaging.operation.type").as_deref(),
        Some("process")
    );
    assert_eq!(
        attribute(relayed, "messaging.message.body.size").as_deref(),
        Some("3")
    );
    for span in run.named("brook.message") {
        assert_eq!(
            span.span_kind,
            SpanKind::Consumer,
            "brook.message is a consumer span: {span:?}"
        );
    }
}

#[tokio::test(flavor = "current_thread")]
async fn one_trace_spans_producer_broker_handler_and_its_output() {
    assert_one_trace(&run_chain(true, true).await, true);
}

/// With tracing-opentelemetry's context activation off, the same.
#[tokio::test(flavor = "current_thread")]
async fn one_trace_without_context_activation_too() {
    assert_one_trace(&run_chain(false, true).await, true);
}

/// Without producer spans, the output carries the relay's own span.
#[tokio::test(flavor = "current_thread")]
async fn one_trace_without_producer_spans() {
    assert_one_trace(&run_chain(true, false).await, false);
}
