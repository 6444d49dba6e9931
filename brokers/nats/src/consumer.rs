//! Consumers: a core NATS subscription, or a JetStream pull loop.
//!
//! The JetStream pull loop is written here rather than taken from async-nats's `Stream`
//! because brook must own the inbox subscription: on [`Consumer::close`] it unsubscribes first
//! (so no new delivery can land on a dead inbox), then hands every message it received but
//! did not settle back to the server with `-NAK`, so a fresh consumer gets them at once instead
//! of after `ack_wait`. It also keeps per-message work to a minimum (the delivery metadata is
//! parsed from the ack subject; no JetStream context is cloned per message).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_nats::{Client, StatusCode, Subject, Subscriber};
use brook_runtime::headers::REPLY_TO;
use brook_runtime::{
    BrokerError, Consumer, Message, MessageId, SettleFuture, Settlement, Settler, Subscription,
};
use bytes::Bytes;
use futures_util::{FutureExt as _, StreamExt as _};

use crate::message::{self, JetStreamInfo, NatsMessage, KIND};
use crate::setup::Target;
use crate::Conn;

/// How long a pull request waits on the server for messages before it expires.
const PULL_EXPIRES: Duration = Duration::from_secs(30);
/// The server sends a heartbeat this often while a pull request waits without messages.
const PULL_HEARTBEAT: Duration = Duration::from_secs(1);
/// With neither a message nor a heartbeat for this long, the pull request is taken as lost (a
/// reconnection drops it on the server) and a new one is sent.
const PULL_SILENCE: Duration = Duration::from_secs(3);
/// Default number of messages per pull request.
const DEFAULT_BATCH: usize = 64;

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

pub(crate) async fn core(conn: &Conn, sub: &Subscription) -> Result<NatsConsumer, BrokerError> {
    if let Some(arg) = ["ack_wait_ms", "create"]
        .into_iter()
        .find(|a| sub.bool(a).is_some() || sub.int(a).is_some())
    {
        return Err(BrokerError::Invalid {
            broker: KIND,
            message: format!(
                "`{arg}` configures JetStream; add stream = \"...\" to consume `{}` through JetStream",
                sub.source_name()
            ),
        });
    }
    let subject = sub.source_name().to_owned();
    let subscriber = match sub.str("queue_group") {
        Some(group) => conn.client.queue_subscribe(subject, group.to_owned()).await,
        None => conn.client.subscribe(subject).await,
    }
    .map_err(|e| BrokerError::operation(KIND, "subscribe", e))?;
    Ok(NatsConsumer(Inner::Core(CoreConsumer {
        subscriber,
        topic: sub.source_name().into(),
    })))
}

struct CoreConsumer {
    subscriber: Subscriber,
    topic: Arc<str>,
}

