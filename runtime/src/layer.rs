//! Middleware: [`Layer`]s around handler calls, for App-wide concerns (metrics, tracing,
//! timeouts, auth checks) that should not be written into every handler.
//!
//! A layer sees each message as a read-only [`Delivery`] (it cannot settle it: the engine stays
//! the one place that settles, so settle-once and the policy table hold whatever layers do) and
//! takes part in four moments:
//!
//! 1. [`received`](Layer::received): a message arrived, before anything else (also for
//!    messages the engine rejects without running the handler: `max_deliveries`);
//! 2. [`call`](Layer::call): around the handler. A layer may run it (`next.run().await`), time
//!    it out, or short-circuit it by returning an interrupt without calling `next`
//!    (`Err(HandlerError::Failed(brook::Nack.into()))`): the policy then applies to what the
//!    layer returned, as if the handler had returned it;
//! 3. [`settled`](Layer::settled): the engine has settled (or left) the message; the
//!    [`Outcome`] and the time since it was received;
//! 4. [`publishing`](Layer::publishing) and [`published`](Layer::published): an output, a
//!    reply or a [`Publisher`](crate::Publisher) publish is about to go out (a layer may add
//!    headers), and went out (or failed).
//!
//! **Order.** App layers ([`App::layer`](crate::App::layer)) wrap subscriber layers
//! ([`Layered`], from `bill.layer(..)`), and among each, the first added is the outermost: its
//! `call` runs first and sees the others' result. The hooks run in the same order.
//!
//! **Errors and panics.** A layer's `Err` is the handler's failure (the policy's error path);
//! a panic in `call` is caught like a handler's panic (an error: the consumer keeps running).
//! The hooks are plain functions that must not block; a panic there is a bug in the layer and
//! is caught and logged, never unwinding into the engine.
//!
//! **Cost.** An App without layers runs exactly as before. Each layer costs one boxed future
//! per message (layers are chosen at run time, so they are trait objects).
//!
//! ```
//! use std::time::Duration;
//! use brook_runtime::layer::{BoxFuture, Delivery, Layer, Next};
//! use brook_runtime::engine::Outcome;
//! use brook_runtime::HandlerResult;
//!
//! /// Logs slow handlers.
//! struct Slow(Duration);
//!
//! impl Layer for Slow {
//!     fn call<'a>(&'a self, delivery: Delivery<'a>, next: Next<'a>) -> BoxFuture<'a, HandlerResult> {
//!         Box::pin(async move {
//!             let started = std::time::Instant::now();
//!             let result = next.run().await;
//!             if started.elapsed() > self.0 {
//!                 tracing::warn!(subscriber = delivery.subscriber(), "slow handler");
//!             }
//!             result
//!         })
//!     }
//! }
//! ```

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use brook_caps::BrokerKind;
use bytes::Bytes;

use crate::broker::Outgoing;
use crate::engine::Outcome;
use crate::error::BrokerError;
use crate::extract::Context;
use crate::handler::{Handler, HandlerError, HandlerResult};
use crate::headers::Headers;
use crate::interrupt::Nack;
use crate::message::{Message, MessageId};
use crate::subscription::Subscription;

/// A boxed future, as layers return them.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Middleware around handler calls; see the [module docs](self). Every method has a default
/// that does nothing (or just calls the handler), so a layer implements only what it needs.
pub trait Layer: Send + Sync + 'static {
    /// A message arrived.
    fn received(&self, delivery: Delivery<'_>) {
        let _ = delivery;
    }

    /// The message's `brook.message` tracing span, before it is first entered: the moment to
    /// give it a parent (trace context from the headers) while that can still be set.
    fn span(&self, delivery: Delivery<'_>, span: &tracing::Span) {
        let _ = (delivery, span);
    }

    /// Around the handler: call `next.run()` to go on.
    fn call<'a>(&'a self, delivery: Delivery<'a>, next: Next<'a>) -> BoxFuture<'a, HandlerResult> {
        let _ = delivery;
        next.run()
    }

    /// The engine is done with the message: `outcome`, `elapsed` since it was received.
    fn settled(&self, delivery: Delivery<'_>, outcome: Outcome, elapsed: Duration) {
        let _ = (delivery, outcome, elapsed);
    }

    /// Something is about to be published from inside the App (an output, a reply, a
    /// `Publisher` publish): a layer may add headers (trace context, tenant ids).
    fn publishing(&self, message: &mut Outgoing, kind: PublishKind) {
        let _ = (message, kind);
    }

    /// Something was published from inside the App (an output, a reply, a `Publisher`).
    fn published(&self, event: &Published<'_>) {
        let _ = event;
    }
}

/// A message as a layer sees it: everything but the means to settle it.
#[derive(Clone, Copy)]
pub struct Delivery<'a> {
    msg: &'a Message,
    sub: &'a Subscription,
    ctx: &'a Context,
}

impl<'a> Delivery<'a> {
    pub(crate) fn new(msg: &'a Message, sub: &'a Subscription, ctx: &'a Context) -> Self {
        Delivery { msg, sub, ctx }
    }

    /// The subscriber's name.
    pub fn subscriber(&self) -> &'a str {
        self.sub.name()
    }

    /// The subscription (source, policy, options).
    pub fn subscription(&self) -> &'a Subscription {
        self.sub
    }

    /// The broker the message came from.
    pub fn broker(&self) -> BrokerKind {
        self.msg.broker()
    }

    /// The topic / queue / subject / channel / stream it was read from.
    pub fn topic(&self) -> &'a str {
        self.msg.topic()
    }

    /// The headers.
    pub fn headers(&self) -> &'a Headers {
        self.msg.headers()
    }

    /// The raw payload.
    pub fn body(&self) -> &'a Bytes {
        self.msg.body()
    }

    /// The broker's id of the message.
    pub fn id(&self) -> &'a MessageId {
        self.msg.id()
    }

    /// How many times it has been delivered, where the broker counts.
    pub fn delivery_count(&self) -> Option<u32> {
        self.msg.delivery_count()
    }

    /// The App's state.
    pub fn context(&self) -> &'a Context {
        self.ctx
    }
}

