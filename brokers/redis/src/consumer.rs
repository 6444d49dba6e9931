//! Consumers of the three Redis sources.
//!
//! - **Channel**: a `SubscriberClient` of its own (SUBSCRIBE, or PSUBSCRIBE for a pattern); fred
//!   re-subscribes after a reconnect. Nothing is acknowledged; what is published while the
//!   connection is down is lost, as with any pub/sub client.
//! - **List**: a connection of its own for BLPOP (blocking commands hold their connection), plus
//!   LPOP with COUNT for batches. Popping removes the element, so nothing is acknowledged;
//!   elements popped but not handed out when the consumer closes are pushed back to the head.
//! - **Stream** through a group: XREADGROUP on a connection of its own; acknowledgements,
//!   claims and dead-lettering go through the broker's shared connection, so they never wait
//!   behind a blocked read. The consumer keeps the ids it has handed out (`in_flight`) and the
//!   ones nacked and waiting for redelivery, so that re-reading its own pending entries (at start
//!   and after a reconnect) and XAUTOCLAIM never hand out an entry twice. A heartbeat task keeps
//!   the consumer's liveness key alive, and the consumer takes over what gone consumers of its
//!   group left pending ([`crate::liveness`]).
//!
//! Every read that blocks is kept in the consumer across calls to `next()`, so a `next()`
//! cancelled by shutdown loses nothing: `close()` finishes or interrupts (CLIENT UNBLOCK) the
//! read and hands back what it returned.

