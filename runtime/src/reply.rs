//! Requests waiting for their replies, for broker crates that implement
//! [`Broker::request_message`](crate::Broker::request_message) over one reply address per
//! client (a Kafka reply topic, an MQTT response topic): the request registers its
//! `correlation_id` before it is published, the client's reply reader hands each reply over
//! with [`PendingReplies::deliver`], and the entry goes away however the request ends (reply,
//! timeout, error, its future dropped), so a late reply finds no one and nothing piles up.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use brook_caps::BrokerKind;
use tokio::sync::oneshot;

use crate::broker::Outgoing;
use crate::error::BrokerError;
use crate::message::Message;

type Map = HashMap<String, (u64, oneshot::Sender<Message>)>;

/// Requests waiting for a reply, by correlation id. Each entry has a token, so that a request
/// removes only its own entry (two requests may, by mistake, share an id: the later wins).
#[derive(Default)]
pub struct PendingReplies {
    map: Mutex<Map>,
    next: AtomicU64,
}

impl PendingReplies {
    fn lock(&self) -> MutexGuard<'_, Map> {
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Hands `reply` to the request waiting for `correlation_id`; `false` (the reply is
    /// dropped) when none is: a late reply, or one for another client.
    pub fn deliver(&self, correlation_id: &str, reply: Message) -> bool {
        match self.lock().remove(correlation_id) {
            // The request may give up in between: the reply is dropped with it.
            Some((_, waiting)) => {
                let _ = waiting.send(reply);
                true
            }
            None => false,
        }
    }

    /// How many requests are waiting.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no request is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Registers `message`'s correlation id (set first if it has none), publishes it with
    /// `publish`, and waits for its reply: the whole exchange bounded by `timeout`
    /// ([`BrokerError::RequestTimeout`]). The caller has set the message's `reply_to`.
    pub async fn request<F, Fut>(
        &self,
        broker: BrokerKind,
        mut message: Outgoing,
        timeout: Duration,
        publish: F,
    ) -> Result<Message, BrokerError>
    where
        F: FnOnce(Outgoing) -> Fut,
        Fut: Future<Output = Result<(), BrokerError>>,
    {
        let id = message.ensure_correlation_id();
        let destination = message.destination.clone();
        let (tx, rx) = oneshot::channel();
        let token = self.next.fetch_add(1, Ordering::Relaxed);
        // Before publishing: a reply may come before the publish is confirmed.
        self.lock().insert(id.clone(), (token, tx));
        let _entry = Entry {
            pending: self,
            id,
            token,
        };
        let exchange = async {
            publish(message).await?;
            rx.await.map_err(|_| {
                BrokerError::operation(
                    broker,
                    "request",
                    "the reply reader stopped, or another request took this correlation id",
                )
            })
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(BrokerError::RequestTimeout {
                broker,
                destination,
                timeout,
            }),
        }
    }
}

/// Removes a request's entry when the request ends, however it ends.
struct Entry<'a> {
    pending: &'a PendingReplies,
    id: String,
    token: u64,
}

impl Drop for Entry<'_> {
    fn drop(&mut self) {
        let mut map = self.pending.lock();
        if map.get(&self.id).is_some_and(|(t, _)| *t == self.token) {
            map.remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn reply(body: &'static str) -> Message {
        Message::detached(BrokerKind::Memory, "replies".into(), body.into())
    }

    #[tokio::test]
    async fn a_reply_reaches_its_request_and_a_late_one_finds_no_one() {
        let pending = Arc::new(PendingReplies::default());
        let p = pending.clone();
        let answered = pending
            .request(
                BrokerKind::Memory,
                Outgoing::new("q", "ask").with_correlation_id("c-1"),
                Duration::from_secs(5),
                |m| async move {
                    assert!(p.deliver(m.headers.get("correlation_id").unwrap(), reply("yes")));
                    Ok(())
                },
            )
            .await
            .unwrap();
        assert_eq!(&answered.body()[..], b"yes");
        assert!(pending.is_empty());

        let err = pending
            .request(
                BrokerKind::Memory,
                Outgoing::new("q", "ask").with_correlation_id("c-2"),
                Duration::from_millis(20),
                |_| async { Ok(()) },
            )
            .await
            .unwrap_err();
        assert!(matches!(err, BrokerError::RequestTimeout { .. }), "{err}");
        assert!(pending.is_empty(), "the timed-out request left nothing");
        assert!(
            !pending.deliver("c-2", reply("late")),
            "the late reply is dropped"
        );
    }

    #[tokio::test]
    async fn a_failed_publish_leaves_nothing_behind() {
        let pending = PendingReplies::default();
        let err = pending
            .request(
                BrokerKind::Memory,
                Outgoing::new("q", "ask"),
                Duration::from_secs(5),
                |_| async { Err(BrokerError::Closed(BrokerKind::Memory)) },
            )
            .await
            .unwrap_err();
        assert!(matches!(err, BrokerError::Closed(_)));
        assert!(pending.is_empty());
    }
}
