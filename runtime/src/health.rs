//! What a running App can say about each subscriber, for readiness and liveness probes:
//! [`RunningApp::health`](crate::RunningApp::health).
//!
//! The engine counts each message with a few relaxed atomic operations and reads no clock;
//! the time of the last message is taken by the App's health sampler once a second (so it is
//! accurate to about a second), which keeps the per-message cost out of the hot path.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use brook_caps::BrokerKind;

/// One subscriber's counters, shared by its consumer loop and the App.
#[derive(Debug, Default)]
pub(crate) struct HealthCell {
    received: AtomicU64,
    failed_in_a_row: AtomicU32,
    restarts: AtomicU32,
    consuming: AtomicBool,
    ended: Mutex<Option<String>>,
    last_seen: Mutex<Sampled>,
}

#[derive(Debug, Default)]
struct Sampled {
    received: u64,
    at: Option<SystemTime>,
}

impl HealthCell {
    #[inline]
    pub(crate) fn received(&self) {
        self.received.fetch_add(1, Ordering::Relaxed);
    }

    /// A handler run ended: `ok` resets the run of failures.
    #[inline]
    pub(crate) fn handled(&self, ok: bool) {
        if ok {
            if self.failed_in_a_row.load(Ordering::Relaxed) != 0 {
                self.failed_in_a_row.store(0, Ordering::Relaxed);
            }
        } else {
            self.failed_in_a_row.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn consuming(&self, on: bool) {
        self.consuming.store(on, Ordering::Relaxed);
    }

    pub(crate) fn received_count(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// Consuming again after a restart.
    pub(crate) fn restarted(&self) {
        *self.ended.lock().unwrap_or_else(PoisonError::into_inner) = None;
        self.restarts.fetch_add(1, Ordering::Relaxed);
        self.consuming(true);
    }

    pub(crate) fn ended(&self, reason: String) {
        self.consuming(false);
        *self.ended.lock().unwrap_or_else(PoisonError::into_inner) = Some(reason);
    }

    /// Notes the time if messages arrived since the last sample.
    pub(crate) fn sample(&self, now: SystemTime) {
        let received = self.received.load(Ordering::Relaxed);
        let mut last = self
            .last_seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if received != last.received {
            *last = Sampled {
                received,
                at: Some(now),
            };
        }
    }

    pub(crate) fn report(
        &self,
        subscriber: &str,
        broker: BrokerKind,
        source: &str,
    ) -> SubscriberHealth {
        self.sample(SystemTime::now());
        let last = self
            .last_seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let ended = self
            .ended
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        SubscriberHealth {
            subscriber: subscriber.to_owned(),
            broker,
            source: source.to_owned(),
            consuming: self.consuming.load(Ordering::Relaxed),
            ended,
            received: self.received.load(Ordering::Relaxed),
            last_message_at: last.at,
            consecutive_failures: self.failed_in_a_row.load(Ordering::Relaxed),
            restarts: self.restarts.load(Ordering::Relaxed),
        }
    }
}

/// How often the App samples the time of each subscriber's last message.
pub(crate) const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// A subscriber's state, as [`RunningApp::health`](crate::RunningApp::health) reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubscriberHealth {
    /// The subscriber's name.
    pub subscriber: String,
    /// Its broker.
    pub broker: BrokerKind,
    /// Its topic / queue / subject / channel / stream.
    pub source: String,
    /// Whether its consumer is running (subscribed and not ended).
    pub consuming: bool,
    /// Why it ended, if it did (the App is stopping or has stopped then).
    pub ended: Option<String>,
    /// Messages received since the App started.
    pub received: u64,
    /// When the last message arrived (to about a second), if any did.
    pub last_message_at: Option<SystemTime>,
    /// Handler runs that failed in a row (errors, panics, undecodable payloads, outputs that
    /// could not be published); 0 after a success.
    pub consecutive_failures: u32,
    /// How many times [`App::restart_ended`](crate::App::restart_ended) subscribed it again.
    pub restarts: u32,
}

/// The App's health: its brokers' connections and each subscriber.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Health {
    /// Each broker of the App and whether it is connected, where the client can tell
    /// (`None`: it cannot).
    pub brokers: Vec<(BrokerKind, Option<bool>)>,
    /// Each subscriber.
    pub subscribers: Vec<SubscriberHealth>,
}

impl Health {
    /// Whether `broker` is connected: `None` if the App has no such broker or its client
    /// cannot tell.
    pub fn connected(&self, broker: BrokerKind) -> Option<bool> {
        self.brokers
            .iter()
            .find(|(kind, _)| *kind == broker)
            .and_then(|(_, connected)| *connected)
    }

