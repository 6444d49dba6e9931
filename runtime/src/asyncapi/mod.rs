//! AsyncAPI 3.0 documentation of an App, generated from its declarations: `app.asyncapi()`.
//!
//! Everything in the document comes from what brook already checked: each subscriber's
//! broker, source and names (as configured at run time, mount-site names included), ack
//! policy, `max_deliveries`, concurrency and output; each broker's address (never its
//! credentials); and what each handler's types say of themselves. With the `asyncapi` feature,
//! payload and result types that derive `schemars::JsonSchema` get their JSON Schema; others
//! still appear, marked as having none.
//!
//! | AsyncAPI | from |
//! |---|---|
//! | `servers` | each broker's [`Broker::server`](crate::Broker::server) |
//! | `channels` | each subscriber's source and each output's destination, with the `kafka`, `amqp` bindings |
//! | `operations` | `receive` per subscriber (`x-brook-ack-policy`, `x-brook-max-deliveries`, ...; `nats`, `mqtt`, `kafka`, `amqp` bindings), `send` per output and per `AsyncApi::publishes` |
//! | `reply` | a subscriber whose handler returns a value answers requests at their `reply_to` |
//! | `components.messages` | payload and result types, content type, `correlation_id`/`reply_to` headers |
//!
//! ```
//! # #[cfg(feature = "asyncapi")] {
//! use brook_runtime::{App, MemoryBroker};
//! let app = App::new(MemoryBroker::new());
//! let yaml = app.asyncapi().title("billing").version(env!("CARGO_PKG_VERSION")).to_yaml();
//! assert!(yaml.contains("title: \"billing\""));
//! # }
//! ```
//!
//! See `docs/asyncapi.md` for serving it (and its HTML view) next to the metrics endpoint.

pub mod describe;
#[cfg(feature = "asyncapi")]
mod document;
#[cfg(feature = "asyncapi")]
mod html;
#[cfg(feature = "asyncapi")]
mod yaml;

pub use describe::{Describe, Shape};
#[cfg(feature = "asyncapi")]
pub use document::{AsyncApi, ASYNCAPI_VERSION};
#[cfg(feature = "asyncapi")]
pub use html::VIEWER_VERSION;
/// The schemars crate brook generates schemas with, for `#[schemars(crate = "brook::asyncapi::schemars")]`
/// in crates that do not depend on it themselves.
#[cfg(feature = "asyncapi")]
pub use schemars;

#[cfg(feature = "asyncapi")]
impl Describe {
    /// The definitions every schema so far refers to, for `components.schemas`.
    pub(crate) fn definitions(&self) -> serde_json::Map<String, serde_json::Value> {
        self.schemas
            .clone()
            .map(|mut g| g.take_definitions(true))
            .unwrap_or_default()
    }
}
