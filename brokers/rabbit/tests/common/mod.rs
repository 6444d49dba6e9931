//! Shared pieces of the integration tests: fresh names, an inspection connection that reads
//! the broker's state (queue depth, dead letters) over AMQP, and the conformance adapter.

#![allow(dead_code)] // each test file uses a different subset

use std::borrow::Cow;
use std::time::{Duration, Instant};

use brook_caps::Value;
use brook_rabbit::lapin::message::Delivery;
use brook_rabbit::lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use brook_rabbit::lapin::types::{AMQPValue, FieldTable};
use brook_rabbit::lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use brook_rabbit::RabbitBroker;
use brook_runtime::conformance::{Adapter, TestSource};
use brook_runtime::{BrokerError, BrokerKind};
use bytes::Bytes;
use futures_util::StreamExt as _;

pub const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
pub const ADDR: &str = "127.0.0.1:5672";
/// The longest a test waits for anything.
pub const WAIT: Duration = Duration::from_secs(15);
/// How long "nothing more arrives" is watched for, once the expected state is reached.
pub const QUIET: Duration = Duration::from_millis(400);
/// Test queues disappear this long after their last use (x-expires), so reruns leave no trash.
pub const EXPIRES_MS: i64 = 10 * 60 * 1000;

/// A name no other test (or earlier run) uses.
pub fn fresh(prefix: &str) -> String {
    brook_runtime::conformance::unique_name(&format!("brook-test-{prefix}"), '-')
}

/// A plain lapin channel to look at (and set up) the broker, outside brook.
pub struct Admin {
    _connection: Connection,
    pub channel: Channel,
}

impl Admin {
    pub async fn new() -> Admin {
        let connection = Connection::connect(URL, ConnectionProperties::default())
            .await
            .expect("admin connection to RabbitMQ at 127.0.0.1:5672");
        let channel = connection.create_channel().await.expect("admin channel");
        Admin {
            _connection: connection,
            channel,
        }
    }

    /// Declares `queue` (expiring when unused), optionally of `queue_type`, dead-lettering to
    /// `dlx`.
    pub async fn queue(&self, queue: &str, queue_type: Option<&str>, dlx: Option<&str>) {
        let mut args = FieldTable::default();
        args.insert("x-expires".into(), AMQPValue::LongLongInt(EXPIRES_MS));
        if let Some(t) = queue_type {
            args.insert("x-queue-type".into(), AMQPValue::LongString(t.into()));
        }
        if let Some(dlx) = dlx {
            args.insert(
                "x-dead-letter-exchange".into(),
                AMQPValue::LongString(dlx.into()),
            );
        }
        let options = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        self.channel
            .queue_declare(queue.into(), options, args)
            .await
            .expect("declare test queue");
    }

    /// A fanout exchange `<queue>.dlx` feeding queue `<queue>.dlq`; returns their names.
    pub async fn dead_letter_place(&self, queue: &str) -> (String, String) {
        let (dlx, dlq) = (format!("{queue}.dlx"), format!("{queue}.dlq"));
        self.exchange(&dlx, ExchangeKind::Fanout).await;
        self.queue(&dlq, None, None).await;
        self.bind(&dlq, &dlx, "").await;
        (dlx, dlq)
    }

    pub async fn exchange(&self, name: &str, kind: ExchangeKind) {
        let options = ExchangeDeclareOptions {
            auto_delete: true,
            ..Default::default()
        };
        self.channel
            .exchange_declare(name.into(), kind, options, FieldTable::default())
            .await
            .expect("declare exchange");
    }

