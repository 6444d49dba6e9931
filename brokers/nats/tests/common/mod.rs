//! Shared test helpers: fresh names, the conformance adapter, a scripted handler, and direct
//! views of the broker's state (consumer info, stream contents) that tests assert on.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::PullConsumer};
use brook_nats::NatsBroker;
use brook_runtime::conformance::{Adapter, TestSource};
use brook_runtime::{
    kind, BrokerError, BrokerKind, Context, Handler, HandlerError, Message, Subscription,
    SubscriptionBuilder,
};
use bytes::Bytes;
use futures_util::StreamExt as _;
use tokio::sync::mpsc;

pub const URL: &str = "nats://127.0.0.1:4222";
pub const WAIT: Duration = Duration::from_secs(20);

/// A name no other test (or earlier run) uses: prefix + pid + nanos + counter.
pub fn fresh(prefix: &str) -> String {
    brook_runtime::conformance::unique_name(prefix, '_')
}

/// A fresh stream name, subject and durable name.
pub struct Names {
    pub stream: String,
    pub subject: String,
    pub durable: String,
}

pub fn names(test: &str) -> Names {
    // Test names may hold any punctuation: keep letters and digits, one `_` between runs.
    let clean = test
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|t| !t.is_empty())
        .collect::<Vec<_>>()
        .join("_");
    let base = fresh(&format!("brook_{clean}"));
    Names {
        stream: base.to_uppercase(),
        subject: format!("brook.{}", base.replace('_', ".")),
        durable: "worker".to_owned(),
    }
}

pub async fn client() -> async_nats::Client {
    async_nats::connect(URL)
        .await
        .expect("connect to NATS at 127.0.0.1:4222")
}

/// The durable consumer's state as the server reports it.
pub async fn consumer_info(
    js: &jetstream::Context,
    stream: &str,
    durable: &str,
) -> jetstream::consumer::Info {
    js.get_stream(stream)
        .await
        .expect("stream")
        .consumer_info(durable)
        .await
        .expect("consumer info")
}