/// The rest of the chain: the next layer, or the handler.
pub struct Next<'a> {
    rest: &'a [Arc<dyn Layer>],
    handler: &'a dyn ErasedHandler,
    msg: &'a Message,
    sub: &'a Subscription,
    ctx: &'a Context,
}

impl<'a> Next<'a> {
    /// Runs the rest of the chain.
    pub fn run(self) -> BoxFuture<'a, HandlerResult> {
        match self.rest.split_first() {
            Some((layer, rest)) => layer.call(
                Delivery::new(self.msg, self.sub, self.ctx),
                Next { rest, ..self },
            ),
            None => self.handler.call_boxed(self.msg, self.ctx),
        }
    }
}

/// A handler behind a pointer, for the innermost step of a chain.
pub(crate) trait ErasedHandler: Sync {
    fn call_boxed<'a>(&'a self, msg: &'a Message, ctx: &'a Context)
        -> BoxFuture<'a, HandlerResult>;
}

impl<H: Handler> ErasedHandler for H {
    fn call_boxed<'a>(
        &'a self,
        msg: &'a Message,
        ctx: &'a Context,
    ) -> BoxFuture<'a, HandlerResult> {
        Box::pin(self.call(msg, ctx))
    }
}

/// What a [`Layer::published`] hook is told.
#[derive(Debug)]
pub struct Published<'a> {
    /// The broker it was published on.
    pub broker: BrokerKind,
    /// The destination.
    pub destination: &'a str,
    /// What kind of publish it was.
    pub kind: PublishKind,
    /// How long the publish (and its confirmation) took.
    pub elapsed: Duration,
    /// The error, if it failed.
    pub error: Option<&'a BrokerError>,
}

/// What a publish from inside the App was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PublishKind {
    /// A handler's result to its output destination.
    Output,
    /// A handler's result to the input's `reply_to`.
    Reply,
    /// A [`Publisher`](crate::Publisher) publish from inside a handler.
    Publisher,
}

impl PublishKind {
    /// `output`, `reply` or `publisher`: a label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            PublishKind::Output => "output",
            PublishKind::Reply => "reply",
            PublishKind::Publisher => "publisher",
        }
    }
}

/// The layers a message goes through, outermost first.
#[derive(Clone, Default)]
pub struct Layers(Arc<[Arc<dyn Layer>]>);

impl Layers {
    pub(crate) fn new(layers: Vec<Arc<dyn Layer>>) -> Self {
        Layers(layers.into())
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Runs `handler` through the layers.
    pub(crate) fn call<'a>(
        &'a self,
        handler: &'a dyn ErasedHandler,
        msg: &'a Message,
        sub: &'a Subscription,
        ctx: &'a Context,
    ) -> BoxFuture<'a, HandlerResult> {
        Next {
            rest: &self.0,
            handler,
            msg,
            sub,
            ctx,
        }
        .run()
    }

    /// Lets every layer add to a message about to be published.
    pub(crate) fn publishing(&self, message: &mut Outgoing, kind: PublishKind) {
        for layer in self.0.iter() {
            let caught =
                std::panic::catch_unwind(AssertUnwindSafe(|| layer.publishing(message, kind)));
            if caught.is_err() {
                tracing::error!(hook = "publishing", "a layer's hook panicked; ignored");
            }
        }
    }

    /// Runs a hook on every layer; a panicking hook is logged, not unwound into the engine.
    pub(crate) fn each(&self, what: &'static str, hook: impl Fn(&dyn Layer)) {
        for layer in self.0.iter() {
            if std::panic::catch_unwind(AssertUnwindSafe(|| hook(&**layer))).is_err() {
                tracing::error!(hook = what, "a layer's hook panicked; ignored");
            }
        }
    }
}

impl std::fmt::Debug for Layers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Layers({})", self.0.len())
    }
}

/// A subscriber with a layer of its own: `bill.layer(Timeout::new(..))`; see [`Layer`].
#[derive(Clone)]
pub struct Layered<H> {
    pub(crate) inner: H,
    pub(crate) layers: Vec<Arc<dyn Layer>>,
}

/// Cancels a handler that runs longer than its limit and nacks its message (redelivered, after
/// `delay` where the broker supports one): `App::new(b).layer(Timeout::new(Duration::from_secs(30)))`.
#[derive(Clone, Copy, Debug)]
pub struct Timeout {
    limit: Duration,
    delay: Option<Duration>,
}

impl Timeout {
    /// A handler may run `limit` at most.
    pub fn new(limit: Duration) -> Self {
        Timeout { limit, delay: None }
    }

    /// Nack a timed-out message with this redelivery delay.
    pub fn nack_after(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }
}

impl Layer for Timeout {
    fn call<'a>(&'a self, delivery: Delivery<'a>, next: Next<'a>) -> BoxFuture<'a, HandlerResult> {
        Box::pin(async move {
            match tokio::time::timeout(self.limit, next.run()).await {
                Ok(result) => result,
                Err(_) => {
                    tracing::warn!(subscriber = delivery.subscriber(), limit = ?self.limit, "handler timed out; nacking the message");
                    let nack = match self.delay {
                        Some(delay) => Nack::after(delay),
                        None => Nack::default(),
                    };
                    Err(HandlerError::Failed(nack.into()))
                }
            }
        })
    }
}
