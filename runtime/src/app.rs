//! The application: handlers on one broker or several, their lifecycle and graceful shutdown.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use std::marker::PhantomData;

use brook_caps::BrokerKind;

use crate::broker::{Accepts, Broker};
use crate::engine::{run_consumer, Ended};
use crate::error::{AppError, BrokerError, StartError, StartErrors, SubscriptionError};
use crate::extract::{Context, StartCheck};
use crate::handler::kind::Kind;
use crate::handler::Handler;
use crate::health::{Health, HealthHandle, SharedHealth, SAMPLE_EVERY};
use crate::layer::{Layer, Layers};
use crate::publisher::Publishers;
use crate::subscription::Subscription;

/// The default graceful-shutdown timeout, the same for every broker.
pub const DEFAULT_GRACEFUL_TIMEOUT: Duration = Duration::from_secs(15);

/// How long consumers may take to close after the graceful timeout cancelled their handlers.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
type Hook = Box<dyn FnOnce() -> BoxFuture<anyhow::Result<()>> + Send>;

fn boxed_hook<F, Fut>(hook: F) -> Hook
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    Box::new(move || Box::pin(hook()))
}

/// Subscribes one subscriber on its broker and runs its consumer loop, with the handler and
/// broker types erased (the loop itself is generic: nothing is boxed per message).
trait Start: Send {
    fn subscription(&self) -> &Subscription;
    /// Puts the App's layers around the subscriber's own; returns its health cell.
    fn prepare(&mut self, app_layers: &[Arc<dyn Layer>]) -> SharedHealth;
    fn kind(&self) -> BrokerKind;
    fn check(&self, context: &Context) -> Vec<StartError>;
    #[cfg(feature = "asyncapi")]
    fn describe(&self, describe: &mut crate::asyncapi::Describe);
    fn subscribe(
        &self,
        ctx: Context,
        stop: CancellationToken,
        abort: CancellationToken,
    ) -> BoxFuture<Result<BoxFuture<Result<Ended, BrokerError>>, BrokerError>>;
}

struct Registered<H, X> {
    handler: Arc<H>,
    sub: Arc<Subscription>,
    broker: X,
}

impl<H: Handler, X: Broker> Start for Registered<H, X> {
    fn subscription(&self) -> &Subscription {
        &self.sub
    }

    fn prepare(&mut self, app_layers: &[Arc<dyn Layer>]) -> SharedHealth {
        let mut layers = app_layers.to_vec();
        layers.extend(self.handler.layers());
        let sub = Arc::make_mut(&mut self.sub);
        sub.set_layers(Layers::new(layers));
        sub.health().clone()
    }

    fn kind(&self) -> BrokerKind {
        self.broker.kind()
    }

    fn check(&self, context: &Context) -> Vec<StartError> {
        let cx = StartCheck {
            broker: self.broker.kind(),
            context,
        };
        let subscriber = || self.sub.name().to_owned();
        let mut problems: Vec<StartError> = self
            .handler
            .check(&cx)
            .into_iter()
            .map(|(argument, source)| StartError::Argument {
                subscriber: subscriber(),
                argument,
                source,
            })
            .collect();
        if let Some(output) = self.sub.output() {
            if context.publishers().get(output.broker).is_err() {
                problems.push(StartError::NoOutputBroker {
                    subscriber: subscriber(),
                    broker: output.broker,
                });
            }
        }
        if let Err(source) = self.broker.check(&self.sub) {
            problems.push(StartError::Broker {
                subscriber: subscriber(),
                source,
            });
        }
        problems
    }

    #[cfg(feature = "asyncapi")]
    fn describe(&self, describe: &mut crate::asyncapi::Describe) {
        self.handler.describe(describe)
    }

    fn subscribe(
        &self,
        ctx: Context,
        stop: CancellationToken,
        abort: CancellationToken,
    ) -> BoxFuture<Result<BoxFuture<Result<Ended, BrokerError>>, BrokerError>> {
        let (handler, sub, broker) = (self.handler.clone(), self.sub.clone(), self.broker.clone());
        Box::pin(async move {
            let consumer = broker.subscribe(&sub).await?;
            let run: BoxFuture<Result<Ended, BrokerError>> =
                Box::pin(run_consumer(handler, sub, ctx, consumer, stop, abort));
            Ok(run)
        })
    }
}

