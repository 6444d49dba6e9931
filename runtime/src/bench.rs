//! Shared pieces of the throughput benchmarks, so every broker measures brook the same way:
//! the same ~100-byte JSON payload, the same `Ack` subscriber that decodes it, the same report
//! line. Each broker crate's bench adds the raw-client loop it is compared against, measured
//! in the same run.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use brook_caps::{AckPolicy, Value};
use tokio::sync::Notify;

use crate::app::App;
use crate::broker::{Accepts, Broker};
use crate::codec;
use crate::error::AppError;
use crate::extract::Context;
use crate::handler::kind::Kind;
use crate::handler::Handler;
use crate::message::Message;
use crate::subscription::{Subscription, SubscriptionBuilder};

/// The benchmark's message: what a raw loop decodes too.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct BenchOrder {
    /// Sequence number.
    pub id: u64,
    /// Customer.
    pub customer: String,
    /// Amount.
    pub amount: f64,
    /// Currency.
    pub currency: String,
    /// Padding to about 100 bytes.
    pub note: String,
}

/// Message `i` of a run, encoded: about 100 bytes of JSON.
pub fn payload(i: u64) -> Vec<u8> {
    let order = BenchOrder {
        id: i,
        customer: format!("customer-{:06}", i % 100_000),
        amount: (i % 1000) as f64 * 1.25,
        currency: "EUR".to_owned(),
        note: "brook benchmark payload".to_owned(),
    };
    serde_json::to_vec(&order).unwrap_or_default()
}

/// Decodes a payload the way both loops must (so the raw loop does the same work).
pub fn decode(body: &[u8]) -> Option<BenchOrder> {
    serde_json::from_slice(body).ok()
}

struct Counting<K> {
    sub: SubscriptionBuilder,
    seen: Arc<AtomicU64>,
    target: u64,
    done: Arc<Notify>,
    first: Arc<OnceLock<Instant>>,
    kind: std::marker::PhantomData<K>,
}

impl<K: Kind> Handler for Counting<K> {
    type Broker = K;

    fn subscription(&self) -> SubscriptionBuilder {
        self.sub.clone()
    }

    async fn call(&self, msg: &Message, _: &Context) -> crate::HandlerResult {
        if self.first.get().is_none() {
            let _ = self.first.set(Instant::now());
        }
        let order: BenchOrder = codec::decode(msg.body(), msg.content_type())?;
        std::hint::black_box(order);
        if self.seen.fetch_add(1, Ordering::Relaxed) + 1 == self.target {
            self.done.notify_one();
        }
        Ok(None)
    }
}

/// Runs an App with one `ack_policy = Ack` subscriber on `source` (subscriber arguments naming
/// a source that already holds `n` messages) until it has handled `n`; returns the time from
/// start to the `n`-th message handled, connection and subscription included.
pub async fn run_brook<B, K>(
    broker: B,
    source: Vec<(&'static str, Value)>,
    n: u64,
    concurrency: u32,
) -> Result<Duration, AppError>
where
    B: Broker + Accepts<K>,
    K: Kind,
{
    let started = Instant::now();
    let run = run_brook_until::<B, K, _>(broker, source, n, concurrency, async {}).await?;
    Ok(run.handled - started)
}

/// When the moments of a [`run_brook_until`] run happened.
#[derive(Clone, Copy, Debug)]
pub struct BrookRun {
    /// The handler was called for the first time.
    pub first: Instant,
    /// The handler finished the `n`-th message.
    pub handled: Instant,
    /// `settled` (the caller's check that the broker has every settlement) returned.
    pub settled: Instant,
}

impl BrookRun {
    /// From the first message received to the last one settled on the broker.
    pub fn window(&self) -> Duration {
        self.settled.saturating_duration_since(self.first)
    }
}

/// [`run_brook`] for brokers whose settlements reach the server after the handler returned (a
/// settlement pipeline): once the `n`-th message is handled, awaits `settled` (e.g. polls the
/// broker until nothing is left unacknowledged) while the App still runs, then stops the App.
pub async fn run_brook_until<B, K, F>(
    broker: B,
    source: Vec<(&'static str, Value)>,
    n: u64,
    concurrency: u32,
    settled: F,
) -> Result<BrookRun, AppError>
where
    B: Broker + Accepts<K>,
    K: Kind,
    F: Future<Output = ()>,
{
    let mut builder = Subscription::new(K::KIND, "bench");
    for (name, value) in source {
        builder = builder.arg(name, value);
    }
    let sub = builder
        .arg("ack_policy", AckPolicy::Ack)
        .arg("concurrency", concurrency);
    sub.clone().build()?;
    let done = Arc::new(Notify::new());
    let first = Arc::new(OnceLock::new());
    let handler = Counting::<K> {
        sub,
        seen: Arc::new(AtomicU64::new(0)),
        target: n,
        done: done.clone(),
        first: first.clone(),
        kind: std::marker::PhantomData,
    };
    let running = App::new(broker).subscribe(handler).start().await?;
    done.notified().await;
    let handled = Instant::now();
    settled.await;
    let settled = Instant::now();
    running.stop().await?;
    Ok(BrookRun {
        first: first.get().copied().unwrap_or(handled),
        handled,
        settled,
    })
}

/// Messages per second.
pub fn rate(n: u64, elapsed: Duration) -> f64 {
    n as f64 / elapsed.as_secs_f64().max(1e-9)
}

/// The report line every broker bench prints: both rates and brook's share of the raw rate.
pub fn report(what: &str, n: u64, raw: Duration, brook: Duration) -> String {
    let (r, b) = (rate(n, raw), rate(n, brook));
    format!(
        "{what}: {n} msgs | raw {r:>10.0} msg/s | brook {b:>10.0} msg/s | brook/raw = {:.2}",
        b / r
    )
}