    pub async fn bind(&self, queue: &str, exchange: &str, key: &str) {
        self.channel
            .queue_bind(
                queue.into(),
                exchange.into(),
                key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("bind");
    }

    /// Messages ready in `queue` (not counting unacknowledged ones), via a passive declare.
    pub async fn depth(&self, queue: &str) -> u32 {
        let options = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        self.channel
            .queue_declare(queue.into(), options, FieldTable::default())
            .await
            .expect("passive declare (does the queue exist?)")
            .message_count()
    }

    /// Waits (bounded) until `queue` holds exactly `n` ready messages, and stays so for a
    /// moment: a requeue or dead-lettering in flight would show up then.
    pub async fn wait_depth(&self, queue: &str, n: u32) {
        let deadline = Instant::now() + WAIT;
        let mut last;
        loop {
            last = self.depth(queue).await;
            if last == n {
                tokio::time::sleep(QUIET).await;
                last = self.depth(queue).await;
                if last == n {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "queue {queue} holds {last} messages, expected {n}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits (bounded) until `queue` has no consumer, so every delivery it had is back in the
    /// queue (RabbitMQ requeues unacknowledged deliveries when the consumer goes); returns the
    /// ready count then.
    pub async fn wait_no_consumer(&self, queue: &str) -> u32 {
        let deadline = Instant::now() + WAIT;
        loop {
            let options = QueueDeclareOptions {
                passive: true,
                ..Default::default()
            };
            let q = self
                .channel
                .queue_declare(queue.into(), options, FieldTable::default())
                .await
                .expect("passive declare (does the queue exist?)");
            if q.consumer_count() == 0 {
                return q.message_count();
            }
            assert!(
                Instant::now() < deadline,
                "{queue} still has {} consumer(s)",
                q.consumer_count()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Consumes (and acks) everything `queue` holds: first waits until no consumer is left
    /// (so nothing is still out with one), then takes as many messages as the queue reported,
    /// then watches [`QUIET`] for any extra.
    pub async fn drain(&self, queue: &str) -> Vec<Delivery> {
        let expected = self.wait_no_consumer(queue).await as usize;
        let channel = self.channel.clone();
        channel
            .basic_qos(1000, BasicQosOptions::default())
            .await
            .expect("qos");
        let mut consumer = channel
            .basic_consume(
                queue.into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("consume to drain");
        let mut got = Vec::new();
        let deadline = Instant::now() + WAIT;
        loop {
            let wait = if got.len() < expected {
                deadline.saturating_duration_since(Instant::now())
            } else {
                QUIET
            };
            match tokio::time::timeout(wait, consumer.next()).await {
                Ok(Some(Ok(d))) => {
                    d.ack(BasicAckOptions::default())
                        .await
                        .expect("ack drained");
                    got.push(d);
                }
                Ok(other) => panic!("draining {queue}: {other:?}"),
                Err(_) if got.len() < expected => {
                    panic!(
                        "{queue} reported {expected} messages, drained {}",
                        got.len()
                    )
                }
                Err(_) => break,
            }
        }
        let _ = channel
            .basic_cancel(consumer.tag(), Default::default())
            .await;
        got
    }

    /// Publishes `body` to `queue` (default exchange) with integer headers, bypassing brook.
    pub async fn publish_with_int_headers(
        &self,
        queue: &str,
        body: &[u8],
        headers: &[(&str, i64)],
    ) {
        let mut table = FieldTable::default();
        for (name, n) in headers {
            table.insert((*name).into(), AMQPValue::LongLongInt(*n));
        }
        self.channel
            .basic_publish(
                "".into(),
                queue.into(),
                Default::default(),
                body,
                brook_rabbit::lapin::BasicProperties::default().with_headers(table),
            )
            .await
            .expect("publish")
            .await
            .expect("publish confirm");
    }

    pub async fn delete(&self, queue: &str) {
        let _ = self
            .channel
            .queue_delete(queue.into(), QueueDeleteOptions::default())
            .await;
    }
}

pub fn bodies(deliveries: &[Delivery]) -> Vec<Bytes> {
    deliveries
        .iter()
        .map(|d| Bytes::copy_from_slice(&d.data))
        .collect()
}

/// The conformance adapter: each test gets a fresh queue of `queue_type` whose dead-letter
/// exchange feeds a fresh dead-letter queue.
pub struct RabbitAdapter {
    queue_type: &'static str,
}

impl RabbitAdapter {
    pub fn classic() -> Self {
        RabbitAdapter {
            queue_type: "classic",
        }
    }

    pub fn quorum() -> Self {
        RabbitAdapter {
            queue_type: "quorum",
        }
    }
}

fn queue_of(source: &TestSource) -> &str {
    &source.destination
}

impl Adapter for RabbitAdapter {
    type Broker = RabbitBroker;
    type Kind = brook_runtime::kind::Rabbit;

    async fn broker(&self) -> RabbitBroker {
        RabbitBroker::new(URL)
    }

    async fn fresh_source(&self, test: &str) -> Result<TestSource, BrokerError> {
        let queue = fresh(&format!("{}-{test}", self.queue_type));
        let admin = Admin::new().await;
        let (dlx, _) = admin.dead_letter_place(&queue).await;
        // Declared here with x-expires (so test queues clean themselves up); the subscriber
        // only consumes (`declare = false`) and says which type the queue is (brook-caps
        // knows from it whether deliveries are counted).
        admin.queue(&queue, Some(self.queue_type), Some(&dlx)).await;
        Ok(TestSource {
            args: vec![
                (Cow::Borrowed("queue"), Value::from(queue.clone())),
                (Cow::Borrowed("declare"), Value::from(false)),
                (
                    Cow::Borrowed("queue_type"),
                    Value::Ident(Cow::Borrowed(self.queue_type)),
                ),
            ],
            destination: queue,
        })
    }

    async fn remaining(&self, source: &TestSource) -> Result<Vec<Bytes>, BrokerError> {
        let admin = Admin::new().await;
        Ok(bodies(&admin.drain(queue_of(source)).await))
    }

    async fn dead_letters(&self, source: &TestSource) -> Result<Vec<Bytes>, BrokerError> {
        let admin = Admin::new().await;
        let dlq = format!("{}.dlq", queue_of(source));
        Ok(bodies(&admin.drain(&dlq).await))
    }

    /// lapin's heartbeat task notices a closed connection when its sleep ends: half of the
    /// 60 s heartbeat RabbitMQ proposes.
    fn tasks_outlive_close(&self) -> std::time::Duration {
        std::time::Duration::from_secs(31)
    }
}

/// Keeps `BrokerKind` in use for files that only need the helpers.
pub const KIND: BrokerKind = BrokerKind::Rabbit;

impl brook_runtime::soak::SoakAdapter for RabbitAdapter {
    fn upstream(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], 5672))
    }

    async fn broker_at(
        &self,
        addr: std::net::SocketAddr,
        _: &brook_runtime::conformance::TestSource,
    ) -> RabbitBroker {
        RabbitBroker::new(format!("amqp://guest:guest@{addr}/%2f"))
    }

    /// What RabbitMQ redelivers that was handled but not acknowledged when the connection
    /// died: at most the prefetch window (16, below) plus the handlers running.
    fn duplicate_bound(&self) -> usize {
        16 + brook_runtime::soak::CONCURRENCY as usize
    }

    fn soak_args(&self) -> Vec<(Cow<'static, str>, Value)> {
        vec![(Cow::Borrowed("prefetch"), Value::from(16u32))]
    }
}
