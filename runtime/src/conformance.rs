//! The conformance suite: one set of behaviour tests that every broker runs through a small
//! [`Adapter`], so each policy means the same thing on every broker.
//!
//! Each test runs a real [`App`] with a scripted handler, then looks at the broker's state
//! after the App stopped: what a fresh consumer of the same source would still receive
//! ([`Adapter::remaining`]) and what was dead-lettered ([`Adapter::dead_letters`]). A broker
//! crate runs the whole suite with one line in its tests, declaring the shape of its test
//! source (the arguments that choose it, names as `_`); which tests apply to that source comes
//! from `brook-caps`, and those that do not are generated as skipped (`#[ignore]`, visible in
//! the output):
//!
//! ```ignore
//! brook_runtime::conformance_tests!(MyAdapter::new(); broker = rabbit, queue = _, declare = false);
//! ```
//!
//! Waits are bounded ([`WAIT`]); nothing sleeps to synchronize.

use std::borrow::Cow;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use brook_caps::{AckPolicy, DeliveryCount, Features, Source, Value};
use bytes::Bytes;
use tokio::sync::{mpsc, Barrier, Notify};

use crate::app::App;
use crate::broker::{Accepts, Broker, Outgoing};
use crate::codec;
use crate::error::BrokerError;
use crate::extract::Context;
use crate::handler::kind::Kind;
use crate::handler::{Handler, HandlerError};
use crate::interrupt::{Ack, Nack, Reject};
use crate::message::{Message, SettleReport, Settled, Settlement};
use crate::subscription::{Subscription, SubscriptionBuilder};

/// The longest any step of a conformance test waits.
pub const WAIT: Duration = Duration::from_secs(15);

/// A source made for one test: the subscriber arguments that name it (no `ack_policy`), and
/// where to publish so that it receives.
#[derive(Clone, Debug)]
pub struct TestSource {
    /// Subscriber arguments naming the source (and group, where the broker needs one).
    pub args: Vec<(Cow<'static, str>, Value)>,
    /// Where to publish.
    pub destination: String,
}

/// A name no other test and no earlier run uses: `prefix`, the process id, the time in
/// nanoseconds and a counter, joined by `separator` (brokers differ in what a name may hold).
/// Broker crates' tests build their queue / topic / stream names with it.
pub fn unique_name(prefix: &str, separator: char) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let pid = std::process::id();
    format!("{prefix}{separator}{pid}{separator}{nanos}{separator}{n}")
}

/// What a broker crate implements to run the suite against its real broker.
pub trait Adapter: Send + Sync + 'static {
    /// The broker type.
    type Broker: Broker + Accepts<Self::Kind>;
    /// The broker, as a type.
    type Kind: Kind;

    /// A client for one test.
    fn broker(&self) -> impl Future<Output = Self::Broker> + Send;

    /// Creates a source no other test uses (fresh names, so tests run in parallel and reruns
    /// see nothing old).
    fn fresh_source(
        &self,
        test: &str,
    ) -> impl Future<Output = Result<TestSource, BrokerError>> + Send;

    /// The payloads a fresh consumer of `source` would receive now, in order (the App has
    /// stopped). May consume them.
    fn remaining(
        &self,
        source: &TestSource,
    ) -> impl Future<Output = Result<Vec<Bytes>, BrokerError>> + Send;

    /// The payloads rejected into the broker's dead-letter place, oldest first.
    fn dead_letters(
        &self,
        source: &TestSource,
    ) -> impl Future<Output = Result<Vec<Bytes>, BrokerError>> + Send;

    /// How long the client library's own tasks may outlive a closed connection before they
    /// notice and end (lapin's heartbeat task sleeps up to half the heartbeat interval).
    /// [`stopping_leaves_no_task_behind`] waits this much longer.
    fn tasks_outlive_close(&self) -> Duration {
        Duration::ZERO
    }
}