/// The brokers of an [`App`]: one [`Broker`], or several joined by [`App::with_broker`] (as
/// [`With`]). Implemented by brook, not by users.
pub trait Brokers: Clone + Send + Sync + 'static {
    #[doc(hidden)]
    fn register(&self, publishers: &mut Publishers);
    #[doc(hidden)]
    fn connect_all(&self) -> BoxFuture<Result<(), BrokerError>>;
    #[doc(hidden)]
    fn close_all(&self) -> BoxFuture<Result<(), BrokerError>>;
    #[doc(hidden)]
    fn connected(&self, out: &mut Vec<(BrokerKind, Option<bool>)>);
    #[doc(hidden)]
    fn servers(&self, out: &mut Vec<(BrokerKind, crate::ServerInfo)>);
}

impl<B: Broker> Brokers for B {
    fn register(&self, publishers: &mut Publishers) {
        publishers.add(self.clone());
    }

    fn connect_all(&self) -> BoxFuture<Result<(), BrokerError>> {
        let broker = self.clone();
        Box::pin(async move { broker.connect().await })
    }

    fn close_all(&self) -> BoxFuture<Result<(), BrokerError>> {
        let broker = self.clone();
        Box::pin(async move { broker.close().await })
    }

    fn connected(&self, out: &mut Vec<(BrokerKind, Option<bool>)>) {
        out.push((self.kind(), self.is_connected()));
    }

    fn servers(&self, out: &mut Vec<(BrokerKind, crate::ServerInfo)>) {
        out.extend(self.server().map(|s| (self.kind(), s)));
    }
}

/// The brokers `A`, and the broker `B` added with [`App::with_broker`].
#[derive(Clone, Debug)]
pub struct With<A, B>(pub A, pub B);

impl<A: Brokers, B: Broker> Brokers for With<A, B> {
    fn register(&self, publishers: &mut Publishers) {
        self.0.register(publishers);
        self.1.register(publishers);
    }

    fn connect_all(&self) -> BoxFuture<Result<(), BrokerError>> {
        let With(first, last) = self.clone();
        Box::pin(async move {
            first.connect_all().await?;
            last.connect().await
        })
    }

    /// In the reverse order of connecting; every broker is closed, the first error reported.
    fn close_all(&self) -> BoxFuture<Result<(), BrokerError>> {
        let With(first, last) = self.clone();
        Box::pin(async move {
            let closed = last.close().await;
            let rest = first.close_all().await;
            closed.and(rest)
        })
    }

    fn connected(&self, out: &mut Vec<(BrokerKind, Option<bool>)>) {
        self.0.connected(out);
        self.1.connected(out);
    }

    fn servers(&self, out: &mut Vec<(BrokerKind, crate::ServerInfo)>) {
        self.0.servers(out);
        out.extend(self.1.server().map(|s| (self.1.kind(), s)));
    }
}

/// Which of an App's brokers runs handlers declared for `K`: `Index` is inferred (the App's
/// one broker that accepts them), so `App::subscribe` picks the broker by the handler's type.
#[diagnostic::on_unimplemented(
    message = "no broker of this App can run a handler declared for `{K}`",
    label = "the handler was checked against `{K}`'s rules",
    note = "add that broker to the App with App::with_broker(...), declare the subscriber for one of the App's brokers, or test it on an App of MemoryBroker (which runs every handler)"
)]
pub trait Hosts<K: Kind, Index> {
    /// The broker that runs them.
    type Host: Broker;
    /// That broker.
    fn host(&self) -> &Self::Host;
}

/// [`Hosts`] index: this broker.
#[derive(Debug)]
pub struct Here;

/// [`Hosts`] index: one of the brokers added before.
#[derive(Debug)]
pub struct Before<I>(PhantomData<I>);

