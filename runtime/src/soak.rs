//! Crash and restart soaks: an App in a **child process** handles ids `1..=N` (failing some on
//! their first delivery, several handlers at once) while the parent kills it mid-stream
//! (SIGKILL) or cuts its broker connection, starts another, and checks from outside that every
//! id was handled at least once, that the broker holds nothing for the group afterwards, and
//! that duplicates stay within the bound the broker crate states.
//!
//! A broker crate runs both soaks with a test target whose `main` is [`main`]
//! (`harness = false`; the target lists its soaks like libtest, so `cargo test` and nextest
//! run them):
//!
//! ```ignore
//! // tests/soak.rs, with `[[test]] name = "soak" harness = false` in Cargo.toml
//! fn main() {
//!     brook_runtime::soak::main(|| MyAdapter::new());
//! }
//! ```
//!
//! The child is the same test binary, started with `BROOK_SOAK_CHILD` set; it records each id
//! it handled as a line in a file (one `write` per line, so a SIGKILL loses none).

use std::borrow::Cow;
use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use brook_caps::{AckPolicy, Value};
use bytes::Bytes;

use crate::app::App;
use crate::broker::{Broker, Outgoing};
use crate::conformance::{Adapter, TestSource};
use crate::extract::Context;
use crate::handler::{Handler, HandlerError};
use crate::message::Message;
use crate::proxy::TcpProxy;
use crate::subscription::{Subscription, SubscriptionBuilder};

const CHILD: &str = "BROOK_SOAK_CHILD";
const SOURCE: &str = "BROOK_SOAK_SOURCE";
const LOG: &str = "BROOK_SOAK_LOG";
const VIA: &str = "BROOK_SOAK_VIA";
const DESTINATION: &str = "BROOK_SOAK_DESTINATION";
const TRIAL: &str = "BROOK_SOAK_TRIAL";

/// Messages per soak (unless the adapter says otherwise: [`SoakAdapter::messages`]).
pub const MESSAGES: u64 = 400;
/// Handlers at once in the child.
pub const CONCURRENCY: u32 = 4;
/// Every id divisible by this fails on its first delivery in each process.
pub const FAIL_EVERY: u64 = 7;
/// The longest a soak waits for one step.
const STEP: Duration = Duration::from_secs(40);

/// What a broker crate provides for its soaks, beyond the conformance [`Adapter`].
pub trait SoakAdapter: Adapter {
    /// The proxy the connection-cut soak's child connects through, and cuts: by default a
    /// [`TcpProxy`] in front of [`SoakAdapter::upstream`]. A broker whose clients reconnect to
    /// an advertised address (Kafka) gives the proxy its private instance advertises instead.
    fn cut_point(&self) -> impl Future<Output = Result<Arc<TcpProxy>, String>> + Send {
        let upstream = self.upstream();
        async move {
            let proxy = TcpProxy::start(upstream)
                .await
                .map_err(|e| format!("proxy: {e}"))?;
            Ok(Arc::new(proxy))
        }
    }

    /// The real broker's address, for the default [`SoakAdapter::cut_point`].
    fn upstream(&self) -> SocketAddr;

    /// The client the child runs its App on to consume `source` (default:
    /// [`Adapter::broker`]): where a broker crate sets what the soak's duplicate bound assumes
    /// (e.g. a commit cadence), or the session the source lives in (an MQTT client id).
    fn soak_broker(&self, source: &TestSource) -> impl Future<Output = Self::Broker> + Send {
        let _ = source;
        self.broker()
    }

    /// A client of the broker that connects to `addr` (the proxy) instead, otherwise as
    /// [`SoakAdapter::soak_broker`] configures it, for the child consuming `source`.
    fn broker_at(
        &self,
        addr: SocketAddr,
        source: &TestSource,
    ) -> impl Future<Output = Self::Broker> + Send;

    /// The most duplicate handlings a restart may cause in these soaks (`MESSAGES` ids,
    /// `CONCURRENCY` handlers): what the broker redelivers that was handled but not yet
    /// acknowledged when the process died. Stated by the broker crate, with a comment why.
    fn duplicate_bound(&self) -> usize;

    /// Makes `source` keep what is published before its first consumer runs (the soak
    /// publishes every id first): create a Redis group at `0`, an MQTT persistent session...
    /// The default: nothing to do.
    fn prepare(&self, source: &TestSource) -> impl Future<Output = Result<(), String>> + Send {
        let _ = source;
        async { Ok(()) }
    }

    /// How many ids the soak handles (default [`MESSAGES`]): fewer where each nack is slow to
    /// come back (a Kafka seek re-fetches), so a soak stays well under a minute.
    fn messages(&self) -> u64 {
        MESSAGES
    }

