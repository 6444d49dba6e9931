//! Consumers: a core NATS subscription, or a JetStream pull loop.
//!
//! The JetStream pull loop is written here rather than taken from async-nats's `Stream`
//! because brook must own the inbox subscription: on [`Consumer::close`] it unsubscribes first
//! (so no new delivery can land on a dead inbox), then hands every message it received but
//! did not settle back to the server with `-NAK`, so a fresh consumer gets them at once instead
//! of after `ack_wait`. It also keeps per-message work to a minimum (the delivery metadata is
//! parsed from the ack subject; no JetStream context is cloned per message).
//!
//! It also watches for its consumer going away under it (deleted by an operator, or with its
//! stream). The server says so with a 409 "Consumer Deleted" on every waiting pull request,
//! but only to a connected client; pull requests to a consumer that no longer exists get no
//! answer at all (not even a status, nor heartbeats). So the loop checks that the consumer
//! exists after the server said it was deleted, and whenever a pull request stays silent while
//! connected. A missing consumer is recreated through [`setup::ensure`] (when the subscriber
//! may create it, with its settings), or the consumer ends: one error saying why, then `None`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_nats::connection::State;
use async_nats::jetstream;
use async_nats::{Client, StatusCode, Subject, Subscriber};
use brook_runtime::headers::REPLY_TO;
use brook_runtime::{
    AckPolicy, BrokerError, Consumer, JetStreamOptions, Message, MessageId, NatsOptions,
    SettleFuture, Settlement, Settler, Subscription,
};
use bytes::Bytes;
use futures_util::{FutureExt as _, StreamExt as _};

use crate::message::{self, JetStreamInfo, NatsMessage, KIND};
use crate::setup::{self, Presence, Target};
use crate::Conn;

/// How long a pull request waits on the server for messages before it expires.
pub(crate) const PULL_EXPIRES: Duration = Duration::from_secs(30);
/// The server sends a heartbeat this often while a pull request waits without messages.
const PULL_HEARTBEAT: Duration = Duration::from_secs(1);
/// With neither a message nor a heartbeat for this long, the pull request is taken as lost (a
/// reconnection drops it on the server) and a new one is sent.
const PULL_SILENCE: Duration = Duration::from_secs(3);
/// Default number of messages per pull request.
const DEFAULT_BATCH: usize = 64;
/// The pull request `close` sends as a fence (see [`JetStreamConsumer::close`]): one message
/// at most, answered at once when the consumer has nothing to deliver.
const FENCE_REQUEST: &[u8] = br#"{"batch":1,"no_wait":true}"#;
/// The description of the 408 the server answers a fence with while it is still sending what
/// earlier pull requests asked for.
const REQUESTS_PENDING: &str = "Requests Pending";
/// While closing, this long without a delivery (nor an answer to the fence) means the server
/// has nothing more to send. Only a backstop: the fence is answered in one round trip.
const CLOSE_QUIET: Duration = Duration::from_millis(250);
/// How long `close` waits for the server to confirm the pull inbox's unsubscription.
const DRAIN_LIMIT: Duration = Duration::from_secs(5);
/// How long to wait before pulling again after the server refused a pull request.
const REFUSED_BACKOFF: Duration = Duration::from_secs(1);
/// How long one check of a consumer that may be gone (and its recreation) may take.
const CHECK_LIMIT: Duration = Duration::from_secs(15);
/// The pause after the first failed check or recreation; doubled after each further one, up to
/// [`RECOVERY_BACKOFF_MAX`].
const RECOVERY_BACKOFF: Duration = Duration::from_millis(250);
const RECOVERY_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// After this many failed checks or recreations in a row (about a minute with the pauses;
/// attempts while disconnected do not count), the consumer gives up and ends.
const RECOVERY_ATTEMPTS: u32 = 15;
/// How long to wait before recreating a deleted stream.
const STREAM_RECREATE_DELAY: Duration = Duration::from_secs(1);
/// At most one recreation of a consumer this often (should something keep deleting it).
const RECREATE_INTERVAL: Duration = Duration::from_secs(1);

/// Whether a 409 status means the server refuses this kind of pull request (as opposed to
/// ending one for a passing reason: expiry, leadership change, shutdown).
fn refused(description: &str) -> bool {
    description.starts_with("Exceeded MaxRequest")
        || description.contains("push based")
        || description.contains("Exceeds MaxBytes")
}

