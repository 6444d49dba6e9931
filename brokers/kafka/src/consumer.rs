//! Consuming: one librdkafka consumer per subscription, and the offset bookkeeping that turns
//! per-message settlements into per-partition commits.
//!
//! Why the bookkeeping: Kafka commits one offset per partition ("everything before this is
//! done"). brook settles messages one by one, possibly out of order across partitions and,
//! with a handler that settles early, within one. So each partition keeps the offsets handed
//! out and not yet committable; only the contiguous settled prefix is stored for commit. A nack
//! drops the nacked offset and everything after it from the list, and seeks the partition
//! back, so the committed offset never passes a nacked message.
//!
//! Each delivery carries a sequence number: a settlement of a delivery that was superseded (by
//! a seek, or because the partition was revoked and maybe assigned back) finds no matching
//! entry and is ignored, so an old owner never commits for a partition it lost.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use brook_runtime::{
    AckPolicy, BrokerError, KafkaOptions, Message, MessageId, OffsetReset, SettleFuture,
    Settlement, Settler, Subscription,
};
use bytes::Bytes;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::util::Timeout;
use rdkafka::{ClientContext, Message as _};

use crate::message::{headers, KafkaMessage};
use crate::{KafkaBroker, KIND};

type Stream = StreamConsumer<Context>;

/// The librdkafka consumer, shared by the [`KafkaConsumer`] and its messages' settlers; the last
/// reference dropped closes it.
struct Handle(Stream);

impl std::ops::Deref for Handle {
    type Target = Stream;

    fn deref(&self) -> &Stream {
        &self.0
    }
}

impl Drop for Handle {
    /// Releases every [`Partition::store`] list before the client goes: each holds a reference
    /// to librdkafka's partition object, which must not outlive the client. Nothing stored is
    /// lost: librdkafka commits its stored offsets when the closing consumer gives the
    /// partitions up (`enable.auto.commit`), and [`Consumer::close`](brook_runtime::Consumer::close)
    /// has committed synchronously already.
    fn drop(&mut self) {
        self.0.context().shared.lock().partitions.clear();
    }
}

/// Consumer settings brook derives from the subscription and its ack policy, refused as
/// passthrough (`with_consumer_config`), with what to do instead.
const OWNED_BY_BROOK: &[(&str, &str)] = &[
    (
        "enable.auto.offset.store",
        "it follows the ack policy (true only under AckFirst)",
    ),
    ("group.id", "use the subscriber's `group_id` argument"),
];

/// Why a consumer without a group could not take its partitions.
#[derive(Debug, thiserror::Error)]
enum AssignError {
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    #[error("topic `{0}` has no partitions (does it exist?)")]
    NoPartitions(String),
}

/// Offsets of one partition handed out and not yet committable.
struct Partition {
    /// Unique per assignment of the partition to this consumer (a partition assigned back
    /// after a revocation is a new `Partition`).
    id: u64,
    topic: Arc<str>,
    partition: i32,
    /// Messages handed out (or parked) not released yet: a message is released when the engine
    /// settles it after its handler returned ([`Settler::settle_later`]), or when it is dropped.
    held: usize,
    /// Paused in librdkafka because it had too many messages held (see [`MAX_HELD`]).
    paused: bool,
    /// (offset, delivery sequence, settled), offsets increasing.
    pending: VecDeque<(i64, u64, bool)>,
    /// After a nack: the offset the partition was sought back to; anything else from this
    /// partition is a leftover of the old position and is dropped until it arrives.
    rewind_to: Option<i64>,
    /// The last offset stored for commit (the next offset to read).
    stored: Option<i64>,
    /// The last offset committed synchronously by us.
    committed: Option<i64>,
    /// This partition alone, the list every offset store of it goes through: librdkafka keeps
    /// its partition object in the list's element after the first store, so a store is a lock
    /// and a write, where `store_offset` looks the topic up and allocates its name twice each
    /// time. Released before the client (see [`Handle`]).
    store: TopicPartitionList,
    /// offset -> deliveries so far, for messages of this partition this consumer nacked (Kafka
    /// keeps no delivery count). Per partition, so a revocation forgets them with it; almost
    /// always empty, so a delivery checks it without hashing anything.
    nacked: Vec<(i64, u32)>,
    /// Bumped when deliveries handed out from this partition are superseded (a seek back after
    /// a nack, a revocation): a settler compares it with the value at its delivery, without a
    /// lock, so the engine skips deliveries that will come again instead of handling them twice.
    epoch: Arc<AtomicU64>,
}

