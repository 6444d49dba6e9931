//! Helpers for tests of an App on a real broker: [`Seen`], what its handlers saw; and (feature
//! `conformance`) the health checks every broker crate's tests run on such an App.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::mpsc;

/// What handlers record, for a test to await: a `static` a handler records into (handlers are
/// plain functions, so they reach a test only through such a place), and the test that watches
/// it awaits each record with a timeout, with no sleeps.
///
/// One test watches a `Seen` at a time: give each test's handler its own.
///
/// ```
/// use std::time::Duration;
/// use brook_runtime::testing::Seen;
///
/// static SEEN: Seen = Seen::new();
///
/// // In the handler:
/// fn handle(body: String) {
///     SEEN.record(body);
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let mut seen = SEEN.watch(); // before the App starts, so nothing is missed
/// handle("hello".to_owned());
/// assert_eq!(seen.next(Duration::from_secs(5)).await.unwrap(), "hello");
/// # }
/// ```
#[derive(Debug)]
pub struct Seen<T = String> {
    watcher: Mutex<Option<mpsc::UnboundedSender<T>>>,
}

impl<T> Seen<T> {
    /// Nothing recorded and no one watching; `const`, for a `static`.
    pub const fn new() -> Self {
        Seen {
            watcher: Mutex::new(None),
        }
    }

    /// Starts watching: what is recorded from now on goes to the returned [`Watcher`] (a
    /// previous watcher sees no more).
    pub fn watch(&self) -> Watcher<T> {
        let (tx, rx) = mpsc::unbounded_channel();
        *self.watcher.lock().unwrap_or_else(PoisonError::into_inner) = Some(tx);
        Watcher { rx }
    }

    /// Hands `item` to the watcher; dropped if no one watches.
    pub fn record(&self, item: T) {
        if let Some(tx) = self
            .watcher
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
        {
            // A watcher that is gone has finished its test: nothing to tell.
            let _ = tx.send(item);
        }
    }
}

impl<T> Default for Seen<T> {
    fn default() -> Self {
        Seen::new()
    }
}

/// A test's view of a [`Seen`]: [`Seen::watch`].
#[derive(Debug)]
pub struct Watcher<T = String> {
    rx: mpsc::UnboundedReceiver<T>,
}

impl<T> Watcher<T> {
    /// The next record, waiting for it at most `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> Result<T, SeenError> {
        match tokio::time::timeout(timeout, self.rx.recv()).await {
            Ok(Some(item)) => Ok(item),
            Ok(None) => Err(SeenError::Replaced),
            Err(_) => Err(SeenError::Timeout(timeout)),
        }
    }
}

/// [`Watcher::next`] got nothing.
#[derive(Debug, thiserror::Error)]
pub enum SeenError {
    /// Nothing was recorded in time.
    #[error("nothing recorded within {0:?}")]
    Timeout(Duration),
    /// Another watcher took over ([`Seen::watch`] was called again), so this one sees no more.
    #[error("no longer watched: another watcher took over")]
    Replaced,
}

// The health checks: like the conformance suite's, they panic (showing the last health) when
// what they wait for does not come within `timeout`.
#[cfg(feature = "conformance")]
mod checks {
    use std::time::Duration;

    use brook_caps::BrokerKind;

    use crate::health::{Health, HealthHandle};

    /// Waits until `broker` is connected and the App ready (every subscriber consuming);
    /// returns that health.
    pub async fn wait_ready(probe: &HealthHandle, broker: BrokerKind, timeout: Duration) -> Health {
        probe
            .wait_for(timeout, |h| {
                h.connected(broker) == Some(true) && h.is_ready()
            })
            .await
            .unwrap_or_else(|e| panic!("{broker:?} not connected and ready: {e}"))
    }

    /// Waits until `broker` is not connected (a cut connection, a queue gone), and asserts what
    /// the App shows then: not ready, but alive (retrying, no subscriber ended). Returns that
    /// health.
    pub async fn wait_disconnected(
        probe: &HealthHandle,
        broker: BrokerKind,
        timeout: Duration,
    ) -> Health {
        let health = probe
            .wait_for(timeout, |h| h.connected(broker) == Some(false))
            .await
            .unwrap_or_else(|e| panic!("{broker:?} not disconnected: {e}"));
        assert!(!health.is_ready(), "ready while disconnected: {health:?}");
        assert!(health.is_alive(), "a subscriber ended: {health:?}");
        health
    }

    /// Asserts what the health of an App that stopped shows: `broker` not connected, not
    /// ready, and every subscriber (there is one at least) ended because the App stopped.
    #[track_caller]
    pub fn assert_stopped(probe: &HealthHandle, broker: BrokerKind) {
        let health = probe.health();
        assert_eq!(
            health.connected(broker),
            Some(false),
            "after stop: {health:?}"
        );
        assert!(!health.is_ready(), "after stop: {health:?}");
        assert!(!health.subscribers.is_empty(), "{health:?}");
        for sub in &health.subscribers {
            assert_eq!(sub.ended.as_deref(), Some("the App stopped"), "{sub:?}");
        }
    }
}