/// What a fresh consumer of the durable receives now (consuming it), after checking that no
/// delivery is left unacknowledged with nobody holding it.
pub async fn drain_durable(
    js: &jetstream::Context,
    stream: &str,
    durable: &str,
) -> Result<Vec<Bytes>, BrokerError> {
    let op = |e: async_nats::Error| BrokerError::operation(BrokerKind::Nats, "test read", e);
    let stream_h = js.get_stream(stream).await.map_err(|e| op(e.into()))?;
    let consumer: PullConsumer = stream_h.get_consumer(durable).await.map_err(op)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut out = Vec::new();
    loop {
        let mut batch = consumer
            .fetch()
            .max_messages(100)
            .messages()
            .await
            .map_err(|e| op(e.into()))?;
        while let Some(m) = batch.next().await {
            let m = m.map_err(op)?;
            out.push(m.payload.clone());
            m.double_ack().await.map_err(op)?;
        }
        let info = stream_h
            .consumer_info(durable)
            .await
            .map_err(|e| op(e.into()))?;
        if info.num_pending == 0 && info.num_ack_pending == 0 {
            return Ok(out);
        }
        if Instant::now() > deadline {
            return Err(BrokerError::Invalid {
                broker: BrokerKind::Nats,
                message: format!(
                    "{} message(s) delivered and unacknowledged with no consumer holding them, {} pending",
                    info.num_ack_pending, info.num_pending
                ),
            });
        }
        // Polling the server's state (e.g. a -NAK being processed), bounded by the deadline.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The conformance adapter. Dead letters: JetStream has no dead-letter place, but the server
/// publishes a MSG_TERMINATED advisory for every +TERM; the adapter collects them and reads
/// the terminated messages back from the stream by sequence.
pub struct NatsAdapter {
    client: tokio::sync::OnceCell<async_nats::Client>,
    terminated: Mutex<HashMap<String, Arc<Mutex<Vec<u64>>>>>,
}

impl NatsAdapter {
    pub fn new() -> Self {
        NatsAdapter {
            client: tokio::sync::OnceCell::new(),
            terminated: Mutex::new(HashMap::new()),
        }
    }

    async fn client(&self) -> &async_nats::Client {
        self.client.get_or_init(client).await
    }
}

fn arg(source: &TestSource, name: &str) -> String {
    source
        .args
        .iter()
        .find(|(n, _)| n == name)
        .and_then(|(_, v)| v.as_str())
        .unwrap_or_default()
        .to_owned()
}

impl Adapter for NatsAdapter {
    type Broker = NatsBroker;
    type Kind = kind::Nats;

    async fn broker(&self) -> NatsBroker {
        NatsBroker::new(URL)
    }

    async fn fresh_source(&self, test: &str) -> Result<TestSource, BrokerError> {
        let n = names(test);
        let client = self.client().await.clone();
        let mut advisories = client
            .subscribe(format!(
                "$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.{}.{}",
                n.stream, n.durable
            ))
            .await
            .map_err(|e| BrokerError::operation(BrokerKind::Nats, "subscribe", e))?;
        client
            .flush()
            .await
            .map_err(|e| BrokerError::operation(BrokerKind::Nats, "flush", e))?;
        let seqs = Arc::new(Mutex::new(Vec::new()));
        self.terminated
            .lock()
            .unwrap()
            .insert(n.stream.clone(), seqs.clone());
        tokio::spawn(async move {
            while let Some(m) = advisories.next().await {
                if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&m.payload) {
                    if let Some(seq) = v.get("stream_seq").and_then(|s| s.as_u64()) {
                        seqs.lock().unwrap().push(seq);
                    }
                }
            }
        });
        Ok(TestSource {
            args: vec![
                ("subject".into(), n.subject.clone().into()),
                ("stream".into(), n.stream.into()),
                ("durable".into(), n.durable.into()),
            ],
            destination: n.subject,
        })
    }

    async fn remaining(&self, source: &TestSource) -> Result<Vec<Bytes>, BrokerError> {
        let js = jetstream::new(self.client().await.clone());
        drain_durable(&js, &arg(source, "stream"), &arg(source, "durable")).await
    }

    async fn dead_letters(&self, source: &TestSource) -> Result<Vec<Bytes>, BrokerError> {
        let stream = arg(source, "stream");
        let seqs = self
            .terminated
            .lock()
            .unwrap()
            .get(&stream)
            .cloned()
            .unwrap_or_default();
        // The advisory is sent asynchronously after the +TERM is processed: wait until none
        // has arrived for a short while (bounded).
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut last = (seqs.lock().unwrap().len(), Instant::now());
        while Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let now = seqs.lock().unwrap().len();
            if now != last.0 {
                last = (now, Instant::now());
            } else if last.1.elapsed() > Duration::from_millis(400) {
                break;
            }
        }
        let js = jetstream::new(self.client().await.clone());
        let s = js
            .get_stream(&stream)
            .await
            .map_err(|e| BrokerError::operation(BrokerKind::Nats, "stream", e))?;
        let mut out = Vec::new();
        let list = seqs.lock().unwrap().clone();
        for seq in list {
            let m = s
                .get_raw_message(seq)
                .await
                .map_err(|e| BrokerError::operation(BrokerKind::Nats, "get message", e))?;
            out.push(m.payload);
        }
        Ok(out)
    }
}

impl Drop for NatsAdapter {
    /// The suite creates one adapter per test: its streams go with it.
    fn drop(&mut self) {
        let streams = self
            .terminated
            .lock()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        delete_streams(streams);
    }
}

/// What a scripted handler does with one delivery.
#[derive(Clone, Debug)]
pub enum Act {
    /// Return Ok (the policy settles; under Manual nothing happens).
    Succeed,
    /// Return an error.
    Fail,
    /// Ack through `&Message`.
    Ack,
    /// Send +WPI every `every` for `total`, then return Ok.
    WorkLong { total: Duration, every: Duration },
}

/// One handler call as a test sees it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub body: Bytes,
    pub delivery_count: Option<u32>,
    pub headers: brook_runtime::Headers,
    pub stream_seq: Option<u64>,
}

pub struct Scripted<F> {
    pub sub: SubscriptionBuilder,
    pub script: F,
    pub tx: mpsc::UnboundedSender<Seen>,
}

pub fn scripted<F>(
    sub: SubscriptionBuilder,
    script: F,
) -> (Scripted<F>, mpsc::UnboundedReceiver<Seen>)
where
    F: Fn(&Message) -> Act + Send + Sync + 'static,
{
    let (tx, rx) = mpsc::unbounded_channel();
    (Scripted { sub, script, tx }, rx)
}

