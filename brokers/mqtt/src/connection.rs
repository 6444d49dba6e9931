//! One MQTT connection, shared by every consumer and publisher of an [`MqttBroker`].
//!
//! rumqttc splits a connection into an `AsyncClient` (a handle that queues requests) and an
//! `EventLoop` that must be polled for anything to happen. A *driver* task owns the event loop:
//! it routes incoming PUBLISH packets to consumers (by topic filter), records their arrival
//! order for the PUBACK ordering rule (see [`crate::acks`]), matches PUBACK/PUBCOMP to waiting
//! publishers and SUBACK to waiting subscribers, writes released acks in batches (see
//! [`crate::acks::Outbox`]), and reconnects after an error (rumqttc reconnects when polled
//! again).
//!
//! A nack cannot be expressed in MQTT (a broker resends an unacknowledged message only when the
//! client's session resumes), so brook redelivers a nacked message itself: its PUBACK stays
//! withheld, the consumer hands it to the handler again after a delay (see `consumer`), and the
//! connection is left alone. The broker resends it only if the connection is lost meanwhile or
//! the process stops with it unsettled.
//!
//! **Sessions.** After a reconnect the CONNACK says whether the broker resumed the session.
//! Messages brook received on the lost connection and still holds (waiting for a handler, being
//! handled, waiting for a redelivery) then have a [`Fate`]: on a resumed session the broker
//! resends every one of them (same packet ids, DUP flag), so the copies brook holds are dropped
//! and their settlements send nothing; on a new session (the broker restarted without
//! persistence, the session expired or was taken over by a clean-session client) nobody will
//! resend them, so brook still hands them to their handlers, and their acks are not sent (their
//! packet ids mean nothing in the new session).
//!
//! **Delivery counts.** MQTT carries no delivery count, only the DUP flag, so brook counts: a
//! local redelivery carries its count with it; a message the broker resends after a resumed
//! session is recognised by its packet id (unique among the session's unacknowledged messages,
//! and kept on a resend, as MQTT requires), the DUP flag and a fingerprint of its topic and
//! payload, and continues the count brook recorded for it when it was nacked or redelivered.
//! Any other delivery counts as the first (a resend of a message that was never nacked, too:
//! brook cannot tell whether a handler saw it). The counts live in the process: after a
//! restart they start at 1 again.
//!
//! [`MqttBroker`]: crate::MqttBroker

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use brook_runtime::Headers;
use brook_runtime::{BrokerError, BrokerKind};
use bytes::Bytes;
use rumqttc::QoS;
use tokio::sync::{mpsc, oneshot, watch, Notify};

use crate::acks::{AckQueue, AckTarget, Outbox, Settled, Ticket};
use crate::options::Config;
use crate::proto::{self, Client, Ev, Incoming, Loop};

/// How long a resume waits for our own publishes to be confirmed first.
const RESUME_GRACE: Duration = Duration::from_secs(2);

/// Most QoS 0 messages kept for a subscription that is not registered yet.
const MAX_PARKED: usize = 10_000;

/// How long a QoS 1/2 message may wait for a subscriber to register. Until then its slot in
/// the ack line blocks every later ack; a message no subscriber of this App wants (a
/// subscription left in the persistent session by an earlier run, say) would otherwise hold
/// every ack back for good, and Mosquitto stops sending after 20 unacknowledged messages.
const PARK_TIMEOUT: Duration = Duration::from_secs(10);

/// A PUBLISH received, on its way to a consumer.
pub(crate) struct Delivery {
    pub publish: Incoming,
    /// Set for QoS 1/2: where its ack waits in line.
    pub ticket: Option<Ticket>,
    /// How many times it has been delivered to a handler, this delivery included (1 = first).
    pub deliveries: u32,
}

/// What became of a message received on a connection, as far as brook can tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fate {
    /// It arrived on the current connection: its ack can be sent.
    Live,
    /// Its connection is gone and the broker resumed the session: the broker resends it.
    Resumed,
    /// Its connection is gone and so is its session: nobody resends it, and its packet id means
    /// nothing to the broker now. brook must handle it (without an ack) or it is lost.
    Lost,
    /// Its connection is gone and no reconnect has said yet whether the session survived.
    Unknown,
}

struct Route {
    id: u64,
    /// What was subscribed (`$share/group/...` included).
    filter: String,
    qos: QoS,
    tx: mpsc::UnboundedSender<Delivery>,
}

type Waiter = oneshot::Sender<Result<(), String>>;