/// Messages of one partition brook holds at once (one being handled, one queued in the
/// engine) before the partition is paused. The engine keeps each partition's messages in
/// order on one worker; without this, a third message of a partition whose handler is slow
/// would block the engine's dispatcher, and with it every other partition.
const MAX_HELD: usize = 2;

#[derive(Default)]
struct Tracker {
    partitions: Vec<Partition>,
    next_seq: u64,
}

impl Tracker {
    fn by_id(&mut self, id: u64) -> Option<&mut Partition> {
        self.partitions.iter_mut().find(|p| p.id == id)
    }

    fn find(&mut self, topic: &str, partition: i32) -> Option<&mut Partition> {
        self.partitions
            .iter_mut()
            .find(|p| p.partition == partition && &*p.topic == topic)
    }

    /// Offsets to commit: every partition whose stored offset is ahead of what we committed.
    fn to_commit(&self, only: Option<&TopicPartitionList>) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        for p in &self.partitions {
            if let Some(only) = only {
                if only.find_partition(&p.topic, p.partition).is_none() {
                    continue;
                }
            }
            if let Some(stored) = p.stored {
                if p.committed.is_none_or(|c| c < stored) {
                    let _ = tpl.add_partition_offset(&p.topic, p.partition, Offset::Offset(stored));
                }
            }
        }
        tpl
    }

    fn mark_committed(&mut self, tpl: &TopicPartitionList) {
        for e in tpl.elements() {
            if let (Some(p), Offset::Offset(o)) = (self.find(e.topic(), e.partition()), e.offset())
            {
                p.committed = Some(o);
            }
        }
    }
}

struct Shared {
    tracker: Mutex<Tracker>,
    /// Signalled when a paused partition's held count drops (its parked message may go).
    freed: tokio::sync::Notify,
    /// Whether offsets are tracked by us (every policy but AckFirst / no group).
    tracking: bool,
    group: Option<String>,
    /// When to commit besides librdkafka's background commit.
    cadence: Cadence,
}

/// [`KafkaBroker::commit_every`]: counts ack / reject settlements (under AckFirst, the acks
/// before the handler); every `every`th is due for a commit.
struct Cadence {
    /// 0: never.
    every: u64,
    settled: AtomicU64,
}

impl Cadence {
    fn new(every: u64) -> Self {
        Cadence {
            every,
            settled: AtomicU64::new(0),
        }
    }

    /// Counts one settlement; whether a commit is due now.
    fn settled(&self) -> bool {
        self.every != 0
            && (self.settled.fetch_add(1, Ordering::Relaxed) + 1).is_multiple_of(self.every)
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Tracker> {
        self.tracker.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// librdkafka callbacks: commits what is settled of a partition before it is revoked, and
/// forgets its in-flight messages so the old owner never commits them afterwards.
pub(crate) struct Context {
    shared: Arc<Shared>,
}

impl ClientContext for Context {}

impl ConsumerContext for Context {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(revoked) = rebalance else {
            if let Rebalance::Error(e) = rebalance {
                tracing::warn!(error = %e, "Kafka rebalance error");
            }
            return;
        };
        if !self.shared.tracking {
            return; // auto-commit: librdkafka commits its stored offsets on revocation
        }
        let mut tracker = self.shared.lock();
        let tpl = tracker.to_commit(Some(revoked));
        // Forget the revoked partitions while still holding the lock: a settlement that comes
        // after this finds nothing to store.
        let mut paused = TopicPartitionList::new();
        tracker.partitions.retain(|p| {
            let keep = revoked.find_partition(&p.topic, p.partition).is_none();
            if !keep && p.paused {
                paused.add_partition(&p.topic, p.partition);
            }
            if !keep {
                // The partition's next owner reads what we still hold: don't handle it here.
                p.epoch.fetch_add(1, Ordering::AcqRel);
            }
            keep
        });
        drop(tracker);
        // librdkafka keeps an application pause across revocation and re-assignment: a
        // partition paused now and assigned back later would never be fetched again.
        if paused.count() > 0 {
            if let Err(e) = consumer.resume(&paused) {
                tracing::warn!(error = %e, "could not resume revoked partitions");
            }
        }
        if tpl.count() > 0 {
            match consumer.commit(&tpl, CommitMode::Sync) {
                Ok(()) => tracing::debug!(offsets = ?tpl, "committed before revocation"),
                Err(e) => {
                    tracing::warn!(error = %e, "commit before partition revocation failed")
                }
            }
        }
        tracing::debug!(partitions = revoked.count(), "partitions revoked");
    }

    fn commit_callback(&self, result: rdkafka::error::KafkaResult<()>, _: &TopicPartitionList) {
        match result {
            Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(e) => tracing::warn!(error = %e, "Kafka background commit failed"),
        }
    }
}

/// A subscription's consumer: yields messages from the subscribed topics.
pub struct KafkaConsumer {
    consumer: Arc<Handle>,
    shared: Arc<Shared>,
    topics: Vec<Arc<str>>,
    /// The one topic every message comes from, when the subscription names a single topic
    /// (not a `^` pattern): then the message's topic name is not read and compared per
    /// message (a `strlen`, a UTF-8 check and a compare of the whole name, about 150
    /// instructions).
    only_topic: Option<Arc<str>>,
    /// Messages read from a partition that already had [`MAX_HELD`] messages out; the
    /// partition is paused until one of them is settled or dropped.
    parked: VecDeque<Parked>,
}

/// A parked message and the delivery it belongs to: a parked message is handed out only if
/// that very delivery (same assignment, same sequence number) is still current.
struct Parked {
    msg: Message,
    topic: Arc<str>,
    partition: i32,
    offset: i64,
    part_id: u64,
    seq: u64,
}

impl std::fmt::Debug for KafkaConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaConsumer")
            .field("topics", &self.topics)
            .field("group", &self.shared.group)
            .finish_non_exhaustive()
    }
}