impl<K: Kind, B: Broker + Accepts<K>> Hosts<K, Here> for B {
    type Host = B;
    fn host(&self) -> &B {
        self
    }
}

impl<K: Kind, A, B: Broker + Accepts<K>> Hosts<K, Here> for With<A, B> {
    type Host = B;
    fn host(&self) -> &B {
        &self.1
    }
}

impl<K: Kind, I, A: Hosts<K, I>, B> Hosts<K, Before<I>> for With<A, B> {
    type Host = A::Host;
    fn host(&self) -> &A::Host {
        self.0.host()
    }
}

/// Tells a running [`App`] to shut down gracefully. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct ShutdownHandle(CancellationToken);

impl ShutdownHandle {
    /// Ask the App to stop: it stops fetching, lets in-flight handlers finish (within the
    /// graceful timeout), settles them, and disconnects.
    pub fn shutdown(&self) {
        self.0.cancel();
    }
}

/// Subscribers on one broker, run until SIGINT/SIGTERM or a [`ShutdownHandle`].
///
/// ```
/// use brook_runtime::{App, MemoryBroker};
/// # async fn run() -> Result<(), brook_runtime::AppError> {
/// let app = App::new(MemoryBroker::new())
///     .state(String::from("shared config"))
///     .graceful_timeout(std::time::Duration::from_secs(5));
/// let handle = app.shutdown_handle();
/// handle.shutdown(); // from anywhere, e.g. a test or an admin endpoint
/// app.run().await
/// # }
/// ```
pub struct App<B: Brokers> {
    broker: B,
    subscribers: Vec<Box<dyn Start>>,
    invalid: Vec<SubscriptionError>,
    layers: Vec<Arc<dyn Layer>>,
    restart: Option<Restart>,
    ctx: Context,
    graceful_timeout: Duration,
    on_startup: Vec<Hook>,
    on_shutdown: Vec<Hook>,
    shutdown: ShutdownHandle,
}

impl<B: Broker> App<B> {
    /// An App on `broker` with no subscribers yet.
    pub fn new(broker: B) -> Self {
        let mut ctx = Context::default();
        broker.register(ctx.publishers_mut());
        App {
            broker,
            subscribers: Vec::new(),
            invalid: Vec::new(),
            layers: Vec::new(),
            restart: None,
            ctx,
            graceful_timeout: DEFAULT_GRACEFUL_TIMEOUT,
            on_startup: Vec::new(),
            on_shutdown: Vec::new(),
            shutdown: ShutdownHandle::default(),
        }
    }
}

impl<B: Brokers> App<B> {
    /// Adds another broker: handlers declared for it are subscribed on it, outputs may be
    /// published on it (`publish_broker = ...`, [`Publisher::on`](crate::Publisher::on)), and
    /// the App connects, drains and closes every broker together. One broker per kind:
    /// `App::new(rabbit).with_broker(kafka)`.
    ///
    /// ```
    /// use brook_runtime::{App, MemoryBroker};
    /// # #[derive(Clone)] struct Other(MemoryBroker);
    /// # let other = MemoryBroker::new();
    /// let app = App::new(MemoryBroker::new()).with_broker(other);
    /// ```
    pub fn with_broker<C: Broker>(self, broker: C) -> App<With<B, C>> {
        let mut ctx = self.ctx;
        broker.register(ctx.publishers_mut());
        App {
            broker: With(self.broker, broker),
            subscribers: self.subscribers,
            invalid: self.invalid,
            layers: self.layers,
            restart: self.restart,
            ctx,
            graceful_timeout: self.graceful_timeout,
            on_startup: self.on_startup,
            on_shutdown: self.on_shutdown,
            shutdown: self.shutdown,
        }
    }
}

