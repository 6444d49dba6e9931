//! Request/reply: one reply topic per broker client, read by one consumer for the client's life.
//!
//! Kafka has no reply address of its own, so a client that sends a request first creates a
//! topic of its own (`brook-replies-<uuid>`, one partition; tansu and many clusters do not
//! auto-create topics) and a consumer *assigned* to it (no group: nothing is committed, no
//! rebalance). Requests carry `reply_to = <that topic>` and a `correlation_id`; the consumer
//! hands each reply to the request waiting for its id, and drops replies nobody waits for (a
//! request that timed out). The topic is new and empty when the consumer is assigned, so
//! reading it from the beginning is reading it from its end, with no window in which a reply
//! could be written before the consumer's start position is resolved.

use std::sync::Arc;
use std::time::Duration;

use brook_runtime::headers::{CORRELATION_ID, REPLY_TO};
use brook_runtime::reply::PendingReplies;
use brook_runtime::{Broker, BrokerError, Message, Outgoing};
use bytes::Bytes;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::Message as _;

use crate::message::headers;
use crate::{KafkaBroker, KIND};

/// Where replies for this client arrive, and who waits for them.
pub(crate) struct Replies {
    topic: Arc<str>,
    waiting: Arc<PendingReplies>,
    /// The task that reads the reply topic; stopped when the client closes or is dropped.
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Replies {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Replies {
    /// Creates the reply topic and starts reading it.
    pub(crate) async fn start(broker: &KafkaBroker) -> Result<Replies, BrokerError> {
        let topic: Arc<str> = format!(
            "brook-replies-{}",
            brook_runtime::output::new_correlation_id()
        )
        .into();
        broker.create_topic(&topic, 1).await?;
        // Defaults a passthrough setting may change (a reply should not wait for a full fetch
        // window), then what brook owns: no group, nothing committed.
        let mut config = broker.client_config(&[("fetch.wait.max.ms".into(), "50".into())]);
        for (k, v) in &broker.inner.consumer_config {
            config.set(k, v);
        }
        config
            .set("group.id", &*topic)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false")
            .set("auto.offset.reset", "earliest");
        let consumer: StreamConsumer = config.create().map_err(|e| BrokerError::Connect {
            broker: KIND,
            address: broker.address().to_owned(),
            source: e.into(),
        })?;
        let mut tpl = TopicPartitionList::new();
        // The topic was just created, empty: its beginning is its end.
        tpl.add_partition_offset(&topic, 0, Offset::Beginning)
            .map_err(|e| BrokerError::operation(KIND, "assign reply topic", e))?;
        consumer
            .assign(&tpl)
            .map_err(|e| BrokerError::operation(KIND, "assign reply topic", e))?;
        let waiting = Arc::new(PendingReplies::default());
        let reader = tokio::spawn(read(consumer, topic.clone(), waiting.clone()));
        tracing::debug!(topic = %topic, "Kafka reply topic created");
        Ok(Replies {
            topic,
            waiting,
            reader,
        })
    }

    /// Publishes `message` as a request and waits for its reply.
    pub(crate) async fn request(
        &self,
        broker: &KafkaBroker,
        mut message: Outgoing,
        timeout: Duration,
    ) -> Result<Message, BrokerError> {
        message.headers.insert(REPLY_TO, &*self.topic);
        self.waiting
            .request(KIND, message, timeout, |m| broker.publish_message(m))
            .await
    }
}

/// Hands each reply to the request waiting for its correlation id; drops the others.
async fn read(consumer: StreamConsumer, topic: Arc<str>, waiting: Arc<PendingReplies>) {
    loop {
        let m = match consumer.recv().await {
            Ok(m) => m,
            Err(e) => {
                // librdkafka recovers from broker trouble by itself; don't spin on it.
                tracing::warn!(topic = %topic, error = %e, "reading the Kafka reply topic");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let headers = headers(&m);
        let Some(id) = headers.get(CORRELATION_ID).map(str::to_owned) else {
            tracing::debug!(topic = %topic, offset = m.offset(), "reply without correlation_id dropped");
            continue;
        };
        let body = m.payload().map(Bytes::copy_from_slice).unwrap_or_default();
        let reply = Message::detached(KIND, topic.clone(), body).with_headers(headers);
        if !waiting.deliver(&id, reply) {
            tracing::debug!(topic = %topic, correlation_id = %id, "late or unknown reply dropped");
        }
    }
}