    /// Extra subscriber arguments for the soak's source (e.g. a prefetch).
    fn soak_args(&self) -> Vec<(Cow<'static, str>, Value)> {
        Vec::new()
    }
}

/// The soak test binary's `main`: in the child, runs the App; otherwise lists and runs the
/// soaks like libtest does (`--list`, filters, `--exact`, as nextest needs).
pub fn main<A: SoakAdapter>(adapter: impl Fn() -> A + Send + Sync + Clone + 'static) {
    main_with(adapter.clone(), adapter);
}

/// [`main`] with one adapter for the SIGKILL soak and another for the connection-cut soak (a
/// broker whose clients cannot be cut by a proxy in front of the shared broker uses a private
/// instance for the latter).
pub fn main_with<K: SoakAdapter, C: SoakAdapter>(
    kill: impl Fn() -> K + Send + Sync + 'static,
    cut: impl Fn() -> C + Send + Sync + 'static,
) {
    if std::env::var_os(CHILD).is_some() {
        let code = match std::env::var(TRIAL).as_deref() {
            Ok("cut") => child(cut()),
            _ => child(kill()),
        };
        std::process::exit(code);
    }
    let args = libtest_mimic::Arguments::from_args();
    let trials = vec![
        libtest_mimic::Trial::test("soak_sigkill_mid_stream_then_restart", move || {
            runtime()?.block_on(kill_and_restart(Arc::new(kill())))
        }),
        libtest_mimic::Trial::test("soak_broker_connection_cut_mid_stream", move || {
            runtime()?.block_on(cut_connection(Arc::new(cut())))
        }),
    ];
    libtest_mimic::run(&args, trials).exit();
}

fn runtime() -> Result<tokio::runtime::Runtime, libtest_mimic::Failed> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}").into())
}

type Outcome = Result<(), libtest_mimic::Failed>;

fn fail(message: impl Into<String>) -> libtest_mimic::Failed {
    message.into().into()
}

/// SIGKILL the child once a third of the ids are handled, start another, check.
async fn kill_and_restart<A: SoakAdapter>(adapter: Arc<A>) -> Outcome {
    let soak = Soak::prepare(adapter.clone(), "kill").await?;
    let mut first = soak.spawn(None)?;
    soak.wait_handled(soak.messages / 3, &mut first).await?;
    first.kill().map_err(|e| fail(format!("SIGKILL: {e}")))?;
    let _ = first.wait();
    let mut second = soak.spawn(None)?;
    soak.wait_all(&mut second).await?;
    soak.stop(second).await?;
    soak.check(&*adapter).await
}

/// Cut the child's broker connection (a proxy in between) once a third of the ids are handled;
/// restore it after a second; the same child must go on and handle everything.
async fn cut_connection<A: SoakAdapter>(adapter: Arc<A>) -> Outcome {
    let soak = Soak::prepare(adapter.clone(), "cut").await?;
    let proxy = adapter.cut_point().await.map_err(fail)?;
    let mut child = soak.spawn(Some(proxy.addr()))?;
    soak.wait_handled(soak.messages / 3, &mut child).await?;
    proxy.cut();
    tokio::time::sleep(Duration::from_secs(1)).await; // the outage itself, not a synchronization
    proxy.restore();
    soak.wait_all(&mut child).await?;
    soak.stop(child).await?;
    soak.check(&*adapter).await
}

struct Soak<A> {
    _adapter: std::marker::PhantomData<A>,
    messages: u64,
    source: TestSource,
    log: PathBuf,
    children: Mutex<u32>,
}

impl<A: SoakAdapter> Soak<A> {
    async fn prepare(adapter: Arc<A>, test: &str) -> Result<Soak<A>, libtest_mimic::Failed> {
        let mut source = adapter
            .fresh_source(&format!("soak_{test}"))
            .await
            .map_err(|e| fail(format!("fresh source: {e}")))?;
        source.args.extend(adapter.soak_args());
        adapter
            .prepare(&source)
            .await
            .map_err(|e| fail(format!("preparing the source: {e}")))?;
        let broker = adapter.broker().await;
        broker
            .connect()
            .await
            .map_err(|e| fail(format!("connect: {e}")))?;
        let messages = adapter.messages();
        for id in 1..=messages {
            broker
                .publish_message(Outgoing::new(
                    source.destination.clone(),
                    Bytes::from(id.to_string()),
                ))
                .await
                .map_err(|e| fail(format!("publish {id}: {e}")))?;
        }
        let _ = broker.close().await;
        let log = std::env::temp_dir().join(format!(
            "{}.log",
            crate::conformance::unique_name(&format!("brook-soak-{test}"), '-')
        ));
        std::fs::write(&log, b"").map_err(|e| fail(format!("{}: {e}", log.display())))?;
        Ok(Soak {
            _adapter: std::marker::PhantomData,
            messages,
            source,
            log,
            children: Mutex::new(0),
        })
    }