impl<B: Brokers> App<B> {
    /// Adds a subscriber (a `#[subscriber]` function, by name, or one with mount-site names:
    /// `bill.topic(&cfg.orders)`, see [`Mount`](crate::Mount)). Names from expressions are
    /// evaluated here; whatever is wrong is reported by [`start`](App::start), with every
    /// other problem.
    ///
    /// On an App of several brokers, the handler runs on the one its declaration names (a
    /// `brook::kafka::subscriber` on the Kafka broker); the compiler refuses a handler no
    /// broker of the App can run.
    pub fn subscribe<H: Handler, I>(mut self, handler: H) -> Self
    where
        B: Hosts<H::Broker, I>,
    {
        match handler.subscription().build() {
            Ok(sub) => self.subscribers.push(Box::new(Registered {
                handler: Arc::new(handler),
                sub: Arc::new(sub),
                broker: self.broker.host().clone(),
            })),
            // Reported by `start`, with every other invalid subscriber.
            Err(e) => self.invalid.push(e),
        }
        self
    }

    /// Adds a layer around every subscriber's handler (outside the subscribers' own; the first
    /// added is the outermost), which also hears of every publish from inside the App. See
    /// [`layer`](crate::layer).
    pub fn layer(mut self, layer: impl Layer) -> Self {
        self.layers.push(Arc::new(layer));
        self
    }

    /// Subscribes a subscriber again when its consumer ends for good (a deleted queue or
    /// durable, a fatal broker error), with bounded backoff, instead of stopping the App at
    /// once. After `restart.max_in_a_row` restarts without a message in between, the App stops
    /// and [`App::run`] returns [`AppError::SubscriberEnded`] as without this. Default: no
    /// restarts (let the orchestrator restart the process).
    pub fn restart_ended(mut self, restart: Restart) -> Self {
        self.restart = Some(restart);
        self
    }