/// What a scripted handler does on one delivery.
#[derive(Clone)]
pub enum Step {
    /// Return `Ok`.
    Succeed,
    /// Return an error.
    Fail,
    /// Panic.
    Panic,
    /// Return an interrupt.
    Interrupt(Settlement),
    /// Settle through `&Message`, then return `Ok`.
    Settle(Settlement),
    /// Settle through `&Message`, settle again (must report "already settled"), then fail.
    SettleTwiceThenFail(Settlement, Settlement),
    /// Wait until notified, then succeed.
    WaitFor(Arc<Notify>),
    /// Wait at the barrier (all concurrent handlers meet), then succeed.
    Meet(Arc<Barrier>),
    /// Never return (until cancelled).
    Hang,
}

/// One handler invocation, as the test sees it.
#[derive(Clone, Debug)]
pub struct Call {
    /// The payload.
    pub body: Bytes,
    /// The delivery count the broker reported.
    pub delivery_count: Option<u32>,
    /// When the handler started.
    pub at: Instant,
}

type Script = dyn Fn(&Message, usize) -> Step + Send + Sync;

/// A handler that follows a script and reports every call.
pub struct Scripted<K> {
    sub: SubscriptionBuilder,
    typed: bool,
    script: Arc<Script>,
    calls: mpsc::UnboundedSender<Call>,
    count: AtomicU64,
    reports: Arc<Mutex<Vec<SettleReport>>>,
    kind: std::marker::PhantomData<K>,
}

#[derive(serde::Deserialize)]
#[allow(dead_code)]
struct Probe {
    n: u64,
}

impl<K: Kind> Handler for Scripted<K> {
    type Broker = K;

    fn subscription(&self) -> SubscriptionBuilder {
        self.sub.clone()
    }

    async fn call(&self, msg: &Message, _: &Context) -> crate::HandlerResult {
        let done: Result<(), HandlerError> = async move {
            if self.typed {
                let _: Probe = codec::decode(msg.body(), msg.content_type())?;
            }
            let n = self.count.fetch_add(1, Ordering::SeqCst) as usize;
            let step = (self.script)(msg, n);
            let _ = self.calls.send(Call {
                body: msg.body().clone(),
                delivery_count: msg.delivery_count(),
                at: Instant::now(),
            });
            let failed = || HandlerError::Failed(anyhow::anyhow!("scripted failure"));
            match step {
                Step::Succeed => Ok(()),
                Step::Fail => Err(failed()),
                Step::Panic => panic!("scripted panic"),
                Step::Interrupt(s) => Err(HandlerError::Failed(match s {
                    Settlement::Ack => Ack.into(),
                    Settlement::Nack { delay } => Nack { delay }.into(),
                    Settlement::Reject => Reject.into(),
                })),
                Step::Settle(s) => {
                    let report = msg
                        .settle(s)
                        .await
                        .map_err(|e| HandlerError::Failed(e.into()))?;
                    self.reports
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(report);
                    Ok(())
                }
                Step::SettleTwiceThenFail(first, second) => {
                    for s in [first, second] {
                        let report = msg
                            .settle(s)
                            .await
                            .map_err(|e| HandlerError::Failed(e.into()))?;
                        self.reports
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push(report);
                    }
                    Err(failed())
                }
                Step::WaitFor(n) => {
                    n.notified().await;
                    Ok(())
                }
                Step::Meet(b) => match tokio::time::timeout(WAIT, b.wait()).await {
                    Ok(_) => Ok(()),
                    Err(_) => Err(HandlerError::Failed(anyhow::anyhow!(
                        "concurrent handlers never met"
                    ))),
                },
                Step::Hang => std::future::pending().await,
            }
        }
        .await;
        done.map(|()| None)
    }
}

/// One test's world: the adapter, its source, the running App and the handler's calls.
pub struct Run<A: Adapter> {
    adapter: Arc<A>,
    /// The source under test.
    pub source: TestSource,
    broker: A::Broker,
    running: Option<crate::app::RunningApp<A::Broker>>,
    calls: mpsc::UnboundedReceiver<Call>,
    reports: Arc<Mutex<Vec<SettleReport>>>,
    seen: Vec<Call>,
    /// What the source can do, from `brook-caps` (never declared by the adapter).
    pub features: Features,
    dead_letters: bool,
}

