//! A test harness for handlers, in the spirit of FastStream's `TestBroker`: run your App on the
//! in-memory broker, publish, and await what happened to each message, with no sleeps.
//!
//! ```
//! use brook_runtime::testing::TestApp;
//! use brook_runtime::{App, MemoryBroker, Settled};
//! # async fn demo(app: App<MemoryBroker>) -> Result<(), Box<dyn std::error::Error>> {
//! let test = TestApp::start(app).await?;
//! let sent = test.publish(&serde_json::json!({"id": 1}), "orders").await?;
//! let trace = sent.settled().await?;          // waits until acked or rejected (5 s at most)
//! assert_eq!(trace.last(), Some(Settled::Acked));
//! assert_eq!(trace.redeliveries(), 0);
//! test.stop().await?;
//! # Ok(()) }
//! ```

use std::time::Duration;

use serde::Serialize;

use crate::app::{App, RunningApp};
use crate::broker::{Broker, Outgoing};
use crate::error::{AppError, BrokerError};
use crate::memory::{MemoryBroker, Trace};
use crate::message::Message;

mod live;
#[cfg(feature = "conformance")]
pub use live::{assert_stopped, wait_disconnected, wait_ready};
pub use live::{Bodies, Call, Calls, Probe, Seen, SeenError, Watcher};

/// How long the harness waits for a message's fate by default.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(5);

/// A message's fate did not arrive in time.
#[derive(Debug, thiserror::Error)]
#[error("message {id} was not {waiting_for} within {timeout:?}; so far: {trace:?}")]
pub struct WaitTimeout {
    /// The message.
    pub id: u64,
    /// What was awaited.
    pub waiting_for: String,
    /// How long was waited.
    pub timeout: Duration,
    /// What had happened by then.
    pub trace: Trace,
}

/// Fewer messages than awaited were published in time.
#[derive(Debug, thiserror::Error)]
#[error("{wanted} messages were not published to `{destination}` within {DEFAULT_WAIT:?}; so far {}: {published:?}", .published.len())]
pub struct PublishTimeout {
    /// The destination.
    pub destination: String,
    /// How many were awaited.
    pub wanted: usize,
    /// What was published by then.
    pub published: Vec<Outgoing>,
}

/// An [`App`] on a [`MemoryBroker`], started for a test.
pub struct TestApp {
    broker: MemoryBroker,
    running: RunningApp<MemoryBroker>,
}

impl TestApp {
    /// Starts `app` and records every delivery and settlement.
    pub async fn start(app: App<MemoryBroker>) -> Result<TestApp, AppError> {
        let broker = app.broker().clone();
        broker.record();
        let running = app.start().await?;
        Ok(TestApp { broker, running })
    }

    /// The broker, to inspect topics and dead letters.
    pub fn broker(&self) -> &MemoryBroker {
        &self.broker
    }

    /// Publishes `value` (encoded as [`Broker::publish`] would, with a
    /// new `correlation_id`) to `topic`.
    pub async fn publish<T: Serialize + ?Sized>(
        &self,
        value: &T,
        topic: &str,
    ) -> Result<Published, BrokerError> {
        let mut message = Outgoing::encode(value, topic)?;
        message.ensure_correlation_id();
        Ok(self.publish_message(message))
    }

    /// Publishes a prepared message.
    pub fn publish_message(&self, message: Outgoing) -> Published {
        Published {
            id: self.broker.publish_traced(message),
            broker: self.broker.clone(),
        }
    }

    /// Every message published to `destination` since the App started: handlers' outputs,
    /// replies and [`Publisher`](crate::Publisher) publishes, with headers and body.
    pub fn published(&self, destination: &str) -> Vec<Outgoing> {
        self.broker.published(destination)
    }

    /// Waits (at most [`DEFAULT_WAIT`]) until `n` messages have been published to
    /// `destination`; returns them all.
    pub async fn wait_published(
        &self,
        destination: &str,
        n: usize,
    ) -> Result<Vec<Outgoing>, PublishTimeout> {
        tokio::time::timeout(DEFAULT_WAIT, self.broker.wait_for_published(destination, n))
            .await
            .map_err(|_| PublishTimeout {
                destination: destination.to_owned(),
                wanted: n,
                published: self.published(destination),
            })
    }

    /// Sends `value` to `destination` as a request and waits (at most [`DEFAULT_WAIT`]) for
    /// the reply, as [`Broker::request`] does on a real broker.
    pub async fn request<T: Serialize + ?Sized + Sync>(
        &self,
        value: &T,
        destination: &str,
    ) -> Result<Message, BrokerError> {
        self.broker.request(value, destination, DEFAULT_WAIT).await
    }

    /// Stops the App gracefully.
    pub async fn stop(self) -> Result<(), AppError> {
        self.running.stop().await
    }
}

/// A message published through the harness.
pub struct Published {
    id: u64,
    broker: MemoryBroker,
}

impl Published {
    /// The message's id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// What has happened to it so far.
    pub fn trace(&self) -> Trace {
        self.broker.trace(self.id)
    }

    /// Waits (at most [`DEFAULT_WAIT`]) until it is acked or rejected.
    pub async fn settled(&self) -> Result<Trace, WaitTimeout> {
        self.wait_until("acked or rejected", DEFAULT_WAIT, Trace::is_final)
            .await
    }

    /// Waits (at most [`DEFAULT_WAIT`]) until it has been delivered `n` times.
    pub async fn delivered(&self, n: u32) -> Result<Trace, WaitTimeout> {
        self.wait_until(&format!("delivered {n} times"), DEFAULT_WAIT, |t| {
            t.deliveries >= n
        })
        .await
    }

    /// Waits until `done` holds for its trace, at most `timeout`.
    pub async fn wait_until(
        &self,
        waiting_for: &str,
        timeout: Duration,
        done: impl FnMut(&Trace) -> bool,
    ) -> Result<Trace, WaitTimeout> {
        tokio::time::timeout(timeout, self.broker.wait_for_trace(self.id, done))
            .await
            .map_err(|_| WaitTimeout {
                id: self.id,
                waiting_for: waiting_for.to_owned(),
                timeout,
                trace: self.trace(),
            })
    }
}
