//! OpenTelemetry trace context across brokers (feature `otel`).
//!
//! A trace that starts in a producer continues through the broker into the handler and on
//! into what the handler publishes: the W3C Trace Context headers `traceparent` and
//! `tracestate`, and the W3C Baggage header `baggage` (the names FastStream's
//! `TelemetryMiddleware` reads and writes, so traces cross between brook and FastStream
//! services both ways) travel in the message headers.
//!
//! - [`TraceContext`] is a [`Layer`]: it makes the context read from a delivery's headers the
//!   parent of the `brook.message` span the handler runs in (a consumer span with messaging
//!   attributes), and writes the current context into every output, reply and
//!   [`Publisher`](crate::Publisher) publish of the App, through a `brook.publish` producer
//!   span.
//! - [`inject`] writes the current context into a message published outside handlers (a
//!   producer calling `broker.publish_message`); [`extract`] reads one from headers.
//!
//! Spans are `tracing` spans; they become OpenTelemetry spans through
//! [`tracing_opentelemetry`]'s layer, which the application installs with its tracer provider
//! (its default settings work: the parent is set in [`Layer::span`], before the engine enters
//! the span). See `docs/tracing.md` for a complete setup.
//!
//! ```
//! use brook_runtime::otel::{self, TraceContext};
//! use brook_runtime::{App, MemoryBroker, Outgoing};
//!
//! let app = App::new(MemoryBroker::new()).layer(TraceContext::new());
//!
//! // A producer outside the App: the current span's context goes into the headers.
//! let mut message = Outgoing::new("orders", "{}");
//! otel::inject(&mut message);
//! # let _ = app;
//! ```

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use brook_caps::BrokerKind;
use opentelemetry::baggage::{Baggage, BaggageExt as _};
use opentelemetry::context::FutureExt as _;
use opentelemetry::propagation::text_map_propagator::FieldIter;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState,
};
use opentelemetry::Context;
use tracing_opentelemetry::{OpenTelemetrySpanExt as _, SetParentError};

use crate::broker::Outgoing;
use crate::handler::HandlerResult;
use crate::headers::{Headers, CORRELATION_ID, MESSAGE_ID};
use crate::layer::{BoxFuture, Delivery, Layer, Next, PublishKind};
use crate::message::MessageId;

/// `traceparent`: the W3C Trace Context header with the trace id, the parent span id and the
/// sampling flag (`00-<32 hex>-<16 hex>-<2 hex>`).
pub const TRACEPARENT: &str = "traceparent";
/// `tracestate`: the W3C Trace Context header with vendor-specific trace data.
pub const TRACESTATE: &str = "tracestate";
/// `baggage`: the W3C Baggage header, application-defined `key=value` pairs
/// (`tenant=acme,user=42`, values percent-encoded) that travel with the trace.
pub const BAGGAGE: &str = "baggage";

/// Whether the "parent cannot be set" warning was logged already (once per process).
static WARNED_STARTED: AtomicBool = AtomicBool::new(false);

/// The [`Layer`] that carries OpenTelemetry trace context through the App; see the
/// [module docs](self).
///
/// - Around each handler call, the context in the delivery's headers (`traceparent`,
///   `tracestate`, `baggage`) becomes the parent of the `brook.message` span, and stays the
///   current OpenTelemetry context while the handler runs (for libraries that use the
///   OpenTelemetry API directly; its baggage is `Context::current().baggage()`). The span
///   gets the [messaging semantic-convention] attributes `messaging.system` (`rabbitmq`,
///   `kafka`, `nats`, ...), `messaging.destination.name`, `messaging.operation.type` =
///   `process` (and its older name `messaging.operation`, which FastStream writes),
///   `messaging.message.body.size`, and where known `messaging.message.id` and
///   `messaging.message.conversation_id` (the `correlation_id`).
/// - Before each output, reply and `Publisher` publish, a `brook.publish` span of kind
///   producer starts (and ends) as the child of the current span, and its context is written
///   into the message's headers: the next consumer's span is its child, as OpenTelemetry's
///   producer/consumer pairs (and service graphs built on them) expect. Headers the message
///   has already are kept (one set explicitly, e.g. with
///   [`Publish::header`](crate::Publish::header)); with an explicit `traceparent`, no
///   producer span is made and no `tracestate` written.
///
/// By default it reads and writes W3C Trace Context and W3C Baggage itself ([`W3cPropagator`],
/// [`W3cBaggagePropagator`]); no global propagator needs to be installed.
/// [`with_propagator`](Self::with_propagator) and [`global`](Self::global) use another one.
///
/// [messaging semantic-convention]: https://opentelemetry.io/docs/specs/semconv/messaging/messaging-spans/
///
/// ```
/// use brook_runtime::otel::TraceContext;
/// use brook_runtime::{App, MemoryBroker};
///
/// let app = App::new(MemoryBroker::new()).layer(TraceContext::new());
/// # let _ = app;
/// ```
#[derive(Clone, Debug)]
pub struct TraceContext {
    propagation: Propagation,
    producer_spans: bool,
}

