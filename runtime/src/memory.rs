//! The in-memory broker: brook's embedded default, for examples and for users' tests.
//!
//! It has real settlement semantics, so a handler tested here behaves as it will on a broker:
//! - a topic holds messages until they are consumed; subscribers of the same group compete for
//!   them, and each group gets every message published after it exists (a topic that has no
//!   group yet keeps messages for the default group, so publishing before subscribing works);
//! - ack removes a message; nack puts it back at the head of its queue (after a delay, if
//!   given) with its delivery count kept; reject moves it to an inspectable dead-letter list;
//! - messages a consumer still holds unsettled when it closes are redelivered.
//!
//! Handlers declared for any broker run here (so Kafka or RabbitMQ handlers can be unit-tested
//! without a server); the semantics are the ones above, not the other broker's.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use brook_caps::BrokerKind;
use bytes::Bytes;
use std::time::Duration;

use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;

use crate::broker::{Accepts, Broker, Consumer, Outgoing};
use crate::error::BrokerError;
use crate::handler::kind::Kind;
use crate::headers::{Headers, REPLY_TO};
use crate::message::{Message, MessageId, SettleFuture, Settled, Settlement, SharedSettler};
use crate::subscription::Subscription;

/// The in-memory broker. Clones share the same topics.
#[derive(Clone, Default)]
pub struct MemoryBroker {
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    topics: Mutex<HashMap<String, Arc<Topic>>>,
    next_id: AtomicU64,
    next_consumer: AtomicU64,
    recorder: Arc<Recorder>,
    /// Requests waiting for their reply, by reply address.
    inboxes: Mutex<HashMap<String, oneshot::Sender<Outgoing>>>,
}

/// Where a request's reply is addressed: one address per request.
const INBOX_PREFIX: &str = "brook.inbox.";

struct Topic {
    name: Arc<str>,
    state: Mutex<TopicState>,
    ready: Notify,
    recorder: Arc<Recorder>,
}

#[derive(Default)]
struct TopicState {
    /// Groups are never removed, so consumers and settlers address them by index.
    groups: Vec<Group>,
    dead_letters: Vec<DeadLetter>,
    /// Set by [`MemoryBroker::end_consumers`]: consumers report this and end.
    /// Consumers with an id below the first value end, for the reason (later ones, such as a
    /// restarted subscriber's, consume as usual).
    ended: Option<(u64, String)>,
}

/// Why [`MemoryConsumer::take_ready`] has no message.
enum Pending {
    /// Nothing ready; the earliest delayed message is due then.
    Until(Option<Instant>),
    /// The topic's consumers were ended, for this reason.
    Ended(String),
}

impl TopicState {
    fn group_index(&mut self, name: &str) -> usize {
        match self.groups.iter().position(|g| g.name == name) {
            Some(i) => i,
            None => {
                self.groups.push(Group {
                    name: name.to_owned(),
                    ..Group::default()
                });
                self.groups.len() - 1
            }
        }
    }
}

#[derive(Default)]
struct Group {
    name: String,
    ready: VecDeque<Stored>,
    delayed: Vec<(Instant, Stored)>,
    in_flight: InFlight,
}

/// A group's deliveries not settled yet, each in a slot of its own. A delivery's settler
/// addresses it by its slot, so settling is an index, not a lookup (the map this replaces
/// was the largest cost of settling). Slots are reused once free; a slot is only freed by
/// settling its delivery (once: the `Message` sees to that) or by its consumer closing, so
/// checking the holder is enough to tell a late settlement from a current one.
#[derive(Default)]
struct InFlight {
    slots: Vec<Slot>,
    /// The first free slot, if any; free slots are chained (no allocation of their own, so
    /// freeing one never reallocates).
    free: Option<usize>,
    len: usize,
}

enum Slot {
    Held(u64, Stored),
    Free(Option<usize>),
}

impl InFlight {
    /// Keeps `stored`, held by consumer `holder`; returns its slot.
    fn insert(&mut self, holder: u64, stored: Stored) -> usize {
        self.len += 1;
        if let Some(slot) = self.free {
            if let Some(entry) = self.slots.get_mut(slot) {
                if let Slot::Free(next) = *entry {
                    self.free = next;
                    *entry = Slot::Held(holder, stored);
                    return slot;
                }
            }
        }
        self.slots.push(Slot::Held(holder, stored));
        self.slots.len() - 1
    }

