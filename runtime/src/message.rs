//! A delivered message and the one place it is settled.
//!
//! A broker crate turns each delivery into a [`Message`] carrying a [`Settler`]: the broker's
//! few lines that map "ack / nack / reject" onto its protocol. Everything about *when* to settle
//! (policies, interrupts, settle-once, max deliveries) lives in the engine, never in a broker.

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use brook_caps::BrokerKind;
use bytes::Bytes;

use crate::error::BrokerError;
use crate::headers::{Headers, CONTENT_TYPE, CORRELATION_ID, REPLY_TO};

/// What to do with a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settlement {
    /// Processed: remove it (commit, basic.ack, +ACK, XACK, PUBACK).
    Ack,
    /// Not processed: deliver it again, after `delay` where the broker supports one.
    Nack {
        /// Wait this long before redelivering (JetStream, in-memory broker).
        delay: Option<Duration>,
    },
    /// Never process it: remove it, dead-lettering it where the broker has a place for it.
    Reject,
}

impl Settlement {
    /// `Nack` with no delay.
    pub const NACK: Settlement = Settlement::Nack { delay: None };

    /// What the message was settled as, without the delay.
    pub const fn kind(self) -> Settled {
        match self {
            Settlement::Ack => Settled::Acked,
            Settlement::Nack { .. } => Settled::Nacked,
            Settlement::Reject => Settled::Rejected,
        }
    }
}

/// What a message was settled as.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Settled {
    /// Acknowledged.
    Acked,
    /// Negatively acknowledged (to be redelivered).
    Nacked,
    /// Rejected (removed or dead-lettered).
    Rejected,
}

impl Settled {
    /// `acked`, `nacked` or `rejected`: the value of the `outcome` tracing field.
    pub const fn as_str(self) -> &'static str {
        match self {
            Settled::Acked => "acked",
            Settled::Nacked => "nacked",
            Settled::Rejected => "rejected",
        }
    }

    const fn code(self) -> u8 {
        match self {
            Settled::Acked => 1,
            Settled::Nacked => 2,
            Settled::Rejected => 3,
        }
    }

    const fn from_code(code: u8) -> Option<Settled> {
        match code {
            1 => Some(Settled::Acked),
            2 => Some(Settled::Nacked),
            3 => Some(Settled::Rejected),
            _ => None,
        }
    }
}

impl fmt::Display for Settled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The result of asking to settle a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SettleReport {
    /// This call settled the message.
    Settled(Settled),
    /// The message had already been settled (the first settlement wins); nothing was sent.
    AlreadySettled(Settled),
}

/// The future a [`Settler`] returns: ready at once for brokers whose settlement is a local
/// operation (in-memory, Kafka's offset store), boxed for those that talk to the server.
pub struct SettleFuture<'a>(SettleInner<'a>);

enum SettleInner<'a> {
    Ready(Option<Result<(), BrokerError>>),
    Pending(Pin<Box<dyn Future<Output = Result<(), BrokerError>> + Send + 'a>>),
}

impl<'a> SettleFuture<'a> {
    /// Already done.
    pub fn ready(result: Result<(), BrokerError>) -> Self {
        SettleFuture(SettleInner::Ready(Some(result)))
    }

    /// Done when `future` is.
    pub fn new(future: impl Future<Output = Result<(), BrokerError>> + Send + 'a) -> Self {
        SettleFuture(SettleInner::Pending(Box::pin(future)))
    }
}

impl Future for SettleFuture<'_> {
    type Output = Result<(), BrokerError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        match &mut self.0 {
            SettleInner::Ready(result) => match result.take() {
                Some(r) => Poll::Ready(r),
                None => Poll::Pending, // polled after completion: never resolves again
            },
            SettleInner::Pending(fut) => fut.as_mut().poll(cx),
        }
    }
}

/// A settlement under way: see [`Message::start_settle`].
pub(crate) enum Settling<'a> {
    /// Done already.
    Done(Result<SettleReport, BrokerError>),
    /// Settled as this once the broker's future completes.
    Pending(Settled, SettleFuture<'a>),
}

