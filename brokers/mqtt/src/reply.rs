//! Request/reply on MQTT 5: one response topic per connection, subscribed once.
//!
//! A request carries the MQTT 5 response topic (brook's `reply_to`) and correlation data
//! (`correlation_id`). The response topic is `brook/replies/<client id>` (characters a topic
//! cannot hold replaced), subscribed at QoS 1 before the first request is published; a reader
//! task hands each reply to the request waiting for its correlation id, acks every reply, and
//! drops those nobody waits for (a request that timed out). With a persistent session the
//! subscription stays in the session, under the same name on every run; replies to requests of
//! an earlier run then arrive with ids nobody waits for, and are dropped.
//!
//! The reply route comes first among the connection's routes, so a subscriber of a wildcard
//! that also matches the response topic (`#`) does not take replies away from their requests.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Weak};
use std::time::Duration;

use brook_runtime::headers::REPLY_TO;
use brook_runtime::reply::PendingReplies;
use brook_runtime::{Broker, BrokerError, BrokerKind, Consumer, Message, Outgoing};
use rumqttc::QoS;

use crate::connection::Shared;
use crate::consumer::{MqttConsumer, SubscriberSettings};
use crate::MqttBroker;

/// The response topic of a connection and the requests waiting for replies on it.
pub(crate) struct Replies {
    /// The connection it was subscribed on (a new connection, after `close`, needs its own).
    shared: Weak<Shared>,
    topic: String,
    waiting: Arc<PendingReplies>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Replies {
    fn drop(&mut self) {
        // The reader's consumer removes the route when dropped.
        self.reader.abort();
    }
}

/// `brook/replies/<client id>`: `+`, `#`, `/` and NUL (which a topic level cannot hold, or
/// would split it) replaced with `_`, plus a hash of the id if anything was replaced, so two
/// client ids never share a response topic.
pub(crate) fn response_topic(client_id: &str) -> String {
    let level: String = client_id
        .chars()
        .map(|c| match c {
            '+' | '#' | '/' | '\0' => '_',
            c => c,
        })
        .collect();
    if level == client_id && !level.is_empty() {
        format!("brook/replies/{level}")
    } else {
        let mut h = DefaultHasher::new();
        client_id.hash(&mut h);
        format!("brook/replies/{level}-{:016x}", h.finish())
    }
}

impl Replies {
    /// Whether these replies belong to the connection `shared` and are still being read.
    pub(crate) fn serves(&self, shared: &Arc<Shared>) -> bool {
        std::ptr::eq(self.shared.as_ptr(), Arc::as_ptr(shared)) && !self.reader.is_finished()
    }

    /// Subscribes to the connection's response topic (waiting for the SUBACK) and starts
    /// reading it.
    pub(crate) async fn start(shared: Arc<Shared>) -> Result<Replies, BrokerError> {
        let topic = response_topic(&shared.config.client_id);
        let (route, rx) = shared.add_route_first(&topic, QoS::AtLeastOnce);
        let consumer = MqttConsumer::new(
            shared.clone(),
            route,
            rx,
            SubscriberSettings {
                dead_letter_topic: None,
                max_deliveries: None,
            },
        );
        let timeout = shared.config.connect_timeout.max(Duration::from_secs(10));
        // On failure the consumer is dropped, which removes the route.
        shared.subscribe(&topic, QoS::AtLeastOnce, timeout).await?;
        let waiting = Arc::new(PendingReplies::default());
        let reader = tokio::spawn(read(consumer, waiting.clone()));
        tracing::debug!(%topic, "subscribed to the MQTT response topic");
        Ok(Replies {
            shared: Arc::downgrade(&shared),
            topic,
            waiting,
            reader,
        })
    }

    /// Publishes `message` as a request and waits for its reply.
    pub(crate) async fn request(
        &self,
        broker: &MqttBroker,
        mut message: Outgoing,
        timeout: Duration,
    ) -> Result<Message, BrokerError> {
        message.headers.insert(REPLY_TO, self.topic.clone());
        // Registered before publishing: a reply may come before our PUBACK does.
        self.waiting
            .request(BrokerKind::Mqtt, message, timeout, |m| {
                broker.publish_message(m)
            })
            .await
    }
}

/// Hands each reply to the request waiting for it, acks it, and drops the ones nobody waits
/// for. Ends with the connection (its routes are cleared when the driver stops).
async fn read(mut consumer: MqttConsumer, waiting: Arc<PendingReplies>) {
    while let Some(next) = consumer.next().await {
        let msg = match next {
            Ok(msg) => msg,
            Err(e) => {
                tracing::warn!(error = %e, "reading the MQTT response topic");
                continue;
            }
        };
        // Acked first: a reply never holds the connection's ack line back.
        if let Err(e) = msg.ack().await {
            tracing::debug!(error = %e, "could not ack an MQTT reply");
        }
        let Some(id) = msg.correlation_id().map(str::to_owned) else {
            tracing::debug!(topic = %msg.topic(), "reply without correlation data dropped");
            continue;
        };
        let reply = Message::detached(BrokerKind::Mqtt, msg.topic().into(), msg.body().clone())
            .with_headers(msg.headers().clone());
        if !waiting.deliver(&id, reply) {
            tracing::debug!(correlation_id = %id, "late or unknown MQTT reply dropped");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::response_topic;

    #[test]
    fn response_topics_are_plain_topics_unique_per_client_id() {
        assert_eq!(response_topic("billing-1"), "brook/replies/billing-1");
        let odd = response_topic("a/b+#");
        assert!(odd.starts_with("brook/replies/a_b__-"), "{odd}");
        assert_ne!(response_topic("a/b"), response_topic("a_b"));
        assert_ne!(response_topic("a/b"), response_topic("a+b"));
        assert!(!response_topic("").ends_with('/'));
    }
}