    /// Takes out the delivery in `slot`, if consumer `holder` holds it.
    fn take(&mut self, slot: usize, holder: u64) -> Option<Stored> {
        let entry = self.slots.get_mut(slot)?;
        if !matches!(entry, Slot::Held(h, _) if *h == holder) {
            return None;
        }
        let Slot::Held(_, stored) = std::mem::replace(entry, Slot::Free(self.free)) else {
            return None;
        };
        self.free = Some(slot);
        self.len -= 1;
        Some(stored)
    }

    /// Takes out every delivery consumer `holder` holds.
    fn take_all(&mut self, holder: u64) -> Vec<Stored> {
        let mut taken = Vec::new();
        for (slot, entry) in self.slots.iter_mut().enumerate() {
            if matches!(entry, Slot::Held(h, _) if *h == holder) {
                if let Slot::Held(_, stored) = std::mem::replace(entry, Slot::Free(self.free)) {
                    taken.push(stored);
                    self.free = Some(slot);
                }
            }
        }
        self.len -= taken.len();
        taken
    }

    fn len(&self) -> usize {
        self.len
    }
}

#[derive(Clone)]
struct Stored {
    id: u64,
    body: Bytes,
    headers: Headers,
    key: Option<u64>,
    deliveries: u32,
}

/// A rejected message, kept for inspection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetter {
    /// The id `publish_traced` returned.
    pub id: u64,
    /// The consumer group that rejected it ("" is the default group).
    pub group: String,
    /// The payload.
    pub body: Bytes,
    /// The headers.
    pub headers: Headers,
    /// How many times it had been delivered.
    pub deliveries: u32,
}

/// What a topic holds right now.
#[derive(Clone, Debug, Default)]
pub struct TopicSnapshot {
    /// One entry per consumer group.
    pub groups: Vec<GroupSnapshot>,
    /// Rejected messages, oldest first.
    pub dead_letters: Vec<DeadLetter>,
}

/// What one consumer group of a topic holds right now.
#[derive(Clone, Debug, Default)]
pub struct GroupSnapshot {
    /// The group's name ("" is the default group).
    pub name: String,
    /// Payloads waiting for delivery, in delivery order (delayed ones last).
    pub waiting: Vec<Bytes>,
    /// Messages delivered and not settled yet.
    pub in_flight: usize,
}

impl TopicSnapshot {
    /// The group named `name` ("" for the default group).
    pub fn group(&self, name: &str) -> Option<&GroupSnapshot> {
        self.groups.iter().find(|g| g.name == name)
    }
}

/// Deliveries and settlements of each message, recorded while a test harness is attached.
#[derive(Default)]
struct Recorder {
    enabled: AtomicBool,
    traces: Mutex<HashMap<u64, Trace>>,
    published: Mutex<Vec<Outgoing>>,
    changed: Notify,
}

/// What happened to one published message so far.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Trace {
    /// How many times it was delivered.
    pub deliveries: u32,
    /// Its settlements, in order (a nacked message has several).
    pub settlements: Vec<Settled>,
}

impl Trace {
    /// The last settlement.
    pub fn last(&self) -> Option<Settled> {
        self.settlements.last().copied()
    }

    /// Whether the message is done with: acked or rejected.
    pub fn is_final(&self) -> bool {
        matches!(self.last(), Some(Settled::Acked | Settled::Rejected))
    }

    /// How many times it was delivered again after the first delivery.
    pub fn redeliveries(&self) -> u32 {
        self.deliveries.saturating_sub(1)
    }
}

