#![cfg(all(feature = "otel", feature = "rabbit"))]
//! Trace context between brook and the real FastStream 0.7.8 (`RabbitTelemetryMiddleware`,
//! OpenTelemetry Python's SDK with an in-memory exporter) on the local RabbitMQ, both ways:
//!
//! - FastStream publishes inside a span of its own; brook's `brook.message` span (from the
//!   Rust in-memory exporter) is in FastStream's trace, the child of the span FastStream sent
//!   as `traceparent`, and the handler sees FastStream's W3C baggage;
//! - a producer span in the test publishes to a brook handler whose output goes to a
//!   FastStream subscriber: FastStream's consumer span is in the producer's trace, the child of
//!   brook's `brook.publish` span, and FastStream reads the baggage.
//!
//! Needs `scripts/faststream.sh` (FastStream with its `otel` extra and opentelemetry-sdk).
//! Queue names are fresh per test; the ones brook consumes expire when unused, FastStream's
//! are auto-delete. Each test runs on a current-thread runtime, so the App's tasks see the
//! tracing subscriber installed with `set_default`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use brook::otel::{self, TraceContext};
use brook::prelude::*;
use brook::rabbit::lapin::options::QueueDeclareOptions;
use brook::rabbit::lapin::types::{AMQPValue, FieldTable};
use brook::rabbit::lapin::{Connection, ConnectionProperties};
use brook::rabbit::{subscriber, RabbitBroker};
use brook::{Broker, Message, Outgoing};
use brook_runtime::interop::FastStream;
use opentelemetry::baggage::BaggageExt as _;
use opentelemetry::trace::{SpanKind, TracerProvider as _};
use opentelemetry::KeyValue;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tracing::Instrument as _;
use tracing_subscriber::layer::SubscriberExt as _;

const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// The longest a test waits for anything.
const WAIT: Duration = Duration::from_secs(30);
/// Queues brook consumes disappear this long after their last use.
const EXPIRES_MS: i64 = 10 * 60 * 1000;
/// The baggage entry each side sends; the value needs percent-encoding (and has no space or
/// `+`, which OpenTelemetry Python writes and reads differently from the W3C specification).
const TENANT: &str = "acme/café=1,x";

#[derive(Debug, Deserialize, Serialize)]
struct Order {
    n: u64,
}

/// What `record` saw.
#[derive(Debug)]
struct Seen {
    n: u64,
    traceparent: Option<String>,
    /// `tenant` in the OpenTelemetry context's baggage while the handler ran.
    tenant: Option<String>,
}

static SEEN: Mutex<Option<HashMap<String, mpsc::UnboundedSender<Seen>>>> = Mutex::new(None);

/// Tells the test what arrived from FastStream.
#[subscriber(queue = _, declare = false)]
async fn record(order: Order, msg: &Message) {
    let seen = Seen {
        n: order.n,
        traceparent: msg.headers().get("traceparent").map(str::to_owned),
        tenant: opentelemetry::Context::current()
            .baggage()
            .get("tenant")
            .map(|v| v.as_str().to_owned()),
    };
    if let Some(tx) = SEEN
        .lock()
        .unwrap()
        .as_ref()
        .and_then(|s| s.get(msg.topic()))
    {
        let _ = tx.send(seen);
    }
}

/// Doubles the order, to the queue given at the mount site.
#[subscriber(queue = _, declare = false, publish = _)]
async fn relay(order: Order) -> Order {
    Order { n: order.n * 2 }
}

fn fresh(what: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("brook-test-otel-{what}-{}-{nanos}", std::process::id())
}

/// Declares `queue` (durable, expiring when unused) for brook to consume.
async fn declare(queue: &str) {
    let connection = Connection::connect(URL, ConnectionProperties::default())
        .await
        .expect("RabbitMQ on 127.0.0.1:5672");
    let channel = connection.create_channel().await.expect("channel");
    let mut args = FieldTable::default();
    args.insert("x-expires".into(), AMQPValue::LongLongInt(EXPIRES_MS));
    let options = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .queue_declare(queue.into(), options, args)
        .await
        .expect("declare the test queue");
    connection.close(0, "declared".into()).await.ok();
}

