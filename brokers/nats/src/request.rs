//! Request/reply over a core NATS inbox: one wildcard subscription per connection
//! (`<inbox>.*`, made on the first request), one token per request under it.
//!
//! async-nats' own `request` is not used: it picks the reply subject itself (so the request
//! cannot also carry it in the `reply_to` header, which JetStream handlers need, since there the
//! NATS reply subject is the ack subject), and it keeps the entry of a request that timed out
//! until a reply comes, which may be never. Here a request's entry is removed when its wait
//! ends, whichever way, so a late reply finds nothing and is dropped.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use async_nats::{Client, StatusCode};
use brook_runtime::headers::CORRELATION_ID;
use brook_runtime::BrokerError;
use futures_util::StreamExt as _;
use tokio::sync::oneshot;

use crate::message::KIND;

/// One request waiting for its reply.
struct Waiter {
    correlation_id: String,
    reply: oneshot::Sender<async_nats::Message>,
}

/// What the dispatch task and the requests share.
struct State {
    waiting: Mutex<HashMap<u64, Waiter>>,
    /// The inbox subscription ended (the connection was closed): no reply can come.
    ended: AtomicBool,
}

impl State {
    fn waiting(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Waiter>> {
        // A map of senders stays consistent after a panic elsewhere.
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The request inbox of one connection.
pub(crate) struct Requests {
    /// `<inbox>.`: a request's reply subject is this plus its token.
    prefix: String,
    next: AtomicU64,
    state: Arc<State>,
    /// The dispatch task: aborted with the connection's last handle, so that it (and its
    /// subscription, which keeps the client alive) does not outlive the broker.
    task: tokio::task::AbortHandle,
}

impl Drop for Requests {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Requests {
    /// Subscribes the inbox and starts dispatching replies.
    pub(crate) async fn start(client: &Client) -> Result<Requests, BrokerError> {
        let prefix = format!("{}.", client.new_inbox());
        let mut subscriber = client
            .subscribe(format!("{prefix}*"))
            .await
            .map_err(|e| BrokerError::operation(KIND, "subscribe (request inbox)", e))?;
        let state = Arc::new(State {
            waiting: Mutex::new(HashMap::new()),
            ended: AtomicBool::new(false),
        });
        let shared = state.clone();
        let tokens = prefix.clone();
        let task = tokio::spawn(async move {
            while let Some(reply) = subscriber.next().await {
                dispatch(&shared, &tokens, reply);
            }
            // Closed for good: fail those still waiting (dropping their senders) and any later
            // request on this connection.
            shared.ended.store(true, Ordering::Release);
            shared.waiting().clear();
        });
        Ok(Requests {
            prefix,
            next: AtomicU64::new(0),
            state,
            task: task.abort_handle(),
        })
    }

    /// Registers a request: its reply subject, and the wait for its reply (which unregisters
    /// it when dropped).
    pub(crate) fn register(&self, correlation_id: String) -> Result<Pending, BrokerError> {
        if self.state.ended.load(Ordering::Acquire) {
            return Err(BrokerError::Closed(KIND));
        }
        let token = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.state.waiting().insert(
            token,
            Waiter {
                correlation_id,
                reply: tx,
            },
        );
        Ok(Pending {
            subject: format!("{}{token}", self.prefix),
            token,
            state: self.state.clone(),
            reply: rx,
        })
    }
}

/// Hands a reply to the request waiting for it; drops it if none is (it came too late), or if
/// it carries another request's correlation id.
fn dispatch(state: &State, prefix: &str, reply: async_nats::Message) {
    let Some(token) = reply
        .subject
        .as_str()
        .strip_prefix(prefix)
        .and_then(|t| t.parse::<u64>().ok())
    else {
        return;
    };
    let mut waiting = state.waiting();
    let Some(waiter) = waiting.get(&token) else {
        tracing::debug!(broker = "nats", subject = %reply.subject, "dropping a reply nobody waits for (too late)");
        return;
    };
    // A reply without a correlation id (a plain NATS responder, the server's "no responders")
    // is matched by its subject alone.
    let id = reply
        .headers
        .as_ref()
        .and_then(|h| h.get(CORRELATION_ID))
        .map(|v| v.as_str());
    if id.is_some_and(|id| id != waiter.correlation_id) && reply.status.is_none() {
        tracing::debug!(broker = "nats", subject = %reply.subject, correlation_id = id, "dropping a reply with another request's correlation id");
        return;
    }
    if let Some(waiter) = waiting.remove(&token) {
        // The requester may have given up meanwhile: then the reply is dropped.
        let _ = waiter.reply.send(reply);
    }
}

/// A registered request.
pub(crate) struct Pending {
    /// Where its reply goes.
    pub(crate) subject: String,
    token: u64,
    state: Arc<State>,
    reply: oneshot::Receiver<async_nats::Message>,
}

impl Pending {
    /// The reply; `subject` names the request's destination in errors.
    pub(crate) async fn reply(
        &mut self,
        subject: &str,
    ) -> Result<async_nats::Message, BrokerError> {
        let reply = (&mut self.reply)
            .await
            .map_err(|_| BrokerError::Closed(KIND))?;
        if reply.status == Some(StatusCode::NO_RESPONDERS) {
            return Err(BrokerError::operation(
                KIND,
                "request",
                format!("no responders: nothing subscribes to `{subject}`"),
            ));
        }
        Ok(reply)
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.state.waiting().remove(&self.token);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(subject: &str, correlation_id: Option<&str>) -> async_nats::Message {
        let headers = correlation_id.map(|id| {
            let mut h = async_nats::HeaderMap::new();
            h.insert(CORRELATION_ID, id);
            h
        });
        async_nats::Message {
            subject: subject.into(),
            reply: None,
            payload: "r".into(),
            headers,
            status: None,
            description: None,
            length: 0,
        }
    }

    fn state() -> State {
        State {
            waiting: Mutex::new(HashMap::new()),
            ended: AtomicBool::new(false),
        }
    }

    #[test]
    fn replies_are_matched_by_token_and_correlation_id_and_late_ones_dropped() {
        let state = state();
        let (tx, mut rx) = oneshot::channel();
        state.waiting().insert(
            7,
            Waiter {
                correlation_id: "c-7".into(),
                reply: tx,
            },
        );
        // Another request's id on this token: dropped, still waiting.
        dispatch(&state, "_INBOX.x.", reply("_INBOX.x.7", Some("c-8")));
        assert!(rx.try_recv().is_err());
        assert_eq!(state.waiting().len(), 1);
        // Unknown token, foreign subject: dropped.
        dispatch(&state, "_INBOX.x.", reply("_INBOX.x.9", Some("c-7")));
        dispatch(&state, "_INBOX.x.", reply("elsewhere", Some("c-7")));
        assert_eq!(state.waiting().len(), 1);
        dispatch(&state, "_INBOX.x.", reply("_INBOX.x.7", Some("c-7")));
        assert_eq!(&rx.try_recv().unwrap().payload[..], b"r");
        assert!(state.waiting().is_empty());
        // Late: nobody waits any more.
        dispatch(&state, "_INBOX.x.", reply("_INBOX.x.7", Some("c-7")));
        assert!(state.waiting().is_empty());
    }
}
