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
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use brook_runtime::{BrokerError, BrokerKind, Headers, Message, MessageId};
use bytes::Bytes;
use fred::clients::SubscriberClient;
use fred::prelude::*;
use fred::types::Value;
use futures_util::future::BoxFuture;
use tokio::sync::{broadcast, Notify};
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
                        fields: Vec::new(),
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
                    fields: Vec::new(),
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

/// What a stream consumer shares with the settlers of the messages it handed out.
pub(crate) struct StreamShared {
    pub client: Client,
    pub stream: Arc<str>,
    pub group: Option<Arc<str>>,
    pub consumer: Arc<str>,
    pub dead_letter: Option<Arc<str>>,
    /// `stream group` as command arguments, built once: XACK per entry is the hot path.
    ack_prefix: [Value; 2],
    state: Mutex<StreamState>,
    wake: Notify,
}

#[derive(Default)]
struct StreamState {
    /// Handed out (or buffered) and not settled.
    in_flight: HashSet<Arc<str>>,
    /// Nacked, waiting to be claimed again.
    nacked: Vec<Nacked>,
    /// Re-read this consumer's own pending entries (start, reconnect).
    rescan: bool,
    /// Read with NOACK (AckFirst) and dropped without being settled, i.e. never handed to a
    /// handler (still in the buffer or the engine's queue at shutdown): put back in the pending
    /// list on close, so a graceful stop loses none.
    abandoned: Vec<Arc<str>>,
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
    pub(crate) fn new(
        client: Client,
        stream: Arc<str>,
        group: Option<Arc<str>>,
        consumer: Arc<str>,
        dead_letter: Option<Arc<str>>,
    ) -> Self {
        let ack_prefix = [s(&stream), s(group.as_deref().unwrap_or_default())];
        StreamShared {
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
        }
    }

    fn group(&self) -> &str {
        self.group.as_deref().unwrap_or_default()
    }

    fn xack_args(&self, id: &str) -> Vec<Value> {
        let [stream, group] = &self.ack_prefix;
        vec![stream.clone(), group.clone(), s(id)]
    }

    pub(crate) fn forget(&self, id: &str) {
        lock(&self.state).in_flight.remove(id);
    }

    /// A NOACK entry that no handler saw (see [`StreamState::abandoned`]).
    pub(crate) fn abandon(&self, id: Arc<str>) {
        lock(&self.state).abandoned.push(id);
    }

    fn known(&self, id: &str) -> bool {
        let st = lock(&self.state);
        st.in_flight.contains(id) || st.nacked.iter().any(|n| &*n.id == id)
    }

    /// The entry is still pending (its XACK failed): deliver it again after [`SETTLE_RETRY`],
    /// as a nack would (at-least-once).
    fn settle_failed(&self, id: &Arc<str>, deliveries: u32) {
        {
            let mut st = lock(&self.state);
            st.in_flight.remove(id);
            let now = Instant::now();
            st.nacked.push(Nacked {
                due: now + SETTLE_RETRY,
                since: now,
                id: id.clone(),
                deliveries,
            });
        }
        self.wake.notify_one();
    }

    pub(crate) async fn ack(&self, id: Arc<str>, deliveries: u32) -> Result<(), BrokerError> {
        let r = wire::call(&self.client, "XACK", false, self.xack_args(&id)).await;
        match r {
            Ok(_) => {
                self.forget(&id);
                Ok(())
            }
            Err(e) => {
                self.settle_failed(&id, deliveries);
                Err(op_error("XACK", e))
            }
        }
    }