/// How to set a test up.
pub struct Setup {
    policy: AckPolicy,
    extra: Vec<(&'static str, Value)>,
    typed: bool,
    graceful: Duration,
}

impl Setup {
    /// A subscriber with `policy`.
    pub fn new(policy: AckPolicy) -> Self {
        Setup {
            policy,
            extra: Vec::new(),
            typed: false,
            graceful: WAIT,
        }
    }

    /// An extra subscriber argument.
    pub fn arg(mut self, name: &'static str, value: impl Into<Value>) -> Self {
        self.extra.push((name, value.into()));
        self
    }

    /// Decode the payload as `{"n": <u64>}` before running the script.
    pub fn typed(mut self) -> Self {
        self.typed = true;
        self
    }

    /// The App's graceful timeout.
    pub fn graceful(mut self, timeout: Duration) -> Self {
        self.graceful = timeout;
        self
    }
}

impl<A: Adapter> Run<A> {
    /// Creates a fresh source and starts an App whose handler follows `script`
    /// (called with the message and the 0-based call number).
    pub async fn start(
        adapter: Arc<A>,
        test: &str,
        setup: Setup,
        script: impl Fn(&Message, usize) -> Step + Send + Sync + 'static,
    ) -> Run<A> {
        let source = adapter
            .fresh_source(test)
            .await
            .expect("create a fresh test source");
        Run::start_on(adapter, source, test, setup, script).await
    }

    /// [`Run::start`] on a source the test created.
    pub async fn start_on(
        adapter: Arc<A>,
        source: TestSource,
        test: &str,
        setup: Setup,
        script: impl Fn(&Message, usize) -> Step + Send + Sync + 'static,
    ) -> Run<A> {
        let mut builder = Subscription::new(A::Kind::KIND, format!("conformance::{test}"));
        for (n, v) in &source.args {
            builder = builder.arg(n.clone(), v.clone());
        }
        builder = builder.arg("ack_policy", setup.policy);
        for (n, v) in setup.extra {
            builder = builder.arg(n, v);
        }
        let built = builder.clone().build().expect("a valid subscription");
        let features = built.source().features();
        let dead_letters = features.dead_letters(|arg| source.args.iter().any(|(n, _)| n == arg));
        let sub = builder;
        let (tx, rx) = mpsc::unbounded_channel();
        let reports = Arc::new(Mutex::new(Vec::new()));
        let handler = Scripted::<A::Kind> {
            sub,
            typed: setup.typed,
            script: Arc::new(script),
            calls: tx,
            count: AtomicU64::new(0),
            reports: reports.clone(),
            kind: std::marker::PhantomData,
        };
        let broker = adapter.broker().await;
        let running = App::new(broker.clone())
            .subscribe(handler)
            .graceful_timeout(setup.graceful)
            .start()
            .await
            .expect("the App starts");
        Run {
            adapter,
            source,
            broker,
            running: Some(running),
            calls: rx,
            reports,
            seen: Vec::new(),
            features,
            dead_letters,
        }
    }

    /// Publishes `body` to the test source.
    pub async fn publish(&self, body: &'static [u8]) {
        self.broker
            .publish_message(Outgoing::new(
                self.source.destination.clone(),
                Bytes::from_static(body),
            ))
            .await
            .expect("publish");
    }