    /// The subscriber named `name`, if the App has it.
    pub fn subscriber(&self, name: &str) -> Option<&SubscriberHealth> {
        self.subscribers.iter().find(|s| s.subscriber == name)
    }

    /// Ready: every subscriber consuming and no broker known to be disconnected.
    pub fn is_ready(&self) -> bool {
        self.subscribers.iter().all(|s| s.consuming)
            && self
                .brokers
                .iter()
                .all(|(_, connected)| *connected != Some(false))
    }

    /// Alive: no subscriber has ended (a process whose subscriber ended should be restarted;
    /// `App::run` returns then anyway).
    pub fn is_alive(&self) -> bool {
        self.subscribers.iter().all(|s| s.ended.is_none())
    }
}

/// Shared handle of one subscriber's cell.
pub(crate) type SharedHealth = Arc<HealthCell>;

type Connected = dyn Fn() -> Vec<(BrokerKind, Option<bool>)> + Send + Sync;

/// The health of a running App, cheap to clone: [`RunningApp::health_handle`](crate::RunningApp::health_handle).
#[derive(Clone)]
pub struct HealthHandle {
    subscribers: Arc<[(String, BrokerKind, String, SharedHealth)]>,
    brokers: Arc<Connected>,
}

impl HealthHandle {
    pub(crate) fn new(
        subscribers: Vec<(String, BrokerKind, String, SharedHealth)>,
        brokers: impl Fn() -> Vec<(BrokerKind, Option<bool>)> + Send + Sync + 'static,
    ) -> Self {
        HealthHandle {
            subscribers: subscribers.into(),
            brokers: Arc::new(brokers),
        }
    }

    /// The App's health now.
    pub fn health(&self) -> Health {
        Health {
            brokers: (self.brokers)(),
            subscribers: self
                .subscribers
                .iter()
                .map(|(name, broker, source, cell)| cell.report(name, *broker, source))
                .collect(),
        }
    }

    /// Waits until `want` holds of the App's health, looking every 50 ms for at most
    /// `timeout` (health changes as the App's sampler and brokers notice, so there is no
    /// event to await): a startup gate, a test's "until the broker is back".
    ///
    /// Returns that health, or [`HealthTimeout`] with the last one seen.
    ///
    /// ```
    /// # async fn demo(running: brook_runtime::RunningApp<brook_runtime::MemoryBroker>) {
    /// use std::time::Duration;
    /// let health = running
    ///     .health_handle()
    ///     .wait_for(Duration::from_secs(10), |h| h.is_ready())
    ///     .await
    ///     .expect("ready within 10 s");
    /// # }
    /// ```
    pub async fn wait_for(
        &self,
        timeout: Duration,
        want: impl Fn(&Health) -> bool,
    ) -> Result<Health, HealthTimeout> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let health = self.health();
            if want(&health) {
                return Ok(health);
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Err(HealthTimeout {
                    timeout,
                    last: Box::new(health),
                });
            }
            tokio::time::sleep((deadline - now).min(Duration::from_millis(50))).await;
        }
    }
}

/// [`HealthHandle::wait_for`] gave up: what it waited for did not happen in time.
#[derive(Debug, thiserror::Error)]
#[error("the App's health did not get there within {timeout:?}; last seen: {last:?}")]
pub struct HealthTimeout {
    /// How long it waited.
    pub timeout: Duration,
    /// The health it saw last.
    pub last: Box<Health>,
}

impl std::fmt::Debug for HealthHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HealthHandle")
            .field("subscribers", &self.subscribers.len())
            .finish_non_exhaustive()
    }
}