impl Default for TraceContext {
    fn default() -> Self {
        TraceContext {
            propagation: Propagation::default(),
            producer_spans: true,
        }
    }
}

/// Which propagator a [`TraceContext`] uses.
#[derive(Clone, Default)]
enum Propagation {
    /// The built-in W3C Trace Context and Baggage propagators.
    #[default]
    W3c,
    /// `opentelemetry::global::get_text_map_propagator`, looked up at each use.
    Global,
    /// One given by the application.
    Custom(Arc<dyn TextMapPropagator + Send + Sync>),
}

impl fmt::Debug for Propagation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Propagation::W3c => f.write_str("W3c"),
            Propagation::Global => f.write_str("Global"),
            Propagation::Custom(p) => f.debug_tuple("Custom").field(p).finish(),
        }
    }
}

impl Propagation {
    fn extract(&self, headers: &Headers) -> Context {
        let carrier = HeaderExtractor(headers);
        match self {
            Propagation::W3c => extract_w3c(&carrier),
            Propagation::Global => opentelemetry::global::get_text_map_propagator(|p| {
                p.extract_with_context(&Context::new(), &carrier)
            }),
            Propagation::Custom(p) => p.extract_with_context(&Context::new(), &carrier),
        }
    }

    fn inject(&self, cx: &Context, headers: &mut Headers) {
        let mut carrier = HeaderInjector(headers);
        match self {
            Propagation::W3c => {
                W3cPropagator.inject_context(cx, &mut carrier);
                W3cBaggagePropagator.inject_context(cx, &mut carrier);
            }
            Propagation::Global => opentelemetry::global::get_text_map_propagator(|p| {
                p.inject_context(cx, &mut carrier)
            }),
            Propagation::Custom(p) => p.inject_context(cx, &mut carrier),
        }
    }
}

/// Trace context and baggage, with the built-in propagators.
fn extract_w3c(carrier: &dyn Extractor) -> Context {
    let cx = W3cPropagator.extract_with_context(&Context::new(), carrier);
    W3cBaggagePropagator.extract_with_context(&cx, carrier)
}

impl TraceContext {
    /// The layer, with the built-in W3C Trace Context and Baggage propagators.
    ///
    /// ```
    /// let layer = brook_runtime::otel::TraceContext::new();
    /// # let _ = layer;
    /// ```
    pub fn new() -> Self {
        TraceContext::default()
    }

    /// The layer, with `propagator` instead of the built-in ones: for instance only
    /// [`W3cPropagator`], to leave `baggage` out, or a `TextMapCompositePropagator` with
    /// another vendor's format.
    ///
    /// ```
    /// use brook_runtime::otel::{TraceContext, W3cPropagator};
    /// use opentelemetry::propagation::TextMapCompositePropagator;
    ///
    /// let layer = TraceContext::with_propagator(TextMapCompositePropagator::new(vec![
    ///     Box::new(W3cPropagator),
    /// ]));
    /// # let _ = layer;
    /// ```
    pub fn with_propagator(propagator: impl TextMapPropagator + Send + Sync + 'static) -> Self {
        TraceContext {
            propagation: Propagation::Custom(Arc::new(propagator)),
            ..TraceContext::default()
        }
    }

    /// The layer, with the propagator installed by
    /// `opentelemetry::global::set_text_map_propagator`. Until one is installed, OpenTelemetry's
    /// global propagator is a no-op, and nothing is read or written.
    ///
    /// ```
    /// let layer = brook_runtime::otel::TraceContext::global();
    /// # let _ = layer;
    /// ```
    pub fn global() -> Self {
        TraceContext {
            propagation: Propagation::Global,
            ..TraceContext::default()
        }
    }

    /// Whether publishes from inside the App get a `brook.publish` producer span (the
    /// default) or carry the current span's context directly (`false`: one span less per
    /// publish; the next consumer's span is then the child of the publishing handler's span).
    ///
    /// ```
    /// let layer = brook_runtime::otel::TraceContext::new().producer_spans(false);
    /// # let _ = layer;
    /// ```
    pub fn producer_spans(mut self, enabled: bool) -> Self {
        self.producer_spans = enabled;
        self
    }