#[cfg(feature = "conformance")]
pub use checks::{assert_stopped, wait_disconnected, wait_ready};

/// A handler built at run time for tests of a broker crate: it subscribes as `subscription`
/// says (any source, any policy) and hands every body it is given to the receiver [`new`]
/// returns, then succeeds.
///
/// [`new`]: Bodies::new
///
/// ```
/// use brook_runtime::testing::Bodies;
/// use brook_runtime::{kind, App, BrokerKind, MemoryBroker, Subscription};
/// let (handler, bodies) = Bodies::<kind::Memory>::new(
///     Subscription::new(BrokerKind::Memory, "seen").arg("topic", "orders"),
/// );
/// let app = App::new(MemoryBroker::new()).subscribe(handler);
/// # drop((app, bodies));
/// ```
pub struct Bodies<K> {
    subscription: crate::SubscriptionBuilder,
    tx: mpsc::UnboundedSender<bytes::Bytes>,
    kind: std::marker::PhantomData<K>,
}

impl<K: crate::kind::Kind> Bodies<K> {
    /// The handler, and where the bodies it is given arrive.
    pub fn new(
        subscription: crate::SubscriptionBuilder,
    ) -> (Self, mpsc::UnboundedReceiver<bytes::Bytes>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let handler = Bodies {
            subscription,
            tx,
            kind: std::marker::PhantomData,
        };
        (handler, rx)
    }
}

impl<K: crate::kind::Kind> crate::Handler for Bodies<K> {
    type Broker = K;

    fn subscription(&self) -> crate::SubscriptionBuilder {
        self.subscription.clone()
    }

    async fn call(&self, msg: &crate::Message, _: &crate::Context) -> crate::HandlerResult {
        // The test may have stopped listening: that is its business.
        let _ = self.tx.send(msg.body().clone());
        Ok(None)
    }
}

/// What a handler saw of one message, as a [`Probe`] records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// The message's `correlation_id`.
    pub correlation_id: Option<String>,
    /// The message's `reply_to`.
    pub reply_to: Option<String>,
    /// The broker's delivery count, where it keeps one.
    pub delivery_count: Option<u32>,
}

/// A handler's state for tests of outputs and replies: each call is recorded (see [`Calls`]),
/// then the handler waits at a gate for a permit the test gives, so a test can hold a
/// handler back (a late reply, an unsettled input) and let it go.
///
/// ```
/// use std::time::Duration;
/// use brook_runtime::testing::Probe;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let (probe, mut calls, gate) = Probe::new(0);
/// let app = brook_runtime::App::new(brook_runtime::MemoryBroker::new()).state(probe);
/// // A handler with `probe: State<Probe>` calls `probe.pass(msg).await?` and waits there;
/// // the test reads `calls.next(Duration::from_secs(5)).await` and lets it go with
/// gate.add_permits(Probe::OPEN);
/// assert!(calls.next(Duration::from_millis(10)).await.is_none(), "no handler ran");
/// # drop(app);
/// # }
/// ```
#[derive(Debug)]
pub struct Probe {
    calls: mpsc::UnboundedSender<Call>,
    gate: std::sync::Arc<tokio::sync::Semaphore>,
}

/// The calls a [`Probe`] recorded, in order.
#[derive(Debug)]
pub struct Calls(mpsc::UnboundedReceiver<Call>);

impl Probe {
    /// Permits enough for any test: the gate left open.
    pub const OPEN: usize = 1_000_000;

    /// A probe whose gate holds `permits`; the calls it records; the gate, to add permits.
    pub fn new(permits: usize) -> (Self, Calls, std::sync::Arc<tokio::sync::Semaphore>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(permits));
        let probe = Probe {
            calls: tx,
            gate: gate.clone(),
        };
        (probe, Calls(rx), gate)
    }

    /// Records `msg`, then waits for a permit (each call takes one).
    pub async fn pass(&self, msg: &crate::Message) -> Result<(), tokio::sync::AcquireError> {
        // The test may have stopped listening: the gate still applies.
        let _ = self.calls.send(Call {
            correlation_id: msg.correlation_id().map(str::to_owned),
            reply_to: msg.reply_to().map(str::to_owned),
            delivery_count: msg.delivery_count(),
        });
        self.gate.acquire().await?.forget();
        Ok(())
    }
}

impl Calls {
    /// The next call, if one comes within `timeout` (`None` also once the probe is gone).
    pub async fn next(&mut self, timeout: Duration) -> Option<Call> {
        tokio::time::timeout(timeout, self.0.recv())
            .await
            .ok()
            .flatten()
    }
}
