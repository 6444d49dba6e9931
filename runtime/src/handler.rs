//! The handler trait `#[subscriber]` implements, and what a handler may return.

use std::future::Future;
use std::sync::Arc;

use crate::error::{BrokerError, ExtractError};
use crate::extract::{Context, StartCheck};
use crate::layer::{Layer, Layered};
use crate::message::Message;
use crate::output::Output;
use crate::subscription::SubscriptionBuilder;

/// Type-level broker names: a handler declares which broker it was checked against, and
/// [`App::subscribe`](crate::App::subscribe) only accepts handlers its broker can serve.
pub mod kind {
    use brook_caps::BrokerKind;

    /// A type standing for a broker.
    pub trait Kind: Send + Sync + 'static {
        /// The broker.
        const KIND: BrokerKind;
    }

    macro_rules! kinds {
        ($($name:ident),*) => {$(
            #[doc = concat!("The ", stringify!($name), " broker, as a type.")]
            #[derive(Debug, Clone, Copy)]
            pub struct $name;
            impl Kind for $name {
                const KIND: BrokerKind = BrokerKind::$name;
            }
        )*};
    }
    kinds!(Memory, Kafka, Rabbit, Nats, Redis, Mqtt);
}

/// A message handler: what `#[subscriber]` generates for an async fn.
///
/// Written by hand only for special cases (and by the conformance suite); the macro's version
/// is a unit struct named after the function.
pub trait Handler: Send + Sync + 'static {
    /// The broker the subscriber was declared (and checked) for.
    type Broker: kind::Kind;

    /// The subscriber's arguments, names from expressions evaluated; the App validates them
    /// (with any mount-site names) when the subscriber is added.
    fn subscription(&self) -> SubscriptionBuilder;

    /// Checks that every argument can be produced on this App (state registered, the right
    /// broker); `App::start` refuses to start otherwise. Returns the failing arguments by name.
    fn check(&self, cx: &StartCheck<'_>) -> Vec<(&'static str, ExtractError)> {
        let _ = cx;
        Vec::new()
    }

    /// The subscriber's own layers (from [`Mount::layer`]), outermost first; the App's wrap
    /// them. The default: none.
    fn layers(&self) -> Vec<Arc<dyn Layer>> {
        Vec::new()
    }

    /// What the handler tells documents about itself (its payload and result types, its doc
    /// comment), for [`App::asyncapi`](crate::App). `#[subscriber]` writes it; the default
    /// describes nothing, and the subscriber still appears, without a payload schema.
    fn describe(&self, describe: &mut crate::asyncapi::Describe) {
        let _ = describe;
    }

    /// Extract the arguments from `msg` and run the function; its result, if any, is what the
    /// engine publishes (see [`output`](crate::output)). A hand-written handler that publishes
    /// nothing returns `Ok(None)`.
    fn call<'a>(
        &'a self,
        msg: &'a Message,
        ctx: &'a Context,
    ) -> impl Future<Output = HandlerResult> + Send + 'a;
}

/// What a handler run produced: nothing to publish, or its [`Output`] (boxed: most handlers
/// publish nothing, and every result is moved through the engine's futures).
pub type HandlerResult = Result<Option<Box<Output>>, HandlerError>;