impl Settling<'_> {
    /// Waits for the broker, if there is anything to wait for.
    pub(crate) async fn finish(self) -> Result<SettleReport, BrokerError> {
        match self {
            Settling::Done(result) => result,
            Settling::Pending(kind, sent) => sent.await.map(|()| SettleReport::Settled(kind)),
        }
    }
}

/// The broker side of one delivery: how to settle it on the wire.
///
/// Implemented by broker crates; it only maps a [`Settlement`] to protocol calls. It is called
/// at most once per message (the [`Message`] enforces settle-once).
pub trait Settler: Send + Sync + 'static {
    /// Apply `settlement` on the broker.
    fn settle(&self, settlement: Settlement) -> SettleFuture<'_>;

    /// Apply `settlement` without making the caller wait for the broker's confirmation: the
    /// engine's hook for the settlements it makes itself once the handler has returned (the
    /// policy's ack / nack / reject after `Ok` or `Err`, interrupts, decode-failure and
    /// `max_deliveries` rejects).
    ///
    /// Why it exists: awaiting each settlement's round trip before taking the next message
    /// makes a consumer as slow as its broker's latency. A broker crate whose protocol can
    /// settle many messages at once (Redis: one `XACK key group id1 id2 ...`; RabbitMQ: one
    /// `basic.ack multiple = true`) overrides this to
    /// put the settlement in its consumer's settlement pipeline and return at once; the pipeline
    /// then sends it promptly (batching what accumulates meanwhile), logs a failure (the message
    /// stays unsettled on the broker and is redelivered, as when [`Settler::settle`] fails), and
    /// is flushed when the consumer closes, so a graceful stop loses nothing. An `Err` here
    /// means the settlement could not even be handed over.
    ///
    /// A handler's own `msg.ack().await` (and nack, reject) never comes here: it keeps meaning
    /// "the broker has it". Like `settle`, this is called at most once per message, and only
    /// after the handler finished. The default sends it as [`Settler::settle`] does.
    fn settle_later(&self, settlement: Settlement) -> SettleFuture<'_> {
        self.settle(settlement)
    }

    /// Tell the broker the message is still being worked on (JetStream `+WPI`); a no-op where
    /// the broker has no such thing.
    fn in_progress(&self) -> SettleFuture<'_> {
        SettleFuture::ready(Ok(()))
    }

    /// The broker's own delivery object, for broker-specific handler arguments.
    fn raw(&self) -> Option<&(dyn Any + Send + Sync)> {
        None
    }

    /// Whether the broker has taken this delivery back since handing it out, so that it will
    /// be delivered again (a Kafka seek back after a nack of an earlier message of the same
    /// partition): the engine then skips it without running the handler or settling it,
    /// instead of handling it twice. The default: never.
    fn superseded(&self) -> bool {
        false
    }
}

/// A settler shared by all the deliveries of one consumer, told which delivery by a tag: the
/// in-memory broker's, so that handing out a message allocates no settler of its own.
pub(crate) trait SharedSettler: Send + Sync + 'static {
    /// Apply `settlement` to the delivery `tag`.
    fn settle(&self, tag: u64, settlement: Settlement) -> SettleFuture<'_>;
}

/// How a [`Message`] reaches its broker.
enum SettlerSlot {
    /// A broker crate's settler, one per delivery.
    Boxed(Box<dyn Settler>),
    /// A consumer-wide settler and the delivery's tag.
    Shared(Arc<dyn SharedSettler>, u64),
}