/// A tracer provider exporting to memory, installed for this thread.
struct Tracing {
    exporter: InMemorySpanExporter,
    provider: SdkTracerProvider,
    _default: tracing::subscriber::DefaultGuard,
}

impl Tracing {
    fn install() -> Tracing {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("brook-interop")));
        Tracing {
            exporter,
            provider,
            _default: tracing::subscriber::set_default(subscriber),
        }
    }

    /// The finished spans, once `ready` says they are all there (bounded).
    async fn spans_when(&self, ready: impl Fn(&[SpanData]) -> bool) -> Vec<SpanData> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let spans = self.exporter.get_finished_spans().unwrap();
            if ready(&spans) {
                return spans;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "spans not exported in time: {:?}",
                spans.iter().map(|s| &s.name).collect::<Vec<_>>()
            );
            // The exporter has no notification; spans end right after the handler's work.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn attribute(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.as_str().into_owned())
}

fn count(spans: &[SpanData], name: &str) -> usize {
    spans.iter().filter(|s| s.name == name).count()
}

fn one<'a>(spans: &'a [SpanData], name: &str) -> &'a SpanData {
    let found: Vec<_> = spans.iter().filter(|s| s.name == name).collect();
    assert_eq!(found.len(), 1, "one `{name}` span: {found:?}");
    found[0]
}

/// The span of FastStream's `spans` named `name`.
fn python_span<'a>(spans: &'a [Value], name: &str) -> &'a Value {
    spans
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("FastStream exported no `{name}` span: {spans:?}"))
}

#[tokio::test(flavor = "current_thread")]
async fn faststream_s_trace_continues_in_a_brook_handler() {
    let tracing = Tracing::install();
    let queue = fresh("from-faststream");
    declare(&queue).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    SEEN.lock()
        .unwrap()
        .get_or_insert_with(HashMap::new)
        .insert(queue.clone(), tx);
    let broker = RabbitBroker::new(URL);
    let app = App::new(broker.clone())
        .layer(TraceContext::new())
        .subscribe(record.queue(&queue))
        .start()
        .await
        .expect("App starts");

    let correlation_id = fresh("cid");
    let message_id = fresh("mid");
    let mut fs = FastStream::spawn(
        include_str!("faststream_otel_publisher.py"),
        &[&queue, &correlation_id, &message_id, TENANT],
    );
    let python = fs.next(WAIT).await;
    fs.finish(WAIT).await;
    let seen = tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("brook handled FastStream's message in time")
        .expect("channel open");
    let spans = tracing.spans_when(|s| count(s, "brook.message") >= 1).await;
    app.stop().await.unwrap();
    broker.close().await.unwrap();
    tracing.provider.shutdown().unwrap();

    // FastStream's spans: its producer span, then (FastStream's way outside a handler) a
    // `create` producer span whose context it sends, and the `publish` span.
    let python_spans = python["spans"].as_array().expect("spans").as_slice();
    let producer = python_span(python_spans, "fs-producer");
    let create = python_span(python_spans, &format!("default.{queue} create"));
    assert_eq!(create["kind"], "PRODUCER", "{create}");
    assert_eq!(create["parent_span_id"], producer["span_id"], "{create}");
    let trace_id = producer["trace_id"].as_str().unwrap();
    let create_id = create["span_id"].as_str().unwrap();

    assert_eq!(seen.n, 1);
    // Flags: sampled, and OpenTelemetry Python also sets W3C level 2's "random trace id" bit.
    let traceparent = seen.traceparent.as_deref().unwrap_or_default();
    assert!(
        traceparent.starts_with(&format!("00-{trace_id}-{create_id}-"))
            && (traceparent.ends_with("-01") || traceparent.ends_with("-03")),
        "FastStream sent its create span as traceparent: {traceparent}"
    );

    let handled = one(&spans, "brook.message");
    assert_eq!(
        handled.span_context.trace_id().to_string(),
        trace_id,
        "brook's span is in FastStream's trace: {handled:?}"
    );
    assert_eq!(
        handled.parent_span_id.to_string(),
        create_id,
        "brook's span is the child of the span FastStream sent: {handled:?}"
    );
    assert!(handled.parent_span_is_remote);
    for (key, value) in [
        ("messaging.system", "rabbitmq"),
        ("messaging.destination.name", queue.as_str()),
        ("messaging.operation.type", "process"),
        ("messaging.message.id", message_id.as_str()),
        ("messaging.message.conversation_id", correlation_id.as_str()),
    ] {
        assert_eq!(
            attribute(handled, key).as_deref(),
            Some(value),
            "{key} of {handled:?}"
        );
    }
    assert_eq!(
        seen.tenant.as_deref(),
        Some(TENANT),
        "the handler's OpenTelemetry context has FastStream's baggage"
    );
    assert_eq!(handled.span_kind, SpanKind::Consumer, "{handled:?}");
}

