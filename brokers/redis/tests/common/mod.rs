//! Helpers shared by the Redis integration tests: fresh names, a raw fred client, and readers
//! of the broker's state (pending lists, group cursors, dead letters).
#![allow(dead_code)]

use std::collections::HashSet;
use std::time::Duration;

use brook_redis::envelope;
use bytes::Bytes;
use fred::prelude::*;
use fred::types::{ClusterHash, CustomCommand, Value};

pub const URL: &str = "redis://127.0.0.1:6379";
pub const ADDR: &str = "127.0.0.1:6379";
/// The longest any wait in these tests takes.
pub const WAIT: Duration = Duration::from_secs(15);

/// A name no other test (or earlier run) uses.
pub fn unique(prefix: &str) -> String {
    brook_runtime::conformance::unique_name(&format!("brook-test:{prefix}"), ':')
}

pub async fn raw() -> Client {
    let client = Builder::from_config(Config::from_url(URL).unwrap())
        .build()
        .unwrap();
    client.init().await.unwrap();
    client
}

pub async fn call(c: &Client, name: &'static str, args: Vec<Value>) -> Value {
    c.custom::<Value, Value>(
        CustomCommand::new_static(name, ClusterHash::FirstKey, false),
        args,
    )
    .await
    .unwrap_or_else(|e| panic!("{name}: {e}"))
}

pub fn s(v: &str) -> Value {
    Value::String(v.into())
}

fn text(v: Value) -> String {
    String::from_utf8_lossy(&v.into_bytes().unwrap_or_default()).into_owned()
}

/// A stream entry: id and fields.
#[derive(Clone, Debug)]
pub struct Entry {
    pub id: String,
    pub fields: Vec<(Bytes, Bytes)>,
}

impl Entry {
    pub fn field(&self, name: &str) -> Option<&Bytes> {
        self.fields
            .iter()
            .find(|(k, _)| &k[..] == name.as_bytes())
            .map(|(_, v)| v)
    }

    /// The payload, envelope removed.
    pub fn body(&self) -> Bytes {
        envelope::decode(self.field("__data__").expect("a __data__ field")).0
    }
}

pub async fn xrange(c: &Client, stream: &str) -> Vec<Entry> {
    let v = call(c, "XRANGE", vec![s(stream), s("-"), s("+")]).await;
    v.into_array()
        .into_iter()
        .filter(|v| !v.is_null())
        .map(|e| {
            let mut p = e.into_array().into_iter();
            let id = text(p.next().unwrap());
            let mut flat = p.next().unwrap().into_array().into_iter();
            let mut fields = Vec::new();
            while let (Some(k), Some(v)) = (flat.next(), flat.next()) {
                fields.push((k.into_bytes().unwrap(), v.into_bytes().unwrap()));
            }
            Entry { id, fields }
        })
        .collect()
}

/// One row of XPENDING: id, owner, times delivered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pending {
    pub id: String,
    pub consumer: String,
    pub deliveries: u64,
}

pub async fn pending(c: &Client, stream: &str, group: &str) -> Vec<Pending> {
    let v = call(
        c,
        "XPENDING",
        vec![s(stream), s(group), s("-"), s("+"), Value::from(100_000i64)],
    )
    .await;
    v.into_array()
        .into_iter()
        .filter(|v| !v.is_null())
        .map(|row| {
            let mut p = row.into_array().into_iter();
            let id = text(p.next().unwrap());
            let consumer = text(p.next().unwrap());
            p.next();
            let deliveries = p.next().unwrap().as_u64().unwrap();
            Pending {
                id,
                consumer,
                deliveries,
            }
        })
        .collect()
}

fn parse_id(id: &str) -> (u64, u64) {
    let (a, b) = id.split_once('-').unwrap_or((id, "0"));
    (a.parse().unwrap_or(0), b.parse().unwrap_or(0))
}