    /// The trace context in `headers`, as this layer's propagator reads it.
    ///
    /// ```
    /// use brook_runtime::otel::TraceContext;
    /// use brook_runtime::Headers;
    /// use opentelemetry::baggage::BaggageExt as _;
    /// use opentelemetry::trace::TraceContextExt as _;
    ///
    /// let mut headers = Headers::new();
    /// headers.insert("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
    /// headers.insert("baggage", "tenant=acme");
    /// let cx = TraceContext::new().extract(&headers);
    /// assert!(cx.span().span_context().is_remote());
    /// assert_eq!(cx.baggage().get("tenant").map(|v| v.as_str()), Some("acme"));
    /// ```
    pub fn extract(&self, headers: &Headers) -> Context {
        self.propagation.extract(headers)
    }

    /// Writes `cx` into `headers` with this layer's propagator.
    ///
    /// ```
    /// use brook_runtime::otel::TraceContext;
    /// use brook_runtime::Headers;
    ///
    /// let mut headers = Headers::new();
    /// TraceContext::new().inject_context(&opentelemetry::Context::new(), &mut headers);
    /// assert!(headers.is_empty(), "an empty context writes nothing");
    /// ```
    pub fn inject_context(&self, cx: &Context, headers: &mut Headers) {
        self.propagation.inject(cx, headers);
    }
}

impl Layer for TraceContext {
    /// Before the span is entered (and so started): the incoming context becomes its parent,
    /// and the messaging attributes go onto it (so samplers see them too).
    fn span(&self, delivery: Delivery<'_>, span: &tracing::Span) {
        consumer_attributes(delivery, span);
        let parent = self.extract(delivery.headers());
        let remote = parent.span().span_context().clone();
        if !remote.is_valid() && parent.baggage().is_empty() {
            return;
        }
        match span.set_parent(parent) {
            Ok(()) => {}
            Err(SetParentError::AlreadyStarted) => {
                // Started by someone else before brook could set the parent: keep the incoming
                // trace reachable as a link.
                span.add_link(remote);
                if !WARNED_STARTED.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        subscriber = delivery.subscriber(),
                        "brook.message span already started: linked to the incoming trace instead of joining it"
                    );
                }
            }
            // No OpenTelemetry layer, or the span is filtered out: nothing to join.
            Err(error) => tracing::trace!(%error, "trace context not applied to the message span"),
        }
    }

    fn call<'a>(&'a self, delivery: Delivery<'a>, next: Next<'a>) -> BoxFuture<'a, HandlerResult> {
        let span = tracing::Span::current();
        let parent = self.extract(delivery.headers());
        // The span's context (this starts it, with its parent now set), current for code that
        // uses the OpenTelemetry API directly; without an OpenTelemetry layer, the incoming one.
        let cx = span.context();
        let cx = if cx.span().span_context().is_valid() {
            if cx.baggage().is_empty() && !parent.baggage().is_empty() {
                // The parent could not be set (span started early): the baggage still applies.
                cx.with_baggage(copy_baggage(parent.baggage()))
            } else {
                cx
            }
        } else if parent.span().span_context().is_valid() || !parent.baggage().is_empty() {
            parent
        } else {
            return next.run();
        };
        Box::pin(next.run().with_context(cx))
    }

    fn publishing(&self, message: &mut Outgoing, kind: PublishKind) {
        let explicit_parent = message.headers.get(TRACEPARENT).is_some();
        let producer = match self.producer_spans && !explicit_parent {
            true => producer_span(message, kind),
            false => None,
        };
        let cx = producer.unwrap_or_else(current);
        let mut written = Headers::new();
        self.propagation.inject(&cx, &mut written);
        for (name, value) in written.iter() {
            // What the message has is kept, and a tracestate never goes with another trace's
            // traceparent.
            let kept = message.headers.get(name).is_some()
                || (explicit_parent && name.eq_ignore_ascii_case(TRACESTATE));
            if !kept {
                message.headers.insert(name, value);
            }
        }
    }
}

/// The messaging semantic-convention attributes of a `brook.message` span.
fn consumer_attributes(delivery: Delivery<'_>, span: &tracing::Span) {
    let headers = delivery.headers();
    span.set_attribute("messaging.system", messaging_system(delivery.broker()));
    span.set_attribute("messaging.destination.name", delivery.topic().to_owned());
    span.set_attribute("messaging.operation.type", "process");
    // The attribute's name before semantic conventions 1.26, which FastStream 0.7 writes.
    span.set_attribute("messaging.operation", "process");
    span.set_attribute(
        "messaging.message.body.size",
        body_size(delivery.body().len()),
    );
    // The producer's id (FastStream's `message_id`, AMQP's message-id) over the broker's.
    let id = match (headers.get(MESSAGE_ID), delivery.id()) {
        (Some(id), _) => Some(id.to_owned()),
        (None, MessageId::None) => None,
        (None, id) => Some(id.to_string()),
    };
    if let Some(id) = id {
        span.set_attribute("messaging.message.id", id);
    }
    if let Some(correlation_id) = headers.get(CORRELATION_ID) {
        span.set_attribute(
            "messaging.message.conversation_id",
            correlation_id.to_owned(),
        );
    }
}