/// Messages per pull request: `batch` (default 64), at most `max_ack_pending`.
pub(crate) fn batch_size(opts: &JetStreamOptions) -> usize {
    let mut batch = opts.batch.unwrap_or(DEFAULT_BATCH).max(1);
    if let Some(max) = opts.max_ack_pending.filter(|m| *m > 0) {
        // The server never has more than max_ack_pending out at once; asking for more only
        // leaves requests waiting.
        batch = batch.min(usize::try_from(max).unwrap_or(usize::MAX));
    }
    batch
}

/// A consumer of one NATS subscriber: core or JetStream.
pub struct NatsConsumer(Inner);

enum Inner {
    Core(CoreConsumer),
    JetStream(JetStreamConsumer),
}

impl Consumer for NatsConsumer {
    async fn next(&mut self) -> Option<Result<Message, BrokerError>> {
        match &mut self.0 {
            Inner::Core(c) => c.next().await,
            Inner::JetStream(c) => c.next().await,
        }
    }

    async fn close(self) -> Result<(), BrokerError> {
        match self.0 {
            Inner::Core(c) => c.close().await,
            Inner::JetStream(c) => c.close().await,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Core NATS

pub(crate) async fn core(conn: &Conn, opts: &NatsOptions) -> Result<NatsConsumer, BrokerError> {
    // JetStream-only arguments on a core subject are refused when the subscription is built
    // (the capability table): nothing to check again here.
    let subject = opts.subject.clone();
    let subscriber = match &opts.queue_group {
        Some(group) => conn.client.queue_subscribe(subject, group.clone()).await,
        None => conn.client.subscribe(subject).await,
    }
    .map_err(|e| BrokerError::operation(KIND, "subscribe", e))?;
    Ok(NatsConsumer(Inner::Core(CoreConsumer {
        subscriber,
        topic: opts.subject.as_str().into(),
        ended: false,
    })))
}

struct CoreConsumer {
    subscriber: Subscriber,
    topic: Arc<str>,
    ended: bool,
}

impl CoreConsumer {
    async fn next(&mut self) -> Option<Result<Message, BrokerError>> {
        if self.ended {
            return None;
        }
        let Some(msg) = self.subscriber.next().await else {
            // The connection was closed for good: say so once, then end.
            self.ended = true;
            return Some(Err(BrokerError::Closed(KIND)));
        };
        let mut headers = message::from_nats(msg.headers.as_ref());
        // On core NATS the reply subject is where answers go (FastStream's reply_to).
        if let (None, Some(reply)) = (headers.get(REPLY_TO), msg.reply.as_ref()) {
            headers.insert(REPLY_TO, reply.as_str());
        }
        let body = msg.payload.clone();
        let settler = CoreSettler(NatsMessage::new(msg, false));
        Some(Ok(
            Message::new(KIND, self.topic.clone(), body, settler).with_headers(headers)
        ))
    }

    async fn close(mut self) -> Result<(), BrokerError> {
        // Core NATS keeps nothing for later: messages still buffered here are dropped.
        self.subscriber
            .unsubscribe()
            .await
            .map_err(|e| BrokerError::operation(KIND, "unsubscribe", e))
    }
}

/// Core NATS has no acknowledgement: every settlement is a no-op (the policies that would
/// need one are refused when the subscription is built).
struct CoreSettler(NatsMessage);

impl Settler for CoreSettler {
    fn settle(&self, _: Settlement) -> SettleFuture<'_> {
        SettleFuture::ready(Ok(()))
    }

    fn raw(&self) -> Option<&(dyn std::any::Any + Send + Sync)> {
        Some(&self.0)
    }
}

// ---------------------------------------------------------------------------------------------
// JetStream

/// What settlers share with their consumer: the connection, and the deliveries not settled
/// yet (consumer sequence → ack subject), which `close` hands back.
struct Shared {
    client: Client,
    /// `AckFirst`: the engine runs the handler only once the ack succeeded, so the ack must be
    /// confirmed by the server (a "double ack"), not merely buffered in the client.
    confirm_ack: bool,
    unsettled: Mutex<HashMap<u64, Subject>>,
    /// Set when the consumer that delivered these messages was deleted and brook goes on with
    /// a recreated one of the same name: their ack subjects now reach the new consumer, where
    /// an old `+ACK` could move its delivery past messages it has not delivered yet. So
    /// nothing is sent for them any more, and the engine skips those not yet handled (the new
    /// consumer delivers them again).
    retired: AtomicBool,
}

impl Shared {
    fn unsettled(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Subject>> {
        // A map of pending acks stays usable after a panic elsewhere.
        self.unsettled
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn new(client: Client, confirm_ack: bool) -> Arc<Self> {
        Arc::new(Shared {
            client,
            confirm_ack,
            unsettled: Mutex::new(HashMap::new()),
            retired: AtomicBool::new(false),
        })
    }
}

/// A new pull inbox.
async fn subscribe_inbox(client: &Client) -> Result<(Subject, Subscriber), BrokerError> {
    let inbox = Subject::from(client.new_inbox());
    let subscriber = client
        .subscribe(inbox.clone())
        .await
        .map_err(|e| BrokerError::operation(KIND, "subscribe", e))?;
    Ok((inbox, subscriber))
}

fn next_subject(target: &Target) -> Subject {
    format!(
        "$JS.API.CONSUMER.MSG.NEXT.{}.{}",
        target.stream, target.consumer
    )
    .into()
}

pub(crate) async fn jetstream(
    conn: &Conn,
    sub: &Subscription,
    opts: &JetStreamOptions,
    target: Target,
) -> Result<NatsConsumer, BrokerError> {
    let batch = batch_size(opts);
    let (inbox, subscriber) = subscribe_inbox(&conn.client).await?;
    let request = serde_json::json!({
        "batch": batch,
        "expires": PULL_EXPIRES.as_nanos() as u64,
        "idle_heartbeat": PULL_HEARTBEAT.as_nanos() as u64,
    });
    tracing::debug!(broker = "nats", stream = %target.stream, consumer = %target.consumer, batch, "pull consumer ready");
    Ok(NatsConsumer(Inner::JetStream(JetStreamConsumer {
        shared: Shared::new(conn.client.clone(), sub.policy() == AckPolicy::AckFirst),
        subscriber,
        inbox,
        next_subject: next_subject(&target),
        request: Bytes::from(request.to_string()),
        batch,
        outstanding: 0,
        topic: sub.source_name().into(),
        ended: false,
        setup: Box::new(Setup {
            js: conn.js.clone(),
            sub: sub.clone(),
            opts: opts.clone(),
            target,
            resumed_at: None,
        }),
        recovery: None,
    })))
}

/// What the pull loop needs to check and recreate its consumer.
struct Setup {
    js: jetstream::Context,
    sub: Subscription,
    opts: JetStreamOptions,
    /// The consumer pulled from.
    target: Target,
    /// When the consumer was last found gone and consumption went on.
    resumed_at: Option<tokio::time::Instant>,
}

/// Why the pull loop suspects that its consumer is gone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Suspicion {
    /// The server answered a pull request with 409 "Consumer Deleted": the consumer, or its
    /// stream, was deleted.
    Deleted,
    /// A pull request got no answer, not even a heartbeat, while connected: what pull requests
    /// to a missing consumer get.
    Silent,
    /// The server answered a pull request with this status (503 no responders, 404).
    Status(StatusCode),
}

impl std::fmt::Display for Suspicion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Suspicion::Deleted => f.write_str("the server reported it deleted"),
            Suspicion::Silent => f.write_str("pull requests got no answer"),
            Suspicion::Status(code) => write!(f, "pull requests were answered with status {code}"),
        }
    }
}

