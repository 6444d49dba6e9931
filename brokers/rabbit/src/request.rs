//! Request/reply over RabbitMQ's [direct reply-to](https://www.rabbitmq.com/docs/direct-reply-to),
//! as FastStream's `broker.request` does it.
//!
//! A broker client keeps one reply channel (on a connection of its own, opened on the first
//! request): it consumes the pseudo-queue `amq.rabbitmq.reply-to` with `no_ack` and publishes
//! every request itself, with `reply_to = amq.rabbitmq.reply-to` (RabbitMQ requires both on
//! the same channel and rewrites the address into one that routes back to it). One task reads
//! the replies and hands each to the request waiting for its `correlation_id`. A request's
//! entry leaves the map when its reply arrives, when it times out and when its future is
//! dropped, so a late reply finds no one and is dropped, and nothing accumulates.
//!
//! When the channel or its connection dies, waiting requests fail at once (their replies
//! could never arrive) and the next request opens a new channel (and connection if needed).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use brook_runtime::{BrokerError, BrokerKind, Message, Outgoing};
use bytes::Bytes;
use futures_util::StreamExt as _;
use lapin::message::Delivery;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{Channel, Connection};
use tokio::sync::oneshot;
use tokio::task::AbortHandle;

use crate::broker::{confirm_channel, Inner, Nacked};
use crate::message::{headers_from, properties_from};

const KIND: BrokerKind = BrokerKind::Rabbit;

/// The pseudo-queue of direct reply-to.
pub(crate) const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// The reply channel of a broker client.
pub(crate) struct ReplyChannel {
    connection: Connection,
    channel: Channel,
    waiting: Arc<Waiting>,
    dispatcher: AbortHandle,
}

impl ReplyChannel {
    fn alive(&self) -> bool {
        self.connection.status().connected()
            && self.channel.status().connected()
            && !self.waiting.lock().closed
    }

    /// Stops the dispatcher and fails the requests still waiting.
    fn retire(&self) {
        self.dispatcher.abort();
        self.waiting.close();
    }

    /// Retires the channel and closes its connection.
    pub(crate) async fn close(self) {
        self.retire();
        if let Err(e) = self.connection.close(200, "bye".into()).await {
            tracing::debug!(error = %e, "closing the request connection");
        }
    }
}

/// The requests waiting for a reply, by correlation id.
#[derive(Default)]
struct Waiting(Mutex<WaitingState>);

#[derive(Default)]
struct WaitingState {
    /// The token tells a request's own entry from a later one with the same id.
    entries: HashMap<String, (u64, oneshot::Sender<Delivery>)>,
    next_token: u64,
    /// The channel is gone: nothing registers any more.
    closed: bool,
}

impl Waiting {
    fn lock(&self) -> MutexGuard<'_, WaitingState> {
        // The state stays consistent whatever panicked while holding the lock.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits for the reply to `id`; `None` if the channel is already gone.
    fn register(self: &Arc<Self>, id: &str) -> Result<Option<Pending>, BrokerError> {
        let mut state = self.lock();
        if state.closed {
            return Ok(None);
        }
        if state.entries.contains_key(id) {
            return Err(BrokerError::Invalid {
                broker: KIND,
                message: format!(
                    "a request with correlation_id `{id}` is already waiting for its reply; give each request its own id"
                ),
            });
        }
        let token = state.next_token;
        state.next_token += 1;
        let (tx, rx) = oneshot::channel();
        state.entries.insert(id.to_owned(), (token, tx));
        Ok(Some(Pending {
            waiting: self.clone(),
            id: id.to_owned(),
            token,
            rx,
        }))
    }

    /// The waiting request's sender, taken out of the map.
    fn take(&self, id: &str) -> Option<oneshot::Sender<Delivery>> {
        self.lock().entries.remove(id).map(|(_, tx)| tx)
    }

    /// Drops every sender (their requests fail) and refuses new ones.
    fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        state.entries.clear();
    }
}

/// One request's place in [`Waiting`]; leaving it (reply, timeout, cancellation) removes it.
struct Pending {
    waiting: Arc<Waiting>,
    id: String,
    token: u64,
    rx: oneshot::Receiver<Delivery>,
}

impl Drop for Pending {
    fn drop(&mut self) {
        let mut state = self.waiting.lock();
        if state
            .entries
            .get(&self.id)
            .is_some_and(|(token, _)| *token == self.token)
        {
            state.entries.remove(&self.id);
        }
    }
}

/// The reply channel closed before the reply came.
#[derive(Debug, thiserror::Error)]
#[error("the reply channel closed (connection lost?) before the reply arrived")]
struct ReplyChannelLost;

/// A request, registered and ready to be published.
pub(crate) struct Request {
    channel: Channel,
    pending: Pending,
}

impl Inner {
    /// Registers a request for `correlation_id` on the live reply channel (opened or reopened
    /// here, within the connect timeout).
    pub(crate) async fn prepare_request(
        &self,
        correlation_id: &str,
    ) -> Result<Request, BrokerError> {
        // A channel found alive may close just before registering: then once more, on a new one.
        for _ in 0..2 {
            let (channel, waiting) = self.reply_channel().await?;
            if let Some(pending) = waiting.register(correlation_id)? {
                return Ok(Request { channel, pending });
            }
        }
        Err(BrokerError::operation(
            KIND,
            "basic.consume",
            ReplyChannelLost,
        ))
    }