/// A `brook.publish` producer span for `message`, child of the current span; started, so that
/// its context can go into the headers, and ended when this returns (it is the message's
/// creation context; the publish itself is the `published` hook's and the metrics' concern).
/// `None` without an OpenTelemetry span.
fn producer_span(message: &Outgoing, kind: PublishKind) -> Option<Context> {
    let span = tracing::info_span!(
        "brook.publish",
        otel.kind = "producer",
        destination = %message.destination,
        kind = kind.as_str(),
    );
    if span.is_disabled() {
        return None;
    }
    span.set_attribute("messaging.destination.name", message.destination.clone());
    span.set_attribute("messaging.operation.type", "create");
    span.set_attribute("messaging.operation", "create");
    span.set_attribute("messaging.message.body.size", body_size(message.body.len()));
    if let Some(id) = message.headers.get(MESSAGE_ID) {
        span.set_attribute("messaging.message.id", id.to_owned());
    }
    if let Some(correlation_id) = message.headers.get(CORRELATION_ID) {
        span.set_attribute(
            "messaging.message.conversation_id",
            correlation_id.to_owned(),
        );
    }
    let cx = span.context();
    cx.span().span_context().is_valid().then_some(cx)
}

/// `messaging.system`: the semantic conventions' name where they have one (`rabbitmq`).
fn messaging_system(broker: BrokerKind) -> &'static str {
    match broker {
        BrokerKind::Rabbit => "rabbitmq",
        other => other.name(),
    }
}

fn body_size(len: usize) -> i64 {
    i64::try_from(len).unwrap_or(i64::MAX)
}

/// A copy of `baggage` (it is not `Clone`).
fn copy_baggage(baggage: &Baggage) -> Baggage {
    baggage
        .iter()
        .map(|(key, (value, metadata))| (key.clone(), (value.clone(), metadata.clone())))
        .collect()
}

/// The current OpenTelemetry context: the current `tracing` span's (through
/// `tracing-opentelemetry`) when it has one, else OpenTelemetry's own current context. Its
/// baggage is OpenTelemetry's current baggage when there is some (set with the OpenTelemetry
/// API after the span began), else the span's.
///
/// ```
/// use opentelemetry::trace::TraceContextExt as _;
///
/// // No tracing subscriber and no OpenTelemetry span: an empty context.
/// let cx = brook_runtime::otel::current();
/// assert!(!cx.span().span_context().is_valid());
/// ```
pub fn current() -> Context {
    let cx = tracing::Span::current().context();
    if !cx.span().span_context().is_valid() {
        return Context::current();
    }
    Context::map_current(|now| match now.baggage().is_empty() {
        true => cx,
        false => cx.with_baggage(copy_baggage(now.baggage())),
    })
}

/// Writes the current trace context ([`current`]) into `message`'s headers as W3C Trace
/// Context (`traceparent`, and `tracestate` when there is one) and W3C Baggage (`baggage`, when
/// there is some), replacing any there were: for messages published outside handlers, e.g. by
/// a producer calling `broker.publish_message`. Without a current span, nothing is written.
///
/// ```
/// use brook_runtime::{otel, Outgoing};
///
/// let mut message = Outgoing::new("orders", "{}");
/// // Inside a span of a tracing subscriber with tracing-opentelemetry, this adds `traceparent`.
/// otel::inject(&mut message);
/// ```
pub fn inject(message: &mut Outgoing) {
    inject_context(&current(), &mut message.headers);
}

/// Writes `cx` into `headers` as W3C Trace Context and Baggage (see [`inject`]).
///
/// ```
/// use brook_runtime::{otel, Headers};
/// use opentelemetry::baggage::BaggageExt as _;
/// use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState};
/// use opentelemetry::KeyValue;
///
/// let span = SpanContext::new(
///     TraceId::from(0x4bf92f3577b34da6a3ce929d0e0e4736_u128),
///     SpanId::from(0x00f067aa0ba902b7_u64),
///     TraceFlags::SAMPLED,
///     true,
///     TraceState::NONE,
/// );
/// let cx = opentelemetry::Context::new()
///     .with_remote_span_context(span)
///     .with_baggage([KeyValue::new("tenant", "café")]);
/// let mut headers = Headers::new();
/// otel::inject_context(&cx, &mut headers);
/// assert_eq!(
///     headers.get("traceparent"),
///     Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
/// );
/// assert_eq!(headers.get("baggage"), Some("tenant=caf%C3%A9"));
/// ```
pub fn inject_context(cx: &Context, headers: &mut Headers) {
    if cx.span().span_context().is_valid() {
        // A tracestate of another trace must not stay next to this traceparent.
        headers.remove(TRACESTATE);
    }
    let mut carrier = HeaderInjector(headers);
    W3cPropagator.inject_context(cx, &mut carrier);
    W3cBaggagePropagator.inject_context(cx, &mut carrier);
}