#[tokio::test(flavor = "current_thread")]
async fn brook_s_trace_continues_in_a_faststream_subscriber() {
    let tracing = Tracing::install();
    let input = fresh("to-relay");
    let output = fresh("to-faststream");
    declare(&input).await;
    let mut fs = FastStream::spawn(include_str!("faststream_otel_subscriber.py"), &[&output]);
    assert_eq!(fs.next(WAIT).await, json!({"ready": true}));

    let broker = RabbitBroker::new(URL);
    let app = App::new(broker.clone())
        .layer(TraceContext::new())
        .subscribe(relay.queue(&input).publish(&output))
        .start()
        .await
        .expect("App starts");

    // A producer with baggage, outside the App: `otel::inject` writes its context.
    let producer = {
        let _baggage =
            opentelemetry::Context::current_with_baggage([KeyValue::new("tenant", TENANT)])
                .attach();
        tracing::info_span!("producer")
    };
    async {
        let mut message = Outgoing::encode(&Order { n: 21 }, &input).unwrap();
        otel::inject(&mut message);
        broker.publish_message(message).await.unwrap();
    }
    .instrument(producer)
    .await;

    let consumed = fs.next(WAIT).await;
    fs.finish(WAIT).await;
    assert_eq!(consumed["body"], json!({"n": 42}), "{consumed}");

    // The producer's span ended with its publish; brook's end after the output is confirmed.
    let spans = tracing.spans_when(|s| count(s, "producer") >= 1).await;
    let trace_id = one(&spans, "producer").span_context.trace_id().to_string();
    assert_eq!(
        consumed["trace_id"],
        json!(trace_id),
        "FastStream's consumer span is in brook's trace: {consumed}"
    );
    let spans = tracing
        .spans_when(|s| count(s, "brook.message") >= 1 && count(s, "brook.publish") >= 1)
        .await;
    app.stop().await.unwrap();
    broker.close().await.unwrap();
    tracing.provider.shutdown().unwrap();

    let producer = one(&spans, "producer");
    let relayed = one(&spans, "brook.message");
    let published = one(&spans, "brook.publish");
    assert_eq!(relayed.parent_span_id, producer.span_context.span_id());
    assert_eq!(published.parent_span_id, relayed.span_context.span_id());
    assert_eq!(published.span_kind, SpanKind::Producer, "{published:?}");
    let publish_id = published.span_context.span_id().to_string();
    assert_eq!(
        consumed["parent_span_id"],
        json!(publish_id),
        "FastStream's consumer span is the child of brook's producer span: {consumed}"
    );
    assert_eq!(
        consumed["traceparent"],
        json!(format!("00-{trace_id}-{publish_id}-01")),
        "{consumed}"
    );
    assert_eq!(consumed["parent_is_remote"], json!(true), "{consumed}");
    assert_eq!(consumed["kind"], "CONSUMER", "{consumed}");
    assert_eq!(
        consumed["name"],
        json!(format!("default.{output} process")),
        "{consumed}"
    );
    assert_eq!(
        consumed["baggage"],
        json!({"tenant": TENANT}),
        "FastStream read brook's baggage: {consumed}"
    );
    assert_eq!(relayed.span_kind, SpanKind::Consumer, "{relayed:?}");
}