    /// Waits for the handler's next call.
    pub async fn next_call(&mut self) -> Call {
        let call = tokio::time::timeout(WAIT, self.calls.recv())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "no handler call within {WAIT:?}; calls so far: {:?}",
                    self.seen
                )
            })
            .expect("handler dropped");
        self.seen.push(call.clone());
        call
    }

    /// Waits until the handler has been called `n` times in all.
    pub async fn calls(&mut self, n: usize) -> Vec<Call> {
        while self.seen.len() < n {
            self.next_call().await;
        }
        self.seen.clone()
    }

    /// The settle reports the handler got from `&Message`.
    pub fn reports(&self) -> Vec<SettleReport> {
        self.reports
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The running App, to stop it from another task.
    pub fn take_app(&mut self) -> crate::app::RunningApp<A::Broker> {
        self.running.take().expect("the App is running")
    }

    /// Stops the App gracefully (bounded), then collects every call the handler got, so
    /// "delivered exactly N times" checks see late deliveries too.
    pub async fn stop(&mut self) {
        if let Some(running) = self.running.take() {
            tokio::time::timeout(WAIT * 2, running.stop())
                .await
                .expect("the App stops within the graceful timeout")
                .expect("the App stops cleanly");
        }
        while let Ok(call) = self.calls.try_recv() {
            self.seen.push(call);
        }
    }

    /// After stopping: what a fresh consumer would still receive.
    pub async fn remaining(&mut self) -> Vec<Bytes> {
        self.stop().await;
        self.adapter
            .remaining(&self.source)
            .await
            .expect("read what remains")
    }

    /// After stopping: what was dead-lettered.
    pub async fn dead_letters(&mut self) -> Vec<Bytes> {
        self.stop().await;
        self.adapter
            .dead_letters(&self.source)
            .await
            .expect("read dead letters")
    }

    /// Asserts that the message was acked: nothing remains, nothing was dead-lettered.
    pub async fn assert_acked(&mut self, what: &str) {
        assert_eq!(
            self.remaining().await,
            Vec::<Bytes>::new(),
            "{what}: the message must not be delivered again"
        );
        if self.dead_letters {
            assert_eq!(
                self.dead_letters().await,
                Vec::<Bytes>::new(),
                "{what}: nothing may be dead-lettered"
            );
        }
    }

    /// Asserts that `body` is still there for the next consumer (not settled).
    pub async fn assert_remains(&mut self, body: &[u8], what: &str) {
        assert_eq!(
            self.remaining().await,
            vec![Bytes::copy_from_slice(body)],
            "{what}: the unsettled message must be delivered again"
        );
    }

    /// Asserts that `body` was rejected: not delivered again, dead-lettered where possible.
    pub async fn assert_rejected(&mut self, body: &[u8], what: &str) {
        assert_eq!(
            self.remaining().await,
            Vec::<Bytes>::new(),
            "{what}: a rejected message must not be delivered again"
        );
        if self.dead_letters {
            assert_eq!(
                self.dead_letters().await,
                vec![Bytes::copy_from_slice(body)],
                "{what}: the message must be dead-lettered"
            );
        }
    }
}

/// What a single-message test expects the broker to have done.
enum Expect {
    Acked,
    Rejected,
}

/// Publishes one message to a subscriber whose handler always does `step`, and checks the
/// broker's state afterwards.
async fn one_message<A: Adapter>(
    a: Arc<A>,
    test: &str,
    policy: AckPolicy,
    step: Step,
    expect: Expect,
) {
    let what = format!("{test}: {policy}");
    let mut run = Run::start(a, test, Setup::new(policy), move |_, _| step.clone()).await;
    run.publish(b"one").await;
    run.calls(1).await;
    match expect {
        Expect::Acked => run.assert_acked(&what).await,
        Expect::Rejected => run.assert_rejected(b"one", &what).await,
    }
}

/// Ack: a message the handler processed is acknowledged.
pub async fn ack_policy_acks_on_success<A: Adapter>(a: Arc<A>) {
    one_message(a, "ack_ok", AckPolicy::Ack, Step::Succeed, Expect::Acked).await;
}

/// Ack: a failed message is acknowledged too (and logged).
pub async fn ack_policy_acks_on_error<A: Adapter>(a: Arc<A>) {
    one_message(a, "ack_err", AckPolicy::Ack, Step::Fail, Expect::Acked).await;
}

/// AckFirst: acked before the handler runs, so a failure does not bring it back.
pub async fn ack_first_acks_before_the_handler<A: Adapter>(a: Arc<A>) {
    one_message(
        a,
        "ackfirst",
        AckPolicy::AckFirst,
        Step::Fail,
        Expect::Acked,
    )
    .await;
}

/// RejectOnError: success acks.
pub async fn reject_on_error_acks_on_success<A: Adapter>(a: Arc<A>) {
    one_message(
        a,
        "reject_ok",
        AckPolicy::RejectOnError,
        Step::Succeed,
        Expect::Acked,
    )
    .await;
}

/// RejectOnError: an error rejects (dead-letters), no redelivery.
pub async fn reject_on_error_rejects_on_error<A: Adapter>(a: Arc<A>) {
    one_message(
        a,
        "reject_err",
        AckPolicy::RejectOnError,
        Step::Fail,
        Expect::Rejected,
    )
    .await;
}