/// The subscription's Kafka options; a subscription declared for another broker is refused.
fn options(sub: &Subscription) -> Result<&KafkaOptions, BrokerError> {
    sub.options()
        .kafka()
        .ok_or_else(|| sub.declared_for_another(KIND))
}

/// What [`Broker::check`](brook_runtime::Broker::check) refuses before anything connects:
/// a subscription for another broker, and passthrough consumer settings that brook derives
/// from the subscription.
pub(crate) fn check(broker: &KafkaBroker, sub: &Subscription) -> Result<(), BrokerError> {
    options(sub)?;
    // Settings the ack policy depends on: a passthrough value would silently change what is
    // committed (`enable.auto.offset.store = true` commits messages before they are handled).
    for (key, _) in &broker.inner.consumer_config {
        if let Some(instead) = OWNED_BY_BROOK
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, i)| i)
        {
            return Err(BrokerError::Invalid {
                broker: KIND,
                message: format!(
                    "subscriber `{}`: the consumer setting `{key}` is brook's to set; {instead}",
                    sub.name()
                ),
            });
        }
    }
    Ok(())
}

pub(crate) async fn subscribe(
    broker: &KafkaBroker,
    sub: &Subscription,
) -> Result<KafkaConsumer, BrokerError> {
    let opts = options(sub)?;
    // Never empty: brook-caps refuses a topic list that names no topic.
    let topics: Vec<Arc<str>> = opts.topics.iter().map(|t| Arc::from(t.as_str())).collect();
    let group = opts.group_id.clone();
    let auto_commit_native = sub.policy() == AckPolicy::AckFirst;
    let tracking = group.is_some() && !auto_commit_native;
    let reset = opts.auto_offset_reset;

    let mut config = broker.consumer_config();
    config
        .set("auto.offset.reset", reset.name())
        .set("enable.partition.eof", "false");
    match &group {
        Some(g) => {
            config
                .set("group.id", g)
                .set("enable.auto.commit", "true")
                .set(
                    "enable.auto.offset.store",
                    if auto_commit_native { "true" } else { "false" },
                );
        }
        None => {
            // No group: nothing is committed; librdkafka still wants a group.id to exist.
            config
                .set("group.id", format!("brook-nogroup-{}", std::process::id()))
                .set("enable.auto.commit", "false");
        }
    }
    // Passthrough consumer settings override ours (set again last).
    for (k, v) in &broker.inner.consumer_config {
        config.set(k, v);
    }
    let shared = Arc::new(Shared {
        tracker: Mutex::new(Tracker::default()),
        freed: tokio::sync::Notify::new(),
        tracking,
        group: group.clone(),
        cadence: Cadence::new(if group.is_some() {
            u64::from(broker.commit_every_n())
        } else {
            0 // nothing to commit
        }),
    });
    let consumer: Stream = config
        .create_with_context(Context {
            shared: shared.clone(),
        })
        .map_err(|e| BrokerError::Connect {
            broker: KIND,
            address: broker.address().to_owned(),
            source: e.into(),
        })?;
    let consumer = Arc::new(Handle(consumer));
    let names: Vec<&str> = topics.iter().map(|t| &**t).collect();
    if group.is_some() {
        consumer
            .subscribe(&names)
            .map_err(|e| BrokerError::operation(KIND, "subscribe", e))?;
    } else {
        // Without a group there is no coordinator to assign partitions: take them all.
        let c = consumer.clone();
        let names: Vec<String> = names.iter().map(|s| (*s).to_owned()).collect();
        let start = match reset {
            OffsetReset::Earliest => Offset::Beginning,
            OffsetReset::Latest => Offset::End,
        };
        tokio::task::spawn_blocking(move || -> Result<(), AssignError> {
            let mut tpl = TopicPartitionList::new();
            for name in &names {
                let md = c.fetch_metadata(Some(name), Timeout::After(Duration::from_secs(10)))?;
                let partitions = md
                    .topics()
                    .iter()
                    .filter(|t| t.error().is_none())
                    .flat_map(|t| t.partitions());
                let before = tpl.count();
                for p in partitions {
                    tpl.add_partition_offset(name, p.id(), start)?;
                }
                // Assigning nothing would leave the consumer waiting forever, silently.
                if tpl.count() == before {
                    return Err(AssignError::NoPartitions(name.clone()));
                }
            }
            Ok(c.assign(&tpl)?)
        })
        .await
        .map_err(|e| BrokerError::operation(KIND, "assign", e))?
        .map_err(|e| BrokerError::operation(KIND, "assign", e))?;
    }
    tracing::debug!(topics = ?names, group = ?group, policy = %sub.policy(), "Kafka consumer started");
    let only_topic = match topics.as_slice() {
        [one] if !one.starts_with('^') => Some(one.clone()),
        _ => None,
    };
    Ok(KafkaConsumer {
        consumer,
        shared,
        topics,
        only_topic,
        parked: VecDeque::new(),
    })
}