/// A check of the consumer under way (kept across cancelled `next` calls).
struct Recovery {
    why: Suspicion,
    /// Failed checks or recreations in a row.
    failures: u32,
}

/// What checking a consumer that may be gone found.
enum Found {
    /// It is still there (the suspicion was wrong).
    Unchanged,
    /// It was gone, and exists again (recreated by brook, or by someone else).
    Again(Target),
}

/// How a check ended, for `next`.
enum Recovered {
    /// Pull again.
    Resume,
    /// Report this error (the App logs it), then pull again.
    Report(BrokerError),
    /// The consumer cannot continue: yield this error, then `None`.
    End(BrokerError),
}

struct JetStreamConsumer {
    shared: Arc<Shared>,
    subscriber: Subscriber,
    inbox: Subject,
    next_subject: Subject,
    request: Bytes,
    batch: usize,
    /// Messages asked for and not received (or expired) yet.
    outstanding: usize,
    topic: Arc<str>,
    ended: bool,
    /// What checking / recreating the consumer needs (boxed: rarely used).
    setup: Box<Setup>,
    /// Set while the consumer may be gone: `next` checks it (and recreates it) first.
    recovery: Option<Recovery>,
}

impl JetStreamConsumer {
    async fn pull(&mut self) -> Result<(), BrokerError> {
        self.shared
            .client
            .publish_with_reply(
                self.next_subject.clone(),
                self.inbox.clone(),
                self.request.clone(),
            )
            .await
            .map_err(|e| BrokerError::operation(KIND, "pull request", e))?;
        self.outstanding += self.batch;
        Ok(())
    }