/// NackOnError: an error nacks and the message comes back; success then acks.
pub async fn nack_on_error_redelivers<A: Adapter>(a: Arc<A>) {
    let mut run = Run::start(a, "nack_err", Setup::new(AckPolicy::NackOnError), |_, n| {
        if n == 0 {
            Step::Fail
        } else {
            Step::Succeed
        }
    })
    .await;
    run.publish(b"retry-me").await;
    let calls = run.calls(2).await;
    assert_eq!(
        calls[1].body, calls[0].body,
        "the failed message is the one delivered again"
    );
    if run.features.delivery_count != DeliveryCount::None {
        assert_eq!(
            (calls[0].delivery_count, calls[1].delivery_count),
            (Some(1), Some(2))
        );
    }
    run.assert_acked("NackOnError: Err then Ok").await;
}

/// A panic counts as an error (here: nack, redelivered), and the consumer keeps running.
pub async fn panics_are_errors_and_the_consumer_survives<A: Adapter>(a: Arc<A>) {
    let mut run = Run::start(a, "panic", Setup::new(AckPolicy::NackOnError), |_, n| {
        if n == 0 {
            Step::Panic
        } else {
            Step::Succeed
        }
    })
    .await;
    run.publish(b"p").await;
    run.calls(2).await;
    run.publish(b"after").await;
    let calls = run.calls(3).await;
    assert_eq!(calls[2].body, Bytes::from_static(b"after"));
    run.assert_acked("panic then Ok").await;
}

/// Manual: nothing is settled for the handler; an unsettled message is redelivered to the
/// next consumer.
pub async fn manual_leaves_unsettled_messages_for_redelivery<A: Adapter>(a: Arc<A>) {
    let mut run = Run::start(a, "manual_none", Setup::new(AckPolicy::Manual), |_, _| {
        Step::Succeed
    })
    .await;
    run.publish(b"keep").await;
    run.calls(1).await;
    run.assert_remains(b"keep", "Manual without a settlement")
        .await;
}

/// Manual: the handler's ack / reject take effect.
pub async fn manual_settlements_take_effect<A: Adapter>(a: Arc<A>) {
    let mut run = Run::start(
        a.clone(),
        "manual_ack",
        Setup::new(AckPolicy::Manual),
        |_, _| Step::Settle(Settlement::Ack),
    )
    .await;
    run.publish(b"m").await;
    run.calls(1).await;
    run.assert_acked("Manual + msg.ack()").await;
    assert_eq!(run.reports(), vec![SettleReport::Settled(Settled::Acked)]);

    let mut run = Run::start(a, "manual_reject", Setup::new(AckPolicy::Manual), |_, _| {
        Step::Settle(Settlement::Reject)
    })
    .await;
    run.publish(b"r").await;
    run.calls(1).await;
    run.assert_rejected(b"r", "Manual + msg.reject()").await;
}

/// Manual: the handler's nack brings the message back.
pub async fn manual_nack_redelivers<A: Adapter>(a: Arc<A>) {
    let mut run = Run::start(a, "manual_nack", Setup::new(AckPolicy::Manual), |_, n| {
        Step::Settle(if n == 0 {
            Settlement::NACK
        } else {
            Settlement::Ack
        })
    })
    .await;
    run.publish(b"n").await;
    run.calls(2).await;
    run.assert_acked("Manual: nack then ack").await;
}

/// Interrupts apply under every policy: Reject under NackOnError, Nack under RejectOnError,
/// Ack under Manual.
pub async fn interrupts_settle_under_every_policy<A: Adapter>(a: Arc<A>) {
    let mut run = Run::start(
        a.clone(),
        "int_reject",
        Setup::new(AckPolicy::NackOnError),
        |_, _| Step::Interrupt(Settlement::Reject),
    )
    .await;
    run.publish(b"x").await;
    run.calls(1).await;
    run.assert_rejected(b"x", "NackOnError + Err(Reject)").await;

    let mut run = Run::start(
        a.clone(),
        "int_nack",
        Setup::new(AckPolicy::RejectOnError),
        |_, n| {
            if n == 0 {
                Step::Interrupt(Settlement::NACK)
            } else {
                Step::Succeed
            }
        },
    )
    .await;
    run.publish(b"y").await;
    run.calls(2).await;
    run.assert_acked("RejectOnError + Err(Nack), then Ok").await;

    let mut run = Run::start(a, "int_ack", Setup::new(AckPolicy::Manual), |_, _| {
        Step::Interrupt(Settlement::Ack)
    })
    .await;
    run.publish(b"z").await;
    run.calls(1).await;
    run.assert_acked("Manual + Err(Ack)").await;
}