impl Recorder {
    fn record(&self, id: u64, f: impl FnOnce(&mut Trace)) {
        if !self.enabled.load(Ordering::Relaxed) {
            return;
        }
        f(lock(&self.traces).entry(id).or_default());
        self.changed.notify_waiters();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks cannot leave the data half-updated in a way
    // that matters more than stopping the broker would, so keep going.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl MemoryBroker {
    /// A new broker with no topics.
    pub fn new() -> Self {
        Self::default()
    }

    fn topic(&self, name: &str) -> Arc<Topic> {
        lock(&self.shared.topics)
            .entry(name.to_owned())
            .or_insert_with(|| {
                Arc::new(Topic {
                    name: name.into(),
                    state: Mutex::new(TopicState::default()),
                    ready: Notify::new(),
                    recorder: self.shared.recorder.clone(),
                })
            })
            .clone()
    }

    /// Publishes and returns the message's id (for [`MemoryBroker::trace`]).
    pub fn publish_traced(&self, message: Outgoing) -> u64 {
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let recorder = &self.shared.recorder;
        if recorder.enabled.load(Ordering::Relaxed) {
            lock(&recorder.published).push(message.clone());
            recorder.changed.notify_waiters();
        }
        if message.destination.starts_with(INBOX_PREFIX) {
            // A reply: to the request waiting for it, or dropped if it gave up.
            match lock(&self.shared.inboxes).remove(&message.destination) {
                Some(waiting) => drop(waiting.send(message)),
                None => tracing::debug!(
                    reply_to = message.destination,
                    "a reply arrived after its request timed out; dropped"
                ),
            }
            return id;
        }
        let topic = self.topic(&message.destination);
        let key = message.key.as_ref().map(|k| {
            let mut h = DefaultHasher::new();
            k.hash(&mut h);
            h.finish()
        });
        let body = message.body;
        // Turn a Vec-backed payload into a shared one now, so delivering it is a reference-count
        // bump rather than an allocation.
        drop(body.clone());
        let stored = Stored {
            id,
            body,
            headers: message.headers,
            key,
            deliveries: 0,
        };
        self.shared.recorder.record(id, |_| {});
        {
            let mut state = lock(&topic.state);
            if state.groups.is_empty() {
                state.group_index("");
            }
            for group in &mut state.groups {
                group.ready.push_back(stored.clone());
            }
        }
        topic.ready.notify_waiters();
        id
    }

    /// What `topic` holds right now: waiting and in-flight messages per group, dead letters.
    pub fn snapshot(&self, topic: &str) -> TopicSnapshot {
        let topic = self.topic(topic);
        let state = lock(&topic.state);
        let mut groups: Vec<_> = state
            .groups
            .iter()
            .map(|g| GroupSnapshot {
                name: g.name.clone(),
                waiting: g
                    .ready
                    .iter()
                    .chain(g.delayed.iter().map(|(_, s)| s))
                    .map(|s| s.body.clone())
                    .collect(),
                in_flight: g.in_flight.len(),
            })
            .collect();
        groups.sort_by(|a, b| a.name.cmp(&b.name));
        TopicSnapshot {
            groups,
            dead_letters: state.dead_letters.clone(),
        }
    }

    /// Ends every consumer of `topic` for good, as a broker failure would (a queue deleted under
    /// it): each reports `reason` as an error once, then ends. To test what an App does when a
    /// subscriber stops consuming: [`App::run`](crate::App::run) returns
    /// [`AppError::SubscriberEnded`](crate::AppError::SubscriberEnded) (or, with
    /// [`App::restart_ended`](crate::App::restart_ended), subscribes it again: consumers made
    /// after this call are not ended).
    pub fn end_consumers(&self, topic: &str, reason: impl Into<String>) {
        let topic = self.topic(topic);
        let below = self.shared.next_consumer.load(Ordering::Relaxed);
        lock(&topic.state).ended = Some((below, reason.into()));
        topic.ready.notify_waiters();
    }

    /// Rejected messages of `topic`, oldest first.
    pub fn dead_letters(&self, topic: &str) -> Vec<DeadLetter> {
        self.snapshot(topic).dead_letters
    }

    /// Every message published to `destination` while recording (see
    /// [`MemoryBroker::record`]), oldest first: what handlers' outputs, replies and
    /// [`Publisher`](crate::Publisher)s sent, with their headers.
    pub fn published(&self, destination: &str) -> Vec<Outgoing> {
        lock(&self.shared.recorder.published)
            .iter()
            .filter(|m| m.destination == destination)
            .cloned()
            .collect()
    }

    /// Waits until `n` messages have been published to `destination` while recording; returns
    /// them all.
    pub async fn wait_for_published(&self, destination: &str, n: usize) -> Vec<Outgoing> {
        loop {
            let changed = self.shared.recorder.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let published = self.published(destination);
            if published.len() >= n {
                return published;
            }
            changed.await;
        }
    }

    /// Starts recording deliveries and settlements per message (the test harness does this).
    pub fn record(&self) {
        self.shared.recorder.enabled.store(true, Ordering::Relaxed);
    }

    /// What happened to message `id` so far (recorded only after [`MemoryBroker::record`]).
    pub fn trace(&self, id: u64) -> Trace {
        lock(&self.shared.recorder.traces)
            .get(&id)
            .cloned()
            .unwrap_or_default()
    }

    /// Waits until `done` holds for the trace of message `id`; returns that trace.
    pub async fn wait_for_trace(&self, id: u64, mut done: impl FnMut(&Trace) -> bool) -> Trace {
        let recorder = &self.shared.recorder;
        loop {
            let changed = recorder.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let trace = self.trace(id);
            if done(&trace) {
                return trace;
            }
            changed.await;
        }
    }
}

impl std::fmt::Debug for MemoryBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBroker")
            .field("topics", &lock(&self.shared.topics).len())
            .finish()
    }
}