    pub(crate) fn nack(&self, id: Arc<str>, deliveries: u32, delay: Option<Duration>) {
        {
            let mut st = lock(&self.state);
            st.in_flight.remove(&id);
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
                let mut args = vec![s(dlq), s("*")];
                for (k, v) in fields {
                    args.push(Value::Bytes(k.clone()));
                    args.push(Value::Bytes(v.clone()));
                }
                for (k, v) in [
                    ("__brook_stream", &*self.stream),
                    ("__brook_id", &*id),
                    ("__brook_group", self.group()),
                ] {
                    args.push(s(k));
                    args.push(s(v));
                }
                match wire::call(&self.client, "XADD", false, args).await {
                    Ok(_) => wire::call(&self.client, "XACK", false, self.xack_args(&id))
                        .await
                        .map(drop),
                    Err(e) => {
                        self.settle_failed(&id, deliveries);
                        return Err(op_error("XADD (dead letter)", e));
                    }
                }
            }
        };
        match result {
            Ok(()) => {
                self.forget(&id);
                Ok(())
            }
            Err(e) => {
                self.settle_failed(&id, deliveries);
                Err(op_error("XACK (reject)", e))
            }
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
    pub buffer: VecDeque<Message>,
    pub read: Option<BoxFuture<'static, Result<Value, fred::error::Error>>>,
    pub next_claim: Instant,
    pub claim_cursor: String,
    /// With a group: this consumer's liveness key and the search for gone consumers.
    pub liveness: Option<Liveness>,
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
    fn message(
        &self,
        id: Arc<str>,
        fields: Vec<(Bytes, Bytes)>,
        deliveries: Option<u32>,
        pending: bool,
    ) -> Message {
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
        match deliveries {
            Some(n) => msg.with_delivery_count(n),
            None => msg,
        }
    }

    fn push(
        &mut self,
        id: Arc<str>,
        fields: Vec<(Bytes, Bytes)>,
        deliveries: Option<u32>,
        pending: bool,
    ) {
        if pending {
            lock(&self.shared.state).in_flight.insert(id.clone());
        }
        let msg = self.message(id, fields, deliveries, pending);
        self.buffer.push_back(msg);
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
        let grouped = self.shared.group.is_some();
        for (id, fields) in wire::xread_entries(reply) {
            if !grouped {
                self.last_id = id.to_string();
            }
            let Some(fields) = fields else { continue };
            if grouped && self.shared.known(&id) {
                continue;
            }
            let pending = grouped && !self.noack;
            self.push(id, fields, grouped.then_some(1), pending);
        }
    }

    async fn next(&mut self) -> Option<Result<Message, BrokerError>> {
        loop {
            if let Some(m) = self.buffer.pop_front() {
                return Some(Ok(m));
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
        let claimed: Vec<_> = wire::entries(reply)
            .into_iter()
            .filter_map(|(id, f)| Some((id, f?)))
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
        for (id, fields) in claimed {
            let n = counts.iter().find(|p| p.id == id).map_or_else(
                || {
                    let before = ids.iter().find(|(i, _)| *i == id).map_or(1, |(_, n)| *n);
                    before.saturating_add(1)
                },
                |p| p.deliveries,
            );
            self.push(id, fields, Some(n), true);
        }
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
            .map(wire::entries)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(id, f)| Some((id, f?)))
            .filter(|(id, _)| {
                let mut st = lock(&sh.state);
                // XAUTOCLAIM reset the idle time of a nacked entry it took (back) for us.
                if let Some(n) = st.nacked.iter_mut().find(|n| n.id == *id) {
                    n.since = claimed_at;
                }
                !(st.in_flight.contains(id) || st.nacked.iter().any(|n| n.id == *id))
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
        for (id, fields) in claimed {
            let n = counts.iter().find(|p| p.id == id).map(|p| p.deliveries);
            self.push(id, fields, n, true);
        }
        Ok(())
    }

    async fn close(mut self) -> Result<(), BrokerError> {
        // No renewal may follow the DEL of the liveness key below.
        let liveness = self.liveness.take();
        let (keys, heartbeat) = match liveness {
            Some(l) => (Some(l.keys), l.heartbeat),
            None => (None, None),
        };
        if let Some(heartbeat) = heartbeat {
            heartbeat.stop().await;
        }
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
                            .filter(|(_, fields)| fields.is_some())
                            .map(|(id, _)| id),
                    );
                }
            }
        }
        // Dropping NOACK messages unsettled records them as abandoned.
        self.buffer.clear();
        let sh = self.shared.clone();
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