/// Settle once: a handler that acks and then fails under NackOnError stays acked, and its
/// second settlement reports "already settled".
pub async fn the_first_settlement_wins<A: Adapter>(a: Arc<A>) {
    let mut run = Run::start(
        a,
        "settle_once",
        Setup::new(AckPolicy::NackOnError),
        |_, _| Step::SettleTwiceThenFail(Settlement::Ack, Settlement::NACK),
    )
    .await;
    run.publish(b"once").await;
    run.calls(1).await;
    run.assert_acked("ack, nack, Err under NackOnError").await;
    assert_eq!(
        run.reports(),
        vec![
            SettleReport::Settled(Settled::Acked),
            SettleReport::AlreadySettled(Settled::Acked)
        ]
    );
}

/// max_deliveries: a message that always fails is delivered at most N times, then rejected.
pub async fn max_deliveries_stops_redelivery_loops<A: Adapter>(a: Arc<A>) {
    let mut run = Run::start(
        a,
        "max_deliveries",
        Setup::new(AckPolicy::NackOnError).arg("max_deliveries", 3u32),
        |_, _| Step::Fail,
    )
    .await;
    assert_ne!(
        run.features.delivery_count,
        DeliveryCount::None,
        "this source counts no deliveries (brook-caps), so this test must be generated as skipped"
    );
    run.publish(b"poison").await;
    let calls = run.calls(3).await;
    assert_eq!(
        calls.iter().map(|c| c.delivery_count).collect::<Vec<_>>(),
        vec![Some(1), Some(2), Some(3)]
    );
    run.assert_rejected(b"poison", "NackOnError failing past max_deliveries = 3")
        .await;
    assert_eq!(run.seen.len(), 3, "no delivery beyond the third");
}