/// The group's last-delivered id (XINFO GROUPS).
pub async fn last_delivered(c: &Client, stream: &str, group: &str) -> String {
    let v = call(c, "XINFO", vec![s("GROUPS"), s(stream)]).await;
    for g in v.into_array() {
        let flat: Vec<String> = g
            .into_array()
            .into_iter()
            .map(|v| match v {
                Value::Integer(i) => i.to_string(),
                other => text(other),
            })
            .collect();
        let get = |k: &str| flat.chunks(2).find(|kv| kv[0] == k).map(|kv| kv[1].clone());
        if get("name").as_deref() == Some(group) {
            return get("last-delivered-id").unwrap_or_default();
        }
    }
    panic!("no group {group} on {stream}");
}

/// What a fresh consumer of the group would get: the group's pending entries plus the entries
/// after its last-delivered id, in id order.
pub async fn remaining(c: &Client, stream: &str, group: &str) -> Vec<Entry> {
    let pending: HashSet<String> = pending(c, stream, group)
        .await
        .into_iter()
        .map(|p| p.id)
        .collect();
    let last = parse_id(&last_delivered(c, stream, group).await);
    xrange(c, stream)
        .await
        .into_iter()
        .filter(|e| pending.contains(&e.id) || parse_id(&e.id) > last)
        .collect()
}

/// The names of the group's consumers (XINFO CONSUMERS).
pub async fn consumers(c: &Client, stream: &str, group: &str) -> Vec<String> {
    let v = c
        .custom::<Value, Value>(
            CustomCommand::new_static("XINFO", ClusterHash::Offset(1), false),
            vec![s("CONSUMERS"), s(stream), s(group)],
        )
        .await
        .unwrap_or_else(|e| panic!("XINFO CONSUMERS: {e}"));
    v.into_array()
        .into_iter()
        .filter_map(|c| {
            let flat: Vec<Value> = c.into_array();
            flat.chunks(2)
                .find(|kv| text(kv[0].clone()) == "name")
                .map(|kv| text(kv[1].clone()))
        })
        .collect()
}

/// brook's consumer registry of a group (docs/brokers/redis.md, *Crashed consumers*).
pub fn registry_key(stream: &str, group: &str) -> String {
    format!(
        "brook:{}:{}:{{{stream}}}:{group}:consumers",
        stream.len(),
        group.len()
    )
}

/// A brook consumer's liveness key.
pub fn alive_key(stream: &str, group: &str, consumer: &str) -> String {
    format!(
        "brook:{}:{}:{{{stream}}}:{group}:alive:{consumer}",
        stream.len(),
        group.len()
    )
}

pub async fn exists(c: &Client, key: &str) -> bool {
    call(c, "EXISTS", vec![s(key)]).await.as_i64() == Some(1)
}

pub async fn llen(c: &Client, key: &str) -> i64 {
    call(c, "LLEN", vec![s(key)]).await.as_i64().unwrap()
}

pub async fn lrange(c: &Client, key: &str) -> Vec<Bytes> {
    call(
        c,
        "LRANGE",
        vec![s(key), Value::from(0i64), Value::from(-1i64)],
    )
    .await
    .into_array()
    .into_iter()
    .filter_map(|v| v.into_bytes())
    .collect()
}

pub async fn del(c: &Client, keys: &[&str]) {
    call(c, "DEL", keys.iter().map(|k| s(k)).collect()).await;
}

/// Waits (bounded) until `check` holds, re-evaluating it every 20 ms: for broker state that
/// changes without an event the test could await.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// A scripted handler

use std::sync::Arc;

use brook_redis::{RedisBroker, RedisMessage};
use brook_runtime::{
    App, Context, FromMessage, Handler, HandlerError, Headers, Message, RunningApp, Settlement,
    Subscription, SubscriptionBuilder,
};
use tokio::sync::{mpsc, Notify};

/// What the handler saw.
#[derive(Clone, Debug)]
pub struct Seen {
    pub body: Bytes,
    pub headers: Headers,
    pub deliveries: Option<u32>,
    pub id: String,
    pub topic: String,
    pub pattern: Option<String>,
    pub consumer: Option<String>,
}