impl<K: Kind> Accepts<K> for MemoryBroker {}

impl Broker for MemoryBroker {
    type Consumer = MemoryConsumer;

    fn kind(&self) -> BrokerKind {
        BrokerKind::Memory
    }

    async fn connect(&self) -> Result<(), BrokerError> {
        Ok(())
    }

    async fn subscribe(&self, subscription: &Subscription) -> Result<MemoryConsumer, BrokerError> {
        let topic = self.topic(subscription.source_name());
        let group_id = subscription
            .options()
            .memory()
            .and_then(|o| o.group_id.as_deref());
        let group = lock(&topic.state).group_index(group_id.unwrap_or(""));
        let id = self.shared.next_consumer.fetch_add(1, Ordering::Relaxed);
        Ok(MemoryConsumer {
            settler: Arc::new(MemorySettler {
                topic: topic.clone(),
                group,
                consumer: id,
            }),
            topic,
            group,
            id,
            closed: false,
            ended: false,
        })
    }

    async fn publish_message(&self, message: Outgoing) -> Result<(), BrokerError> {
        self.publish_traced(message);
        Ok(())
    }

    /// The reply comes to an address of its own (`brook.inbox.<n>`), which only this request
    /// listens on; a reply after the timeout is dropped.
    async fn request_message(
        &self,
        mut message: Outgoing,
        timeout: Duration,
    ) -> Result<Message, BrokerError> {
        let n = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let inbox = format!("{INBOX_PREFIX}{n}");
        message.ensure_correlation_id();
        message.headers.insert(REPLY_TO, inbox.clone());
        let destination = message.destination.clone();
        let (tx, rx) = oneshot::channel();
        lock(&self.shared.inboxes).insert(inbox.clone(), tx);
        self.publish_traced(message);
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(reply)) => Ok(
                Message::detached(BrokerKind::Memory, inbox.into(), reply.body)
                    .with_headers(reply.headers),
            ),
            _ => {
                lock(&self.shared.inboxes).remove(&inbox);
                Err(BrokerError::RequestTimeout {
                    broker: BrokerKind::Memory,
                    destination,
                    timeout,
                })
            }
        }
    }

    async fn close(&self) -> Result<(), BrokerError> {
        Ok(())
    }
}

/// A consumer of one topic and group of the [`MemoryBroker`].
pub struct MemoryConsumer {
    topic: Arc<Topic>,
    /// Settles this consumer's deliveries, each told apart by its slot in the group's `in_flight`.
    settler: Arc<MemorySettler>,
    group: usize,
    id: u64,
    closed: bool,
    // It reported `TopicState::ended` already.
    ended: bool,
}

