//! Request/reply over pub/sub, as FastStream's Redis RPC does it: each request gets a channel
//! of its own, subscribed before the request is published (so that a fast reply is not
//! missed) and unsubscribed once the reply came or the wait ended, whatever the request was
//! sent to (channel, list or stream). The reply is the first message on that channel whose
//! `correlation_id` is the request's (or that has none: a raw Redis client's).
//!
//! One subscriber connection per [`RedisBroker`](crate::RedisBroker) serves all its requests;
//! a task routes what arrives to the waiting request by channel name, and drops the rest
//! (a reply that came after its request gave up).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use brook_runtime::headers::CORRELATION_ID;
use brook_runtime::{BrokerError, BrokerKind, Message};
use fred::clients::SubscriberClient;
use fred::prelude::*;
use tokio::sync::{broadcast, oneshot};

use crate::consumer;
use crate::envelope;

/// The prefix of reply channels; the rest is a random UUID.
pub(crate) const REPLY_PREFIX: &str = "brook:reply:";

type Waiting = Arc<Mutex<HashMap<String, (String, oneshot::Sender<Message>)>>>;

fn lock(waiting: &Waiting) -> MutexGuard<'_, HashMap<String, (String, oneshot::Sender<Message>)>> {
    // A panic while holding it cannot leave the map half-updated (single insert/remove).
    waiting.lock().unwrap_or_else(|e| e.into_inner())
}

/// The reply connection: a subscriber client, its resubscription task and the router.
pub(crate) struct Replies {
    client: SubscriberClient,
    waiting: Waiting,
    manage: tokio::task::JoinHandle<()>,
    router: tokio::task::JoinHandle<()>,
}

impl Replies {
    /// Starts routing replies from `client` (connected, nothing subscribed yet).
    pub(crate) fn start(client: SubscriberClient) -> Replies {
        let waiting: Waiting = Arc::default();
        let rx = client.message_rx();
        let manage = client.manage_subscriptions();
        let router = tokio::spawn(route(rx, waiting.clone()));
        Replies {
            client,
            waiting,
            manage,
            router,
        }
    }

    /// Registers a new reply channel for a request with `correlation_id` and subscribes to it.
    /// The returned [`Pending`] unsubscribes when it is finished or dropped.
    pub(crate) async fn open(&self, correlation_id: &str) -> Result<Pending<'_>, BrokerError> {
        let channel = format!(
            "{REPLY_PREFIX}{}",
            brook_runtime::output::new_correlation_id()
        );
        let (tx, rx) = oneshot::channel();
        lock(&self.waiting).insert(channel.clone(), (correlation_id.to_owned(), tx));
        // Marked subscribed before the SUBSCRIBE is sent: if it fails or the caller gives up
        // while it is in flight, the UNSUBSCRIBE in `drop` follows it on the same connection.
        let pending = Pending {
            replies: self,
            channel,
            rx: Some(rx),
            subscribed: true,
        };
        self.client
            .subscribe(pending.channel.as_str())
            .await
            .map_err(|e| BrokerError::operation(BrokerKind::Redis, "SUBSCRIBE", e))?;
        self.barrier("SUBSCRIBE").await?;
        Ok(pending)
    }

    /// Waits until Redis has run the (UN)SUBSCRIBE sent before. fred resolves those once
    /// written, and their confirmations arrive out of band; a PING on the same connection is
    /// answered only after them, so a request published after this cannot overtake its
    /// subscription.
    async fn barrier(&self, after: &'static str) -> Result<(), BrokerError> {
        self.client
            .ping::<fred::types::Value>(None)
            .await
            .map(drop)
            .map_err(|e| BrokerError::operation(BrokerKind::Redis, after, e))
    }

    /// Stops routing and disconnects.
    pub(crate) async fn close(&self) {
        self.manage.abort();
        let _ = self.client.unsubscribe_all().await;
        consumer::quit(&self.client, "reply subscriber").await;
        self.router.abort();
        lock(&self.waiting).clear();
    }
}

/// One request's reply channel.
pub(crate) struct Pending<'a> {
    replies: &'a Replies,
    /// The channel name, the request's `reply_to`.
    pub(crate) channel: String,
    rx: Option<oneshot::Receiver<Message>>,
    subscribed: bool,
}

impl Pending<'_> {
    /// The reply, or `None` if the router is gone (the broker closed).
    pub(crate) async fn reply(&mut self) -> Option<Message> {
        match self.rx.as_mut() {
            Some(rx) => rx.await.ok(),
            None => None,
        }
    }

    /// Forgets the channel and unsubscribes from it; a reply arriving now is dropped.
    pub(crate) async fn finish(mut self) {
        lock(&self.replies.waiting).remove(&self.channel);
        self.rx = None;
        if std::mem::take(&mut self.subscribed) {
            let done = match self.replies.client.unsubscribe(self.channel.as_str()).await {
                Ok(()) => self.replies.barrier("UNSUBSCRIBE").await,
                Err(e) => Err(BrokerError::operation(BrokerKind::Redis, "UNSUBSCRIBE", e)),
            };
            if let Err(error) = done {
                tracing::debug!(%error, channel = %self.channel, "Redis: could not unsubscribe a reply channel");
            }
        }
    }
}

impl Drop for Pending<'_> {
    // A request abandoned by its caller (its future dropped) still gives its channel up.
    fn drop(&mut self) {
        lock(&self.replies.waiting).remove(&self.channel);
        if self.subscribed {
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                let client = self.replies.client.clone();
                let channel = std::mem::take(&mut self.channel);
                handle.spawn(async move {
                    let _ = client.unsubscribe(channel.as_str()).await;
                });
            }
        }
    }
}

async fn route(mut rx: broadcast::Receiver<fred::types::Message>, waiting: Waiting) {
    loop {
        let m = match rx.recv().await {
            Ok(m) => m,
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!(
                    skipped = n,
                    "Redis reply subscriber fell behind; replies were dropped (raise the broker's channel capacity)"
                );
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        let channel: &str = &m.channel;
        let wire = m.value.into_bytes().unwrap_or_default();
        let (body, mut headers) = envelope::decode(&wire);
        let mut map = lock(&waiting);
        let Some((expected, _)) = map.get(channel) else {
            tracing::debug!(
                channel,
                "Redis: a reply nobody waits for (any more) is dropped"
            );
            continue;
        };
        match headers.get(CORRELATION_ID) {
            Some(id) if id != expected => {
                tracing::debug!(
                    channel,
                    correlation_id = id,
                    expected = %expected,
                    "Redis: a message with another correlation_id on a reply channel is dropped"
                );
                continue;
            }
            Some(_) => {}
            // A raw reply: the channel is the request's alone, so it answers this request.
            None => headers.insert(CORRELATION_ID, expected.clone()),
        }
        if let Some((_, tx)) = map.remove(channel) {
            let reply = Message::detached(BrokerKind::Redis, Arc::from(channel), body)
                .with_headers(headers);
            let _ = tx.send(reply);
        }
    }
}