/// What the handler does.
pub enum Act {
    Ok,
    Fail,
    Hang,
    /// Wait until notified, then return Ok.
    WaitThenOk(Arc<Notify>),
    /// Wait until notified, then fail.
    WaitThenFail(Arc<Notify>),
    /// Settle through the message, then return Ok.
    Settle(Settlement),
    /// Wait until notified, then settle through the message and return Ok.
    WaitThenSettle(Arc<Notify>, Settlement),
    /// Work for a while (a slow handler), then return Ok.
    SleepThenOk(Duration),
}

pub type Script = Arc<dyn Fn(&Seen) -> Act + Send + Sync>;

pub struct Probe {
    pub sub: SubscriptionBuilder,
    pub tx: mpsc::UnboundedSender<Seen>,
    pub script: Script,
}

impl Handler for Probe {
    type Broker = brook_runtime::kind::Redis;

    fn subscription(&self) -> SubscriptionBuilder {
        self.sub.clone()
    }

    async fn call(&self, msg: &Message, ctx: &Context) -> brook_runtime::HandlerResult {
        let done: Result<(), HandlerError> = async move {
            let raw = <&RedisMessage>::from_message(msg, ctx)?;
            let seen = Seen {
                body: msg.body().clone(),
                headers: msg.headers().clone(),
                deliveries: msg.delivery_count(),
                id: msg.id().to_string(),
                topic: msg.topic().to_owned(),
                pattern: raw.pattern().map(str::to_owned),
                consumer: raw.consumer().map(str::to_owned),
            };
            let act = (self.script)(&seen);
            let _ = self.tx.send(seen);
            let fail = || Err(HandlerError::Failed(anyhow::anyhow!("scripted failure")));
            match act {
                Act::Ok => Ok(()),
                Act::Fail => fail(),
                Act::Hang => std::future::pending().await,
                Act::WaitThenOk(n) => {
                    n.notified().await;
                    Ok(())
                }
                Act::WaitThenFail(n) => {
                    n.notified().await;
                    fail()
                }
                Act::WaitThenSettle(n, s) => {
                    n.notified().await;
                    msg.settle(s)
                        .await
                        .map_err(|e| HandlerError::Failed(e.into()))?;
                    Ok(())
                }
                Act::SleepThenOk(d) => {
                    tokio::time::sleep(d).await;
                    Ok(())
                }
                Act::Settle(s) => {
                    msg.settle(s)
                        .await
                        .map_err(|e| HandlerError::Failed(e.into()))?;
                    Ok(())
                }
            }
        }
        .await;
        done.map(|()| None)
    }
}

/// A subscription with `args`, unvalidated (the App validates it when it starts).
pub fn subscription(args: Vec<(&'static str, brook_runtime::ArgValue)>) -> SubscriptionBuilder {
    let mut b = Subscription::new(brook_runtime::BrokerKind::Redis, "probe");
    for (n, v) in args {
        b = b.arg(n, v);
    }
    b
}

/// A stream subscription through group `g` with `policy` (and `extra` arguments).
pub fn stream_sub(
    stream: &str,
    policy: brook_runtime::AckPolicy,
    extra: Vec<(&'static str, brook_runtime::ArgValue)>,
) -> SubscriptionBuilder {
    let mut args = vec![
        ("stream", stream.to_owned().into()),
        ("group", "g".into()),
        ("ack_policy", policy.into()),
    ];
    args.extend(extra);
    subscription(args)
}

/// Publishes `body` to `stream` through brook.
pub async fn publish(broker: &brook_redis::RedisBroker, stream: &str, body: impl AsRef<[u8]>) {
    use brook_runtime::Broker as _;
    broker
        .publish_message(brook_runtime::Outgoing::new(
            format!("stream:{stream}"),
            Bytes::copy_from_slice(body.as_ref()),
        ))
        .await
        .expect("publish");
}

/// A running App with one scripted subscriber, and the stream of what it saw.
pub struct Running {
    pub app: Option<RunningApp<RedisBroker>>,
    pub seen: mpsc::UnboundedReceiver<Seen>,
}

pub async fn start(
    broker: RedisBroker,
    sub: SubscriptionBuilder,
    graceful: Duration,
    script: impl Fn(&Seen) -> Act + Send + Sync + 'static,
) -> Running {
    let (tx, rx) = mpsc::unbounded_channel();
    let app = App::new(broker)
        .subscribe(Probe {
            sub,
            tx,
            script: Arc::new(script),
        })
        .graceful_timeout(graceful)
        .start()
        .await
        .expect("the App starts");
    Running {
        app: Some(app),
        seen: rx,
    }
}

impl Running {
    pub async fn next(&mut self) -> Seen {
        tokio::time::timeout(WAIT, self.seen.recv())
            .await
            .expect("the handler was called in time")
            .expect("the handler is alive")
    }

    pub async fn stop(&mut self) {
        if let Some(app) = self.app.take() {
            tokio::time::timeout(WAIT * 2, app.stop())
                .await
                .expect("stop finishes")
                .expect("clean stop");
        }
    }
}

/// The conformance and soak adapter: a stream read through a group, with a dead-letter stream.
pub struct RedisAdapter;

impl RedisAdapter {
    pub fn new() -> Self {
        RedisAdapter
    }
}

fn arg<'a>(source: &'a brook_runtime::conformance::TestSource, name: &str) -> &'a str {
    source
        .args
        .iter()
        .find(|(n, _)| n == name)
        .and_then(|(_, v)| v.as_str())
        .unwrap_or_default()
}