impl MemoryConsumer {
    fn take_ready(&self) -> Result<Message, Pending> {
        let mut state = lock(&self.topic.state);
        if let Some((below, reason)) = &state.ended {
            if self.id < *below {
                return Err(Pending::Ended(reason.clone()));
            }
        }
        let Some(group) = state.groups.get_mut(self.group) else {
            return Err(Pending::Until(None));
        };
        if !group.delayed.is_empty() {
            let now = Instant::now();
            let mut due: Vec<_> = Vec::new();
            group.delayed.retain(|(at, s)| {
                let is_due = *at <= now;
                if is_due {
                    due.push(s.clone());
                }
                !is_due
            });
            for s in due.into_iter().rev() {
                group.ready.push_front(s);
            }
        }
        let Some(mut stored) = group.ready.pop_front() else {
            return Err(Pending::Until(
                group.delayed.iter().map(|(at, _)| *at).min(),
            ));
        };
        stored.deliveries += 1;
        let (id, deliveries, key) = (stored.id, stored.deliveries, stored.key);
        let (body, headers) = (stored.body.clone(), stored.headers.clone());
        let slot = group.in_flight.insert(self.id, stored);
        drop(state);
        let mut msg = Message::shared(
            BrokerKind::Memory,
            self.topic.name.clone(),
            body,
            self.settler.clone(),
            slot as u64,
        )
        .with_headers(headers)
        .with_id(MessageId::Number(id))
        .with_delivery_count(deliveries);
        if let Some(key) = key {
            msg = msg.with_ordering_key(key);
        }
        self.topic
            .recorder
            .record(id, |t| t.deliveries = deliveries);
        Ok(msg)
    }

    fn requeue_unsettled(&mut self) {
        if self.closed {
            return;
        }
        self.closed = true;
        let mut state = lock(&self.topic.state);
        if let Some(group) = state.groups.get_mut(self.group) {
            let mut mine = group.in_flight.take_all(self.id);
            mine.sort_by_key(|s| std::cmp::Reverse(s.id));
            for s in mine {
                group.ready.push_front(s);
            }
        }
        drop(state);
        self.topic.ready.notify_waiters();
    }
}

impl Consumer for MemoryConsumer {
    async fn next(&mut self) -> Option<Result<Message, BrokerError>> {
        // The common case, a message is waiting, needs no waiter registration.
        if let Ok(msg) = self.take_ready() {
            return Some(Ok(msg));
        }
        loop {
            let notified = self.topic.ready.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.take_ready() {
                Ok(msg) => return Some(Ok(msg)),
                Err(Pending::Until(Some(at))) => {
                    tokio::select! {
                        _ = notified => {}
                        _ = tokio::time::sleep_until(at) => {}
                    }
                }
                Err(Pending::Until(None)) => notified.await,
                Err(Pending::Ended(reason)) => {
                    if self.ended {
                        return None;
                    }
                    self.ended = true;
                    return Some(Err(BrokerError::Invalid {
                        broker: BrokerKind::Memory,
                        message: reason,
                    }));
                }
            }
        }
    }

    async fn close(mut self) -> Result<(), BrokerError> {
        self.requeue_unsettled();
        Ok(())
    }
}

impl Drop for MemoryConsumer {
    fn drop(&mut self) {
        self.requeue_unsettled();
    }
}

/// The settler of one consumer's deliveries; the tag is the delivery's slot in `in_flight`.
struct MemorySettler {
    topic: Arc<Topic>,
    group: usize,
    consumer: u64,
}

impl SharedSettler for MemorySettler {
    fn settle(&self, slot: u64, settlement: Settlement) -> SettleFuture<'_> {
        let mut state = lock(&self.topic.state);
        let Some(group) = state.groups.get_mut(self.group) else {
            return SettleFuture::ready(Ok(()));
        };
        // Only the consumer that holds the delivery may settle it: after that consumer closed,
        // the message was handed back and a late settlement must not touch the new delivery.
        let held = usize::try_from(slot)
            .ok()
            .and_then(|slot| group.in_flight.take(slot, self.consumer));
        let Some(stored) = held else {
            return SettleFuture::ready(Err(not_held()));
        };
        let id = stored.id;
        // An ack only drops the stored copy; the rest is kept out of the common path.
        let notify =
            settlement != Settlement::Ack && state.put_back(self.group, stored, settlement);
        drop(state);
        if notify {
            self.topic.ready.notify_waiters();
        }
        self.topic
            .recorder
            .record(id, |t| t.settlements.push(settlement.kind()));
        SettleFuture::ready(Ok(()))
    }
}