/// How a handler invocation failed.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// An argument could not be produced (above all: the payload does not decode). The
    /// handler did not run.
    #[error(transparent)]
    Extract(#[from] ExtractError),
    /// The handler returned an error (which may be an interrupt: `brook::Reject`, ...).
    #[error(transparent)]
    Failed(anyhow::Error),
    /// The handler's result could not be encoded for publishing.
    #[error("cannot publish the handler's result: {0}")]
    Output(#[source] BrokerError),
}

/// A subscriber with names given where it is mounted: `bill.topic(&cfg.orders)`. The attribute
/// must leave each such name open (`topic = _`), so that the compile-time checks still see that
/// it is there; setting a name the attribute fixed is refused by `App::start`, unless it is
/// replaced on purpose with [`override_name`](Mount::override_name).
///
/// ```
/// use brook_runtime::{App, Handler, MemoryBroker, Mount, MountNames};
/// # use brook_runtime::{Context, HandlerError, Message, Subscription, SubscriptionBuilder, BrokerKind, ArgValue, kind};
/// # struct Bill;
/// # impl Handler for Bill {
/// #     type Broker = kind::Memory;
/// #     fn subscription(&self) -> SubscriptionBuilder {
/// #         Subscription::new(BrokerKind::Memory, "bill").arg("topic", ArgValue::AtMount)
/// #     }
/// #     async fn call(&self, _: &Message, _: &Context) -> brook_runtime::HandlerResult { Ok(None) }
/// # }
/// # let bill = Bill;
/// let topic = std::env::var("ORDERS_TOPIC").unwrap_or_else(|_| "orders".into());
/// // #[subscriber(topic = _)] async fn bill(..) -> ..
/// let app = App::new(MemoryBroker::new()).subscribe(bill.topic(topic));
/// ```
pub trait Mount: Handler + Sized {
    /// Gives the open name argument `argument` (declared `argument = _`) its value.
    fn name(self, argument: &'static str, value: impl Into<String>) -> Mounted<Self> {
        Mounted {
            inner: self,
            argument,
            value: value.into(),
            replace: false,
        }
    }

    /// Adds a layer around this subscriber's handler (inside the App's layers; see
    /// [`layer`](crate::layer)): `bill.layer(Timeout::new(Duration::from_secs(5)))`.
    fn layer(self, layer: impl Layer) -> Layered<Self> {
        Layered {
            inner: self,
            layers: vec![Arc::new(layer)],
        }
    }

    /// Replaces a name the attribute fixed, on purpose.
    fn override_name(self, argument: &'static str, value: impl Into<String>) -> Mounted<Self> {
        Mounted {
            replace: true,
            ..self.name(argument, value)
        }
    }
}

impl<H: Handler> Mount for H {}

macro_rules! name_methods {
    ($($method:ident),* $(,)?) => {
        /// Per-argument shorthands for [`Mount::name`]: `bill.topic(..)` is
        /// `bill.name("topic", ..)`. Which ones a subscriber accepts depends on its broker; a
        /// name its broker does not have is refused by `App::start`.
        pub trait MountNames: Mount {
            $(
                #[doc = concat!("Sets the open `", stringify!($method), " = _` argument.")]
                fn $method(self, value: impl Into<String>) -> Mounted<Self> {
                    self.name(stringify!($method), value)
                }
            )*
        }
    };
}

name_methods!(
    topic,
    queue,
    subject,
    stream,
    channel,
    list,
    group_id,
    group,
    consumer,
    durable,
    queue_group,
    exchange,
    routing_key,
    dead_letter_exchange,
    dead_letter_stream,
    publish,
);

impl<H: Handler> MountNames for H {}

/// A handler with a name given at the mount site; see [`Mount`].
#[derive(Debug, Clone)]
pub struct Mounted<H> {
    inner: H,
    argument: &'static str,
    value: String,
    replace: bool,
}

impl<H: Handler> Handler for Mounted<H> {
    type Broker = H::Broker;

    fn subscription(&self) -> SubscriptionBuilder {
        let builder = self.inner.subscription();
        if self.replace {
            builder.override_name(self.argument, self.value.clone())
        } else {
            builder.mount(self.argument, self.value.clone())
        }
    }

    fn check(&self, cx: &StartCheck<'_>) -> Vec<(&'static str, ExtractError)> {
        self.inner.check(cx)
    }

    fn layers(&self) -> Vec<Arc<dyn Layer>> {
        self.inner.layers()
    }

    fn describe(&self, describe: &mut crate::asyncapi::Describe) {
        self.inner.describe(describe)
    }

    fn call<'a>(
        &'a self,
        msg: &'a Message,
        ctx: &'a Context,
    ) -> impl Future<Output = HandlerResult> + Send + 'a {
        self.inner.call(msg, ctx)
    }
}

impl<H: Handler> Layered<H> {
    /// Adds another layer, inside the ones added before.
    pub fn layer(mut self, layer: impl Layer) -> Self {
        self.layers.push(Arc::new(layer));
        self
    }
}

impl<H: Handler> Handler for Layered<H> {
    type Broker = H::Broker;

    fn subscription(&self) -> SubscriptionBuilder {
        self.inner.subscription()
    }

    fn check(&self, cx: &StartCheck<'_>) -> Vec<(&'static str, ExtractError)> {
        self.inner.check(cx)
    }

    fn layers(&self) -> Vec<Arc<dyn Layer>> {
        let mut layers = self.layers.clone();
        layers.extend(self.inner.layers());
        layers
    }

    fn describe(&self, describe: &mut crate::asyncapi::Describe) {
        self.inner.describe(describe)
    }

    fn call<'a>(
        &'a self,
        msg: &'a Message,
        ctx: &'a Context,
    ) -> impl Future<Output = HandlerResult> + Send + 'a {
        self.inner.call(msg, ctx)
    }
}