    /// Makes `value` available to handlers as a `State<T>` argument.
    pub fn state<T: Send + Sync + 'static>(mut self, value: T) -> Self {
        self.ctx.insert(value);
        self
    }

    /// How long in-flight handlers may run after shutdown starts (default 15 s). Handlers
    /// still running then are cancelled and their messages left unsettled, so the broker
    /// redelivers them.
    pub fn graceful_timeout(mut self, timeout: Duration) -> Self {
        self.graceful_timeout = timeout;
        self
    }

    /// Runs `hook` after connecting, before consuming. An error aborts the start.
    pub fn on_startup<F, Fut>(mut self, hook: F) -> Self
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        self.on_startup.push(boxed_hook(hook));
        self
    }

    /// Runs `hook` after consumers have drained, before disconnecting.
    pub fn on_shutdown<F, Fut>(mut self, hook: F) -> Self
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        self.on_shutdown.push(boxed_hook(hook));
        self
    }

    /// A handle that stops the App when [`ShutdownHandle::shutdown`] is called.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.shutdown.clone()
    }

    /// The broker.
    pub fn broker(&self) -> &B {
        &self.broker
    }

    /// The App's AsyncAPI 3.0 document (feature `asyncapi`): servers, channels, operations and
    /// messages from the subscribers as added, with names as configured at run time. See
    /// [`asyncapi`](crate::asyncapi).
    ///
    /// ```
    /// use brook_runtime::{App, MemoryBroker};
    /// let app = App::new(MemoryBroker::new());
    /// let json = app.asyncapi().title("billing").to_json();
    /// assert!(json.contains("\"asyncapi\": \"3.0.0\""));
    /// ```
    #[cfg(feature = "asyncapi")]
    pub fn asyncapi(&self) -> crate::asyncapi::AsyncApi {
        let mut servers = Vec::new();
        self.broker.servers(&mut servers);
        let mut describe = crate::asyncapi::Describe::default();
        let subscribers = self
            .subscribers
            .iter()
            .map(|s| {
                s.describe(&mut describe);
                (s.subscription().clone(), describe.take())
            })
            .collect();
        crate::asyncapi::AsyncApi::new(servers, subscribers, describe)
    }

    /// Runs until SIGINT/SIGTERM or the shutdown handle, then shuts down gracefully. If a
    /// subscriber's consumer ends for good first (a deleted durable that may not be recreated,
    /// a fatal broker error), the App stops the others gracefully and returns
    /// [`AppError::SubscriberEnded`] naming it, so the process exits instead of running on with
    /// a subscriber that does nothing.
    pub async fn run(self) -> Result<(), AppError> {
        let mut running = self.start().await?;
        let handle = running.shutdown.clone();
        let ended = tokio::select! {
            signal = shutdown_signal() => {
                signal?;
                tracing::info!("shutdown signal received");
                None
            }
            _ = handle.0.cancelled() => None,
            ended = running.ended.recv() => ended,
        };
        running.finish(ended).await
    }

    /// Every problem that can be known before connecting: invalid subscribers (names from
    /// configuration included), handler arguments this App can never produce (a `State<T>`
    /// never registered, another broker's message type), and subscriptions the broker's
    /// connection settings cannot serve.
    fn check(&mut self) -> Result<(), AppError> {
        let mut problems: Vec<StartError> = self.invalid.drain(..).map(Into::into).collect();
        for subscriber in &self.subscribers {
            problems.extend(subscriber.check(&self.ctx));
        }
        match problems.is_empty() {
            true => Ok(()),
            false => Err(AppError::Invalid(StartErrors(problems))),
        }
    }

    /// Validates every subscriber (reporting every problem at once, before connecting),
    /// connects, runs the startup hooks and starts consuming; returns at once with a
    /// [`RunningApp`] to stop later (tests, embedding).
    pub async fn start(mut self) -> Result<RunningApp<B>, AppError> {
        self.check()?;
        self.broker.connect_all().await?;
        for hook in self.on_startup {
            hook().await.map_err(|source| AppError::Hook {
                stage: "startup",
                source,
            })?;
        }
        let stop = CancellationToken::new();
        let abort = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let (ended_tx, ended) = mpsc::unbounded_channel();
        self.ctx
            .publishers_mut()
            .set_layers(Layers::new(self.layers.clone()));
        let mut health = Vec::with_capacity(self.subscribers.len());
        for mut subscriber in self.subscribers {
            let cell = subscriber.prepare(&self.layers);
            let sub = subscriber.subscription();
            health.push((
                sub.name().to_owned(),
                subscriber.kind(),
                sub.source_name().to_owned(),
                cell.clone(),
            ));
            for warning in sub.warnings() {
                tracing::warn!(subscriber = sub.name(), "{warning}");
            }
            let (name, kind) = (sub.name().to_owned(), subscriber.kind());
            let (source, policy) = (sub.source_name().to_owned(), sub.policy());
            let run = match subscriber
                .subscribe(self.ctx.clone(), stop.clone(), abort.clone())
                .await
            {
                Ok(run) => run,
                Err(e) => {
                    stop.cancel();
                    while tasks.join_next().await.is_some() {}
                    return Err(e.into());
                }
            };
            tracing::info!(
                subscriber = name,
                broker = kind.name(),
                source,
                ack_policy = %policy,
                "subscribed"
            );
            cell.consuming(true);
            let supervise = Supervise {
                subscriber,
                name,
                cell,
                restart: self.restart,
                ctx: self.ctx.clone(),
                stop: stop.clone(),
                abort: abort.clone(),
                ended: ended_tx.clone(),
            };
            tasks.spawn(supervise.run(run));
        }
        // Once a second, note which subscribers received messages since the last look, so the
        // engine reads no clock per message.
        let cells: Vec<SharedHealth> = health.iter().map(|(.., cell)| cell.clone()).collect();
        let sampler = tokio::spawn(async move {
            let mut every = tokio::time::interval(SAMPLE_EVERY);
            loop {
                every.tick().await;
                let now = std::time::SystemTime::now();
                cells.iter().for_each(|cell| cell.sample(now));
            }
        });
        let brokers = self.broker.clone();
        Ok(RunningApp {
            health: HealthHandle::new(health, move || {
                let mut connected = Vec::new();
                brokers.connected(&mut connected);
                connected
            }),
            sampler: sampler.abort_handle(),
            broker: self.broker,
            ended,
            _ended_tx: ended_tx,
            tasks,
            stop,
            abort,
            graceful_timeout: self.graceful_timeout,
            on_shutdown: self.on_shutdown,
            shutdown: self.shutdown,
        })
    }
}