    async fn next(&mut self) -> Option<Result<Message, BrokerError>> {
        loop {
            if self.ended {
                return None;
            }
            if self.recovery.is_some() {
                match self.recover().await {
                    Recovered::Resume => {}
                    Recovered::Report(e) => return Some(Err(e)),
                    Recovered::End(e) => {
                        self.ended = true;
                        return Some(Err(e));
                    }
                }
            }
            // Ask for more before running dry, so the next batch is on its way while this one
            // is handled.
            if self.outstanding <= self.batch / 2 {
                if let Err(e) = self.pull().await {
                    return Some(Err(e));
                }
            }
            // A message already buffered needs no timer (the common case under load).
            let received = match self.subscriber.next().now_or_never() {
                Some(received) => Ok(received),
                None => tokio::time::timeout(PULL_SILENCE, self.subscriber.next()).await,
            };
            let msg = match received {
                Ok(Some(msg)) => msg,
                Ok(None) => {
                    // The connection was closed for good: say so once, then end.
                    self.ended = true;
                    return Some(Err(BrokerError::Closed(KIND)));
                }
                Err(_) => {
                    self.outstanding = 0;
                    if self.shared.client.connection_state() == State::Connected {
                        // Lost (a reconnection drops pull requests on the server), or sent to
                        // a consumer that no longer exists: those get no answer at all.
                        tracing::debug!(broker = "nats", subject = %self.next_subject, "no heartbeat: checking the consumer, then pulling again");
                        self.suspect(Suspicion::Silent);
                    } else {
                        tracing::debug!(broker = "nats", subject = %self.next_subject, "no heartbeat while disconnected: pulling again");
                    }
                    continue;
                }
            };
            match msg.status {
                None | Some(StatusCode::OK) => return Some(Ok(self.deliver(msg))),
                Some(StatusCode::IDLE_HEARTBEAT) => continue,
                Some(StatusCode::TIMEOUT) | Some(StatusCode::REQUEST_TERMINATED) => {
                    // A request expired or was cut short: forget what it still owed us.
                    self.request_ended(&msg);
                    let description = msg.description.unwrap_or_default();
                    if description.contains("Consumer Deleted") {
                        tracing::warn!(broker = "nats", subscriber = self.setup.sub.name(), stream = %self.setup.target.stream, consumer = %self.setup.target.consumer, "the JetStream consumer was deleted (or its stream was)");
                        self.suspect(Suspicion::Deleted);
                        continue;
                    }
                    if refused(&description) {
                        // The server refuses the request itself (the consumer's limits, or a
                        // push consumer): pulling again at once would only repeat the refusal
                        // in a tight loop. Report it, slowly, until someone fixes the consumer.
                        self.outstanding = 0;
                        tokio::time::sleep(REFUSED_BACKOFF).await;
                        return Some(Err(BrokerError::operation(
                            KIND,
                            "pull request",
                            format!(
                                "the server refuses pull requests on {}: {description}",
                                self.next_subject
                            ),
                        )));
                    }
                    if msg.status == Some(StatusCode::REQUEST_TERMINATED) {
                        tracing::debug!(broker = "nats", %description, "pull request terminated");
                    }
                }
                Some(code @ (StatusCode::NO_RESPONDERS | StatusCode::NOT_FOUND)) => {
                    // JetStream is not answering (restarting), or the consumer is gone (how
                    // some servers answer a pull request to a missing consumer): find out.
                    self.outstanding = 0;
                    tracing::debug!(broker = "nats", status = %code, description = ?msg.description, subject = %self.next_subject, "pull request answered with an error status: checking the consumer");
                    self.suspect(Suspicion::Status(code));
                }
                Some(other) => {
                    tracing::warn!(broker = "nats", status = %other, description = ?msg.description, "unexpected status on a pull request");
                }
            }
        }
    }