impl<F> Handler for Scripted<F>
where
    F: Fn(&Message) -> Act + Send + Sync + 'static,
{
    type Broker = kind::Nats;

    fn subscription(&self) -> SubscriptionBuilder {
        self.sub.clone()
    }

    async fn call(&self, msg: &Message, _: &Context) -> brook_runtime::HandlerResult {
        let done: Result<(), HandlerError> = async move {
            let raw = msg.raw::<brook_nats::NatsMessage>();
            let _ = self.tx.send(Seen {
                body: msg.body().clone(),
                delivery_count: msg.delivery_count(),
                headers: msg.headers().clone(),
                stream_seq: raw.and_then(|r| r.info()).map(|i| i.stream_sequence),
            });
            match (self.script)(msg) {
                Act::Succeed => Ok(()),
                Act::Fail => Err(HandlerError::Failed(anyhow::anyhow!("scripted failure"))),
                Act::Ack => msg
                    .ack()
                    .await
                    .map(|_| ())
                    .map_err(|e| HandlerError::Failed(e.into())),
                Act::WorkLong { total, every } => {
                    let start = Instant::now();
                    while start.elapsed() < total {
                        tokio::time::sleep(every).await;
                        msg.in_progress()
                            .await
                            .map_err(|e| HandlerError::Failed(e.into()))?;
                    }
                    Ok(())
                }
            }
        }
        .await;
        done.map(|()| None)
    }
}

/// Waits (bounded) for the next handler call.
pub async fn next_seen(rx: &mut mpsc::UnboundedReceiver<Seen>) -> Seen {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("a handler call within the bound")
        .expect("handler alive")
}

/// Asserts no handler call arrives within `window`.
pub async fn assert_quiet(rx: &mut mpsc::UnboundedReceiver<Seen>, window: Duration) {
    if let Ok(Some(seen)) = tokio::time::timeout(window, rx.recv()).await {
        panic!("unexpected delivery: {seen:?}");
    }
}

/// A JetStream subscription for `n` with extra arguments, unvalidated (what a handler gives
/// the App).
pub fn js_builder(
    n: &Names,
    extra: &[(&'static str, brook_runtime::ArgValue)],
) -> SubscriptionBuilder {
    let mut b = Subscription::new(BrokerKind::Nats, "test")
        .arg("subject", n.subject.clone())
        .arg("stream", n.stream.clone())
        .arg("durable", n.durable.clone());
    for (k, v) in extra {
        b = b.arg(*k, v.clone());
    }
    b
}

/// [`js_builder`], validated (for `Broker::subscribe`).
pub fn js_sub(n: &Names, extra: &[(&'static str, brook_runtime::ArgValue)]) -> Subscription {
    js_builder(n, extra).build().expect("valid subscription")
}

/// Deletes the named streams from the shared server when dropped, so tests leave nothing
/// behind, whether they pass or panic. Runs on its own thread and runtime, because `Drop`
/// cannot await and may run inside the test's runtime.
pub struct StreamCleanup(Vec<String>);

pub fn cleanup(streams: &[&str]) -> StreamCleanup {
    StreamCleanup(streams.iter().map(|s| (*s).to_owned()).collect())
}

fn delete_streams(streams: Vec<String>) {
    if streams.is_empty() {
        return;
    }
    let _ = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok()?;
        runtime.block_on(async {
            let client = tokio::time::timeout(WAIT, async_nats::connect(URL))
                .await
                .ok()?
                .ok()?;
            let js = jetstream::new(client);
            for stream in streams {
                // Missing (never created) is fine; anything else is left for the next run.
                let _ = tokio::time::timeout(WAIT, js.delete_stream(&stream)).await;
            }
            Some(())
        })
    })
    .join();
}

impl Drop for StreamCleanup {
    fn drop(&mut self) {
        delete_streams(std::mem::take(&mut self.0));
    }
}

impl brook_runtime::soak::SoakAdapter for NatsAdapter {
    /// The stream, so the ids published before the App runs are stored (the App creates the
    /// durable, which delivers from the start of the stream).
    async fn prepare(&self, source: &TestSource) -> Result<(), String> {
        let js = jetstream::new(self.client().await.clone());
        js.get_or_create_stream(async_nats::jetstream::stream::Config {
            name: arg(source, "stream"),
            subjects: vec![arg(source, "subject")],
            ..Default::default()
        })
        .await
        .map(drop)
        .map_err(|e| e.to_string())
    }

    fn upstream(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], 4222))
    }

    async fn broker_at(
        &self,
        addr: std::net::SocketAddr,
        _: &brook_runtime::conformance::TestSource,
    ) -> NatsBroker {
        NatsBroker::new(format!("nats://{addr}"))
    }

    /// What JetStream redelivers that was handled but not acknowledged when the consumer died:
    /// at most one pull batch (64) plus the handlers running.
    fn duplicate_bound(&self) -> usize {
        64 + brook_runtime::soak::CONCURRENCY as usize
    }
}