/// Runs one subscriber's consumer loop; when its consumer ends for good, restarts it as
/// [`App::restart_ended`] allows, or reports it (and the App stops).
struct Supervise {
    subscriber: Box<dyn Start>,
    name: String,
    cell: SharedHealth,
    restart: Option<Restart>,
    ctx: Context,
    stop: CancellationToken,
    abort: CancellationToken,
    ended: mpsc::UnboundedSender<SubscriberEnded>,
}

impl Supervise {
    async fn run(self, first: BoxFuture<Result<Ended, BrokerError>>) {
        let mut run = first;
        let mut restarts_in_a_row = 0u32;
        loop {
            let received_before = self.cell.received_count();
            let reason = match run.await {
                Ok(Ended::Stopped) => {
                    self.cell.ended("the App stopped".to_owned());
                    return;
                }
                Ok(Ended::ConsumerEnded(last_error)) => {
                    last_error.unwrap_or_else(|| "its consumer ended".to_owned())
                }
                Err(error) => error.to_string(),
            };
            self.cell.ended(reason.clone());
            if self.stop.is_cancelled() {
                tracing::error!(
                    subscriber = self.name,
                    reason,
                    "subscriber stopped with an error"
                );
                return;
            }
            // A subscriber that consumed since its last restart starts its count again.
            if self.cell.received_count() != received_before {
                restarts_in_a_row = 0;
            }
            let Some(restart) = self.restart.filter(|r| restarts_in_a_row < r.max_in_a_row) else {
                tracing::error!(
                    subscriber = self.name,
                    reason,
                    "subscriber ended for good; stopping the App"
                );
                let _ = self.ended.send(SubscriberEnded {
                    subscriber: self.name,
                    reason,
                });
                return;
            };
            loop {
                let backoff = restart.wait(restarts_in_a_row);
                restarts_in_a_row += 1;
                tracing::warn!(
                    subscriber = self.name,
                    reason,
                    ?backoff,
                    attempt = restarts_in_a_row,
                    "subscriber ended; subscribing it again"
                );
                tokio::select! {
                    _ = self.stop.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                match self
                    .subscriber
                    .subscribe(self.ctx.clone(), self.stop.clone(), self.abort.clone())
                    .await
                {
                    Ok(next) => {
                        self.cell.restarted();
                        run = next;
                        break;
                    }
                    Err(error) if restarts_in_a_row < restart.max_in_a_row => {
                        tracing::warn!(subscriber = self.name, %error, "subscribing again failed");
                    }
                    Err(error) => {
                        let reason = format!("{reason}; subscribing again failed: {error}");
                        self.cell.ended(reason.clone());
                        let _ = self.ended.send(SubscriberEnded {
                            subscriber: self.name,
                            reason,
                        });
                        return;
                    }
                }
            }
        }
    }
}

/// How [`App::restart_ended`] restarts a subscriber whose consumer ended for good: at most
/// `max_in_a_row` times without a message in between, waiting `first_backoff`, doubled each
/// time up to `max_backoff`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Restart {
    /// Restarts allowed in a row (a subscriber that received a message since starts again).
    pub max_in_a_row: u32,
    /// The wait before the first restart.
    pub first_backoff: Duration,
    /// The longest wait.
    pub max_backoff: Duration,
}

impl Restart {
    /// At most `max_in_a_row` restarts in a row, after 1 s, 2 s, 4 s ... at most 30 s.
    pub const fn new(max_in_a_row: u32) -> Self {
        Restart {
            max_in_a_row,
            first_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(30),
        }
    }

    /// Sets the first wait (doubled each time, up to the longest).
    pub const fn backoff(mut self, first: Duration, max: Duration) -> Self {
        self.first_backoff = first;
        self.max_backoff = max;
        self
    }

    fn wait(self, attempt: u32) -> Duration {
        self.first_backoff
            .saturating_mul(1u32 << attempt.min(16))
            .min(self.max_backoff)
    }
}

/// A subscriber whose consumer ended while the App was running.
#[derive(Debug)]
struct SubscriberEnded {
    subscriber: String,
    reason: String,
}