    fn suspect(&mut self, why: Suspicion) {
        if self.recovery.is_none() {
            self.recovery = Some(Recovery { why, failures: 0 });
        }
    }

    /// Finds out whether the consumer is still there; when it is not, recreates it through
    /// [`setup::ensure`] (which refuses with `Invalid` when `create = false`, or when a
    /// consumer recreated by someone else differs from the subscriber's settings).
    async fn locate(&self, why: Suspicion) -> Result<Found, BrokerError> {
        match setup::presence(&self.setup.js, &self.setup.target).await? {
            // Still there, unless the server said it was deleted: then this is a new one
            // (created by someone else), to be checked like any existing consumer.
            Presence::Both if why != Suspicion::Deleted => return Ok(Found::Unchanged),
            Presence::Both | Presence::NoConsumer => {}
            Presence::NoStream if self.setup.opts.create => {
                // The server removes a deleted stream's files after answering the deletion;
                // a stream of the same name created meanwhile can lose its files to that
                // (seen with nats-server 2.9). Give the removal a moment.
                tokio::time::sleep(STREAM_RECREATE_DELAY).await;
            }
            Presence::NoStream => {}
        }
        let target = setup::ensure(&self.setup.js, &self.setup.sub, &self.setup.opts).await?;
        Ok(Found::Again(target))
    }

    /// Checks (and recreates) the consumer after a suspicion, retrying failures with bounded
    /// backoff. Cancel-safe: the state lives in `self.recovery` until the check is done.
    async fn recover(&mut self) -> Recovered {
        while let Some((why, failures)) = self.recovery.as_ref().map(|r| (r.why, r.failures)) {
            if let Some(at) = self.setup.resumed_at {
                // Gone again right after the last recreation: not in a tight loop.
                tokio::time::sleep_until(at + RECREATE_INTERVAL).await;
            }
            let result = match tokio::time::timeout(CHECK_LIMIT, self.locate(why)).await {
                Ok(result) => result,
                Err(_) => Err(BrokerError::operation(
                    KIND,
                    "consumer info",
                    format!("no answer within {CHECK_LIMIT:?}"),
                )),
            };
            let error = match result {
                Ok(Found::Unchanged) => {
                    self.recovery = None;
                    return match why {
                        Suspicion::Silent => Recovered::Resume,
                        // The consumer exists, yet pull requests fail: report it, and do not
                        // hammer the server meanwhile.
                        _ => {
                            tokio::time::sleep(REFUSED_BACKOFF).await;
                            Recovered::Report(BrokerError::operation(
                                KIND,
                                "pull request",
                                format!("{why} on {}", self.next_subject),
                            ))
                        }
                    };
                }
                Ok(Found::Again(target)) => match self.resume(target, why).await {
                    Ok(()) => {
                        self.recovery = None;
                        return Recovered::Resume;
                    }
                    Err(e) => e,
                },
                Err(BrokerError::Invalid { message, .. }) => {
                    // Not allowed to recreate it (create = false), or someone recreated it
                    // differently: this subscriber cannot go on.
                    return Recovered::End(BrokerError::Invalid {
                        broker: KIND,
                        message: format!(
                            "the JetStream consumer `{}` on stream `{}` is gone ({why}) and cannot be recreated: {message}",
                            self.setup.target.consumer,
                            self.setup.target.stream
                        ),
                    });
                }
                Err(e) => e,
            };
            // A failure of the check itself (JetStream not answering, creation refused).
            let connected = self.shared.client.connection_state() == State::Connected;
            let failures = if connected { failures + 1 } else { failures };
            if failures >= RECOVERY_ATTEMPTS {
                return Recovered::End(BrokerError::operation(
                    KIND,
                    "recreate consumer",
                    format!(
                        "the JetStream consumer `{}` on stream `{}` may be gone ({why}); {failures} attempts to check or recreate it failed, the last with: {error}",
                        self.setup.target.consumer,
                        self.setup.target.stream
                    ),
                ));
            }
            if let Some(r) = self.recovery.as_mut() {
                r.failures = failures;
            }
            let delay = RECOVERY_BACKOFF
                .saturating_mul(1 << failures.saturating_sub(1).min(10))
                .min(RECOVERY_BACKOFF_MAX);
            tracing::warn!(broker = "nats", subscriber = self.setup.sub.name(), stream = %self.setup.target.stream, consumer = %self.setup.target.consumer, %error, attempt = failures, retry_in = ?delay, "cannot check or recreate the JetStream consumer yet");
            tokio::time::sleep(delay).await;
        }
        Recovered::Resume
    }

