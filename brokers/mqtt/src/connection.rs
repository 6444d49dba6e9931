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
//! A nack cannot be expressed in MQTT; the broker redelivers an unacknowledged message only when
//! the client's session resumes. So a nack asks the driver to drop the network connection and
//! reconnect with the same client id: with a persistent session the broker then sends every
//! unacknowledged message again (with the DUP flag).
//!
//! [`MqttBroker`]: crate::MqttBroker

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use brook_runtime::Headers;
use brook_runtime::{BrokerError, BrokerKind};
use bytes::Bytes;
use rumqttc::QoS;
use tokio::sync::{mpsc, oneshot, Notify};

use crate::acks::{AckQueue, AckTarget, Outbox, Settled, Ticket};
use crate::options::Config;
use crate::proto::{self, Client, Ev, Incoming, Loop};

/// How long a resume waits for our own publishes to be confirmed first.
const RESUME_GRACE: Duration = Duration::from_secs(2);

/// Unsubscribed from to wake the driver (never subscribed).
const WAKE_FILTER: &str = "brook/internal/wake";

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
}

struct Route {
    id: u64,
    /// What was subscribed (`$share/group/...` included).
    filter: String,
    qos: QoS,
    tx: mpsc::UnboundedSender<Delivery>,
}

type Waiter = oneshot::Sender<Result<(), String>>;

/// The acks of the current connection: the ordering line and what it released.
struct Acks {
    queue: AckQueue,
    outbox: Outbox,
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
    stopped: Notify,
    /// CONNACKs received (1 after `connect`); tests watch reconnects with it.
    pub(crate) connections: AtomicU64,
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
        stopped: Notify::new(),
        connections: AtomicU64::new(1),
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
                tracing::debug!(client_id = %shared.config.client_id, "reconnecting so the broker redelivers withheld messages");
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
        match event {
            Ok(Ev::Publish(publish)) => shared.route(publish),
            Ok(Ev::Confirmed(pkid, result)) => shared.publish_confirmed(pkid, result),
            Ok(Ev::SubAck { pkid, refused }) => shared.subscribe_confirmed(pkid, refused),
            Ok(Ev::ConnAck { session_present }) => {
                backoff = Duration::from_millis(50);
                shared.connections.fetch_add(1, Ordering::Relaxed);
                shared.on_connected(session_present);
            }
            Ok(Ev::SentPublish(pkid)) => shared.publish_sent(pkid),
            Ok(Ev::SentSubscribe(pkid)) => shared.subscribe_sent(pkid),
            Ok(Ev::SentAck(pkid)) => lock(&shared.acks).outbox.sent(pkid),
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
        if !self.config.clean_session && !session_present {
            tracing::warn!(client_id = %self.config.client_id, "the MQTT broker did not resume the session: unacknowledged messages of the previous connection are lost to this client");
        }
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
        acks.outbox.reset();
        let generation = acks.queue.reset();
        self.generation.store(generation, Ordering::Release);
        self.qos2_open.store(0, Ordering::Release);
        drop(acks);
        if !self.config.clean_session {
            // The resumed session sends them again. A clean session will not: keep them.
            lock(&self.parked).retain(|(_, d)| d.ticket.is_none());
        }
    }

    /// Whether a delivery's ticket belongs to a connection that is gone *and* the broker will
    /// send the message again (a persistent session). On a clean session the broker forgets
    /// it, so it must still be handled (its ack is then a no-op).
    pub fn redelivered_later(&self, ticket: Ticket) -> bool {
        !self.config.clean_session && ticket.generation != self.generation()
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
            tracing::warn!(%topic, "no subscriber takes this MQTT message; leaving it unacknowledged (the broker keeps it for the session)");
            self.abandon(ticket);
        }
    }

    /// Abandons every parked QoS 1/2 message (the connection is closing).
    fn abandon_parked(&self) {
        let tickets: Vec<Ticket> = lock(&self.parked)
            .drain(..)
            .filter_map(|(_, d)| d.ticket)
            .collect();
        for ticket in tickets {
            self.abandon(ticket);
        }
    }

    fn route(&self, publish: Incoming) {
        let ticket = match publish.qos {
            QoS::AtMostOnce => None,
            qos => Some(lock(&self.acks).queue.arrive(AckTarget {
                pkid: publish.pkid,
                qos,
            })),
        };
        let delivery = Delivery { publish, ticket };
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
        routes.push(Route {
            id,
            filter: filter.to_owned(),
            qos,
            tx,
        });
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

    /// Acks (in order) or withholds one delivery.
    pub fn settle(&self, ticket: Ticket, ack: bool) -> Settled {
        let mut acks = lock(&self.acks);
        let Acks { queue, outbox } = &mut *acks;
        let outcome = queue.settle(ticket, ack, |target| self.send_ack(outbox, target));
        drop(acks);
        if outcome == Settled::Withheld {
            self.request_resume();
        }
        outcome
    }

    /// Leaves a delivery unacknowledged without blocking later acks and without asking for
    /// redelivery now (nobody will handle it on this connection: its consumer closed, or no
    /// consumer wants it).
    pub fn abandon(&self, ticket: Ticket) {
        let mut acks = lock(&self.acks);
        let Acks { queue, outbox } = &mut *acks;
        queue.abandon(ticket, |target| self.send_ack(outbox, target));
    }

    /// Asks the driver to resume the session (reconnect) so the broker redelivers.
    pub fn request_resume(&self) {
        if !self.resume_requested.swap(true, Ordering::AcqRel) {
            // Wakes the driver if it is idle in poll(): an UNSUBSCRIBE of a filter nobody
            // uses is harmless, and cancelling poll() instead could cut a packet in half.
            self.client.try_unsubscribe(WAKE_FILTER);
        }
    }

    pub fn closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
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
        // session is left with nothing half-done.
        while (!lock(&self.acks).outbox.is_empty() || self.qos2_open.load(Ordering::Acquire) > 0)
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
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