impl SettlerSlot {
    fn settle(&self, settlement: Settlement) -> SettleFuture<'_> {
        match self {
            SettlerSlot::Boxed(s) => s.settle(settlement),
            SettlerSlot::Shared(s, tag) => s.settle(*tag, settlement),
        }
    }

    fn settle_later(&self, settlement: Settlement) -> SettleFuture<'_> {
        match self {
            SettlerSlot::Boxed(s) => s.settle_later(settlement),
            SettlerSlot::Shared(s, tag) => s.settle(*tag, settlement),
        }
    }

    fn in_progress(&self) -> SettleFuture<'_> {
        match self {
            SettlerSlot::Boxed(s) => s.in_progress(),
            SettlerSlot::Shared(..) => SettleFuture::ready(Ok(())),
        }
    }

    fn raw(&self) -> Option<&(dyn Any + Send + Sync)> {
        match self {
            SettlerSlot::Boxed(s) => s.raw(),
            SettlerSlot::Shared(..) => None,
        }
    }

    #[inline]
    fn superseded(&self) -> bool {
        match self {
            SettlerSlot::Boxed(s) => s.superseded(),
            SettlerSlot::Shared(..) => false,
        }
    }
}

/// The settler of a [`Message::detached`].
struct Detached;

impl Settler for Detached {
    fn settle(&self, _: Settlement) -> SettleFuture<'_> {
        SettleFuture::ready(Ok(()))
    }
}

/// An identifier of a message, as the broker names it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum MessageId {
    /// A number (in-memory id, delivery tag, offset, ...).
    Number(u64),
    /// A text id (stream entry id, message-id property, ...).
    Text(Arc<str>),
    /// The broker gives none.
    None,
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MessageId::Number(n) => write!(f, "{n}"),
            MessageId::Text(t) => f.write_str(t),
            MessageId::None => f.write_str("-"),
        }
    }
}

/// A delivered message: payload, headers, where it came from, and the means to settle it.
///
/// Handlers get it as `msg: &Message`. Under [`AckPolicy::Manual`](crate::AckPolicy::Manual)
/// the handler settles it; under every policy a handler may settle it early, and the first
/// settlement wins:
///
/// ```
/// # async fn example(msg: &brook_runtime::Message) -> Result<(), brook_runtime::BrokerError> {
/// use brook_runtime::{SettleReport, Settled};
/// assert_eq!(msg.ack().await?, SettleReport::Settled(Settled::Acked));
/// // Later calls do nothing and say so.
/// assert_eq!(msg.nack().await?, SettleReport::AlreadySettled(Settled::Acked));
/// # Ok(()) }
/// ```
pub struct Message {
    broker: BrokerKind,
    topic: Arc<str>,
    body: Bytes,
    headers: Headers,
    id: MessageId,
    // `delivery_count` as a number and a flag rather than an `Option<u32>`: the flag packs with
    // the other small fields, which keeps `Message` (moved into every engine future) small.
    delivery_count: u32,
    counted: bool,
    ordering_key: Option<u64>,
    settled: AtomicU8,
    settler: SettlerSlot,
}

impl Message {
    /// A message from `broker`, read from `topic`, settled through `settler`.
    pub fn new(broker: BrokerKind, topic: Arc<str>, body: Bytes, settler: impl Settler) -> Message {
        Message::with_settler(broker, topic, body, SettlerSlot::Boxed(Box::new(settler)))
    }

    /// A message settled through the consumer-wide `settler`, as delivery `tag`.
    pub(crate) fn shared(
        broker: BrokerKind,
        topic: Arc<str>,
        body: Bytes,
        settler: Arc<dyn SharedSettler>,
        tag: u64,
    ) -> Message {
        Message::with_settler(broker, topic, body, SettlerSlot::Shared(settler, tag))
    }

    fn with_settler(
        broker: BrokerKind,
        topic: Arc<str>,
        body: Bytes,
        settler: SettlerSlot,
    ) -> Message {
        Message {
            broker,
            topic,
            body,
            headers: Headers::new(),
            id: MessageId::None,
            delivery_count: 0,
            counted: false,
            ordering_key: None,
            settled: AtomicU8::new(0),
            settler,
        }
    }

    /// A message with nothing to settle: a reply to a request, which no consumer group holds.
    /// Settling it does nothing.
    pub fn detached(broker: BrokerKind, topic: Arc<str>, body: Bytes) -> Message {
        Message::new(broker, topic, body, Detached)
    }

    /// Sets the headers.
    pub fn with_headers(mut self, headers: Headers) -> Self {
        self.headers = headers;
        self
    }