    /// Goes on with the consumer found or recreated: a new pull inbox (what is still on its
    /// way to the old one came from the deleted consumer), and a new list of unsettled
    /// deliveries (those of the deleted consumer can no longer be settled).
    async fn resume(&mut self, target: Target, why: Suspicion) -> Result<(), BrokerError> {
        let (inbox, subscriber) = subscribe_inbox(&self.shared.client).await?;
        if target.created {
            tracing::info!(broker = "nats", subscriber = self.setup.sub.name(), stream = %target.stream, consumer = %target.consumer, reason = %why, "the JetStream consumer was gone: recreated it with the subscriber's settings; consuming again");
        } else {
            tracing::info!(broker = "nats", subscriber = self.setup.sub.name(), stream = %target.stream, consumer = %target.consumer, reason = %why, "the JetStream consumer was gone and exists again (recreated elsewhere); consuming again");
        }
        // Dropping the old subscriber unsubscribes its inbox.
        self.subscriber = subscriber;
        self.inbox = inbox;
        self.shared.retired.store(true, Ordering::Release);
        self.shared = Shared::new(self.shared.client.clone(), self.shared.confirm_ack);
        self.next_subject = next_subject(&target);
        self.setup.target = target;
        self.outstanding = 0;
        self.setup.resumed_at = Some(tokio::time::Instant::now());
        Ok(())
    }

    fn deliver(&mut self, msg: async_nats::Message) -> Message {
        self.outstanding = self.outstanding.saturating_sub(1);
        let info = msg
            .reply
            .as_ref()
            .and_then(|r| JetStreamInfo::parse(r.as_str()))
            .map(|i| (i.delivered, i.stream_sequence, i.consumer_sequence));
        // Only a `reply_to` header is a reply address here: the NATS reply subject of a
        // JetStream delivery is its ack subject (FastStream reads the header too).
        let headers = message::from_nats(msg.headers.as_ref());
        let body = msg.payload.clone();
        let key = match (info, msg.reply.as_ref()) {
            (Some((_, _, cseq)), Some(reply)) => {
                self.shared.unsettled().insert(cseq, reply.clone());
                Some(cseq)
            }
            _ => None,
        };
        let settler = JetStreamSettler {
            shared: self.shared.clone(),
            key,
            msg: NatsMessage::new(msg, true),
        };
        let mut out = Message::new(KIND, self.topic.clone(), body, settler).with_headers(headers);
        if let Some((delivered, sseq, _)) = info {
            out = out
                .with_id(MessageId::Number(sseq))
                .with_delivery_count(u32::try_from(delivered).unwrap_or(u32::MAX));
        }
        out
    }

    /// A pull request expired or was cut short: forget what it still owed us.
    fn request_ended(&mut self, msg: &async_nats::Message) {
        let left = msg
            .headers
            .as_ref()
            .and_then(|h| h.get("Nats-Pending-Messages"))
            .and_then(|v| v.as_str().parse::<usize>().ok())
            .unwrap_or(self.outstanding);
        self.outstanding = self.outstanding.saturating_sub(left);
    }

    /// Sends a fence (see `close`); counted as a request for one message. `false` if it could
    /// not be sent (the client is closed): `close` then waits for a silence instead.
    async fn fence(&mut self) -> bool {
        let sent = self
            .shared
            .client
            .publish_with_reply(
                self.next_subject.clone(),
                self.inbox.clone(),
                Bytes::from_static(FENCE_REQUEST),
            )
            .await;
        match sent {
            Ok(()) => {
                self.outstanding += 1;
                true
            }
            Err(error) => {
                tracing::debug!(broker = "nats", %error, subject = %self.next_subject, "could not send the closing fence");
                false
            }
        }
    }