/// The trace context in `headers` (W3C `traceparent`, `tracestate` and `baggage`; names
/// matched exactly, then ignoring case), as a context whose span is the remote parent. Missing
/// or malformed headers give an empty context.
///
/// ```
/// use brook_runtime::{otel, Headers};
/// use opentelemetry::trace::TraceContextExt as _;
///
/// let mut headers = Headers::new();
/// headers.insert("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
/// let cx = otel::extract(&headers);
/// assert_eq!(
///     cx.span().span_context().trace_id().to_string(),
///     "4bf92f3577b34da6a3ce929d0e0e4736"
/// );
/// assert!(!otel::extract(&Headers::new()).has_active_span());
/// ```
pub fn extract(headers: &Headers) -> Context {
    extract_w3c(&HeaderExtractor(headers))
}

/// [`Headers`] as an OpenTelemetry [`Injector`], for any propagator.
///
/// ```
/// use brook_runtime::otel::HeaderInjector;
/// use brook_runtime::Headers;
/// use opentelemetry::propagation::Injector as _;
///
/// let mut headers = Headers::new();
/// HeaderInjector(&mut headers).set("baggage", "tenant=acme".into());
/// assert_eq!(headers.get("baggage"), Some("tenant=acme"));
/// ```
#[derive(Debug)]
pub struct HeaderInjector<'a>(pub &'a mut Headers);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key, value);
    }
}

/// [`Headers`] as an OpenTelemetry [`Extractor`], for any propagator. Names are matched
/// exactly first, then ignoring ASCII case (brokers and clients differ in how they spell them).
///
/// ```
/// use brook_runtime::otel::HeaderExtractor;
/// use brook_runtime::Headers;
/// use opentelemetry::propagation::Extractor as _;
///
/// let headers: Headers = [("Traceparent", "x")].into_iter().collect();
/// assert_eq!(HeaderExtractor(&headers).get("traceparent"), Some("x"));
/// ```
#[derive(Clone, Copy, Debug)]
pub struct HeaderExtractor<'a>(pub &'a Headers);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).or_else(|| {
            self.0
                .iter()
                .find(|(name, _)| name.eq_ignore_ascii_case(key))
                .map(|(_, value)| value)
        })
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(name, _)| name).collect()
    }
}

/// The W3C Trace Context propagator (`traceparent`, `tracestate`), as an OpenTelemetry
/// [`TextMapPropagator`]: what [`TraceContext`], [`inject`] and [`extract`] use, and what
/// FastStream's `TelemetryMiddleware` uses (OpenTelemetry Python's
/// `TraceContextTextMapPropagator`).
///
/// Reading follows the specification: version `ff` and malformed values are ignored, as are
/// all-zero ids and upper-case hex; a later version is read by its first four fields; an
/// invalid `tracestate` is dropped while `traceparent` is kept.
///
/// ```
/// use brook_runtime::otel::W3cPropagator;
/// use opentelemetry::propagation::TextMapPropagator as _;
///
/// let fields: Vec<&str> = W3cPropagator.fields().collect();
/// assert_eq!(fields, ["traceparent", "tracestate"]);
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct W3cPropagator;

/// The header names, for [`TextMapPropagator::fields`].
static FIELDS: std::sync::LazyLock<[String; 2]> =
    std::sync::LazyLock::new(|| [TRACEPARENT.to_owned(), TRACESTATE.to_owned()]);

impl TextMapPropagator for W3cPropagator {
    fn inject_context(&self, cx: &Context, injector: &mut dyn Injector) {
        let span = cx.span();
        let sc = span.span_context();
        if !sc.is_valid() {
            return;
        }
        injector.set(TRACEPARENT, traceparent(sc));
        let state = sc.trace_state().header();
        if !state.is_empty() {
            injector.set(TRACESTATE, state);
        }
    }

