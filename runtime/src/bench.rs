//! Shared pieces of the throughput benchmarks, so every broker measures brook the same way:
//! the same ~100-byte JSON payload, the same `Ack` subscriber that decodes it, the same
//! measurement and the same report lines. Each broker crate's bench adds the raw-client loop it
//! is compared against, measured in the same run.
//!
//! # How it is measured
//! - **Window**: each side (raw loop and brook) is timed from the *first message received* to
//!   the *N-th acknowledged*. Connecting, joining a group and subscribing happen before the
//!   first message and so stay outside the window. How "acknowledged" is observed depends on
//!   the broker (each bench's module doc says it): where the broker can be asked (Redis
//!   `XPENDING`, JetStream consumer info) the bench polls it once the N-th is handled
//!   ([`run_brook_until`]'s `settled`); otherwise the raw loop's own ack and brook's handler or
//!   [`App`] stop mark the end ([`BrookRun`]).
//! - **CPU**: the process CPU time ([`cpu`], all threads, user + system) used in the same
//!   window ([`Mark`] at both ends): connecting, joining and the App's start stay outside, the
//!   bench's own settlement polls (where it polls the broker) are inside for both sides.
//!   Wall-clock rates on a shared machine swing with other load; CPU per message shows what
//!   each side costs.
//! - **Report**: [`Round::line`] per round (both rates, both CPU µs/msg, brook/raw of the rate
//!   and of the CPU) and [`summary`] per tokio flavour, with medians over the rounds, so one
//!   noisy round does not decide. Benches run both [`FLAVOURS`] and alternate which side goes
//!   first, so neither always meets the warmer broker.

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
    first: Arc<OnceLock<Mark>>,
    kind: std::marker::PhantomData<K>,
}

impl<K: Kind> Handler for Counting<K> {
    type Broker = K;

    fn subscription(&self) -> SubscriptionBuilder {
        self.sub.clone()
    }

    async fn call(&self, msg: &Message, _: &Context) -> crate::HandlerResult {
        if self.first.get().is_none() {
            let _ = self.first.set(Mark::now());
        }
        let order: BenchOrder = codec::decode(msg.body(), msg.content_type())?;
        std::hint::black_box(order);
        if self.seen.fetch_add(1, Ordering::Relaxed) + 1 == self.target {
            self.done.notify_one();
        }
        Ok(None)
    }
}

/// When the moments of a [`run_brook_until`] run happened.
#[derive(Clone, Copy, Debug)]
pub struct BrookRun {
    /// The handler was called for the first time.
    pub first: Mark,
    /// The handler finished the `n`-th message.
    pub handled: Instant,
    /// `settled` (the caller's check that the broker has every settlement) returned.
    pub settled: Mark,
    /// The App's [`stop`](crate::RunningApp::stop) returned: every settlement brook still
    /// held has been sent and the connections are closed.
    pub stopped: Mark,
}

impl BrookRun {
    /// From the first message received to the last one settled on the broker (as `settled`
    /// saw it; with a no-op `settled`, to the `n`-th handled).
    pub fn window(&self) -> Side {
        self.first.to(self.settled)
    }

    /// From the first message received to the App's stop having returned: the window for
    /// brokers that cannot be asked whether every acknowledgement arrived (RabbitMQ without
    /// the management API), since the stop flushes brook's settlements. Includes closing the
    /// connection.
    pub fn until_stopped(&self) -> Side {
        self.first.to(self.stopped)
    }
}

/// Runs an App with one `ack_policy = Ack` subscriber on `source` (subscriber arguments naming
/// a source that already holds `n` messages; `concurrency` as given) until it has handled `n`.
/// The subscriber decodes every message as a [`BenchOrder`] and records when it was first
/// called ([`BrookRun::first`], the "first received"). Once the `n`-th is handled it awaits
/// `settled` while the App still runs (e.g. polls the broker until nothing is left
/// unacknowledged, for brokers whose settlements reach the server after the handler
/// returned; `async {}` where there is nothing to wait for), then stops the App.
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
    let settled = Mark::now();
    running.stop().await?;
    let stopped = Mark::now();
    Ok(BrookRun {
        first: first.get().copied().unwrap_or(settled),
        handled,
        settled,
        stopped,
    })
}

/// Messages per second.
pub fn rate(n: u64, elapsed: Duration) -> f64 {
    n as f64 / elapsed.as_secs_f64().max(1e-9)
}

/// Microseconds of `d` per message.
pub fn per_msg(d: Duration, n: u64) -> f64 {
    d.as_secs_f64() * 1e6 / n.max(1) as f64
}

/// CPU time this process has used so far: user + system, all threads
/// (`CLOCK_PROCESS_CPUTIME_ID`, nanosecond resolution); zero where the clock is unavailable.
pub fn cpu() -> Duration {
    #[cfg(unix)]
    {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid, writable timespec.
        if unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) } == 0 {
            return Duration::new(
                u64::try_from(ts.tv_sec).unwrap_or(0),
                u32::try_from(ts.tv_nsec).unwrap_or(0),
            );
        }
    }
    Duration::ZERO
}