impl KafkaConsumer {
    /// The first parked message whose partition has room again (resuming the partition), or
    /// whose delivery was superseded (dropped).
    fn unpark(&mut self) -> Option<Message> {
        let mut i = 0;
        while i < self.parked.len() {
            let p = &self.parked[i];
            let (topic, partition, offset, seq) = (p.topic.clone(), p.partition, p.offset, p.seq);
            let state = self.shared.lock().by_id(p.part_id).map(|part| {
                let current = part
                    .pending
                    .iter()
                    .any(|(o, s, _)| *o == offset && *s == seq);
                (current, part.held <= MAX_HELD)
            });
            match state {
                // Revoked (maybe assigned back since), or superseded by a seek: drop it (its
                // Drop releases the slot).
                None | Some((false, _)) => {
                    self.parked.remove(i);
                    self.resume_if_unparked(&topic, partition);
                }
                Some((true, true)) => {
                    let parked = self.parked.remove(i);
                    self.resume_if_unparked(&topic, partition);
                    return parked.map(|p| p.msg);
                }
                Some((true, false)) => i += 1,
            }
        }
        None
    }

    /// Resumes `partition` once no parked message of it is left.
    fn resume_if_unparked(&mut self, topic: &str, partition: i32) {
        let still_parked = self
            .parked
            .iter()
            .any(|p| p.partition == partition && &*p.topic == topic);
        if still_parked {
            return;
        }
        let mut tracker = self.shared.lock();
        let Some(part) = tracker.find(topic, partition) else {
            return; // revoked: nothing to resume
        };
        if !part.paused {
            return;
        }
        part.paused = false;
        drop(tracker);
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(topic, partition);
        // librdkafka fetches again from the last message handed out + 1 (or from where a
        // seek while paused put it).
        if let Err(e) = self.consumer.resume(&tpl) {
            tracing::warn!(%topic, partition, error = %e, "could not resume a paused partition");
        }
    }

    fn topic_arc(&self, name: &str) -> Arc<str> {
        self.topics
            .iter()
            .find(|t| &***t == name)
            .cloned()
            .unwrap_or_else(|| Arc::from(name))
    }
}