/// The acks of the current connection (the ordering line and what it released) and what brook
/// knows about the broker session.
struct Acks {
    queue: AckQueue,
    outbox: Outbox,
    /// The broker session of the current connection: a new number each time a CONNACK says the
    /// broker had no session for us.
    session: u64,
    /// The generation of the last connection that got its CONNACK.
    connack_generation: u64,
    /// Whether the current connection is up (got its CONNACK and was not lost since).
    up: bool,
    /// The last connection that was up, as (generation, session), once it is lost: events
    /// rumqttc buffered from it are handed out after the next CONNACK.
    last_up: (u64, u64),
    /// Messages held unacknowledged when the last connection was lost.
    held_at_loss: usize,
    /// Delivery counts of the current session's nacked (or locally redelivered) messages:
    /// packet id → (fingerprint, deliveries so far). An entry ends when the message's ack is
    /// written or its packet id arrives on a new message. Empty unless something was nacked,
    /// so the other messages cost nothing here.
    counts: HashMap<u16, (u64, u32)>,
}

impl Acks {
    /// Counts a delivery from the broker: a resend (DUP) of a packet id with a recorded count
    /// continues it, anything else is the first delivery.
    fn count_delivery(&mut self, publish: &Incoming) -> u32 {
        if self.counts.is_empty() {
            return 1;
        }
        if !publish.dup {
            // A new message under this packet id: the old entry is stale.
            self.counts.remove(&publish.pkid);
            return 1;
        }
        match self.counts.get(&publish.pkid) {
            Some(&(f, n)) if f == fingerprint(&publish.topic, &publish.payload) => {
                let n = n.saturating_add(1);
                self.counts.insert(publish.pkid, (f, n));
                n
            }
            _ => 1,
        }
    }
}

/// Identifies a message's content for the delivery count (with its packet id): its topic, its
/// length and up to 64 bytes of its payload. Cheap, and only compared for a resend of a packet
/// id that is still unacknowledged, where the protocol already says it is the same message.
pub(crate) fn fingerprint(topic: &str, payload: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    topic.hash(&mut h);
    payload.len().hash(&mut h);
    payload[..payload.len().min(64)].hash(&mut h);
    h.finish()
}

#[derive(Default)]
struct Waiters {
    /// Publish requests queued in rumqttc, in order; they get their packet id when sent.
    queued_publishes: VecDeque<Waiter>,
    /// Publishes sent, waiting for PUBACK / PUBCOMP.
    inflight_publishes: HashMap<u16, Waiter>,
    /// Subscribe requests queued, in order (`None`: a resubscription by the driver).
    queued_subscribes: VecDeque<Option<Waiter>>,
    /// Subscribes sent, waiting for SUBACK.
    inflight_subscribes: HashMap<u16, Waiter>,
}