    async fn close(mut self) -> Result<(), BrokerError> {
        let mut give_back: Vec<Subject> = Vec::new();
        let mut keep = |msg: async_nats::Message| {
            if matches!(msg.status, None | Some(StatusCode::OK)) {
                if let Some(reply) = msg.reply {
                    give_back.push(reply);
                }
            }
        };
        // 1. Let what the server is sending arrive. A delivery the server sends after it has
        //    handled our UNSUB goes nowhere, yet counts as delivered: it would come back only
        //    after ack_wait. So wait (bounded) until the outstanding pull requests are filled
        //    or end, or the server says it has nothing left for them. It says so through a
        //    fence: a `no_wait` pull request, which the consumer answers in order with its
        //    deliveries (one queue on the server), with 404 when it has no message to deliver
        //    (then every delivery decided before is already here, ahead of the 404), or with
        //    408 "Requests Pending" while it is still sending what the earlier requests asked
        //    for (then another fence follows the next delivery). A fence the server queues
        //    instead (more messages than requested) gets a message like any request. A short
        //    silence, an idle heartbeat, or the deadline end the wait too, for a server that
        //    does not answer (the consumer gone, the connection lost).
        let deadline = tokio::time::Instant::now() + PULL_SILENCE;
        let mut fence_out = false;
        let mut progress = self.outstanding > 0;
        let waited = tokio::time::Instant::now();
        let mut ended = "filled";
        while self.outstanding > 0 {
            if !fence_out && progress {
                progress = false;
                fence_out = self.fence().await;
            }
            let quiet = (tokio::time::Instant::now() + CLOSE_QUIET).min(deadline);
            let Ok(Some(msg)) = tokio::time::timeout_at(quiet, self.subscriber.next()).await else {
                ended = "silence";
                break;
            };
            match msg.status {
                None | Some(StatusCode::OK) => {
                    self.outstanding = self.outstanding.saturating_sub(1);
                    progress = true;
                    keep(msg);
                }
                Some(StatusCode::IDLE_HEARTBEAT) => {
                    ended = "idle heartbeat";
                    break;
                }
                // The fence: nothing more to deliver (or the consumer is gone).
                Some(StatusCode::NOT_FOUND) => {
                    ended = "nothing left to deliver";
                    break;
                }
                Some(StatusCode::TIMEOUT)
                    if fence_out
                        && msg
                            .description
                            .as_deref()
                            .is_some_and(|d| d.contains(REQUESTS_PENDING)) =>
                {
                    fence_out = false;
                    self.outstanding = self.outstanding.saturating_sub(1);
                }
                // A status without a pending count while the fence is out (a 409 such as
                // "Exceeded MaxWaiting") answers the fence, not an earlier request: counting it
                // as "everything owed" would end the wait while deliveries are still coming.
                Some(_)
                    if fence_out
                        && msg
                            .headers
                            .as_ref()
                            .and_then(|h| h.get("Nats-Pending-Messages"))
                            .is_none() =>
                {
                    fence_out = false;
                    self.outstanding = self.outstanding.saturating_sub(1);
                }
                Some(_) => self.request_ended(&msg),
            }
        }
        tracing::debug!(broker = "nats", subject = %self.next_subject, waited = ?waited.elapsed(), ended, "closing: the server is done sending");
        // 2. No new deliveries, and none lost on the way: draining sends UNSUB then PING. The
        //    server sends nothing to the inbox after handling the UNSUB, and everything it sent
        //    before arrives ahead of the PONG, after which the subscription ends. (A plain
        //    unsubscribe closes the receiver at once, dropping what is still on the wire.)
        // 3. Hand back, with -NAK, the deliveries received but never handed out and those
        //    handed out but left unsettled (Manual, cancelled by the graceful timeout), so
        //    another consumer gets them now rather than after ack_wait.
        let drained = self.subscriber.drain().await;
        if drained.is_ok() {
            let deadline = tokio::time::Instant::now() + DRAIN_LIMIT;
            loop {
                match tokio::time::timeout_at(deadline, self.subscriber.next()).await {
                    Ok(Some(msg)) => keep(msg),
                    Ok(None) => break,
                    Err(_) => {
                        // No PONG (connection lost?): what is still on its way comes back
                        // after ack_wait.
                        tracing::warn!(broker = "nats", subject = %self.next_subject, "pull inbox not drained in time");
                        break;
                    }
                }
            }
        }
        // Whatever is buffered already (all of it, if draining could not even start).
        while let Some(Some(msg)) = self.subscriber.next().now_or_never() {
            keep(msg);
        }
        give_back.extend(self.shared.unsettled().drain().map(|(_, reply)| reply));
        if !give_back.is_empty() {
            tracing::debug!(
                broker = "nats",
                count = give_back.len(),
                "handing unsettled messages back (-NAK)"
            );
        }
        for reply in give_back {
            self.shared
                .client
                .publish(reply, Bytes::from_static(b"-NAK"))
                .await
                .map_err(|e| BrokerError::operation(KIND, "-NAK", e))?;
        }
        self.shared
            .client
            .flush()
            .await
            .map_err(|e| BrokerError::operation(KIND, "flush", e))?;
        drained.map_err(|e| BrokerError::operation(KIND, "unsubscribe", e))
    }
}