impl brook_runtime::Consumer for KafkaConsumer {
    async fn next(&mut self) -> Option<Result<Message, BrokerError>> {
        loop {
            let received = if self.parked.is_empty() {
                self.consumer.recv().await
            } else {
                if let Some(msg) = self.unpark() {
                    return Some(Ok(msg));
                }
                if self.parked.is_empty() {
                    continue;
                }
                tokio::select! {
                    m = self.consumer.recv() => m,
                    _ = self.shared.freed.notified() => continue,
                }
            };
            let m = match received {
                Ok(m) => m,
                Err(e) => return Some(Err(BrokerError::operation(KIND, "consume", e))),
            };
            let topic = match &self.only_topic {
                Some(topic) => topic.clone(),
                None => self.topic_arc(m.topic()),
            };
            let (partition, offset) = (m.partition(), m.offset());
            let mut deliveries = 1;
            let mut seq = 0;
            let mut part_id = 0;
            let mut park = false;
            let mut epoch = None;
            if self.shared.tracking {
                let mut tracker = self.shared.lock();
                seq = tracker.next_seq;
                tracker.next_seq += 1;
                let part = match tracker.find(&topic, partition) {
                    Some(p) => p,
                    None => {
                        let id = seq;
                        let mut store = TopicPartitionList::with_capacity(1);
                        store.add_partition(&topic, partition);
                        tracker.partitions.push(Partition {
                            id,
                            held: 0,
                            paused: false,
                            topic: topic.clone(),
                            partition,
                            pending: VecDeque::new(),
                            rewind_to: None,
                            stored: None,
                            committed: None,
                            store,
                            nacked: Vec::new(),
                            epoch: Arc::default(),
                        });
                        tracker
                            .partitions
                            .last_mut()
                            .unwrap_or_else(|| unreachable!("just pushed"))
                    }
                };
                match part.rewind_to {
                    Some(o) if o != offset => {
                        tracing::trace!(%topic, partition, offset, rewind_to = o, "dropping a message fetched before a seek");
                        continue;
                    }
                    Some(_) => part.rewind_to = None,
                    None => {}
                }
                if let Some((_, n)) = part.nacked.iter().find(|(o, _)| *o == offset) {
                    deliveries = n + 1;
                }
                // Offsets only grow within a partition, except after a seek: drop what the
                // new position supersedes.
                while part.pending.back().is_some_and(|(o, _, _)| *o >= offset) {
                    part.pending.pop_back();
                }
                part.pending.push_back((offset, seq, false));
                part.held += 1;
                part_id = part.id;
                epoch = Some((part.epoch.clone(), part.epoch.load(Ordering::Acquire)));
                if part.held > MAX_HELD {
                    park = true;
                    if !part.paused {
                        part.paused = true;
                        let mut tpl = TopicPartitionList::new();
                        tpl.add_partition(&topic, partition);
                        // Under the lock, so a settler cannot see `paused` before the pause.
                        if let Err(e) = self.consumer.pause(&tpl) {
                            tracing::warn!(%topic, partition, error = %e, "could not pause a busy partition");
                        }
                    }
                }
            }
            let raw = KafkaMessage {
                topic: topic.clone(),
                partition,
                offset,
                key: m.key().map(Bytes::copy_from_slice),
                timestamp: m.timestamp().to_millis(),
            };
            let body = m.payload().map(Bytes::copy_from_slice).unwrap_or_default();
            let headers = headers(&m);
            drop(m);
            let settler = KafkaSettler {
                consumer: self.consumer.clone(),
                raw,
                seq,
                part_id,
                deliveries,
                epoch,
                released: AtomicBool::new(false),
            };
            // The topic moves into the message; a parked message's bookkeeping needs its own.
            let parked_topic = park.then(|| topic.clone());
            let msg = Message::new(KIND, topic, body, settler)
                .with_headers(headers)
                .with_id(MessageId::Number(offset as u64))
                .with_delivery_count(deliveries)
                .with_ordering_key(partition as u64);
            if let Some(topic) = parked_topic {
                self.parked.push_back(Parked {
                    msg,
                    topic,
                    partition,
                    offset,
                    part_id,
                    seq,
                });
                continue;
            }
            return Some(Ok(msg));
        }
    }