    fn spawn(&self, via: Option<SocketAddr>) -> Result<Child, libtest_mimic::Failed> {
        let exe = std::env::current_exe().map_err(|e| fail(format!("current_exe: {e}")))?;
        let n = {
            let mut n = self.children.lock().unwrap_or_else(|p| p.into_inner());
            *n += 1;
            *n
        };
        let stderr = std::fs::File::create(self.log.with_extension(format!("child{n}.stderr")))
            .map_err(|e| fail(format!("child stderr: {e}")))?;
        let mut command = Command::new(exe);
        command
            .env(CHILD, "1")
            .env(SOURCE, encode_args(&self.source.args))
            .env(DESTINATION, &self.source.destination)
            .env(LOG, &self.log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        if let Some(addr) = via {
            command.env(VIA, addr.to_string()).env(TRIAL, "cut");
        }
        command
            .spawn()
            .map_err(|e| fail(format!("spawn the child: {e}")))
    }

    /// Waits until `n` distinct ids are handled, failing if the child exits first.
    async fn wait_handled(&self, n: u64, child: &mut Child) -> Outcome {
        let deadline = Instant::now() + STEP;
        loop {
            let handled = handled(&self.log);
            if handled.len() as u64 >= n {
                return Ok(());
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(fail(format!(
                    "the child exited ({status}) after handling {} of {n} ids; its stderr: {}",
                    handled.len(),
                    self.child_stderr()
                )));
            }
            if Instant::now() > deadline {
                return Err(fail(format!(
                    "only {} of {n} ids handled within {STEP:?}; child stderr: {}",
                    handled.len(),
                    self.child_stderr()
                )));
            }
            // Polls a file the child appends to: there is no event to await across processes.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn wait_all(&self, child: &mut Child) -> Outcome {
        self.wait_handled(self.messages, child).await
    }

    /// SIGTERM: the child must stop gracefully, and exit 0.
    async fn stop(&self, mut child: Child) -> Outcome {
        let pid = i32::try_from(child.id()).map_err(|_| fail("pid out of range"))?;
        // SAFETY: kill(2) with a pid we spawned and a valid signal number has no memory effects.
        if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
            return Err(fail("SIGTERM failed"));
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().map_err(|e| fail(e.to_string()))? {
                return match status.success() {
                    true => Ok(()),
                    false => Err(fail(format!(
                        "the child exited with {status} on SIGTERM; its stderr: {}",
                        self.child_stderr()
                    ))),
                };
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return Err(fail("the child did not stop within 30 s of SIGTERM"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Every id handled, nothing left for the group, duplicates within the stated bound.
    async fn check(&self, adapter: &A) -> Outcome {
        let lines = handled_lines(&self.log);
        let distinct: HashSet<u64> = lines.iter().copied().collect();
        let missing: Vec<u64> = (1..=self.messages)
            .filter(|id| !distinct.contains(id))
            .collect();
        if !missing.is_empty() {
            return Err(fail(format!("ids never handled: {missing:?}")));
        }
        let remaining = adapter
            .remaining(&self.source)
            .await
            .map_err(|e| fail(format!("reading the broker's state: {e}")))?;
        if !remaining.is_empty() {
            return Err(fail(format!(
                "the broker still holds {} message(s) for the group after every id was handled and the App stopped: {:?}",
                remaining.len(),
                remaining.iter().take(5).collect::<Vec<_>>()
            )));
        }
        let duplicates = lines.len() - distinct.len();
        let bound = adapter.duplicate_bound();
        let mut counts: BTreeMap<u64, u32> = BTreeMap::new();
        for id in &lines {
            *counts.entry(*id).or_default() += 1;
        }
        let worst = counts.values().max().copied().unwrap_or(0);
        let _ = writeln!(
            std::io::stderr(),
            "soak: {} ids, {} handlings, {duplicates} duplicate(s) (bound {bound}), at most {worst} per id",
            self.messages,
            lines.len()
        );
        if duplicates > bound {
            return Err(fail(format!(
                "{duplicates} duplicate handlings, more than the stated bound of {bound}"
            )));
        }
        let _ = std::fs::remove_file(&self.log);
        Ok(())
    }

    fn child_stderr(&self) -> String {
        let n = *self.children.lock().unwrap_or_else(|p| p.into_inner());
        let text = std::fs::read_to_string(self.log.with_extension(format!("child{n}.stderr")))
            .unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(20).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }
}

fn failed_with(message: impl Into<String>) -> HandlerError {
    HandlerError::Failed(anyhow::Error::msg(message.into()))
}

fn handled_lines(log: &Path) -> Vec<u64> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

fn handled(log: &Path) -> HashSet<u64> {
    handled_lines(log).into_iter().collect()
}

/// `name=kind:value` lines: what the child needs to build the same subscription.
fn encode_args(args: &[(Cow<'static, str>, Value)]) -> String {
    args.iter()
        .map(|(n, v)| {
            let value = match v {
                Value::Str(s) | Value::Deferred(s) => format!("s:{s}"),
                Value::Ident(s) => format!("n:{s}"),
                Value::Int(i) => format!("i:{i}"),
                Value::Bool(b) => format!("b:{b}"),
                Value::AtMount => "s:".to_owned(),
            };
            format!("{n}={value}")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn decode_args(text: &str) -> Vec<(Cow<'static, str>, Value)> {
    text.lines()
        .filter_map(|line| {
            let (name, value) = line.split_once('=')?;
            let (kind, v) = value.split_once(':')?;
            let value = match kind {
                "n" => Value::Ident(Cow::Owned(v.to_owned())),
                "i" => Value::Int(v.parse().ok()?),
                "b" => Value::Bool(v == "true"),
                _ => Value::Str(Cow::Owned(v.to_owned())),
            };
            Some((Cow::Owned(name.to_owned()), value))
        })
        .collect()
}

/// The child: an App that handles ids, failing some on their first delivery here.
fn child<A: SoakAdapter>(adapter: A) -> i32 {
    let Ok(rt) = runtime() else {
        return 2;
    };
    match rt.block_on(run_child(adapter)) {
        Ok(()) => 0,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "soak child: {e}");
            1
        }
    }
}

async fn run_child<A: SoakAdapter>(adapter: A) -> Result<(), String> {
    let env = |name| std::env::var(name).map_err(|_| format!("{name} is not set"));
    let args = decode_args(&env(SOURCE)?);
    let source = TestSource {
        args: args.clone(),
        destination: env(DESTINATION)?,
    };
    let log = std::fs::OpenOptions::new()
        .append(true)
        .open(env(LOG)?)
        .map_err(|e| e.to_string())?;
    let broker = match std::env::var(VIA).ok() {
        Some(addr) => {
            let addr = addr.parse().map_err(|_| format!("bad {VIA}"))?;
            adapter.broker_at(addr, &source).await
        }
        None => adapter.soak_broker(&source).await,
    };
    let mut sub = Subscription::new(<A::Kind as crate::handler::kind::Kind>::KIND, "soak");
    for (n, v) in args {
        sub = sub.arg(n, v);
    }
    let handler = Recorder::<A::Kind> {
        sub: sub
            .arg("ack_policy", AckPolicy::NackOnError)
            .arg("concurrency", CONCURRENCY),
        log: Mutex::new(log),
        failed: Mutex::new(HashSet::new()),
        kind: std::marker::PhantomData,
    };
    App::new(broker)
        .subscribe(handler)
        .graceful_timeout(Duration::from_secs(10))
        .run()
        .await
        .map_err(|e| e.to_string())
}

struct Recorder<K> {
    sub: SubscriptionBuilder,
    log: Mutex<std::fs::File>,
    failed: Mutex<HashSet<u64>>,
    kind: std::marker::PhantomData<K>,
}

impl<K: crate::handler::kind::Kind> Handler for Recorder<K> {
    type Broker = K;

    fn subscription(&self) -> SubscriptionBuilder {
        self.sub.clone()
    }

    async fn call(&self, msg: &Message, _: &Context) -> crate::HandlerResult {
        let done: Result<(), HandlerError> = async move {
            let id: u64 = std::str::from_utf8(msg.body())
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .ok_or_else(|| failed_with("not an id"))?;
            // A little work, so several handlers overlap and a kill lands mid-stream.
            tokio::time::sleep(Duration::from_millis(2)).await;
            if id.is_multiple_of(FAIL_EVERY)
                && self
                    .failed
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(id)
            {
                return Err(failed_with("fails on its first delivery here"));
            }
            let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
            log.write_all(format!("{id}\n").as_bytes())
                .map_err(|e| failed_with(e.to_string()))
        }
        .await;
        done.map(|()| None)
    }
}