/// Settles one JetStream delivery by publishing to its ack subject.
struct JetStreamSettler {
    shared: Arc<Shared>,
    key: Option<u64>,
    msg: NatsMessage,
}

impl JetStreamSettler {
    /// The error for a settlement of a delivery whose consumer was deleted (see
    /// [`Shared::retired`]).
    fn retired(&self) -> Option<BrokerError> {
        self.shared.retired.load(Ordering::Acquire).then(|| BrokerError::Invalid {
            broker: KIND,
            message: "the JetStream consumer that delivered this message was deleted and recreated; nothing is sent for it, the recreated consumer delivers it again".into(),
        })
    }

    fn send(&self, payload: Bytes, operation: &'static str) -> SettleFuture<'_> {
        if let Some(e) = self.retired() {
            return SettleFuture::ready(Err(e));
        }
        let Some(reply) = self.msg.message().reply.clone() else {
            return SettleFuture::ready(Err(BrokerError::Invalid {
                broker: KIND,
                message: "a JetStream delivery without an ack subject cannot be settled".into(),
            }));
        };
        SettleFuture::new(async move {
            self.shared
                .client
                .publish(reply, payload)
                .await
                .map_err(|e| BrokerError::operation(KIND, operation, e))
        })
    }

    /// `+ACK` as a request: the server answers once it has recorded the ack (bounded by the
    /// client's request timeout). An error means the handler must not run.
    fn confirmed_ack(&self) -> SettleFuture<'_> {
        if let Some(e) = self.retired() {
            return SettleFuture::ready(Err(e));
        }
        let Some(reply) = self.msg.message().reply.clone() else {
            return SettleFuture::ready(Err(BrokerError::Invalid {
                broker: KIND,
                message: "a JetStream delivery without an ack subject cannot be settled".into(),
            }));
        };
        SettleFuture::new(async move {
            self.shared
                .client
                .request(reply, Bytes::from_static(b"+ACK"))
                .await
                .map_err(|e| BrokerError::operation(KIND, "+ACK (confirmed)", e))?;
            if let Some(key) = self.key {
                self.shared.unsettled().remove(&key);
            }
            Ok(())
        })
    }

    /// Sends a settlement, and only once it is on its way stops tracking the delivery: one
    /// whose settlement was never sent (the future dropped by the graceful timeout, or the
    /// publish failing) stays in the list that `close` hands back with `-NAK`.
    fn settle_with(&self, payload: Bytes, operation: &'static str) -> SettleFuture<'_> {
        SettleFuture::new(async move {
            self.send(payload, operation).await?;
            if let Some(key) = self.key {
                self.shared.unsettled().remove(&key);
            }
            Ok(())
        })
    }
}

impl Settler for JetStreamSettler {
    fn settle(&self, settlement: Settlement) -> SettleFuture<'_> {
        match settlement {
            Settlement::Ack if self.shared.confirm_ack => self.confirmed_ack(),
            Settlement::Ack => self.settle_with(Bytes::from_static(b"+ACK"), "+ACK"),
            Settlement::Nack { delay } => match delay.filter(|d| !d.is_zero()) {
                None => self.settle_with(Bytes::from_static(b"-NAK"), "-NAK"),
                Some(d) => self.settle_with(
                    Bytes::from(format!("-NAK {{\"delay\":{}}}", d.as_nanos())),
                    "-NAK",
                ),
            },
            Settlement::Reject => self.settle_with(Bytes::from_static(b"+TERM"), "+TERM"),
        }
    }

    fn in_progress(&self) -> SettleFuture<'_> {
        self.send(Bytes::from_static(b"+WPI"), "+WPI")
    }

    fn superseded(&self) -> bool {
        self.shared.retired.load(Ordering::Acquire)
    }

    fn raw(&self) -> Option<&(dyn std::any::Any + Send + Sync)> {
        Some(&self.msg)
    }
}