    /// Commits what is settled synchronously, then leaves the group (in a blocking task:
    /// librdkafka's close waits for the final rebalance).
    async fn close(self) -> Result<(), BrokerError> {
        let KafkaConsumer {
            consumer,
            shared,
            parked,
            ..
        } = self;
        // Parked messages hold the consumer too: dropped here, so the last reference (and
        // with it librdkafka's blocking close) goes in the blocking task, not at the end of
        // this future on a runtime thread.
        drop(parked);
        tokio::task::spawn_blocking(move || {
            let result = commit_now(&consumer, &shared);
            consumer.unsubscribe();
            // The last strong reference (settlers are gone: the engine closes after every
            // handler finished) is dropped here, which closes the librdkafka consumer.
            drop(consumer);
            result
        })
        .await
        .map_err(|e| BrokerError::operation(KIND, "close", e))?
    }
}

/// Synchronously commits every settled offset not committed yet.
fn commit_now(consumer: &Stream, shared: &Shared) -> Result<(), BrokerError> {
    if shared.group.is_none() {
        return Ok(());
    }
    if !shared.tracking {
        return match consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => Ok(()),
            Err(e) => Err(BrokerError::operation(KIND, "commit", e)),
        };
    }
    let tpl = shared.lock().to_commit(None);
    if tpl.count() == 0 {
        return Ok(());
    }
    consumer
        .commit(&tpl, CommitMode::Sync)
        .map_err(|e| BrokerError::operation(KIND, "commit", e))?;
    shared.lock().mark_committed(&tpl);
    tracing::debug!(offsets = ?tpl, "committed on close");
    Ok(())
}

struct KafkaSettler {
    /// Also the way to the offset bookkeeping ([`Context::shared`]): one reference per message
    /// instead of two.
    consumer: Arc<Handle>,
    raw: KafkaMessage,
    seq: u64,
    /// The [`Partition::id`] it was handed out under.
    part_id: u64,
    deliveries: u32,
    /// Its partition's [`Partition::epoch`], and the value when it was handed out.
    epoch: Option<(Arc<AtomicU64>, u64)>,
    /// Its [`Partition::held`] slot was given back at settlement (see [`Settler::settle_later`]
    /// below), so dropping it has nothing left to do.
    released: AtomicBool,
}

impl Drop for KafkaSettler {
    /// The message is gone from brook (unless released at settlement): its partition may take
    /// another.
    fn drop(&mut self) {
        if *self.released.get_mut() || !self.shared().tracking {
            return;
        }
        let mut tracker = self.shared().lock();
        if let Some(part) = tracker.by_id(self.part_id) {
            give_back_slot(part, &self.shared().freed);
        }
    }
}

/// Gives back one of `part`'s [`Partition::held`] slots, waking the consumer if that lets a
/// parked message of it go. Under the tracker lock.
fn give_back_slot(part: &mut Partition, freed: &tokio::sync::Notify) {
    part.held = part.held.saturating_sub(1);
    if part.paused && part.held <= MAX_HELD {
        // Notify keeps one permit: the consumer sees it even if it is not waiting yet.
        freed.notify_one();
    }
}

impl KafkaSettler {
    fn shared(&self) -> &Shared {
        &self.consumer.context().shared
    }

    /// Counts an ack / reject for [`KafkaBroker::commit_every`]: every `n`th starts an
    /// asynchronous commit of the stored offsets (librdkafka's `rd_kafka_commit` with no
    /// list: it only enqueues the request; the result comes to [`Context::commit_callback`]).
    fn count_settled(&self) {
        if !self.shared().cadence.settled() {
            return;
        }
        match self.consumer.commit_consumer_state(CommitMode::Async) {
            Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(e) => tracing::warn!(
                error = %e,
                every = self.shared().cadence.every,
                "Kafka commit after settled messages failed"
            ),
        }
    }