    /// Sets the broker's id of the message.
    pub fn with_id(mut self, id: MessageId) -> Self {
        self.id = id;
        self
    }

    /// Sets how many times the message has been delivered, this delivery included (1 = first),
    /// where the broker knows.
    pub fn with_delivery_count(mut self, count: u32) -> Self {
        self.delivery_count = count;
        self.counted = true;
        self
    }

    /// Messages with the same key are handled one after another, in order, even when the
    /// subscriber handles several messages at once (Kafka: the partition).
    pub fn with_ordering_key(mut self, key: u64) -> Self {
        self.ordering_key = Some(key);
        self
    }

    /// The broker the message came from.
    pub fn broker(&self) -> BrokerKind {
        self.broker
    }

    /// The topic / queue / subject / channel / stream it was read from.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The raw payload.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// The headers.
    pub fn headers(&self) -> &Headers {
        &self.headers
    }

    /// The broker's id of the message.
    pub fn id(&self) -> &MessageId {
        &self.id
    }

    /// How many times the message has been delivered, this delivery included, where the broker
    /// knows (`None`: it does not; `max_deliveries` cannot apply then).
    #[inline]
    pub fn delivery_count(&self) -> Option<u32> {
        self.counted.then_some(self.delivery_count)
    }

    /// The ordering key (see [`Message::with_ordering_key`]).
    pub fn ordering_key(&self) -> Option<u64> {
        self.ordering_key
    }

    /// Whether the broker took this delivery back after handing it out (see
    /// [`Settler::superseded`]).
    #[inline]
    pub fn superseded(&self) -> bool {
        self.settler.superseded()
    }

    /// The `content-type` header; an empty one counts as none (FastStream sends
    /// `content-type: ""` for raw bytes on Kafka and NATS and reads it as unset, JSON first).
    #[inline]
    pub fn content_type(&self) -> Option<&str> {
        self.headers
            .get(CONTENT_TYPE)
            .filter(|ct| !ct.trim().is_empty())
    }

    /// The `correlation_id` header.
    pub fn correlation_id(&self) -> Option<&str> {
        self.headers.get(CORRELATION_ID)
    }

    /// The `reply_to` header.
    pub fn reply_to(&self) -> Option<&str> {
        self.headers.get(REPLY_TO)
    }

    /// What the message has been settled as so far, if anything.
    #[inline]
    pub fn settled(&self) -> Option<Settled> {
        Settled::from_code(self.settled.load(Ordering::Acquire))
    }

    /// Acknowledge: the message is processed.
    pub async fn ack(&self) -> Result<SettleReport, BrokerError> {
        self.settle(Settlement::Ack).await
    }

    /// Negatively acknowledge: deliver the message again.
    pub async fn nack(&self) -> Result<SettleReport, BrokerError> {
        self.settle(Settlement::NACK).await
    }

    /// Negatively acknowledge, asking the broker to wait `delay` before redelivering (where it
    /// can; elsewhere the delay is ignored).
    pub async fn nack_after(&self, delay: Duration) -> Result<SettleReport, BrokerError> {
        self.settle(Settlement::Nack { delay: Some(delay) }).await
    }

    /// Reject: never deliver it again (dead-letter it where the broker has a place for it).
    pub async fn reject(&self) -> Result<SettleReport, BrokerError> {
        self.settle(Settlement::Reject).await
    }

    /// Tell the broker the handler is still working (JetStream `+WPI`), so a long handler is not
    /// taken for a dead one. A no-op on brokers without such a signal.
    pub async fn in_progress(&self) -> Result<(), BrokerError> {
        self.settler.in_progress().await
    }

    /// Settle the message, unless it already was: the first settlement wins, and later calls
    /// report [`SettleReport::AlreadySettled`] without talking to the broker.
    pub async fn settle(&self, settlement: Settlement) -> Result<SettleReport, BrokerError> {
        self.start_settle(settlement, false).finish().await
    }