#[cold]
fn not_held() -> BrokerError {
    BrokerError::Invalid {
        broker: BrokerKind::Memory,
        message:
            "the message is no longer held by this consumer; it was handed back for redelivery"
                .to_owned(),
    }
}

impl TopicState {
    /// Where a nacked or rejected message goes; whether consumers should look again.
    #[cold]
    fn put_back(&mut self, group: usize, stored: Stored, settlement: Settlement) -> bool {
        let Some(g) = self.groups.get_mut(group) else {
            return false;
        };
        match settlement {
            Settlement::Ack => false,
            Settlement::Nack { delay: Some(delay) } if !delay.is_zero() => {
                g.delayed.push((Instant::now() + delay, stored));
                true
            }
            Settlement::Nack { .. } => {
                g.ready.push_front(stored);
                true
            }
            Settlement::Reject => {
                self.dead_letters.push(DeadLetter {
                    id: stored.id,
                    group: g.name.clone(),
                    body: stored.body,
                    headers: stored.headers,
                    deliveries: stored.deliveries,
                });
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::subscription::Subscription;

    /// A subscription to topic `t`, default group.
    fn on_topic_t() -> Subscription {
        Subscription::new(BrokerKind::Memory, "h")
            .arg("topic", "t")
            .build()
            .unwrap()
    }

    #[tokio::test]
    async fn a_late_settlement_does_not_touch_the_delivery_that_reused_its_slot() {
        let broker = MemoryBroker::new();
        let sub = on_topic_t();
        let mut first = broker.subscribe(&sub).await.unwrap();
        broker
            .publish_message(Outgoing::new("t", "m"))
            .await
            .unwrap();
        let stale = first.next().await.unwrap().unwrap();
        // The consumer closes while holding it: handed back, and the slot is free again.
        first.close().await.unwrap();
        let mut second = broker.subscribe(&sub).await.unwrap();
        let again = second.next().await.unwrap().unwrap();
        assert_eq!(again.delivery_count(), Some(2));
        assert!(
            stale.ack().await.is_err(),
            "the first consumer no longer holds it"
        );
        assert_eq!(broker.snapshot("t").group("").unwrap().in_flight, 1);
        again.ack().await.unwrap();
        let snapshot = broker.snapshot("t");
        let group = snapshot.group("").unwrap();
        assert_eq!((group.in_flight, group.waiting.len()), (0, 0));
    }

    #[tokio::test]
    async fn freed_slots_are_reused_and_each_delivery_settles_its_own_message() {
        let broker = MemoryBroker::new();
        let sub = on_topic_t();
        let mut consumer = broker.subscribe(&sub).await.unwrap();
        for body in ["a", "b", "c"] {
            broker
                .publish_message(Outgoing::new("t", body))
                .await
                .unwrap();
        }
        let a = consumer.next().await.unwrap().unwrap();
        let b = consumer.next().await.unwrap().unwrap();
        b.reject().await.unwrap();
        // `c` takes the slot `b` left.
        let c = consumer.next().await.unwrap().unwrap();
        a.nack().await.unwrap();
        c.ack().await.unwrap();
        let a_again = consumer.next().await.unwrap().unwrap();
        assert_eq!(
            (a_again.body().as_ref(), a_again.delivery_count()),
            (&b"a"[..], Some(2))
        );
        a_again.ack().await.unwrap();
        let snapshot = broker.snapshot("t");
        let group = snapshot.group("").unwrap();
        assert_eq!((group.in_flight, group.waiting.len()), (0, 0));
        let dead: Vec<_> = snapshot
            .dead_letters
            .iter()
            .map(|d| d.body.clone())
            .collect();
        assert_eq!(dead, vec![Bytes::from_static(b"b")]);
    }
}