    /// Applies `settlement`; with `release`, also gives back the message's held slot in the
    /// same lock section (the engine is done with the message: see [`Settler::settle_later`]).
    fn settle_now(&self, settlement: Settlement, release: bool) -> Result<(), BrokerError> {
        let shared = self.shared();
        if !shared.tracking {
            // AckFirst: librdkafka stored the offset when it handed the message out.
            // Without a group there is nothing to commit or rewind to (`commit_every` is 0).
            if matches!(settlement, Settlement::Ack | Settlement::Reject) {
                self.count_settled();
            }
            return Ok(());
        }
        let KafkaMessage {
            topic,
            partition,
            offset,
            ..
        } = &self.raw;
        let mut tracker = shared.lock();
        // By the id of the assignment it was handed out under: a partition revoked (and maybe
        // assigned back since, as a new `Partition`) is not found.
        let Some(part) = tracker.by_id(self.part_id) else {
            if release {
                self.released.store(true, Ordering::Relaxed);
            }
            tracing::debug!(%topic, partition, offset, "partition no longer assigned; settlement ignored");
            return Ok(());
        };
        if release {
            // Whatever follows (even an error): the engine drops the message next.
            give_back_slot(part, &shared.freed);
            self.released.store(true, Ordering::Relaxed);
        }
        let Some(i) = part
            .pending
            .iter()
            .position(|(o, s, _)| *o == *offset && *s == self.seq)
        else {
            tracing::debug!(%topic, partition, offset, "delivery superseded by a seek; settlement ignored");
            return Ok(());
        };
        match settlement {
            Settlement::Ack | Settlement::Reject => {
                part.pending[i].2 = true;
                let mut next = None;
                while let Some(&(o, _, true)) = part.pending.front() {
                    next = Some(o + 1);
                    part.pending.pop_front();
                }
                if !part.nacked.is_empty() {
                    part.nacked.retain(|(o, _)| o != offset);
                }
                if let Some(next) = next {
                    part.stored = Some(next);
                    // Under the lock, so stores of one partition never go backwards. A list
                    // holds the next offset to read (unlike `store_offset`, which adds 1).
                    let store_error = |e| BrokerError::operation(KIND, "store offset", e);
                    part.store
                        .set_all_offsets(Offset::Offset(next))
                        .map_err(store_error)?;
                    self.consumer
                        .store_offsets(&part.store)
                        .map_err(store_error)?;
                }
                drop(tracker);
                self.count_settled();
                Ok(())
            }
            Settlement::Nack { .. } => {
                // Seek first: if it fails, nothing changes and the message stays unsettled
                // (its offset is never committed; the next owner reads it again).
                // Asynchronous seek (timeout 0): librdkafka bumps the partition's fetch version
                // now, so messages fetched from the old position are discarded on poll.
                self.consumer
                    .seek(
                        topic,
                        *partition,
                        Offset::Offset(*offset),
                        Timeout::After(Duration::ZERO),
                    )
                    .map_err(|e| BrokerError::operation(KIND, "seek", e))?;
                // Everything from the nacked offset on is read again: what was handed out after
                // it is superseded (the engine skips it rather than handling it twice).
                part.pending.truncate(i);
                part.epoch.fetch_add(1, Ordering::AcqRel);
                part.rewind_to = Some(*offset);
                match part.nacked.iter_mut().find(|(o, _)| o == offset) {
                    Some((_, n)) => *n = self.deliveries,
                    None => part.nacked.push((*offset, self.deliveries)),
                }
                Ok(())
            }
        }
    }
}

impl Settler for KafkaSettler {
    fn settle(&self, settlement: Settlement) -> SettleFuture<'_> {
        // A handler's own settlement: it may still be running, so the message keeps its held
        // slot until it is dropped.
        SettleFuture::ready(self.settle_now(settlement, false))
    }

    /// The engine's settlement once the handler returned: nothing runs the message again, so
    /// its held slot is given back in the settlement's lock section instead of a second one
    /// when it is dropped (the per-message cost of a consumer).
    fn settle_later(&self, settlement: Settlement) -> SettleFuture<'_> {
        SettleFuture::ready(self.settle_now(settlement, true))
    }

    fn raw(&self) -> Option<&(dyn std::any::Any + Send + Sync)> {
        Some(&self.raw)
    }

    fn superseded(&self) -> bool {
        self.epoch
            .as_ref()
            .is_some_and(|(epoch, at)| epoch.load(Ordering::Acquire) != *at)
    }
}

#[cfg(test)]
mod tests {
    use super::Cadence;

    #[test]
    fn commit_every_n_is_due_on_every_nth_settlement() {
        let pattern = |every| {
            let c = Cadence::new(every);
            (0..7).map(|_| c.settled()).collect::<Vec<_>>()
        };
        assert_eq!(pattern(0), [false; 7], "0: off");
        assert_eq!(pattern(1), [true; 7]);
        assert_eq!(pattern(3), [false, false, true, false, false, true, false]);
    }
}