impl CoreConsumer {
    async fn next(&mut self) -> Option<Result<Message, BrokerError>> {
        let msg = self.subscriber.next().await?;
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
    unsettled: Mutex<HashMap<u64, Subject>>,
}

impl Shared {
    fn unsettled(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Subject>> {
        // A map of pending acks stays usable after a panic elsewhere.
        self.unsettled
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

pub(crate) async fn jetstream(
    conn: &Conn,
    sub: &Subscription,
    target: Target,
) -> Result<NatsConsumer, BrokerError> {
    let mut batch = sub
        .int("batch")
        .map_or(DEFAULT_BATCH, |b| usize::try_from(b).unwrap_or(usize::MAX))
        .max(1);
    if let Some(max) = sub.int("max_ack_pending").filter(|m| *m > 0) {
        // The server never has more than max_ack_pending out at once; asking for more only
        // leaves requests waiting.
        batch = batch.min(usize::try_from(max).unwrap_or(usize::MAX));
    }
    let inbox = conn.client.new_inbox();
    let subscriber = conn
        .client
        .subscribe(inbox.clone())
        .await
        .map_err(|e| BrokerError::operation(KIND, "subscribe", e))?;
    let request = serde_json::json!({
        "batch": batch,
        "expires": PULL_EXPIRES.as_nanos() as u64,
        "idle_heartbeat": PULL_HEARTBEAT.as_nanos() as u64,
    });
    tracing::debug!(broker = "nats", stream = %target.stream, consumer = %target.consumer, batch, "pull consumer ready");
    Ok(NatsConsumer(Inner::JetStream(JetStreamConsumer {
        shared: Arc::new(Shared {
            client: conn.client.clone(),
            unsettled: Mutex::new(HashMap::new()),
        }),
        subscriber,
        inbox: inbox.into(),
        next_subject: format!(
            "$JS.API.CONSUMER.MSG.NEXT.{}.{}",
            target.stream, target.consumer
        )
        .into(),
        request: Bytes::from(request.to_string()),
        batch,
        outstanding: 0,
        topic: sub.source_name().into(),
        ended: false,
    })))
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
                    // The connection was closed for good.
                    self.ended = true;
                    return None;
                }
                Err(_) => {
                    tracing::debug!(broker = "nats", subject = %self.next_subject, "no heartbeat: pulling again");
                    self.outstanding = 0;
                    continue;
                }
            };
            match msg.status {
                None | Some(StatusCode::OK) => return Some(Ok(self.deliver(msg))),
                Some(StatusCode::IDLE_HEARTBEAT) => continue,
                Some(StatusCode::TIMEOUT) | Some(StatusCode::REQUEST_TERMINATED) => {
                    // A request expired or was cut short: forget what it still owed us.
                    let left = msg
                        .headers
                        .as_ref()
                        .and_then(|h| h.get("Nats-Pending-Messages"))
                        .and_then(|v| v.as_str().parse::<usize>().ok())
                        .unwrap_or(self.outstanding);
                    self.outstanding = self.outstanding.saturating_sub(left);
                    let description = msg.description.unwrap_or_default();
                    if description.contains("Consumer Deleted") {
                        self.ended = true;
                        return Some(Err(BrokerError::Invalid {
                            broker: KIND,
                            message: format!(
                                "the JetStream consumer behind {} was deleted",
                                self.next_subject
                            ),
                        }));
                    }
                    if msg.status == Some(StatusCode::REQUEST_TERMINATED) {
                        tracing::debug!(broker = "nats", %description, "pull request terminated");
                    }
                }
                Some(StatusCode::NO_RESPONDERS) => {
                    // JetStream is not answering (restarting, or the consumer's stream is
                    // gone): report it, and do not hammer the server meanwhile.
                    self.outstanding = 0;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    return Some(Err(BrokerError::operation(
                        KIND,
                        "pull request",
                        format!("no responders on {}", self.next_subject),
                    )));
                }
                Some(other) => {
                    tracing::warn!(broker = "nats", status = %other, description = ?msg.description, "unexpected status on a pull request");
                }
            }
        }
    }

    fn deliver(&mut self, msg: async_nats::Message) -> Message {
        self.outstanding = self.outstanding.saturating_sub(1);
        let info = msg
            .reply
            .as_ref()
            .and_then(|r| JetStreamInfo::parse(r.as_str()))
            .map(|i| (i.delivered, i.stream_sequence, i.consumer_sequence));
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

    async fn close(mut self) -> Result<(), BrokerError> {
        // 1. No new deliveries: the server skips pull requests whose inbox has no interest.
        let unsubscribed = self.subscriber.unsubscribe().await;
        // 2. Deliveries that reached us but were never handed out, and
        // 3. those handed out but left unsettled (Manual, cancelled by the graceful timeout):
        //    give them back now rather than after ack_wait.
        let mut give_back: Vec<Subject> = Vec::new();
        // Only what is already buffered: never wait here (the inbox is closed or dead).
        while let Some(Some(msg)) = self.subscriber.next().now_or_never() {
            if matches!(msg.status, None | Some(StatusCode::OK)) {
                if let Some(reply) = msg.reply {
                    give_back.push(reply);
                }
            }
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
        unsubscribed.map_err(|e| BrokerError::operation(KIND, "unsubscribe", e))
    }
}

/// Settles one JetStream delivery by publishing to its ack subject.
struct JetStreamSettler {
    shared: Arc<Shared>,
    key: Option<u64>,
    msg: NatsMessage,
}

impl JetStreamSettler {
    fn send(&self, payload: Bytes, operation: &'static str) -> SettleFuture<'_> {
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
}

impl Settler for JetStreamSettler {
    fn settle(&self, settlement: Settlement) -> SettleFuture<'_> {
        if let Some(key) = self.key {
            self.shared.unsettled().remove(&key);
        }
        match settlement {
            Settlement::Ack => self.send(Bytes::from_static(b"+ACK"), "+ACK"),
            Settlement::Nack { delay } => match delay.filter(|d| !d.is_zero()) {
                None => self.send(Bytes::from_static(b"-NAK"), "-NAK"),
                Some(d) => self.send(
                    Bytes::from(format!("-NAK {{\"delay\":{}}}", d.as_nanos())),
                    "-NAK",
                ),
            },
            Settlement::Reject => self.send(Bytes::from_static(b"+TERM"), "+TERM"),
        }
    }

    fn in_progress(&self) -> SettleFuture<'_> {
        self.send(Bytes::from_static(b"+WPI"), "+WPI")
    }

    fn raw(&self) -> Option<&(dyn std::any::Any + Send + Sync)> {
        Some(&self.msg)
    }
}