    /// [`Message::settle`] through [`Settler::settle_later`]: the engine's settlements after the
    /// handler returned, handed to the broker crate's settlement pipeline where it has one.
    /// Settle-once holds as for `settle`: both record the settlement here first.
    #[cfg(test)]
    pub(crate) async fn settle_later(
        &self,
        settlement: Settlement,
    ) -> Result<SettleReport, BrokerError> {
        self.start_settle(settlement, true).finish().await
    }

    /// Starts settling: through [`Settler::settle_later`] when `later`, else
    /// [`Settler::settle`]. The result is there at once when the message was settled before or
    /// the broker's settlement is a local operation, so the engine's common path awaits nothing.
    pub(crate) fn start_settle(&self, settlement: Settlement, later: bool) -> Settling<'_> {
        let kind = match self.claim(settlement) {
            Ok(kind) => kind,
            Err(earlier) => return Settling::Done(Ok(earlier)),
        };
        let sent = match later {
            true => self.settler.settle_later(settlement),
            false => self.settler.settle(settlement),
        };
        match sent.0 {
            SettleInner::Ready(Some(result)) => {
                Settling::Done(result.map(|()| SettleReport::Settled(kind)))
            }
            inner => Settling::Pending(kind, SettleFuture(inner)),
        }
    }

    /// Records `settlement` as the message's one settlement: `Ok` with its kind if it is the
    /// first, else `Err` with the report of the earlier one.
    fn claim(&self, settlement: Settlement) -> Result<Settled, SettleReport> {
        let kind = settlement.kind();
        match self
            .settled
            .compare_exchange(0, kind.code(), Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => Ok(kind),
            // `previous` is never 0 here: only a successful exchange writes a non-zero code.
            Err(previous) => Err(SettleReport::AlreadySettled(
                Settled::from_code(previous).unwrap_or(kind),
            )),
        }
    }

    /// The broker's own delivery object, if it is a `T` (used by broker-specific extractors).
    pub fn raw<T: Any>(&self) -> Option<&T> {
        self.settler.raw().and_then(|raw| raw.downcast_ref::<T>())
    }
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("broker", &self.broker)
            .field("topic", &self.topic)
            .field("id", &self.id)
            .field("delivery_count", &self.delivery_count())
            .field("headers", &self.headers)
            .field("body_len", &self.body.len())
            .field("settled", &self.settled())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    struct Recorder(Arc<Mutex<Vec<Settlement>>>);

    impl Settler for Recorder {
        fn settle(&self, settlement: Settlement) -> SettleFuture<'_> {
            self.0.lock().unwrap().push(settlement);
            SettleFuture::ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn first_settlement_wins_and_later_ones_reach_no_broker() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let msg = Message::new(
            BrokerKind::Memory,
            "t".into(),
            Bytes::new(),
            Recorder(seen.clone()),
        );
        assert_eq!(
            msg.reject().await.unwrap(),
            SettleReport::Settled(Settled::Rejected)
        );
        assert_eq!(
            msg.ack().await.unwrap(),
            SettleReport::AlreadySettled(Settled::Rejected)
        );
        assert_eq!(
            msg.nack().await.unwrap(),
            SettleReport::AlreadySettled(Settled::Rejected)
        );
        assert_eq!(*seen.lock().unwrap(), vec![Settlement::Reject]);
        assert_eq!(msg.settled(), Some(Settled::Rejected));
    }

    #[tokio::test]
    async fn settle_later_defaults_to_settle_and_is_settled_once_with_it() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let msg = Message::new(
            BrokerKind::Memory,
            "t".into(),
            Bytes::new(),
            Recorder(seen.clone()),
        );
        assert_eq!(
            msg.settle_later(Settlement::Ack).await.unwrap(),
            SettleReport::Settled(Settled::Acked)
        );
        assert_eq!(
            msg.reject().await.unwrap(),
            SettleReport::AlreadySettled(Settled::Acked)
        );
        assert_eq!(
            msg.settle_later(Settlement::NACK).await.unwrap(),
            SettleReport::AlreadySettled(Settled::Acked)
        );
        assert_eq!(*seen.lock().unwrap(), vec![Settlement::Ack]);
    }
}