impl brook_runtime::conformance::Adapter for RedisAdapter {
    type Broker = brook_redis::RedisBroker;
    type Kind = brook_runtime::kind::Redis;

    async fn broker(&self) -> brook_redis::RedisBroker {
        brook_redis::RedisBroker::new(URL)
    }

    async fn fresh_source(
        &self,
        test: &str,
    ) -> Result<brook_runtime::conformance::TestSource, brook_runtime::BrokerError> {
        let stream = unique(test);
        let dlq = format!("{stream}:dead");
        Ok(brook_runtime::conformance::TestSource {
            args: vec![
                ("stream".into(), stream.clone().into()),
                ("group".into(), "conformance".into()),
                ("dead_letter_stream".into(), dlq.into()),
            ],
            destination: format!("stream:{stream}"),
        })
    }

    async fn remaining(
        &self,
        source: &brook_runtime::conformance::TestSource,
    ) -> Result<Vec<Bytes>, brook_runtime::BrokerError> {
        let c = raw().await;
        let entries = remaining(&c, arg(source, "stream"), arg(source, "group")).await;
        Ok(entries.iter().map(Entry::body).collect())
    }

    async fn dead_letters(
        &self,
        source: &brook_runtime::conformance::TestSource,
    ) -> Result<Vec<Bytes>, brook_runtime::BrokerError> {
        let c = raw().await;
        let entries = xrange(&c, arg(source, "dead_letter_stream")).await;
        Ok(entries.iter().map(Entry::body).collect())
    }
}

impl brook_runtime::soak::SoakAdapter for RedisAdapter {
    /// The group from the start of the stream, so the ids published before the App runs are
    /// read (the App creates missing groups at `$`, the end).
    async fn prepare(&self, source: &brook_runtime::conformance::TestSource) -> Result<(), String> {
        let c = raw().await;
        call(
            &c,
            "XGROUP",
            vec![
                s("CREATE"),
                s(arg(source, "stream")),
                s(arg(source, "group")),
                s("0"),
                s("MKSTREAM"),
            ],
        )
        .await;
        Ok(())
    }

    fn upstream(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], 6379))
    }

    async fn broker_at(
        &self,
        addr: std::net::SocketAddr,
        _: &brook_runtime::conformance::TestSource,
    ) -> brook_redis::RedisBroker {
        brook_redis::RedisBroker::new(format!("redis://{addr}"))
    }

    /// What a group redelivers that was handled but not acknowledged when the consumer died:
    /// at most one read (`batch`, at least 10 and the concurrency) plus the handlers running.
    fn duplicate_bound(&self) -> usize {
        10 + brook_runtime::soak::CONCURRENCY as usize
    }
}