use std::collections::{HashSet, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use brook_runtime::{BrokerError, BrokerKind, Headers, Message, MessageId};
use bytes::Bytes;
use fred::clients::SubscriberClient;
use fred::prelude::*;
use fred::types::Value;
use futures_util::future::BoxFuture;
use tokio::sync::{broadcast, mpsc, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::envelope;
use crate::liveness;
use crate::message::{op_error, NoAckSettler, RedisMessage, RedisSource, StreamSettler};
use crate::wire::{self, s, DATA_FIELD};

/// How long a blocking read waits before it is sent again. Shutdown interrupts it, so this
/// only bounds how stale an idle connection may get.
pub(crate) const BLOCK: Duration = Duration::from_secs(2);
/// XCLAIM with this idle time hands an entry back: any consumer's XAUTOCLAIM sees it as idle
/// long enough at once (about ten years, in milliseconds).
const HAND_BACK_IDLE_MS: u64 = 315_360_000_000;
const PAGE: u64 = 100;
/// After a failed XACK (or dead-letter XADD) the entry is delivered again this much later: soon,
/// but not in a tight loop while the cause (a dead-letter key of the wrong type, an outage)
/// lasts.
const SETTLE_RETRY: Duration = Duration::from_secs(1);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A consumer of one Redis subscription, with a connection of its own.
///
/// - Channel: SUBSCRIBE / PSUBSCRIBE; fred renews the subscription after a reconnect.
/// - List: BLPOP (LPOP with COUNT for `batch > 1`); on close, elements popped but never handed
///   out are pushed back to the head of the list.
/// - Stream with a group: XREADGROUP; nacked entries are claimed again (XCLAIM), its own stale
///   pending entries are re-read at start and after a reconnect, other consumers' idle ones
///   are claimed (XAUTOCLAIM after `min_idle_ms`), and those of gone consumers (see
///   `crate::liveness`: a liveness key with a TTL per consumer) whatever `min_idle_ms` says.
///   On close, entries it still holds are handed back (`XCLAIM ... IDLE <ten years> JUSTID`,
///   and under AckFirst the NOACK entries no handler saw are put back with `FORCE`), and its
///   liveness key is deleted, so the group's other consumers take them over within a second.
/// - Stream without a group: XREAD from the entries added after the start.
pub struct RedisConsumer {
    pub(crate) inner: Kind,
}

pub(crate) enum Kind {
    Channel(ChannelConsumer),
    List(ListConsumer),
    Stream(Box<StreamConsumer>),
}

impl brook_runtime::Consumer for RedisConsumer {
    async fn next(&mut self) -> Option<Result<Message, BrokerError>> {
        match &mut self.inner {
            Kind::Channel(c) => c.next().await,
            Kind::List(c) => c.next().await,
            Kind::Stream(c) => c.next().await,
        }
    }

    async fn close(self) -> Result<(), BrokerError> {
        match self.inner {
            Kind::Channel(c) => c.close().await,
            Kind::List(c) => c.close().await,
            Kind::Stream(c) => c.close().await,
        }
    }
}

fn unwrap_payload(wire: &Bytes) -> (Bytes, Headers, MessageId) {
    let (body, headers) = envelope::decode(wire);
    let id = headers
        .get(brook_runtime::headers::MESSAGE_ID)
        .map_or(MessageId::None, |id| MessageId::Text(id.into()));
    (body, headers, id)
}

// ---------------------------------------------------------------------------------------------
// Channels

pub(crate) struct ChannelConsumer {
    pub client: SubscriberClient,
    pub rx: broadcast::Receiver<fred::types::Message>,
    pub pattern: Option<Arc<str>>,
    pub manage: tokio::task::JoinHandle<()>,
}

impl ChannelConsumer {
    async fn next(&mut self) -> Option<Result<Message, BrokerError>> {
        loop {
            match self.rx.recv().await {
                Ok(m) => {
                    let wire = m.value.into_bytes().unwrap_or_default();
                    let (body, headers, id) = unwrap_payload(&wire);
                    let channel: Arc<str> = Arc::from(&*m.channel);
                    let raw = RedisMessage {
                        source: RedisSource::Channel,
                        key: channel.clone(),
                        pattern: self.pattern.clone(),
                        entry_id: None,
                        group: None,
                        consumer: None,
                        fields: Default::default(),
                        wire,
                    };
                    return Some(Ok(Message::new(
                        BrokerKind::Redis,
                        channel,
                        body,
                        NoAckSettler { raw },
                    )
                    .with_headers(headers)
                    .with_id(id)));
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(
                        skipped = n,
                        "Redis pub/sub subscriber fell behind; messages were dropped (raise the broker's broadcast capacity or the subscriber's concurrency)"
                    );
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    async fn close(self) -> Result<(), BrokerError> {
        self.manage.abort();
        let _ = self.client.unsubscribe_all().await;
        quit(&self.client, "channel subscriber").await;
        Ok(())
    }
}

/// Disconnects a client this consumer owns. Bounded, and a failure is only logged: the
/// connection is going away either way, and shutdown must not hang on it.
pub(crate) async fn quit<C: ClientLike>(client: &C, what: &'static str) {
    match tokio::time::timeout(Duration::from_millis(500), client.quit()).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::debug!(%error, "Redis {what}: QUIT failed"),
        Err(_) => tracing::debug!(
            "Redis {what}: QUIT is still queued (reconnecting?); it closes the connection once sent"
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// Lists

pub(crate) struct ListConsumer {
    pub client: Client,
    pub key: Arc<str>,
    pub batch: usize,
    pub buffer: VecDeque<Bytes>,
    pub read: Option<BoxFuture<'static, Result<Vec<Bytes>, fred::error::Error>>>,
}

async fn pop(
    client: Client,
    key: Arc<str>,
    batch: usize,
) -> Result<Vec<Bytes>, fred::error::Error> {
    if batch > 1 {
        let v = wire::call(
            &client,
            "LPOP",
            false,
            vec![s(&key), Value::from(batch as i64)],
        )
        .await?;
        let items: Vec<Bytes> = match v {
            Value::Null => Vec::new(),
            other => other
                .into_array()
                .into_iter()
                .filter_map(wire::bytes)
                .collect(),
        };
        if !items.is_empty() {
            return Ok(items);
        }
    }
    let v = wire::call(
        &client,
        "BLPOP",
        true,
        vec![s(&key), Value::from(BLOCK.as_secs() as i64)],
    )
    .await?;
    Ok(match v {
        Value::Null => Vec::new(),
        other => other
            .into_array()
            .into_iter()
            .skip(1)
            .filter_map(wire::bytes)
            .collect(),
    })
}

impl ListConsumer {
    async fn next(&mut self) -> Option<Result<Message, BrokerError>> {
        loop {
            if let Some(wire) = self.buffer.pop_front() {
                let (body, headers, id) = unwrap_payload(&wire);
                let raw = RedisMessage {
                    source: RedisSource::List,
                    key: self.key.clone(),
                    pattern: None,
                    entry_id: None,
                    group: None,
                    consumer: None,
                    fields: Default::default(),
                    wire,
                };
                return Some(Ok(Message::new(
                    BrokerKind::Redis,
                    self.key.clone(),
                    body,
                    NoAckSettler { raw },
                )
                .with_headers(headers)
                .with_id(id)));
            }
            let (client, key, batch) = (self.client.clone(), self.key.clone(), self.batch);
            let read = self
                .read
                .get_or_insert_with(|| Box::pin(pop(client, key, batch)));
            let result = read.await;
            self.read = None;
            match result {
                Ok(items) => self.buffer.extend(items),
                Err(e) => return Some(Err(op_error("BLPOP", e))),
            }
        }
    }

    async fn close(mut self) -> Result<(), BrokerError> {
        if let Some(read) = self.read.take() {
            if let Some(Ok(items)) = interrupt(&self.client, read).await {
                self.buffer.extend(items);
            }
        }
        if !self.buffer.is_empty() {
            // Popped but never handed out: back to the head, in their order.
            let mut args = vec![s(&self.key)];
            args.extend(self.buffer.iter().rev().map(|b| Value::Bytes(b.clone())));
            wire::call(&self.client, "LPUSH", false, args)
                .await
                .map_err(|e| op_error("LPUSH", e))?;
        }
        quit(&self.client, "list consumer").await;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Streams

/// Hashes stream entry ids (two numbers, generated by Redis) with a multiply per number
/// instead of SipHash: the in-flight set is looked at several times per message.
#[derive(Clone, Copy, Default)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

/// What a stream consumer shares with the settlers of the messages it handed out.
pub(crate) struct StreamShared {
    pub client: Client,
    pub stream: Arc<str>,
    pub group: Option<Arc<str>>,
    pub consumer: Arc<str>,
    pub dead_letter: Option<Arc<str>>,
    /// `stream group` as command arguments, built once: XACK is the hot path.
    ack_prefix: [Value; 2],
    state: Mutex<StreamState>,
    wake: Notify,
    /// The settlement pipeline's queue (grouped streams only): see [`Deferred`].
    pipeline: Option<mpsc::UnboundedSender<Deferred>>,
}

/// A settlement the engine handed over ([`Settler::settle_later`](brook_runtime::Settler)),
/// waiting in the consumer's settlement pipeline.
///
/// The pipeline is one task per consumer: it sends what is queued as soon as the queue is not
/// empty and no flush is in flight (so a lone message is acknowledged at once), and whatever
/// accumulated meanwhile goes out together in the next flush: one `XACK key group id1 id2 ...`
/// for acks and plain rejects; dead-letter rejects first `XADD` each entry to the dead-letter
/// stream and are part of that XACK only if their XADD succeeded. A failed flush is logged and
/// its entries stay pending in Redis: delivered again after [`SETTLE_RETRY`], as when an
/// awaited XACK fails. Until their XACK succeeded the entries count as in flight, so re-reading
/// the pending list or XAUTOCLAIM never hands them out again meanwhile. The consumer's close
/// queues [`Deferred::Close`] and awaits the task, so a graceful stop flushes everything.
pub(crate) enum Deferred {
    /// `XACK`: an ack, or a reject without a dead-letter stream.
    Ack {
        id: Arc<str>,
        /// The id as Redis sent it: an XACK argument without a copy.
        wire_id: Value,
        /// The id as numbers (its key in the in-flight set).
        num: (u64, u64),
        deliveries: u32,
    },
    /// `XADD` to the dead-letter stream, then `XACK` once it succeeded.
    DeadLetter {
        id: Arc<str>,
        wire_id: Value,
        num: (u64, u64),
        deliveries: u32,
        fields: wire::Fields,
    },
    /// The consumer is closing: flush what is queued, then stop.
    Close,
}

/// The most entries one flush acknowledges.
const FLUSH_MAX: usize = 1000;

#[derive(Default)]
struct StreamState {
    /// Handed out (or buffered) and not settled; settled through the pipeline but not
    /// acknowledged yet. Keyed by the id's numbers ([`wire::parse_id`]).
    in_flight: HashSet<(u64, u64), BuildHasherDefault<IdHasher>>,
    /// Nacked, waiting to be claimed again.
    nacked: Vec<Nacked>,
    /// Re-read this consumer's own pending entries (start, reconnect).
    rescan: bool,
    /// Read with NOACK (AckFirst) and dropped without being settled, i.e. never handed to a
    /// handler (still in the buffer or the engine's queue at shutdown): put back in the pending
    /// list on close, so a graceful stop loses none.
    abandoned: Vec<Arc<str>>,
}

impl StreamState {
    /// Handed out, buffered, or nacked and waiting: not to be handed out again.
    fn knows(&self, id: &str) -> bool {
        self.in_flight.contains(&wire::parse_id(id)) || self.nacked.iter().any(|n| &*n.id == id)
    }
}

struct Nacked {
    due: Instant,
    /// When the entry was last delivered to this consumer, at the latest: its idle time in
    /// Redis is at least `since.elapsed()` unless someone else claimed it meanwhile.
    since: Instant,
    id: Arc<str>,
    deliveries: u32,
}

impl StreamShared {
    /// The shared state of a stream consumer and, for a group, its settlement pipeline's task
    /// (see [`Deferred`]), which the consumer's close awaits.
    pub(crate) fn start(
        client: Client,
        stream: Arc<str>,
        group: Option<Arc<str>>,
        consumer: Arc<str>,
        dead_letter: Option<Arc<str>>,
    ) -> (Arc<Self>, Option<JoinHandle<()>>) {
        let ack_prefix = [s(&stream), s(group.as_deref().unwrap_or_default())];
        let (tx, rx) = match group {
            Some(_) => {
                let (tx, rx) = mpsc::unbounded_channel();
                (Some(tx), Some(rx))
            }
            None => (None, None),
        };
        let shared = Arc::new(StreamShared {
            ack_prefix,
            client,
            stream,
            group,
            consumer,
            dead_letter,
            state: Mutex::new(StreamState {
                rescan: true,
                ..StreamState::default()
            }),
            wake: Notify::new(),
            pipeline: tx,
        });
        let task = rx.map(|rx| tokio::spawn(pipeline(Arc::downgrade(&shared), rx)));
        (shared, task)
    }

    /// Queues `settlement` in the pipeline; `false` when there is none (any more).
    pub(crate) fn defer(&self, settlement: Deferred) -> bool {
        self.pipeline
            .as_ref()
            .is_some_and(|tx| tx.send(settlement).is_ok())
    }

    /// Sends one batch of the pipeline (see [`Deferred`]).
    async fn flush(&self, batch: &mut Vec<Deferred>) {
        let mut acks = Vec::with_capacity(batch.len());
        let mut dead = Vec::new();
        for d in batch.drain(..) {
            match d {
                Deferred::Ack {
                    id,
                    wire_id,
                    num,
                    deliveries,
                } => acks.push((id, wire_id, num, deliveries)),
                Deferred::DeadLetter {
                    id,
                    wire_id,
                    num,
                    deliveries,
                    fields,
                } => dead.push((id, wire_id, num, deliveries, fields)),
                Deferred::Close => {}
            }
        }
        let mut failed = Vec::new();
        if let Some(dlq) = self.dead_letter.as_deref().filter(|_| !dead.is_empty()) {
            // XACK only for the entries whose XADD succeeded (see `reject`).
            let sent = futures_util::future::join_all(dead.iter().map(|(id, _, _, _, fields)| {
                wire::call(
                    &self.client,
                    "XADD",
                    false,
                    self.dead_letter_args(dlq, id, fields),
                )
            }))
            .await;
            for ((id, wire_id, num, deliveries, _), result) in dead.into_iter().zip(sent) {
                match result {
                    Ok(_) => acks.push((id, wire_id, num, deliveries)),
                    Err(error) => {
                        tracing::error!(stream = %self.stream, group = %self.group(), dead_letter_stream = %dlq, entry = %id, %error, "could not dead-letter a rejected entry (XADD); it stays pending and is delivered again");
                        failed.push((id, deliveries));
                    }
                }
            }
        }
        if !acks.is_empty() {
            let mut args = Vec::with_capacity(2 + acks.len());
            args.extend(self.ack_prefix.iter().cloned());
            args.extend(acks.iter().map(|(_, wire_id, _, _)| wire_id.clone()));
            match wire::call(&self.client, "XACK", false, args).await {
                Ok(_) => {
                    let mut st = lock(&self.state);
                    for (_, _, num, _) in &acks {
                        st.in_flight.remove(num);
                    }
                }
                Err(error) => {
                    tracing::error!(stream = %self.stream, group = %self.group(), count = acks.len(), %error, "could not acknowledge handled entries (XACK); they stay pending and are delivered again");
                    failed.extend(
                        acks.into_iter()
                            .map(|(id, _, _, deliveries)| (id, deliveries)),
                    );
                }
            }
        }
        if !failed.is_empty() {
            self.settle_failed(failed);
        }
    }

    fn group(&self) -> &str {
        self.group.as_deref().unwrap_or_default()
    }

    fn xack_args(&self, id: &str) -> Vec<Value> {
        let [stream, group] = &self.ack_prefix;
        vec![stream.clone(), group.clone(), s(id)]
    }

    /// No longer in flight (`num`: the id as numbers, [`wire::parse_id`]).
    pub(crate) fn forget(&self, num: (u64, u64)) {
        lock(&self.state).in_flight.remove(&num);
    }

    /// A NOACK entry that no handler saw (see [`StreamState::abandoned`]).
    pub(crate) fn abandon(&self, id: Arc<str>) {
        lock(&self.state).abandoned.push(id);
    }

    fn known(&self, id: &str) -> bool {
        lock(&self.state).knows(id)
    }

    /// The entries are still pending (their XACK failed): deliver them again after
    /// [`SETTLE_RETRY`], as a nack would (at-least-once).
    fn settle_failed(&self, entries: impl IntoIterator<Item = (Arc<str>, u32)>) {
        {
            let mut st = lock(&self.state);
            let now = Instant::now();
            for (id, deliveries) in entries {
                st.in_flight.remove(&wire::parse_id(&id));
                st.nacked.push(Nacked {
                    due: now + SETTLE_RETRY,
                    since: now,
                    id,
                    deliveries,
                });
            }
        }
        self.wake.notify_one();
    }

    pub(crate) async fn ack(&self, id: Arc<str>, deliveries: u32) -> Result<(), BrokerError> {
        let r = wire::call(&self.client, "XACK", false, self.xack_args(&id)).await;
        match r {
            Ok(_) => {
                self.forget(wire::parse_id(&id));
                Ok(())
            }
            Err(e) => {
                self.settle_failed([(id.clone(), deliveries)]);
                Err(op_error("XACK", e))
            }
        }
    }

    pub(crate) fn nack(&self, id: Arc<str>, deliveries: u32, delay: Option<Duration>) {
        {
            let mut st = lock(&self.state);
            st.in_flight.remove(&wire::parse_id(&id));
            let now = Instant::now();
            st.nacked.push(Nacked {
                due: now + delay.unwrap_or_default(),
                since: now,
                id,
                deliveries,
            });
        }
        self.wake.notify_one();
    }

    /// `XADD` arguments that dead-letter entry `id` with `fields` to `dlq`.
    fn dead_letter_args(&self, dlq: &str, id: &str, fields: &[(Bytes, Bytes)]) -> Vec<Value> {
        let mut args = Vec::with_capacity(2 + 2 * fields.len() + 6);
        args.extend([s(dlq), s("*")]);
        for (k, v) in fields {
            args.push(Value::Bytes(k.clone()));
            args.push(Value::Bytes(v.clone()));
        }
        for (k, v) in [
            ("__brook_stream", &*self.stream),
            ("__brook_id", id),
            ("__brook_group", self.group()),
        ] {
            args.push(s(k));
            args.push(s(v));
        }
        args
    }

    pub(crate) async fn reject(
        &self,
        id: Arc<str>,
        deliveries: u32,
        fields: &[(Bytes, Bytes)],
    ) -> Result<(), BrokerError> {
        let result = match &self.dead_letter {
            None => wire::call(&self.client, "XACK", false, self.xack_args(&id))
                .await
                .map(drop),
            Some(dlq) => {
                // XADD first, XACK only once it succeeded. A MULTI/EXEC would not do: Redis
                // runs the XACK of a transaction even when its XADD fails at run time (a
                // dead-letter key of the wrong type), losing the entry. A crash between the two
                // dead-letters the entry twice at worst; it is never lost.
                let args = self.dead_letter_args(dlq, &id, fields);
                match wire::call(&self.client, "XADD", false, args).await {
                    Ok(_) => wire::call(&self.client, "XACK", false, self.xack_args(&id))
                        .await
                        .map(drop),
                    Err(e) => {
                        self.settle_failed([(id.clone(), deliveries)]);
                        return Err(op_error("XADD (dead letter)", e));
                    }
                }
            }
        };
        match result {
            Ok(()) => {
                self.forget(wire::parse_id(&id));
                Ok(())
            }
            Err(e) => {
                self.settle_failed([(id.clone(), deliveries)]);
                Err(op_error("XACK (reject)", e))
            }
        }
    }
}

/// The settlement pipeline's task (see [`Deferred`]). It holds the consumer's state weakly, so
/// a consumer dropped without a close does not keep it alive; it ends at [`Deferred::Close`]
/// or when the queue's sender is gone.
async fn pipeline(shared: Weak<StreamShared>, mut rx: mpsc::UnboundedReceiver<Deferred>) {
    let mut batch = Vec::with_capacity(64);
    loop {
        if rx.recv_many(&mut batch, FLUSH_MAX).await == 0 {
            return;
        }
        let close = batch.iter().any(|d| matches!(d, Deferred::Close));
        match shared.upgrade() {
            Some(sh) => sh.flush(&mut batch).await,
            // Dropped without a close: the entries stay pending (as after a crash).
            None => batch.clear(),
        }
        if close {
            return;
        }
    }
}

pub(crate) struct StreamConsumer {
    pub shared: Arc<StreamShared>,
    pub reader: Client,
    pub batch: u64,
    /// AckFirst: read with NOACK, Redis acknowledges on delivery.
    pub noack: bool,
    pub min_idle: Option<Duration>,
    /// The consumer name was generated: remove it from the group when it leaves nothing pending.
    pub generated_name: bool,
    pub last_id: String,
    pub reconnects: Vec<broadcast::Receiver<Server>>,
    /// Read (or claimed) and not handed out yet; made into a [`Message`] when it is, so that
    /// a batch costs little until then and each message's allocations are freed before the
    /// next one's are made. Pending entries among them are in `in_flight` already.
    pub buffer: VecDeque<Buffered>,
    pub read: Option<BoxFuture<'static, Result<Value, fred::error::Error>>>,
    pub next_claim: Instant,
    pub claim_cursor: String,
    /// With a group: this consumer's liveness key and the search for gone consumers.
    pub liveness: Option<Liveness>,
    /// With a group: the settlement pipeline's task (see [`Deferred`]).
    pub pipeline: Option<JoinHandle<()>>,
}

/// A stream entry in the consumer's buffer.
pub(crate) struct Buffered {
    /// Its id, as Redis sent it.
    id: Value,
    /// Its id as numbers ([`wire::parse_id`]).
    num: (u64, u64),
    /// Its fields, `[field, value, ...]` as Redis sent them.
    fields: Value,
    deliveries: Option<u32>,
    /// In the group's pending list (not read with NOACK, nor without a group).
    pending: bool,
}

/// A grouped stream consumer's part in [`crate::liveness`].
pub(crate) struct Liveness {
    pub keys: liveness::Keys,
    /// Renews this consumer's liveness key; stopped first thing on close.
    pub heartbeat: Option<liveness::Heartbeat>,
    /// When to look for gone consumers next.
    pub next_check: Instant,
    pub check_every: Duration,
}

impl StreamConsumer {
    /// The message of a buffered entry (`None`: its id is not text, which Redis never sends).
    fn message(&self, entry: Buffered) -> Option<Message> {
        let Buffered {
            id: wire_id,
            num,
            fields,
            deliveries,
            pending,
        } = entry;
        let id: Arc<str> = Arc::from(&*wire_id.as_str_lossy()?);
        let fields = wire::fields(fields);
        let sh = &self.shared;
        let wire = fields
            .iter()
            .find(|(k, _)| k == DATA_FIELD)
            .map(|(_, v)| v.clone());
        let (body, headers) = match &wire {
            Some(w) => envelope::decode(w),
            // Written by something else than brook or FastStream: the fields as a JSON object,
            // which is what FastStream hands its handlers too.
            None => (fields_as_json(&fields), Headers::new()),
        };
        let raw = RedisMessage {
            source: RedisSource::Stream,
            key: sh.stream.clone(),
            pattern: None,
            entry_id: Some(id.clone()),
            group: sh.group.clone(),
            consumer: sh.group.as_ref().map(|_| sh.consumer.clone()),
            fields,
            wire: wire.unwrap_or_default(),
        };
        let msg = if sh.group.is_some() {
            Message::new(
                BrokerKind::Redis,
                sh.stream.clone(),
                body,
                StreamSettler {
                    shared: sh.clone(),
                    raw,
                    id: id.clone(),
                    wire_id,
                    num,
                    deliveries: deliveries.unwrap_or(1),
                    pending,
                    settled: Default::default(),
                },
            )
        } else {
            Message::new(
                BrokerKind::Redis,
                sh.stream.clone(),
                body,
                NoAckSettler { raw },
            )
        };
        let msg = msg.with_headers(headers).with_id(MessageId::Text(id));
        Some(match deliveries {
            Some(n) => msg.with_delivery_count(n),
            None => msg,
        })
    }

    /// Buffers `entries` (with their fields; see [`StreamConsumer::buffer`]), skipping those
    /// this consumer knows already (handed out, buffered, or nacked and waiting) when `pending`.
    fn push(&mut self, entries: impl IntoIterator<Item = (wire::Raw, Option<u32>)>, pending: bool) {
        let mut st = lock(&self.shared.state);
        for (raw, deliveries) in entries {
            let wire::Raw {
                id,
                fields: Some(fields),
            } = raw
            else {
                continue;
            };
            let Some(text) = id.as_str() else { continue };
            let num = wire::parse_id(&text);
            if pending {
                let nacked = st.nacked.iter().any(|n| *n.id == *text);
                if nacked || !st.in_flight.insert(num) {
                    continue; // known already (see `StreamState::knows`)
                }
            }
            drop(text);
            self.buffer.push_back(Buffered {
                id,
                num,
                fields,
                deliveries,
                pending,
            });
        }
    }

    fn start_read(&self) -> BoxFuture<'static, Result<Value, fred::error::Error>> {
        let sh = &self.shared;
        let block = Value::from(BLOCK.as_millis() as i64);
        let count = Value::from(self.batch as i64);
        let (name, args) = match &sh.group {
            Some(group) => {
                let mut args = vec![
                    s("GROUP"),
                    s(group),
                    s(&sh.consumer),
                    s("COUNT"),
                    count,
                    s("BLOCK"),
                    block,
                ];
                if self.noack {
                    args.push(s("NOACK"));
                }
                args.extend([s("STREAMS"), s(&sh.stream), s(">")]);
                ("XREADGROUP", args)
            }
            None => (
                "XREAD",
                vec![
                    s("COUNT"),
                    count,
                    s("BLOCK"),
                    block,
                    s("STREAMS"),
                    s(&sh.stream),
                    s(&self.last_id),
                ],
            ),
        };
        let reader = self.reader.clone();
        let key_at = args.len() - 2;
        Box::pin(async move { wire::call_at(&reader, name, true, key_at, args).await })
    }

    fn take_read(&mut self, reply: Value) {
        let entries = wire::xread_entries(reply);
        if self.shared.group.is_none() {
            if let Some(id) = entries.last().and_then(|e| e.id.as_str()) {
                self.last_id = id.into_owned();
            }
            return self.push(entries.into_iter().map(|e| (e, None)), false);
        }
        let pending = !self.noack;
        self.push(entries.into_iter().map(|e| (e, Some(1))), pending);
    }

    async fn next(&mut self) -> Option<Result<Message, BrokerError>> {
        loop {
            if let Some(entry) = self.buffer.pop_front() {
                match self.message(entry) {
                    Some(m) => return Some(Ok(m)),
                    None => continue,
                }
            }
            if self.shared.group.is_some() {
                if let Err(e) = self.refill().await {
                    let sh = self.shared.clone();
                    return Some(Err(recreate_group_if_gone(&sh, e).await));
                }
                if !self.buffer.is_empty() {
                    continue;
                }
            }
            let deadline = self.next_deadline();
            if self.read.is_none() {
                self.read = Some(self.start_read());
            }
            let Some(read) = self.read.as_mut() else {
                continue;
            };
            tokio::select! {
                r = read => {
                    self.read = None;
                    match r {
                        Ok(v) => self.take_read(v),
                        Err(e) => return Some(Err(self.read_failed(e).await)),
                    }
                }
                _ = self.shared.wake.notified() => {}
                _ = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    async fn read_failed(&mut self, e: fred::error::Error) -> BrokerError {
        lock(&self.shared.state).rescan = true;
        let e = op_error(
            if self.shared.group.is_some() {
                "XREADGROUP"
            } else {
                "XREAD"
            },
            e,
        );
        let sh = self.shared.clone();
        recreate_group_if_gone(&sh, e).await
    }

    fn next_deadline(&self) -> Instant {
        let far = Instant::now() + Duration::from_secs(3600);
        let st = lock(&self.shared.state);
        let nack = st.nacked.iter().map(|n| n.due).min().unwrap_or(far);
        let check = self.liveness.as_ref().map_or(far, |l| l.next_check);
        match self.min_idle {
            Some(_) if self.shared.group.is_some() => nack.min(self.next_claim).min(check),
            _ => nack.min(check),
        }
    }

    /// Entries that are not new: own pending ones to re-read, nacked ones that are due, and
    /// other consumers' entries idle longer than `min_idle`.
    async fn refill(&mut self) -> Result<(), BrokerError> {
        for rx in &mut self.reconnects {
            while let Ok(_) | Err(broadcast::error::TryRecvError::Lagged(_)) = rx.try_recv() {
                lock(&self.shared.state).rescan = true;
            }
        }
        let rescan = std::mem::take(&mut lock(&self.shared.state).rescan);
        if rescan {
            if let Err(e) = self.rescan_own().await {
                lock(&self.shared.state).rescan = true;
                return Err(e);
            }
        }
        self.redeliver_due().await?;
        if let Some(min_idle) = self.min_idle {
            if Instant::now() >= self.next_claim {
                self.autoclaim(min_idle).await?;
            }
        }
        if self
            .liveness
            .as_ref()
            .is_some_and(|l| Instant::now() >= l.next_check)
        {
            self.take_over_gone().await?;
        }
        Ok(())
    }

    /// Claims the entries that gone consumers (see [`crate::liveness`]) left pending, whatever
    /// `min_idle_ms` says, at most `batch` per call; removes gone consumers that hold nothing.
    async fn take_over_gone(&mut self) -> Result<(), BrokerError> {
        let Some(l) = &mut self.liveness else {
            return Ok(());
        };
        l.next_check = Instant::now() + l.check_every;
        let keys = l.keys.clone();
        let sh = self.shared.clone();
        let gone = liveness::gone(&sh.client, &keys, &sh.consumer).await?;
        let mut room = self.batch;
        for (name, generated) in gone {
            if room == 0 {
                // More to take: carry on at the next call rather than buffer without bound.
                if let Some(l) = &mut self.liveness {
                    l.next_check = Instant::now();
                }
                break;
            }
            let reply = wire::call(
                &sh.client,
                "XPENDING",
                false,
                vec![
                    s(&sh.stream),
                    s(sh.group()),
                    s("-"),
                    s("+"),
                    Value::from(i64::try_from(room).unwrap_or(i64::MAX)),
                    s(&name),
                ],
            )
            .await
            .map_err(|e| op_error("XPENDING", e))?;
            let rows = wire::pending(reply);
            let full = rows.len() as u64 >= room;
            if !rows.is_empty() {
                // No lower than the least idle one: an entry another consumer took over in the
                // meantime (its idle time reset) stays with it. Never 0, which would disable the
                // check.
                let min_idle_ms = rows.iter().map(|r| r.idle_ms).min().unwrap_or(0).max(1);
                let ids: Vec<_> = rows
                    .into_iter()
                    .filter(|r| !sh.known(&r.id))
                    .map(|r| (r.id, r.deliveries))
                    .collect();
                room = room.saturating_sub(ids.len() as u64);
                tracing::info!(stream = %sh.stream, group = %sh.group(), gone = %name, count = ids.len(), "taking over the pending entries of a consumer that is gone");
                self.claim(ids, min_idle_ms).await?;
            }
            if full {
                if let Some(l) = &mut self.liveness {
                    l.next_check = Instant::now();
                }
                continue;
            }
            if liveness::retire(&sh.client, &sh.stream, sh.group(), &keys, &name, generated).await?
            {
                tracing::debug!(stream = %sh.stream, group = %sh.group(), gone = %name, "removed a gone consumer that holds nothing");
            }
        }
        Ok(())
    }

    /// XCLAIM `ids` (with their delivery counts so far) to this consumer and buffer them.
    /// Only entries idle for at least `min_idle_ms` are taken: one another consumer claimed in
    /// the meantime (its idle time reset) stays with it instead of being handled twice at once.
    async fn claim(
        &mut self,
        ids: Vec<(Arc<str>, u32)>,
        min_idle_ms: u64,
    ) -> Result<(), BrokerError> {
        if ids.is_empty() {
            return Ok(());
        }
        let sh = self.shared.clone();
        let mut args = vec![
            s(&sh.stream),
            s(sh.group()),
            s(&sh.consumer),
            Value::from(i64::try_from(min_idle_ms).unwrap_or(i64::MAX)),
        ];
        args.extend(ids.iter().map(|(id, _)| s(id)));
        let reply = wire::call(&sh.client, "XCLAIM", false, args)
            .await
            .map_err(|e| op_error("XCLAIM", e))?;
        let claimed: Vec<_> = wire::raw_entries(reply)
            .into_iter()
            .filter(|e| e.fields.is_some())
            .filter_map(|e| Some((e.id()?, e)))
            .collect();
        // Redis's own count: someone else (an XAUTOCLAIM, this consumer's included) may have
        // claimed the entry since our count was read. The local count + 1 is the fallback.
        let counts = match own_pending(&sh, claimed.iter().map(|(id, _)| &**id)).await {
            Ok(counts) => counts,
            Err(error) => {
                tracing::debug!(%error, "XPENDING after XCLAIM failed; counting locally");
                Vec::new()
            }
        };
        let claimed: Vec<_> = claimed
            .into_iter()
            .map(|(id, entry)| {
                let n = counts.iter().find(|p| p.id == id).map_or_else(
                    || {
                        let before = ids.iter().find(|(i, _)| *i == id).map_or(1, |(_, n)| *n);
                        before.saturating_add(1)
                    },
                    |p| p.deliveries,
                );
                (entry, Some(n))
            })
            .collect();
        self.push(claimed, true);
        Ok(())
    }

    async fn rescan_own(&mut self) -> Result<(), BrokerError> {
        let sh = self.shared.clone();
        let mut start = "-".to_owned();
        loop {
            let reply = wire::call(
                &sh.client,
                "XPENDING",
                false,
                vec![
                    s(&sh.stream),
                    s(sh.group()),
                    s(&start),
                    s("+"),
                    Value::from(PAGE as i64),
                    s(&sh.consumer),
                ],
            )
            .await
            .map_err(|e| op_error("XPENDING", e))?;
            let rows = wire::pending(reply);
            let Some(last) = rows.last().map(|r| r.id.clone()) else {
                return Ok(());
            };
            let full = rows.len() as u64 >= PAGE;
            let stale: Vec<_> = rows
                .into_iter()
                .filter(|r| *r.consumer == *sh.consumer && !sh.known(&r.id))
                .collect();
            let min_idle_ms = stale.iter().map(|r| r.idle_ms).min().unwrap_or(0);
            let stale: Vec<_> = stale.into_iter().map(|r| (r.id, r.deliveries)).collect();
            if !stale.is_empty() {
                tracing::debug!(stream = %sh.stream, count = stale.len(), "re-reading this consumer's unsettled entries");
            }
            self.claim(stale, min_idle_ms).await?;
            if !full {
                return Ok(());
            }
            start = format!("({last}");
        }
    }

    async fn redeliver_due(&mut self) -> Result<(), BrokerError> {
        let now = Instant::now();
        let due: Vec<Nacked> = {
            let mut st = lock(&self.shared.state);
            let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut st.nacked)
                .into_iter()
                .partition(|n| n.due <= now);
            st.nacked = later;
            due
        };
        if due.is_empty() {
            return Ok(());
        }
        let ids: Vec<_> = due.iter().map(|n| (n.id.clone(), n.deliveries)).collect();
        let min_idle_ms = due
            .iter()
            .map(|n| n.since.elapsed().as_millis())
            .min()
            .map_or(0, |ms| u64::try_from(ms).unwrap_or(u64::MAX));
        if let Err(e) = self.claim(ids, min_idle_ms).await {
            lock(&self.shared.state).nacked.extend(due);
            return Err(e);
        }
        Ok(())
    }

    async fn autoclaim(&mut self, min_idle: Duration) -> Result<(), BrokerError> {
        let sh = self.shared.clone();
        let reply = wire::call(
            &sh.client,
            "XAUTOCLAIM",
            false,
            vec![
                s(&sh.stream),
                s(sh.group()),
                s(&sh.consumer),
                Value::from(min_idle.as_millis() as i64),
                s(&self.claim_cursor),
                s("COUNT"),
                Value::from(self.batch as i64),
            ],
        )
        .await
        .map_err(|e| op_error("XAUTOCLAIM", e))?;
        let claimed_at = Instant::now();
        let mut parts = reply.into_array().into_iter();
        let cursor = parts
            .next()
            .and_then(wire::text)
            .unwrap_or_else(|| "0-0".into());
        let claimed: Vec<_> = parts
            .next()
            .map(wire::raw_entries)
            .unwrap_or_default()
            .into_iter()
            .filter(|e| e.fields.is_some())
            .filter_map(|e| Some((e.id()?, e)))
            .filter(|(id, _)| {
                let mut st = lock(&sh.state);
                // XAUTOCLAIM reset the idle time of a nacked entry it took (back) for us.
                if let Some(n) = st.nacked.iter_mut().find(|n| n.id == *id) {
                    n.since = claimed_at;
                }
                !st.knows(id)
            })
            .collect();
        // A full pass ended: wait before the next; otherwise carry on at once.
        self.next_claim = if &*cursor == "0-0" {
            Instant::now() + claim_interval(min_idle)
        } else {
            Instant::now()
        };
        self.claim_cursor = cursor.to_string();
        if claimed.is_empty() {
            return Ok(());
        }
        let counts = match own_pending(&sh, claimed.iter().map(|(id, _)| &**id)).await {
            Ok(counts) => counts,
            Err(e) => {
                // Claimed, but without their delivery counts `max_deliveries` could not apply:
                // re-read them (XPENDING + XCLAIM) on the next call instead.
                lock(&sh.state).rescan = true;
                return Err(e);
            }
        };
        tracing::info!(stream = %sh.stream, group = %sh.group(), count = claimed.len(), "claimed entries other consumers left idle longer than min_idle_ms");
        let claimed: Vec<_> = claimed
            .into_iter()
            .map(|(id, entry)| {
                (
                    entry,
                    counts.iter().find(|p| p.id == id).map(|p| p.deliveries),
                )
            })
            .collect();
        self.push(claimed, true);
        Ok(())
    }

    async fn close(mut self) -> Result<(), BrokerError> {
        let liveness = self.liveness.take();
        let (keys, heartbeat) = match liveness {
            Some(l) => (Some(l.keys), l.heartbeat),
            None => (None, None),
        };
        let grouped = self.shared.group.is_some();
        let mut unread = Vec::new();
        if let Some(read) = self.read.take() {
            // Without NOACK, whatever it returns is in this consumer's pending list: handed back
            // below. With NOACK, Redis acknowledged it already: put it back.
            if let Some(Ok(reply)) = interrupt(&self.reader, read).await {
                if grouped && self.noack {
                    unread.extend(
                        wire::xread_entries(reply)
                            .into_iter()
                            .filter(|e| e.fields.is_some())
                            .filter_map(|e| e.id()),
                    );
                }
            }
        }
        // Never handed out: NOACK ones are put back in the pending list below; the others are
        // in it and are handed back.
        for entry in std::mem::take(&mut self.buffer) {
            if entry.pending {
                self.shared.forget(entry.num);
            } else if grouped {
                if let Some(id) = entry.id.as_str_lossy() {
                    unread.push(Arc::from(&*id));
                }
            }
        }
        let sh = self.shared.clone();
        if let Some(task) = self.pipeline.take() {
            // Every message is done (the engine closes its consumer last): flush what the
            // pipeline holds before anything is handed back.
            if sh.defer(Deferred::Close) {
                if let Err(error) = task.await {
                    tracing::error!(stream = %sh.stream, %error, "the settlement pipeline failed; its entries stay pending");
                }
            }
        }
        // The heartbeat runs until here: while the read is interrupted and the pipeline flushed
        // (seconds, during a reconnect), a lapsed key would let other consumers take over
        // entries that are handled and only wait for their XACK. No renewal may follow the
        // DEL of the liveness key below.
        if let Some(heartbeat) = heartbeat {
            heartbeat.stop().await;
        }
        let mut result = Ok(());
        if grouped {
            unread.extend(std::mem::take(&mut lock(&sh.state).abandoned));
            result = hand_back(&sh, unread).await;
            if let Some(keys) = keys {
                // Gone from now on: the group's other consumers take over what it still holds,
                // whatever their `min_idle_ms`. Without pending entries it leaves the registry
                // (and the group, when its name was generated: else every restart would add one
                // more consumer to it).
                let left = async {
                    liveness::forget(&sh.client, &keys, &sh.consumer).await?;
                    liveness::retire(
                        &sh.client,
                        &sh.stream,
                        sh.group(),
                        &keys,
                        &sh.consumer,
                        self.generated_name,
                    )
                    .await
                    .map(drop)
                }
                .await;
                result = result.and(left);
            }
        }
        quit(&self.reader, "stream consumer").await;
        result
    }
}

/// This consumer's XPENDING rows for the range spanning `ids` (empty when `ids` is).
async fn own_pending<'a>(
    sh: &StreamShared,
    ids: impl Iterator<Item = &'a str>,
) -> Result<Vec<wire::Pending>, BrokerError> {
    let mut ids: Vec<_> = ids.map(|id| (wire::parse_id(id), id)).collect();
    ids.sort_unstable();
    let (Some((_, first)), Some((_, last))) = (ids.first(), ids.last()) else {
        return Ok(Vec::new());
    };
    wire::call(
        &sh.client,
        "XPENDING",
        false,
        vec![
            s(&sh.stream),
            s(sh.group()),
            s(first),
            s(last),
            Value::from(10_000i64),
            s(&sh.consumer),
        ],
    )
    .await
    .map(wire::pending)
    .map_err(|e| op_error("XPENDING", e))
}

/// Marks every entry the consumer still holds as idle for years, so that the group's other
/// consumers claim it at their next XAUTOCLAIM instead of after `min_idle`, and puts the NOACK
/// entries no handler saw (`unread`) back in its pending list (`XCLAIM ... FORCE`), marked the
/// same way.
async fn hand_back(sh: &StreamShared, unread: Vec<Arc<str>>) -> Result<(), BrokerError> {
    if !unread.is_empty() {
        tracing::debug!(stream = %sh.stream, count = unread.len(), "putting entries read with NOACK but never handled back in the pending list");
        let mut args = vec![
            s(&sh.stream),
            s(sh.group()),
            s(&sh.consumer),
            Value::from(0i64),
        ];
        args.extend(unread.iter().map(|id| s(id)));
        args.extend([
            s("IDLE"),
            Value::from(HAND_BACK_IDLE_MS as i64),
            s("FORCE"),
            s("JUSTID"),
        ]);
        wire::call(&sh.client, "XCLAIM", false, args)
            .await
            .map_err(|e| op_error("XCLAIM FORCE (put back unhandled NOACK entries)", e))?;
    }
    let reply = wire::call(
        &sh.client,
        "XPENDING",
        false,
        vec![
            s(&sh.stream),
            s(sh.group()),
            s("-"),
            s("+"),
            Value::from(1_000_000i64),
            s(&sh.consumer),
        ],
    )
    .await
    .map_err(|e| op_error("XPENDING", e))?;
    let held = wire::pending(reply);
    if held.is_empty() {
        return Ok(());
    }
    tracing::debug!(stream = %sh.stream, count = held.len(), "handing unsettled entries back to the group");
    // As idle as the least idle one was: an entry another consumer claimed in the meantime
    // stays with it.
    let min_idle_ms = held.iter().map(|p| p.idle_ms).min().unwrap_or(0);
    let mut args = vec![
        s(&sh.stream),
        s(sh.group()),
        s(&sh.consumer),
        Value::from(i64::try_from(min_idle_ms).unwrap_or(i64::MAX)),
    ];
    args.extend(held.iter().map(|p| s(&p.id)));
    args.extend([
        s("IDLE"),
        Value::from(HAND_BACK_IDLE_MS as i64),
        s("JUSTID"),
    ]);
    wire::call(&sh.client, "XCLAIM", false, args)
        .await
        .map_err(|e| op_error("XCLAIM (hand back)", e))?;
    Ok(())
}

/// After NOGROUP (the stream was deleted, or the group destroyed): creates the group again, so
/// consumption goes on once the error is reported.
async fn recreate_group_if_gone(sh: &StreamShared, e: BrokerError) -> BrokerError {
    let Some(group) = &sh.group else {
        return e;
    };
    if !e.to_string().contains("NOGROUP") {
        return e;
    }
    tracing::warn!(stream = %sh.stream, group = %group, "the consumer group is gone (stream deleted?); creating it again");
    match create_group(&sh.client, &sh.stream, group).await {
        Ok(()) => e,
        Err(create) => create,
    }
}

/// Finishes a blocking read early: CLIENT UNBLOCK (through fred's backchannel) until the read
/// returns, since the command may not have reached the server yet when the first one is sent.
async fn interrupt<T>(client: &Client, mut read: BoxFuture<'static, T>) -> Option<T> {
    let deadline = Instant::now() + BLOCK * 2;
    while Instant::now() < deadline {
        let _ = client.unblock_self(None).await;
        if let Ok(out) = tokio::time::timeout(Duration::from_millis(50), &mut read).await {
            return Some(out);
        }
    }
    None
}

/// How often XAUTOCLAIM looks for idle entries: often enough that handed-back entries move on
/// within a second, rarely enough to cost nothing.
pub(crate) fn claim_interval(min_idle: Duration) -> Duration {
    (min_idle / 2).clamp(Duration::from_millis(100), Duration::from_secs(1))
}

pub(crate) async fn create_group(
    client: &Client,
    stream: &str,
    group: &str,
) -> Result<(), BrokerError> {
    match wire::call_at(
        client,
        "XGROUP",
        false,
        1,
        vec![s("CREATE"), s(stream), s(group), s("$"), s("MKSTREAM")],
    )
    .await
    {
        Ok(_) => Ok(()),
        Err(e) if e.to_string().contains("BUSYGROUP") => Ok(()),
        Err(e) => Err(op_error("XGROUP CREATE", e)),
    }
}

fn fields_as_json(fields: &[(Bytes, Bytes)]) -> Bytes {
    let map: serde_json::Map<String, serde_json::Value> = fields
        .iter()
        .map(|(k, v)| {
            (
                String::from_utf8_lossy(k).into_owned(),
                serde_json::Value::String(String::from_utf8_lossy(v).into_owned()),
            )
        })
        .collect();
    serde_json::to_vec(&map)
        .map(Bytes::from)
        .unwrap_or_default()
}