/// What the broker handle, consumers and settlers share with the driver.
pub(crate) struct Shared {
    pub config: Config,
    pub client: Client,
    acks: Mutex<Acks>,
    /// Mirrors the ack queue's generation, for lock-free staleness checks.
    generation: AtomicU64,
    routes: Mutex<Vec<Route>>,
    /// Deliveries no route wants (yet), with when they arrived.
    parked: Mutex<Vec<(std::time::Instant, Delivery)>>,
    next_route: AtomicU64,
    waiters: Mutex<Waiters>,
    /// Keeps publish requests and their waiters in the same order.
    publish_order: tokio::sync::Mutex<()>,
    resume_requested: AtomicBool,
    /// QoS 2 deliveries whose PUBREC was released and whose PUBREL/PUBCOMP has not happened.
    qos2_open: AtomicUsize,
    closing: AtomicBool,
    driver_done: AtomicBool,
    /// Got its CONNACK and not lost since (what `Acks::up` says, readable without its lock),
    /// for [`Broker::is_connected`](brook_runtime::Broker::is_connected).
    link_up: AtomicBool,
    stopped: Notify,
    /// Woken by the driver after every event while closing: `close` waits on it for the acks
    /// and QoS 2 handshakes to be done (instead of polling).
    progress: Notify,
    /// CONNACKs received (1 after `connect`); tests watch reconnects with it.
    pub(crate) connections: AtomicU64,
    /// Bumped at every CONNACK and when the driver stops: consumers holding a message whose
    /// [`Fate`] is unknown wait for it.
    connacks: watch::Sender<u64>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // These locks guard plain bookkeeping; a panic elsewhere must not stop the connection.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

pub(crate) fn qos_from(n: u8) -> QoS {
    match n {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

fn op_error(operation: &'static str, message: impl Into<String>) -> BrokerError {
    BrokerError::operation(BrokerKind::Mqtt, operation, message.into())
}

/// Connects (bounded by `config.connect_timeout`) and starts the driver.
pub(crate) async fn connect(config: Config) -> Result<Arc<Shared>, BrokerError> {
    let address = config.address();
    let connect_error = |source: String| BrokerError::Connect {
        broker: BrokerKind::Mqtt,
        address: address.clone(),
        source: source.into(),
    };
    let (client, mut eventloop) = proto::build(&config).map_err(connect_error)?;
    let first = tokio::time::timeout(config.connect_timeout, eventloop.poll())
        .await
        .map_err(|_| connect_error(format!("no CONNACK within {:?}", config.connect_timeout)))?;
    match first {
        Ok(Ev::ConnAck { session_present }) => {
            if !config.clean_session && !session_present {
                tracing::debug!(client_id = %config.client_id, "the broker had no session for this client id; starting a new one");
            }
        }
        Ok(_) => return Err(connect_error("expected CONNACK".into())),
        Err(e) => return Err(connect_error(e)),
    }
    let shared = Arc::new(Shared {
        config,
        client,
        acks: Mutex::new(Acks {
            queue: AckQueue::new(),
            outbox: Outbox::new(eventloop.writes_acks()),
            session: 0,
            connack_generation: 0,
            up: true,
            last_up: (0, 0),
            held_at_loss: 0,
            counts: HashMap::new(),
        }),
        generation: AtomicU64::new(0),
        routes: Mutex::new(Vec::new()),
        parked: Mutex::new(Vec::new()),
        next_route: AtomicU64::new(0),
        waiters: Mutex::new(Waiters::default()),
        publish_order: tokio::sync::Mutex::new(()),
        resume_requested: AtomicBool::new(false),
        qos2_open: AtomicUsize::new(0),
        closing: AtomicBool::new(false),
        driver_done: AtomicBool::new(false),
        link_up: AtomicBool::new(true),
        stopped: Notify::new(),
        progress: Notify::new(),
        connections: AtomicU64::new(1),
        connacks: watch::Sender::new(1),
    });
    tokio::spawn(expire_parked(Arc::downgrade(&shared)));
    tokio::spawn(drive(shared.clone(), eventloop));
    Ok(shared)
}

/// The driver: polls the event loop until the broker is closed.
async fn drive(shared: Arc<Shared>, mut eventloop: Loop) {
    let mut backoff = Duration::from_millis(50);
    let mut resume_since: Option<tokio::time::Instant> = None;
    let mut disconnect_sent: Option<tokio::time::Instant> = None;
    // Events rumqttc buffered from a lost connection and returns after the next CONNACK.
    let mut stale_events = 0usize;
    loop {
        if shared.resume_requested.swap(false, Ordering::AcqRel) && eventloop.is_connected() {
            let since = *resume_since.get_or_insert_with(tokio::time::Instant::now);
            // Our own publishes still awaiting PUBACK would be re-sent by rumqttc after the
            // reconnect (as new messages: duplicates), and buffered events belong to this
            // connection: let both settle first, for a bounded time.
            // Likewise an open QoS 2 handshake: the broker would resend its PUBREL, which
            // rumqttc (0.25) rejects on a new connection as unsolicited.
            // Released acks not written yet are worth sending first, too (fewer redeliveries).
            let busy = eventloop.busy()
                || shared.qos2_open.load(Ordering::Acquire) > 0
                || !lock(&shared.acks).outbox.is_empty();
            if busy && since.elapsed() < RESUME_GRACE {
                shared.resume_requested.store(true, Ordering::Release);
            } else {
                resume_since = None;
                tracing::debug!(client_id = %shared.config.client_id, "reconnecting: the connection cannot write acknowledgements");
                // New generation first: a settlement racing with the drop then sends nothing,
                // instead of slipping an old connection's ack into the request queue after
                // `clean()` drained it.
                shared.on_disconnected();
                // Drops the socket without DISCONNECT; the session stays on the broker.
                eventloop.clean();
            }
        }
        let event = match disconnect_sent {
            // After DISCONNECT, wait for the broker to close the socket: only then has it
            // processed everything sent before (a quick reconnect with the same client id
            // could otherwise take the session over with our last PUBACKs unread).
            Some(at) => match tokio::time::timeout_at(at, eventloop.poll()).await {
                Ok(event) => event,
                Err(_) => break,
            },
            None => eventloop.poll().await,
        };
        let stale = stale_events > 0 && !matches!(event, Ok(Ev::ConnAck { .. }) | Err(_));
        if stale {
            stale_events -= 1;
        }
        match event {
            Ok(Ev::Publish(publish)) if stale => shared.route_stale(publish),
            Ok(Ev::Publish(publish)) => shared.route(publish),
            Ok(Ev::Confirmed(pkid, result)) => shared.publish_confirmed(pkid, result),
            Ok(Ev::SubAck { pkid, refused }) => shared.subscribe_confirmed(pkid, refused),
            Ok(Ev::ConnAck { session_present }) => {
                backoff = Duration::from_millis(50);
                shared.connections.fetch_add(1, Ordering::Relaxed);
                stale_events = eventloop.buffered_events();
                shared.on_connected(session_present);
            }
            Ok(Ev::SentPublish(pkid)) => shared.publish_sent(pkid),
            Ok(Ev::SentSubscribe(pkid)) => shared.subscribe_sent(pkid),
            Ok(Ev::SentAck(pkid)) => {
                let mut acks = lock(&shared.acks);
                acks.outbox.sent(pkid);
                if !acks.counts.is_empty() {
                    acks.counts.remove(&pkid);
                }
            }
            Ok(Ev::SentPubComp) => {
                let _ = shared
                    .qos2_open
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
            }
            Ok(Ev::SentDisconnect) => {
                if shared.closing.load(Ordering::Acquire) {
                    disconnect_sent = Some(tokio::time::Instant::now() + Duration::from_secs(2));
                }
            }
            Ok(Ev::Other) => {}
            Err(error) => {
                if shared.closing.load(Ordering::Acquire) {
                    break;
                }
                shared.on_disconnected();
                tracing::warn!(broker = "mqtt", address = %shared.config.address(), %error, "MQTT connection lost; reconnecting in {backoff:?}");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shared.stopped.notified() => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        }
        // After DISCONNECT nothing more may be written.
        if disconnect_sent.is_none() {
            if let Err(error) = shared.write_released_acks(&mut eventloop).await {
                if shared.closing.load(Ordering::Acquire) {
                    break;
                }
                // The connection cannot be trusted any more: resume the session on a new one
                // (through the resume path, which first lets buffered events drain).
                tracing::warn!(broker = "mqtt", address = %shared.config.address(), %error, "could not write MQTT acknowledgements; reconnecting");
                shared.resume_requested.store(true, Ordering::Release);
            }
        }
        if shared.closing.load(Ordering::Acquire) {
            // An ack written or reported sent, a PUBCOMP sent: `close` looks again.
            shared.progress.notify_waiters();
        }
    }
    shared.on_disconnected();
    lock(&shared.routes).clear(); // ends every consumer
    let mut waiters = lock(&shared.waiters);
    for w in waiters.queued_publishes.drain(..) {
        let _ = w.send(Err("the MQTT connection was closed".into()));
    }
    for (_, w) in waiters.inflight_publishes.drain() {
        let _ = w.send(Err("the MQTT connection was closed".into()));
    }
    drop(waiters);
    shared.driver_done.store(true, Ordering::Release);
    shared.stopped.notify_waiters();
    shared.progress.notify_waiters();
    shared.connacks.send_modify(|n| *n += 1); // wakes consumers waiting for a fate
}

/// Periodically gives up parked messages nobody claimed (see [`PARK_TIMEOUT`]). A task of its
/// own because the driver may sit in `poll()` for a whole keep-alive interval.
async fn expire_parked(shared: std::sync::Weak<Shared>) {
    loop {
        tokio::time::sleep(PARK_TIMEOUT / 4).await;
        match shared.upgrade() {
            Some(shared) if !shared.driver_done.load(Ordering::Acquire) => shared.expire_parked(),
            _ => return,
        }
    }
}

impl Shared {
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn on_connected(&self, session_present: bool) {
        let (session, generation, held) = {
            let mut acks = lock(&self.acks);
            if !session_present {
                acks.session += 1;
                acks.counts.clear();
            }
            acks.connack_generation = acks.queue.generation();
            acks.up = true;
            self.link_up.store(true, Ordering::Release);
            let held = std::mem::take(&mut acks.held_at_loss);
            (acks.session, acks.connack_generation, held)
        };
        if session_present {
            // Messages parked from the lost connection: the broker sends them again.
            lock(&self.parked).retain(|(_, d)| {
                d.ticket
                    .is_none_or(|t| t.session != session || t.generation >= generation)
            });
        } else if !self.config.clean_session {
            tracing::warn!(
                client_id = %self.config.client_id,
                held,
                "the MQTT broker did not resume the session (it restarted without persistence, the session expired, or another client took it over): {held} messages received on the lost connection were not acknowledged yet; brook still hands those not handled yet to their handlers and sends no acknowledgements for them (their packet ids mean nothing in the new session); whatever else the old session held is gone"
            );
        }
        // After the bookkeeping above: a consumer waiting on this learns the fate.
        self.connacks.send_modify(|n| *n += 1);
        if !session_present {
            // A new session has no subscriptions and forgot our unconfirmed publishes.
            let mut waiters = lock(&self.waiters);
            for (_, w) in waiters.inflight_publishes.drain() {
                let _ = w.send(Err("the connection was lost before the broker confirmed the publish, and the session was not resumed".into()));
            }
            let routes = lock(&self.routes);
            for route in routes.iter() {
                waiters.queued_subscribes.push_back(None);
                if let Err(error) = self.client.try_subscribe(&route.filter, route.qos) {
                    waiters.queued_subscribes.pop_back();
                    tracing::error!(filter = %route.filter, %error, "could not resubscribe after reconnecting");
                }
            }
        }
    }

    /// The connection is gone: acks of its messages can never be sent.
    fn on_disconnected(&self) {
        let mut acks = lock(&self.acks);
        self.link_up.store(false, Ordering::Release);
        if acks.up {
            acks.up = false;
            acks.last_up = (acks.queue.generation(), acks.session);
            acks.held_at_loss = acks.queue.unacknowledged();
        }
        acks.outbox.reset();
        let generation = acks.queue.reset();
        self.generation.store(generation, Ordering::Release);
        self.qos2_open.store(0, Ordering::Release);
    }

    /// What became of the message with `ticket` (see [`Fate`]).
    pub fn fate(&self, ticket: Ticket) -> Fate {
        if ticket.generation == self.generation() {
            return Fate::Live;
        }
        let acks = lock(&self.acks);
        if ticket.generation == acks.queue.generation() {
            Fate::Live
        } else if acks.connack_generation <= ticket.generation {
            Fate::Unknown
        } else if acks.session == ticket.session {
            Fate::Resumed
        } else {
            Fate::Lost
        }
    }

    /// Whether the driver has stopped (the broker was closed).
    pub fn driver_done(&self) -> bool {
        self.driver_done.load(Ordering::Acquire)
    }

    /// Wakes when a reconnect decided the fate of held messages (or the driver stopped).
    pub fn connacks(&self) -> watch::Receiver<u64> {
        self.connacks.subscribe()
    }

    /// How many QoS 1/2 messages of the current connection are unacknowledged.
    pub fn unacknowledged(&self) -> usize {
        lock(&self.acks).queue.unacknowledged()
    }

    /// Records that the message with `ticket` (packet id `pkid`, `fingerprint`) has been
    /// delivered `deliveries` times (it was nacked, or a local redelivery is handed out), so
    /// that a resend by the broker after a resumed session continues the count.
    pub fn record_deliveries(&self, ticket: Ticket, pkid: u16, fingerprint: u64, deliveries: u32) {
        let mut acks = lock(&self.acks);
        // The same session: a resend keeps the packet id, also after a reconnect.
        if acks.session == ticket.session {
            let entry = acks.counts.entry(pkid).or_insert((fingerprint, 0));
            *entry = (fingerprint, entry.1.max(deliveries));
        }
    }

    /// Gives up parked QoS 1/2 messages that no subscriber claimed within [`PARK_TIMEOUT`]:
    /// unacknowledged (the broker keeps them), and no longer holding later acks back.
    fn expire_parked(&self) {
        let mut parked = lock(&self.parked);
        if parked.is_empty() {
            return;
        }
        let now = std::time::Instant::now();
        let mut expired = Vec::new();
        parked.retain_mut(|(at, d)| match d.ticket {
            Some(ticket) if now.duration_since(*at) >= PARK_TIMEOUT => {
                expired.push((ticket, d.publish.topic.clone()));
                false
            }
            _ => true,
        });
        drop(parked);
        for (ticket, topic) in expired {
            match self.fate(ticket) {
                Fate::Live => {
                    tracing::warn!(%topic, "no subscriber takes this MQTT message; leaving it unacknowledged (the broker keeps it for the session)");
                    self.abandon(ticket);
                }
                Fate::Resumed => {}
                Fate::Lost => {
                    tracing::error!(%topic, "no subscriber took this MQTT message, and the broker session it came from is gone: it is lost")
                }
                Fate::Unknown => {
                    tracing::warn!(%topic, "no subscriber took this MQTT message before the connection was lost; the broker resends it if it resumes the session")
                }
            }
        }
    }

    /// Abandons every parked QoS 1/2 message (the connection is closing).
    fn abandon_parked(&self) {
        let tickets: Vec<Ticket> = lock(&self.parked)
            .drain(..)
            .filter_map(|(_, d)| d.ticket)
            .collect();
        let mut lost = 0usize;
        for ticket in tickets {
            match self.fate(ticket) {
                Fate::Live => self.abandon(ticket),
                Fate::Lost => lost += 1,
                Fate::Resumed | Fate::Unknown => {}
            }
        }
        if lost > 0 {
            tracing::error!(lost, "closing with {lost} MQTT messages no subscriber took, from a broker session that is gone: they are lost");
        }
    }

    fn route(&self, publish: Incoming) {
        let (ticket, deliveries) = match publish.qos {
            QoS::AtMostOnce => (None, 1),
            qos => {
                let mut acks = lock(&self.acks);
                if !acks.up {
                    // rumqttc's v5 event loop returns what it buffered from a lost connection
                    // before the new CONNACK: it belongs to that connection.
                    drop(acks);
                    return self.route_stale(publish);
                }
                let session = acks.session;
                let target = AckTarget {
                    pkid: publish.pkid,
                    qos,
                };
                let ticket = acks.queue.arrive(target, session);
                let n = acks.count_delivery(&publish);
                (Some(ticket), n)
            }
        };
        self.dispatch(Delivery {
            publish,
            ticket,
            deliveries,
        });
    }

    /// A PUBLISH that rumqttc read on a connection that is gone and returns only after it was
    /// lost (3.1.1: right after the next CONNACK; 5: before it): it belongs to that connection
    /// (and its session), not to the new one.
    fn route_stale(&self, publish: Incoming) {
        let ticket = match publish.qos {
            QoS::AtMostOnce => None,
            _ => {
                let (generation, session) = lock(&self.acks).last_up;
                Some(Ticket {
                    generation,
                    seq: u64::MAX,
                    session,
                })
            }
        };
        self.dispatch(Delivery {
            publish,
            ticket,
            deliveries: 1,
        });
    }

    /// Hands a delivery to the first route whose filter matches its topic, or parks it.
    fn dispatch(&self, delivery: Delivery) {
        let routes = lock(&self.routes);
        let Some(route) = routes
            .iter()
            .find(|r| filter_matches(&r.filter, &delivery.publish.topic))
        else {
            drop(routes);
            self.park(delivery);
            return;
        };
        if let Err(mpsc::error::SendError(delivery)) = route.tx.send(delivery) {
            drop(routes);
            self.park(delivery);
        }
    }

    /// Keeps a message that arrived before its subscription was registered (a resumed
    /// session delivers queued messages right after CONNACK, before the App subscribes).
    fn park(&self, delivery: Delivery) {
        let mut parked = lock(&self.parked);
        if delivery.ticket.is_none() && parked.len() >= MAX_PARKED {
            tracing::warn!(topic = %delivery.publish.topic, "dropping a QoS 0 message no subscription wants");
            return;
        }
        parked.push((std::time::Instant::now(), delivery));
    }

    /// Registers a consumer's route; returns its id and hands it any parked messages it matches.
    pub fn add_route(&self, filter: &str, qos: QoS) -> (u64, mpsc::UnboundedReceiver<Delivery>) {
        self.insert_route(filter, qos, false)
    }

    /// [`add_route`](Self::add_route), ahead of every route there is: for the response topic,
    /// whose replies a wildcard subscriber (`#`) must not take.
    pub fn add_route_first(
        &self,
        filter: &str,
        qos: QoS,
    ) -> (u64, mpsc::UnboundedReceiver<Delivery>) {
        self.insert_route(filter, qos, true)
    }

    fn insert_route(
        &self,
        filter: &str,
        qos: QoS,
        first: bool,
    ) -> (u64, mpsc::UnboundedReceiver<Delivery>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let id = self.next_route.fetch_add(1, Ordering::Relaxed);
        let mut routes = lock(&self.routes);
        let mut parked = lock(&self.parked);
        let (mine, rest): (Vec<_>, Vec<_>) = parked
            .drain(..)
            .partition(|(_, d)| filter_matches(filter, &d.publish.topic));
        *parked = rest;
        for (_, d) in mine {
            let _ = tx.send(d);
        }
        let route = Route {
            id,
            filter: filter.to_owned(),
            qos,
            tx,
        };
        if first {
            routes.insert(0, route);
        } else {
            routes.push(route);
        }
        (id, rx)
    }

    pub fn remove_route(&self, id: u64) {
        lock(&self.routes).retain(|r| r.id != id);
    }

    /// Hands one released PUBACK/PUBREC to the outbox. Called under the acks' lock, which
    /// keeps the order.
    fn send_ack(&self, outbox: &mut Outbox, target: AckTarget) {
        if target.qos == QoS::ExactlyOnce {
            self.qos2_open.fetch_add(1, Ordering::AcqRel);
        }
        outbox.push(target, |t| self.client.try_ack(t));
    }

    /// The driver, between events: writes the acks waiting in the outbox (one flush for all),
    /// or on MQTT 5 moves them onto rumqttc's queue as it frees up.
    async fn write_released_acks(&self, eventloop: &mut Loop) -> Result<(), String> {
        if !eventloop.writes_acks() {
            lock(&self.acks)
                .outbox
                .enqueue_waiting(|t| self.client.try_ack(t));
            return Ok(());
        }
        if !eventloop.is_connected() {
            // Nothing can be written; the disconnect emptied the outbox for the next connection.
            return Ok(());
        }
        let batch = lock(&self.acks).outbox.take();
        if batch.is_empty() {
            return Ok(());
        }
        eventloop
            .write_acks(batch, self.config.connect_timeout)
            .await
    }

    /// Acks one delivery (in order, see [`crate::acks`]), or keeps it unacknowledged for a
    /// local redelivery (`ack = false`).
    pub fn settle(&self, ticket: Ticket, ack: bool) -> Settled {
        let mut acks = lock(&self.acks);
        let Acks { queue, outbox, .. } = &mut *acks;
        queue.settle(ticket, ack, |target| self.send_ack(outbox, target))
    }

    /// Leaves a delivery unacknowledged without blocking later acks and without asking for
    /// redelivery now (nobody will handle it on this connection: its consumer closed, or no
    /// consumer wants it).
    pub fn abandon(&self, ticket: Ticket) {
        let mut acks = lock(&self.acks);
        let Acks { queue, outbox, .. } = &mut *acks;
        queue.abandon(ticket, |target| self.send_ack(outbox, target));
    }

    pub fn closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// Connected (CONNACK received and the connection not lost since) and not closing.
    pub fn is_up(&self) -> bool {
        self.link_up.load(Ordering::Acquire) && !self.closing()
    }

    /// Publishes and waits for PUBACK (QoS 1), PUBCOMP (QoS 2) or the write (QoS 0).
    pub async fn publish(
        &self,
        topic: String,
        qos: QoS,
        retain: bool,
        payload: Bytes,
        headers: &Headers,
        timeout: Duration,
    ) -> Result<(), BrokerError> {
        if self.closing() {
            return Err(BrokerError::Closed(BrokerKind::Mqtt));
        }
        let (tx, rx) = oneshot::channel();
        {
            let _order = self.publish_order.lock().await;
            lock(&self.waiters).queued_publishes.push_back(tx);
            if let Err(error) = self
                .client
                .publish(topic, qos, retain, payload, headers)
                .await
            {
                lock(&self.waiters).queued_publishes.pop_back();
                return Err(op_error("publish", error));
            }
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(message))) => Err(op_error("publish", message)),
            Ok(Err(_)) => Err(op_error("publish", "the MQTT connection was closed")),
            Err(_) => Err(op_error(
                "publish",
                format!("the broker did not confirm the publish within {timeout:?}"),
            )),
        }
    }

    fn publish_sent(&self, pkid: u16) {
        let mut waiters = lock(&self.waiters);
        if pkid == 0 {
            if let Some(w) = waiters.queued_publishes.pop_front() {
                let _ = w.send(Ok(()));
            }
        } else if !waiters.inflight_publishes.contains_key(&pkid) {
            // Not a retransmission after a reconnect: the oldest queued publish got this id.
            if let Some(w) = waiters.queued_publishes.pop_front() {
                waiters.inflight_publishes.insert(pkid, w);
            }
        }
    }

    fn publish_confirmed(&self, pkid: u16, result: Result<(), String>) {
        if let Some(w) = lock(&self.waiters).inflight_publishes.remove(&pkid) {
            let _ = w.send(result);
        }
    }

    /// Subscribes and waits for the SUBACK.
    pub async fn subscribe(
        &self,
        filter: &str,
        qos: QoS,
        timeout: Duration,
    ) -> Result<(), BrokerError> {
        let (tx, rx) = oneshot::channel();
        {
            let mut waiters = lock(&self.waiters);
            waiters.queued_subscribes.push_back(Some(tx));
            if let Err(error) = self.client.try_subscribe(filter, qos) {
                waiters.queued_subscribes.pop_back();
                return Err(op_error("subscribe", error));
            }
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(message))) => Err(op_error("subscribe", message)),
            Ok(Err(_)) => Err(op_error("subscribe", "the MQTT connection was closed")),
            Err(_) => Err(op_error(
                "subscribe",
                format!("no SUBACK for `{filter}` within {timeout:?}"),
            )),
        }
    }