    fn extract_with_context(&self, cx: &Context, extractor: &dyn Extractor) -> Context {
        let Some(parent) = extractor.get(TRACEPARENT) else {
            return cx.clone();
        };
        let state = extractor.get(TRACESTATE).unwrap_or("");
        match parse(parent, state) {
            Some(sc) => cx.with_remote_span_context(sc),
            None => {
                tracing::debug!(traceparent = parent, "malformed traceparent header ignored");
                cx.clone()
            }
        }
    }

    fn fields(&self) -> FieldIter<'_> {
        FieldIter::new(&*FIELDS)
    }
}

/// The W3C Baggage propagator (`baggage`), as an OpenTelemetry [`TextMapPropagator`]: what
/// [`TraceContext`], [`inject`] and [`extract`] use next to [`W3cPropagator`], and what
/// FastStream's `TelemetryMiddleware` reads (OpenTelemetry Python's `W3CBaggagePropagator`).
///
/// Values are percent-encoded on writing and decoded on reading; properties (`;k=v` after a
/// value) are kept as the entry's metadata. Reading follows the specification's limits (a
/// header over 8192 bytes is ignored, at most 64 entries are kept); a malformed entry is
/// dropped and the others kept. A `+` is read as a `+`, as the specification says (OpenTelemetry
/// Python writes a space as `+`, so a value with spaces arrives from it with `+` instead).
///
/// ```
/// use brook_runtime::otel::{HeaderExtractor, W3cBaggagePropagator};
/// use brook_runtime::Headers;
/// use opentelemetry::baggage::BaggageExt as _;
/// use opentelemetry::propagation::TextMapPropagator as _;
///
/// let headers: Headers = [("baggage", "tenant=caf%C3%A9, user=42;owner=billing")].into_iter().collect();
/// let cx = W3cBaggagePropagator.extract(&HeaderExtractor(&headers));
/// assert_eq!(cx.baggage().get("tenant").map(|v| v.as_str()), Some("café"));
/// assert_eq!(cx.baggage().get("user").map(|v| v.as_str()), Some("42"));
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct W3cBaggagePropagator;

/// The specification's limit on the header's length.
const MAX_BAGGAGE_LEN: usize = 8192;

/// The header name, for [`TextMapPropagator::fields`].
static BAGGAGE_FIELDS: std::sync::LazyLock<[String; 1]> =
    std::sync::LazyLock::new(|| [BAGGAGE.to_owned()]);

impl TextMapPropagator for W3cBaggagePropagator {
    fn inject_context(&self, cx: &Context, injector: &mut dyn Injector) {
        let baggage = cx.baggage();
        if !baggage.is_empty() {
            // `Baggage`'s Display is the W3C list, values percent-encoded.
            injector.set(BAGGAGE, baggage.to_string());
        }
    }

    fn extract_with_context(&self, cx: &Context, extractor: &dyn Extractor) -> Context {
        match extractor.get(BAGGAGE).and_then(parse_baggage) {
            Some(baggage) => cx.with_baggage(baggage),
            None => cx.clone(),
        }
    }

    fn fields(&self) -> FieldIter<'_> {
        FieldIter::new(&*BAGGAGE_FIELDS)
    }
}

/// The entries of a `baggage` header; `None` when there are none.
fn parse_baggage(header: &str) -> Option<Baggage> {
    if header.len() > MAX_BAGGAGE_LEN {
        tracing::debug!(len = header.len(), "baggage header over 8192 bytes ignored");
        return None;
    }
    let mut baggage = Baggage::new();
    for member in header.split(',') {
        let (pair, properties) = member.split_once(';').unwrap_or((member, ""));
        let Some((key, value)) = pair.split_once('=') else {
            continue;
        };
        let (key, properties) = (key.trim(), properties.trim());
        let Some(value) = percent_decode(value.trim()) else {
            tracing::debug!(entry = member, "malformed baggage entry ignored");
            continue;
        };
        // `insert_with_metadata` drops keys that are not tokens and entries past the limits.
        baggage.insert_with_metadata(key.to_owned(), value, properties.to_owned());
    }
    (!baggage.is_empty()).then_some(baggage)
}