/// The tokio runtime flavours every bench runs, in this order.
pub const FLAVOURS: [&str; 2] = ["current_thread", "multi_thread"];

/// A runtime of `flavour` (one of [`FLAVOURS`]; anything else is `multi_thread`), all drivers
/// enabled.
pub fn runtime(flavour: &str) -> std::io::Result<tokio::runtime::Runtime> {
    match flavour {
        "current_thread" => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    }
    .enable_all()
    .build()
}

/// A moment of a side's run, with the process CPU time used by then: the two ends of a
/// window ([`Mark::to`]).
#[derive(Clone, Copy, Debug)]
pub struct Mark {
    /// When.
    pub at: Instant,
    /// [`cpu`] then.
    pub cpu: Duration,
}

impl Mark {
    /// Now.
    pub fn now() -> Mark {
        Mark {
            at: Instant::now(),
            cpu: cpu(),
        }
    }

    /// The window from this mark to `end`, and the CPU time used in it.
    pub fn to(self, end: Mark) -> Side {
        Side {
            window: end.at.saturating_duration_since(self.at),
            cpu: end.cpu.saturating_sub(self.cpu),
        }
    }

    /// The window from this mark to now.
    pub fn until_now(self) -> Side {
        self.to(Mark::now())
    }
}

/// One side's result in a round.
#[derive(Clone, Copy, Debug)]
pub struct Side {
    /// From the first message received to the `n`-th acknowledged.
    pub window: Duration,
    /// Process CPU time used in the window (all threads).
    pub cpu: Duration,
}

impl Side {
    /// A side that was not run (a bench asked to run one side only, for profiling): one second
    /// of each, so the ratios stay finite.
    pub const SKIPPED: Side = Side {
        window: Duration::from_secs(1),
        cpu: Duration::from_secs(1),
    };

    /// Messages per second over the window.
    pub fn rate(&self, n: u64) -> f64 {
        rate(n, self.window)
    }

    /// CPU microseconds per message.
    pub fn cpu_per_msg(&self, n: u64) -> f64 {
        per_msg(self.cpu, n)
    }
}

/// Both sides of one round, on the same data size and runtime.
#[derive(Clone, Copy, Debug)]
pub struct Round {
    /// The hand-written client loop.
    pub raw: Side,
    /// brook.
    pub brook: Side,
}

impl Round {
    /// brook's rate over the raw loop's (> 1: brook is faster).
    pub fn rate_ratio(&self) -> f64 {
        self.raw.window.as_secs_f64() / self.brook.window.as_secs_f64().max(1e-9)
    }

    /// brook's CPU time over the raw loop's (> 1: brook costs more).
    pub fn cpu_ratio(&self) -> f64 {
        self.brook.cpu.as_secs_f64() / self.raw.cpu.as_secs_f64().max(1e-9)
    }

    /// The line every bench prints per round: both rates, both CPU µs/msg, both ratios.
    pub fn line(&self, what: &str, n: u64) -> String {
        line(
            &format!("{what}: {n} msgs"),
            [
                self.raw.rate(n),
                self.raw.cpu_per_msg(n),
                self.brook.rate(n),
                self.brook.cpu_per_msg(n),
                self.rate_ratio(),
                self.cpu_ratio(),
            ],
        )
    }
}

fn line(what: &str, [raw, raw_cpu, brook, brook_cpu, rate, cpu]: [f64; 6]) -> String {
    format!(
        "{what} | raw {raw:>8.0} msg/s {raw_cpu:>5.1} µs/msg | brook {brook:>8.0} msg/s {brook_cpu:>5.1} µs/msg | brook/raw rate {rate:.2}, CPU {cpu:.2}"
    )
}

/// The median of `values` (the mean of the middle two for an even count; NaN for none).
pub fn median(values: impl IntoIterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.into_iter().collect();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        len if len % 2 == 1 => v[len / 2],
        len => (v[len / 2 - 1] + v[len / 2]) / 2.0,
    }
}

/// The summary line every bench prints per flavour: over `rounds`, the median of each rate,
/// each CPU µs/msg and each ratio (each a median of its own, so they need not come from the
/// same round).
pub fn summary(what: &str, n: u64, rounds: &[Round]) -> String {
    let med = |f: &dyn Fn(&Round) -> f64| median(rounds.iter().map(f));
    line(
        &format!("{what}, {n} msgs, median of {}", rounds.len()),
        [
            med(&|r| r.raw.rate(n)),
            med(&|r| r.raw.cpu_per_msg(n)),
            med(&|r| r.brook.rate(n)),
            med(&|r| r.brook.cpu_per_msg(n)),
            med(&Round::rate_ratio),
            med(&Round::cpu_ratio),
        ],
    )
}
