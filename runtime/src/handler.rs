//! The handler trait `#[subscriber]` implements, and what a handler may return.

use std::future::Future;

use crate::error::{ExtractError, SubscriptionError};
use crate::extract::Context;
use crate::message::Message;
use crate::subscription::Subscription;

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

    /// The subscriber's validated arguments.
    fn subscription(&self) -> Result<Subscription, SubscriptionError>;

    /// Extract the arguments from `msg` and run the function.
    fn call<'a>(
        &'a self,
        msg: &'a Message,
        ctx: &'a Context,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send + 'a;
}

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
}

/// What a handler function may return: `()` or `Result<(), E>` with `E: Into<anyhow::Error>`.
pub trait IntoHandlerResult {
    /// Convert to the engine's view.
    fn into_handler_result(self) -> Result<(), HandlerError>;
}

impl IntoHandlerResult for () {
    fn into_handler_result(self) -> Result<(), HandlerError> {
        Ok(())
    }
}

impl<E: Into<anyhow::Error>> IntoHandlerResult for Result<(), E> {
    fn into_handler_result(self) -> Result<(), HandlerError> {
        self.map_err(|e| HandlerError::Failed(e.into()))
    }
}