    /// The live reply channel and its waiting requests.
    async fn reply_channel(&self) -> Result<(Channel, Arc<Waiting>), BrokerError> {
        let mut slot = self.requester.lock().await;
        if let Some(rc) = slot.as_ref() {
            if rc.alive() {
                return Ok((rc.channel.clone(), rc.waiting.clone()));
            }
        }
        // Dead: a new channel, on the same connection if that one still works.
        let old = slot.take();
        if let Some(old) = &old {
            old.retire();
        }
        let connection = match old {
            Some(old) if old.connection.status().connected() => old.connection,
            _ => self.open("brook requester").await?,
        };
        let channel = confirm_channel(&connection).await?;
        let options = BasicConsumeOptions {
            no_ack: true,
            ..BasicConsumeOptions::default()
        };
        let deliveries = channel
            .basic_consume(
                DIRECT_REPLY_TO.into(),
                ShortString::from(""),
                options,
                FieldTable::default(),
            )
            .await
            .map_err(|e| BrokerError::operation(KIND, "basic.consume", e))?;
        let waiting = Arc::new(Waiting::default());
        let dispatcher = tokio::spawn(dispatch(deliveries, waiting.clone())).abort_handle();
        *slot = Some(ReplyChannel {
            connection,
            channel: channel.clone(),
            waiting: waiting.clone(),
            dispatcher,
        });
        Ok((channel, waiting))
    }

    /// The reply channel, taken out for closing.
    pub(crate) async fn take_requester(&self) -> Option<ReplyChannel> {
        self.requester.lock().await.take()
    }
}

impl Request {
    /// Publishes `message` (with `reply_to` and `correlation_id` set) to `exchange` /
    /// `routing_key` on the reply channel and waits for the reply; the caller bounds it.
    pub(crate) async fn send(
        self,
        exchange: &str,
        routing_key: &str,
        message: &Outgoing,
    ) -> Result<Message, BrokerError> {
        let Request {
            channel,
            mut pending,
        } = self;
        let published = async {
            channel
                .basic_publish(
                    exchange.into(),
                    routing_key.into(),
                    BasicPublishOptions::default(),
                    &message.body,
                    properties_from(&message.headers),
                )
                .await?
                .await
        }
        .await
        .map_err(|e| BrokerError::operation(KIND, "basic.publish", e))?;
        if published.is_nack() {
            return Err(BrokerError::operation(KIND, "basic.publish", Nacked));
        }
        match (&mut pending.rx).await {
            Ok(mut delivery) => {
                let body = Bytes::from(std::mem::take(&mut delivery.data));
                Ok(Message::detached(KIND, DIRECT_REPLY_TO.into(), body)
                    .with_headers(headers_from(&delivery.properties)))
            }
            Err(_) => Err(BrokerError::operation(
                KIND,
                "reply consume",
                ReplyChannelLost,
            )),
        }
    }
}

/// Hands each reply to the request waiting for its correlation id, until the channel ends.
async fn dispatch(mut deliveries: lapin::Consumer, waiting: Arc<Waiting>) {
    while let Some(next) = deliveries.next().await {
        match next {
            Ok(delivery) => {
                let id = delivery
                    .properties
                    .correlation_id()
                    .as_ref()
                    .map(|id| id.as_str().to_owned());
                match id.as_deref().and_then(|id| waiting.take(id)) {
                    // The request may have just given up: then the reply is dropped with it.
                    Some(tx) => drop(tx.send(delivery)),
                    None => tracing::debug!(
                        correlation_id = id.as_deref().unwrap_or(""),
                        "dropping a reply no request waits for (it came after the timeout)"
                    ),
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "the reply channel failed");
                break;
            }
        }
    }
    waiting.close();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(waiting: &Waiting) -> usize {
        waiting.lock().entries.len()
    }

    #[test]
    fn a_request_that_gives_up_leaves_nothing_and_its_late_reply_finds_no_one() {
        let waiting = Arc::new(Waiting::default());
        let pending = waiting.register("a").unwrap().unwrap();
        assert_eq!(entries(&waiting), 1);
        drop(pending); // timeout or cancellation
        assert_eq!(entries(&waiting), 0);
        assert!(waiting.take("a").is_none(), "the late reply is dropped");
    }

    #[test]
    fn an_answered_request_does_not_remove_a_newer_one_with_the_same_id() {
        let waiting = Arc::new(Waiting::default());
        let first = waiting.register("a").unwrap().unwrap();
        assert!(
            waiting.register("a").is_err(),
            "the same id twice in flight"
        );
        let _reply = waiting.take("a").unwrap(); // the dispatcher took the first's sender
        let second = waiting.register("a").unwrap().unwrap();
        drop(first);
        assert_eq!(entries(&waiting), 1, "the second still waits");
        drop(second);
        assert_eq!(entries(&waiting), 0);
    }

    #[tokio::test]
    async fn a_closed_channel_fails_waiting_requests_and_refuses_new_ones() {
        let waiting = Arc::new(Waiting::default());
        let mut pending = waiting.register("a").unwrap().unwrap();
        waiting.close();
        assert!((&mut pending.rx).await.is_err());
        assert!(waiting.register("b").unwrap().is_none());
    }
}