/// A started [`App`].
pub struct RunningApp<B: Brokers> {
    health: HealthHandle,
    sampler: tokio::task::AbortHandle,
    broker: B,
    ended: mpsc::UnboundedReceiver<SubscriberEnded>,
    // Kept so that `ended` never closes: an App with no subscribers still waits.
    _ended_tx: mpsc::UnboundedSender<SubscriberEnded>,
    tasks: JoinSet<()>,
    stop: CancellationToken,
    abort: CancellationToken,
    graceful_timeout: Duration,
    on_shutdown: Vec<Hook>,
    shutdown: ShutdownHandle,
}

impl<B: Brokers> RunningApp<B> {
    /// The broker.
    pub fn broker(&self) -> &B {
        &self.broker
    }

    /// Each broker's connection (where its client can tell) and each subscriber: consuming,
    /// messages received, the last one's time, failures in a row. For readiness and liveness
    /// endpoints ([`Health::is_ready`], [`Health::is_alive`]).
    pub fn health(&self) -> Health {
        self.health.health()
    }

    /// A cheap handle to the same health, for an HTTP endpoint or a probe task that outlives a
    /// borrow of the App.
    pub fn health_handle(&self) -> HealthHandle {
        self.health.clone()
    }

    /// A handle that makes [`RunningApp::wait`] return.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.shutdown.clone()
    }

    /// Waits for the shutdown handle, then stops gracefully; like [`App::run`], returns
    /// [`AppError::SubscriberEnded`] (after stopping the rest) if a subscriber's consumer ends
    /// for good first.
    pub async fn wait(mut self) -> Result<(), AppError> {
        let handle = self.shutdown.clone();
        let ended = tokio::select! {
            _ = handle.0.cancelled() => None,
            ended = self.ended.recv() => ended,
        };
        self.finish(ended).await
    }

    async fn finish(self, ended: Option<SubscriberEnded>) -> Result<(), AppError> {
        let stopped = self.stop().await;
        let Some(SubscriberEnded { subscriber, reason }) = ended else {
            return stopped;
        };
        if let Err(error) = stopped {
            tracing::error!(%error, "stopping the App after a subscriber ended failed too");
        }
        Err(AppError::SubscriberEnded { subscriber, reason })
    }

    /// Graceful shutdown: stop fetching; let in-flight handlers finish and settle within the
    /// graceful timeout (cancelling, unsettled, whatever is still running then); close the
    /// consumers (Kafka commits here); run the shutdown hooks; disconnect.
    pub async fn stop(mut self) -> Result<(), AppError> {
        self.stop.cancel();
        let drained = tokio::time::timeout(self.graceful_timeout, async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                timeout = ?self.graceful_timeout,
                "graceful timeout reached; cancelling handlers still running (their messages stay unsettled)"
            );
            self.abort.cancel();
            // Cancelled handlers return at once; what is left is consumers closing (commits,
            // handing messages back). Bound that too, so shutdown never hangs on a dead broker.
            let closed = tokio::time::timeout(CLOSE_TIMEOUT, async {
                while self.tasks.join_next().await.is_some() {}
            })
            .await;
            if closed.is_err() {
                tracing::error!(timeout = ?CLOSE_TIMEOUT, "consumers did not close in time; aborting them");
                self.tasks.abort_all();
                while self.tasks.join_next().await.is_some() {}
            }
        }
        let mut result = Ok(());
        for hook in self.on_shutdown {
            if let Err(source) = hook().await {
                tracing::error!(error = %source, "shutdown hook failed");
                if result.is_ok() {
                    result = Err(AppError::Hook {
                        stage: "shutdown",
                        source,
                    });
                }
            }
        }
        self.sampler.abort();
        self.broker.close_all().await?;
        self.shutdown.shutdown();
        result
    }
}

async fn shutdown_signal() -> Result<(), AppError> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).map_err(AppError::Signal)?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r.map_err(AppError::Signal),
            _ = term.recv() => Ok(()),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await.map_err(AppError::Signal)
    }
}