/// `%XX` sequences decoded; `None` if one is malformed or the result is not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hi = char::from(hex[0]).to_digit(16)?;
            let lo = char::from(hex[1]).to_digit(16)?;
            out.push(u8::try_from(hi * 16 + lo).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// `00-<trace id>-<span id>-<flags>`.
fn traceparent(sc: &SpanContext) -> String {
    format!(
        "00-{}-{}-{:02x}",
        sc.trace_id(),
        sc.span_id(),
        sc.trace_flags().to_u8() & TraceFlags::SAMPLED.to_u8()
    )
}

/// A remote span context from the header values, if `traceparent` is valid.
fn parse(traceparent: &str, tracestate: &str) -> Option<SpanContext> {
    let value = traceparent.trim();
    let mut parts = value.split('-');
    let version = parts.next()?;
    let trace_id = parts.next()?;
    let span_id = parts.next()?;
    let flags = parts.next()?;
    if !is_hex(version, 2) || version == "ff" {
        return None;
    }
    // Version 00 has exactly four fields; a later one may add fields after them.
    if version == "00" && parts.next().is_some() {
        return None;
    }
    if !is_hex(trace_id, 32) || !is_hex(span_id, 16) || !is_hex(flags, 2) {
        return None;
    }
    let trace_id = TraceId::from_hex(trace_id).ok()?;
    let span_id = SpanId::from_hex(span_id).ok()?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    if trace_id == TraceId::INVALID || span_id == SpanId::INVALID {
        return None;
    }
    // Only the sampled bit is defined (version 00); others are not propagated.
    let flags = TraceFlags::new(flags) & TraceFlags::SAMPLED;
    let state = TraceState::from_str(tracestate.trim()).unwrap_or_default();
    Some(SpanContext::new(trace_id, span_id, flags, true, state))
}

/// `s` is exactly `len` lower-case hex digits.
fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn remote(trace: u128, span: u64, flags: TraceFlags, state: TraceState) -> Context {
        Context::new().with_remote_span_context(SpanContext::new(
            TraceId::from(trace),
            SpanId::from(span),
            flags,
            true,
            state,
        ))
    }

    #[test]
    fn traceparent_and_tracestate_round_trip() {
        let state = TraceState::from_key_value([("vendor", "v1"), ("other", "x")]).unwrap();
        let cx = remote(
            0x4bf92f3577b34da6a3ce929d0e0e4736,
            0x00f067aa0ba902b7,
            TraceFlags::SAMPLED,
            state,
        );
        let mut headers = Headers::new();
        inject_context(&cx, &mut headers);
        assert_eq!(headers.get(TRACEPARENT), Some(PARENT));
        assert_eq!(headers.get(TRACESTATE), Some("vendor=v1,other=x"));

        let back = extract(&headers);
        let sc = back.span().span_context().clone();
        assert!(sc.is_valid() && sc.is_remote() && sc.is_sampled());
        assert_eq!(&sc, cx.span().span_context());
        assert_eq!(sc.trace_state().get("vendor"), Some("v1"));

        // And again: what was read is written back the same.
        let mut again = Headers::new();
        inject_context(&back, &mut again);
        assert_eq!(again, headers);
    }

    #[test]
    fn inject_replaces_a_stale_tracestate() {
        let mut headers: Headers = [(TRACEPARENT, "old"), (TRACESTATE, "old=1")]
            .into_iter()
            .collect();
        inject_context(
            &remote(1, 2, TraceFlags::SAMPLED, TraceState::NONE),
            &mut headers,
        );
        assert_eq!(
            headers.get(TRACEPARENT),
            Some("00-00000000000000000000000000000001-0000000000000002-01")
        );
        assert_eq!(headers.get(TRACESTATE), None);
    }

    #[test]
    fn unsampled_contexts_keep_their_flag() {
        let cx = remote(1, 2, TraceFlags::NOT_SAMPLED, TraceState::NONE);
        let mut headers = Headers::new();
        inject_context(&cx, &mut headers);
        assert_eq!(
            headers.get(TRACEPARENT),
            Some("00-00000000000000000000000000000001-0000000000000002-00")
        );
        assert_eq!(headers.get(TRACESTATE), None, "no empty tracestate");
        assert!(!extract(&headers).span().span_context().is_sampled());
    }

    #[test]
    fn an_empty_context_writes_nothing() {
        let mut headers = Headers::new();
        inject_context(&Context::new(), &mut headers);
        assert!(headers.is_empty());
        assert!(!extract(&headers).has_active_span());
    }

    #[test]
    fn malformed_traceparents_are_ignored() {
        for bad in [
            "",
            "00",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
            "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
        ] {
            let headers: Headers = [(TRACEPARENT, bad)].into_iter().collect();
            assert!(
                !extract(&headers).span().span_context().is_valid(),
                "accepted {bad:?}"
            );
        }
    }

    #[test]
    fn later_versions_read_their_first_four_fields() {
        let headers: Headers = [(
            TRACEPARENT,
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-future",
        )]
        .into_iter()
        .collect();
        let cx = extract(&headers);
        assert_eq!(
            cx.span().span_context().span_id(),
            SpanId::from(0x00f067aa0ba902b7)
        );
    }

    #[test]
    fn an_invalid_tracestate_is_dropped_but_the_parent_kept() {
        let headers: Headers = [(TRACEPARENT, PARENT), (TRACESTATE, "no equals sign,,=")]
            .into_iter()
            .collect();
        let cx = extract(&headers);
        let sc = cx.span().span_context().clone();
        assert!(sc.is_valid());
        assert_eq!(sc.trace_state().header(), "");
    }

    #[test]
    fn header_names_match_ignoring_case() {
        let headers: Headers = [("TraceParent", PARENT)].into_iter().collect();
        assert!(extract(&headers).span().span_context().is_valid());
    }

    #[test]
    fn the_layer_keeps_an_explicit_traceparent() {
        let mut out = Outgoing::new("d", "b").with_header(TRACEPARENT, PARENT);
        TraceContext::new().publishing(&mut out, PublishKind::Output);
        assert_eq!(out.headers.get(TRACEPARENT), Some(PARENT));
    }

    #[test]
    fn baggage_round_trips_encoded() {
        let cx = Context::new().with_baggage([
            opentelemetry::baggage::KeyValueMetadata::new("tenant", "acme/café=1,x;y", ""),
            opentelemetry::baggage::KeyValueMetadata::new("user", "42", "owner=billing"),
        ]);
        let mut headers = Headers::new();
        inject_context(&cx, &mut headers);
        let header = headers.get(BAGGAGE).unwrap().to_owned();
        assert!(
            header.contains("tenant=acme%2Fcaf%C3%A9%3D1%2Cx%3By"),
            "{header}"
        );
        assert!(header.contains("user=42;owner=billing"), "{header}");
        assert_eq!(headers.get(TRACEPARENT), None, "no span, no traceparent");

        let back = extract(&headers);
        let baggage = back.baggage();
        assert_eq!(
            baggage.get("tenant").map(|v| v.as_str()),
            Some("acme/café=1,x;y")
        );
        assert_eq!(
            baggage
                .get_with_metadata("user")
                .map(|(v, m)| (v.as_str(), m.as_str())),
            Some(("42", "owner=billing"))
        );
    }

    #[test]
    fn malformed_baggage_entries_are_dropped_and_the_others_kept() {
        let headers: Headers = [(
            BAGGAGE,
            "good=1, no-equals, bad-escape=%G1, bad-utf8=%C3, (bad key)=2 ,  spaced = a%20b ,plus=a+b",
        )]
        .into_iter()
        .collect();
        let cx = extract(&headers);
        let mut seen: Vec<_> = cx
            .baggage()
            .iter()
            .map(|(k, (v, _))| (k.as_str().to_owned(), v.as_str().to_owned()))
            .collect();
        seen.sort();
        assert_eq!(
            seen,
            [
                ("good".to_owned(), "1".to_owned()),
                ("plus".to_owned(), "a+b".to_owned()),
                ("spaced".to_owned(), "a b".to_owned()),
            ]
        );
    }

    #[test]
    fn oversized_or_empty_baggage_is_ignored() {
        let long = format!("k={}", "v".repeat(MAX_BAGGAGE_LEN));
        for header in [long.as_str(), "", ",,", "novalue"] {
            let headers: Headers = [(BAGGAGE, header)].into_iter().collect();
            assert!(extract(&headers).baggage().is_empty(), "{header:.20}");
        }
    }

    #[test]
    fn the_layer_keeps_explicit_baggage() {
        let mut out = Outgoing::new("d", "b").with_header(BAGGAGE, "mine=1");
        let _cx = Context::new()
            .with_baggage([opentelemetry::KeyValue::new("theirs", "2")])
            .attach();
        TraceContext::new().publishing(&mut out, PublishKind::Publisher);
        assert_eq!(out.headers.get(BAGGAGE), Some("mine=1"));
        // Without an explicit one, the current baggage goes out.
        let mut out = Outgoing::new("d", "b");
        TraceContext::new().publishing(&mut out, PublishKind::Publisher);
        assert_eq!(out.headers.get(BAGGAGE), Some("theirs=2"));
    }

    #[test]
    fn rabbitmq_is_called_by_its_semantic_conventions_name() {
        assert_eq!(messaging_system(BrokerKind::Rabbit), "rabbitmq");
        assert_eq!(messaging_system(BrokerKind::Kafka), "kafka");
        assert_eq!(messaging_system(BrokerKind::Nats), "nats");
    }

    #[test]
    fn a_custom_propagator_is_used() {
        let layer = TraceContext::with_propagator(W3cPropagator);
        let headers: Headers = [(TRACEPARENT, PARENT)].into_iter().collect();
        let cx = layer.extract(&headers);
        let mut out = Headers::new();
        layer.inject_context(&cx, &mut out);
        assert_eq!(out.get(TRACEPARENT), Some(PARENT));
    }
}