/// A payload that does not decode is rejected (not redelivered), and the next one is handled.
pub async fn undecodable_payloads_are_rejected<A: Adapter>(a: Arc<A>) {
    let mut run = Run::start(
        a,
        "decode",
        Setup::new(AckPolicy::NackOnError).typed(),
        |_, _| Step::Succeed,
    )
    .await;
    run.publish(b"not json").await;
    run.publish(br#"{"n": 1}"#).await;
    let calls = run.calls(1).await;
    assert_eq!(
        calls[0].body,
        Bytes::from_static(br#"{"n": 1}"#),
        "only the valid message reaches the handler"
    );
    run.assert_rejected(b"not json", "undecodable payload under NackOnError")
        .await;
}

/// Graceful shutdown: a handler in flight when the App stops finishes, and its message is
/// settled before the App returns.
pub async fn shutdown_lets_in_flight_handlers_finish<A: Adapter>(a: Arc<A>) {
    let release = Arc::new(Notify::new());
    let r = release.clone();
    let mut run = Run::start(
        a,
        "drain",
        Setup::new(AckPolicy::NackOnError),
        move |_, _| Step::WaitFor(r.clone()),
    )
    .await;
    run.publish(b"in-flight").await;
    run.calls(1).await;
    let app = run.take_app();
    let mut stopping = tokio::spawn(app.stop());
    // The App must not finish stopping while the handler is still working.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut stopping)
            .await
            .is_err(),
        "stop() returned while a handler was in flight"
    );
    release.notify_one();
    tokio::time::timeout(WAIT, stopping)
        .await
        .expect("stop finishes")
        .expect("join")
        .expect("clean stop");
    run.assert_acked("handler finished during shutdown").await;
}

/// Cancellation: a handler still running when the graceful timeout ends is cut off, and its
/// message stays unsettled, so the broker delivers it again.
pub async fn graceful_timeout_leaves_the_message_for_redelivery<A: Adapter>(a: Arc<A>) {
    let mut run = Run::start(
        a,
        "cancel",
        Setup::new(AckPolicy::NackOnError).graceful(Duration::from_millis(300)),
        |_, _| Step::Hang,
    )
    .await;
    run.publish(b"stuck").await;
    run.calls(1).await;
    run.assert_remains(b"stuck", "handler cut off by the graceful timeout")
        .await;
}

/// concurrency = N: N handlers run at once.
pub async fn concurrency_runs_handlers_in_parallel<A: Adapter>(a: Arc<A>) {
    let barrier = Arc::new(Barrier::new(3));
    let b = barrier.clone();
    let mut run = Run::start(
        a,
        "concurrency",
        Setup::new(AckPolicy::NackOnError).arg("concurrency", 3u32),
        move |_, _| Step::Meet(b.clone()),
    )
    .await;
    for body in [b"a" as &[u8], b"b", b"c"] {
        run.publish(body).await;
    }
    run.calls(3).await;
    run.assert_acked("three handlers met at the barrier").await;
    assert_eq!(run.seen.len(), 3, "every message was handled once");
}

/// With concurrency 1, messages are handled in the order they were published.
pub async fn messages_are_handled_in_order<A: Adapter>(a: Arc<A>) {
    let mut run = Run::start(a, "order", Setup::new(AckPolicy::Ack), |_, _| Step::Succeed).await;
    const BODIES: [&[u8]; 6] = [b"0", b"1", b"2", b"3", b"4", b"5"];
    for body in BODIES {
        run.publish(body).await;
    }
    let calls = run.calls(BODIES.len()).await;
    let got: Vec<_> = calls.iter().map(|c| c.body.clone()).collect();
    assert_eq!(got, BODIES.map(Bytes::from_static).to_vec());
    run.assert_acked("ordered").await;
}

/// A nack with a delay is redelivered no sooner than the delay.
pub async fn nack_delay_is_honoured<A: Adapter>(a: Arc<A>) {
    let delay = Duration::from_millis(400);
    let mut run = Run::start(
        a,
        "nack_delay",
        Setup::new(AckPolicy::NackOnError),
        move |_, n| {
            if n == 0 {
                Step::Interrupt(Settlement::Nack { delay: Some(delay) })
            } else {
                Step::Succeed
            }
        },
    )
    .await;
    assert!(
        run.features.nack_delay,
        "this source has no nack delay (brook-caps), so this test must be generated as skipped"
    );
    run.publish(b"later").await;
    let calls = run.calls(2).await;
    let waited = calls[1].at - calls[0].at;
    assert!(
        waited >= delay,
        "redelivered after {waited:?}, before the {delay:?} delay"
    );
    run.assert_acked("delayed nack then Ok").await;
}

/// What the handler does on the first delivery in [`every_policy_and_handler_outcome`].
#[derive(Clone, Copy, Debug)]
enum First {
    Succeed,
    Fail,
    Panic,
    Interrupt(Settlement),
}

/// What the broker ends up with.
#[derive(Clone, Copy, Debug, PartialEq)]
enum End {
    /// Gone after one delivery, not dead-lettered.
    Acked,
    /// Gone, dead-lettered where the broker can.
    Rejected,
    /// Delivered again, then acked.
    Redelivered,
    /// Still there for the next consumer.
    Remains,
}

/// The whole table: every policy against every way a handler can end (success, error, panic,
/// each interrupt), checked on the broker afterwards. The second delivery, where there is one,
/// succeeds (under `Manual`, by acking).
pub async fn every_policy_and_handler_outcome<A: Adapter>(a: Arc<A>) {
    use AckPolicy::*;
    use End::*;
    let firsts = [
        First::Succeed,
        First::Fail,
        First::Panic,
        First::Interrupt(Settlement::Ack),
        First::Interrupt(Settlement::NACK),
        First::Interrupt(Settlement::Reject),
    ];
    // One row per policy, one column per entry of `firsts`.
    let table = [
        (AckFirst, [Acked, Acked, Acked, Acked, Acked, Acked]),
        (Ack, [Acked, Acked, Acked, Acked, Redelivered, Rejected]),
        (
            RejectOnError,
            [Acked, Rejected, Rejected, Acked, Redelivered, Rejected],
        ),
        (
            NackOnError,
            [
                Acked,
                Redelivered,
                Redelivered,
                Acked,
                Redelivered,
                Rejected,
            ],
        ),
        (
            Manual,
            [Remains, Remains, Remains, Acked, Redelivered, Rejected],
        ),
    ];
    for (policy, ends) in table {
        for (first, end) in firsts.into_iter().zip(ends) {
            let test = format!(
                "matrix_{policy}_{}",
                format!("{first:?}").replace(|c: char| !c.is_alphanumeric(), "_")
            );
            let then = if policy == Manual {
                Step::Settle(Settlement::Ack)
            } else {
                Step::Succeed
            };
            let mut run = Run::start(a.clone(), &test, Setup::new(policy), move |_, n| {
                match (n, first) {
                    (0, First::Succeed) => Step::Succeed,
                    (0, First::Fail) => Step::Fail,
                    (0, First::Panic) => Step::Panic,
                    (0, First::Interrupt(s)) => Step::Interrupt(s),
                    _ => then.clone(),
                }
            })
            .await;
            run.publish(b"m").await;
            let what = format!("{policy} with a handler that first does {first:?}");
            match end {
                Acked => {
                    run.calls(1).await;
                    run.assert_acked(&what).await;
                    assert_eq!(run.seen.len(), 1, "{what}: delivered once");
                }
                Rejected => {
                    run.calls(1).await;
                    run.assert_rejected(b"m", &what).await;
                    assert_eq!(run.seen.len(), 1, "{what}: delivered once");
                }
                Redelivered => {
                    run.calls(2).await;
                    run.assert_acked(&what).await;
                }
                Remains => {
                    run.calls(1).await;
                    run.assert_remains(b"m", &what).await;
                }
            }
        }
    }
}

/// A stopped App and a dropped broker leave no task of theirs running: a service that starts
/// and stops Apps (or reconnects) must not accumulate connection tasks.
pub async fn stopping_leaves_no_task_behind<A: Adapter>(a: Arc<A>) {
    let alive = || {
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks()
    };
    let test = "stopping_leaves_no_task_behind";
    // Whatever the adapter itself runs for its sources exists from here on.
    let source = a
        .fresh_source(test)
        .await
        .expect("create a fresh test source");
    let linger = a.tasks_outlive_close();
    let before = alive();
    let mut run = Run::start_on(a, source, test, Setup::new(AckPolicy::Ack), |_, _| {
        Step::Succeed
    })
    .await;
    run.publish(b"one").await;
    run.next_call().await;
    run.stop().await;
    drop(run);
    // Tasks notice a closed connection on their next wake-up; a bounded wait for that.
    let deadline = tokio::time::Instant::now() + WAIT + linger;
    while alive() > before && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        alive() <= before,
        "{} task(s) still running after the App stopped and its broker was dropped",
        alive() - before
    );
}

/// Checks that the source shape `conformance_tests!` declared (from which brook-caps decided
/// which tests apply) is the shape of the adapter's real source.
pub async fn declared_source<A: Adapter>(a: Arc<A>, declared: Source, dead_letters: bool) {
    let source = a
        .fresh_source("declared_source")
        .await
        .expect("create a fresh test source");
    let mut builder = Subscription::new(A::Kind::KIND, "conformance::declared_source");
    for (n, v) in &source.args {
        builder = builder.arg(n.clone(), v.clone());
    }
    let sub = builder.build().expect("a valid subscription");
    assert_eq!(
        sub.source(),
        declared,
        "conformance_tests! declares the source {declared:?}, but the adapter's is {:?}",
        sub.source()
    );
    let has_dead_letters = sub
        .source()
        .features()
        .dead_letters(|arg| source.args.iter().any(|(n, _)| n == arg));
    assert_eq!(
        has_dead_letters, dead_letters,
        "conformance_tests! and the adapter's source disagree on where rejected messages go"
    );
}