    fn subscribe_sent(&self, pkid: u16) {
        let mut waiters = lock(&self.waiters);
        if let Some(Some(w)) = waiters.queued_subscribes.pop_front() {
            waiters.inflight_subscribes.insert(pkid, w);
        }
    }

    fn subscribe_confirmed(&self, pkid: u16, refused: bool) {
        if let Some(w) = lock(&self.waiters).inflight_subscribes.remove(&pkid) {
            let _ = w.send(if refused {
                Err("the broker refused the subscription (SUBACK failure)".into())
            } else {
                Ok(())
            });
        }
    }

    /// Sends what is queued (acks first), then DISCONNECT, and waits for the driver to stop.
    pub async fn close(&self, timeout: Duration) -> Result<(), BrokerError> {
        if self.closing.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        self.stopped.notify_waiters(); // cuts a reconnect backoff short
        let deadline = tokio::time::Instant::now() + timeout;
        // Nobody will claim parked messages now; they must not hold back the acks of messages
        // that were handled, which are flushed below.
        self.abandon_parked();
        // Acks first, and QoS 2 handshakes completed (PUBREL answered with PUBCOMP), so the
        // session is left with nothing half-done. The driver wakes us after each event.
        loop {
            let progressed = self.progress.notified();
            tokio::pin!(progressed);
            // Registered before looking, so a wake-up in between is not missed.
            progressed.as_mut().enable();
            let settled =
                lock(&self.acks).outbox.is_empty() && self.qos2_open.load(Ordering::Acquire) == 0;
            if settled || self.driver_done.load(Ordering::Acquire) {
                break;
            }
            if tokio::time::timeout_at(deadline, progressed).await.is_err() {
                tracing::warn!("closing the MQTT connection with acknowledgements not written within {timeout:?}");
                break;
            }
        }
        let _order = self.publish_order.lock().await;
        // DISCONNECT goes through the same queue as the acks, so they are sent before it.
        let sent = tokio::time::timeout_at(deadline, self.client.disconnect()).await;
        let stopped = async {
            loop {
                let notified = self.stopped.notified();
                if self.driver_done.load(Ordering::Acquire) {
                    return;
                }
                notified.await;
            }
        };
        if tokio::time::timeout_at(deadline, stopped).await.is_err() {
            tracing::warn!("the MQTT connection did not close within {timeout:?}");
        }
        match sent {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(BrokerError::operation(
                BrokerKind::Mqtt,
                "disconnect",
                error,
            )),
            Err(_) => Err(op_error(
                "disconnect",
                format!("not done within {timeout:?}"),
            )),
        }
    }
}

/// Whether topic `topic` matches subscription `filter` (`+`, `#`, `$share/group/...`).
pub(crate) fn filter_matches(filter: &str, topic: &str) -> bool {
    let filter = match filter.strip_prefix("$share/") {
        Some(rest) => rest.split_once('/').map_or("", |(_, f)| f),
        None => filter,
    };
    // Wildcards do not match topics starting with `$` (MQTT 4.7.2).
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::filter_matches;

    #[test]
    fn topic_filters() {
        assert!(filter_matches("a/b", "a/b"));
        assert!(!filter_matches("a/b", "a/c"));
        assert!(filter_matches("a/+/c", "a/x/c"));
        assert!(!filter_matches("a/+/c", "a/x/y/c"));
        assert!(filter_matches("a/#", "a"));
        assert!(filter_matches("a/#", "a/b/c"));
        assert!(filter_matches("#", "x/y"));
        assert!(!filter_matches("#", "$SYS/x"));
        assert!(filter_matches("$share/g/a/+", "a/b"));
        assert!(!filter_matches("$share/g/a/+", "b/b"));
        assert!(filter_matches("+", ""));
    }
}
