#![cfg(feature = "kafka")]
//! `#[subscriber(broker = kafka, ...)]` end to end on the local Kafka-protocol broker
//! (127.0.0.1:9092): the macro's arguments reach the consumer, `&KafkaMessage` is extracted,
//! a nack is read again with its delivery count, and the group's offset is committed.
//!
//! Macro arguments are literals, so the topic and group are fixed: each run publishes payloads
//! tagged with its own run id and ignores (acks) anything older that is still uncommitted.

use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use brook::kafka::{KafkaBroker, KafkaMessage};
use brook::prelude::*;
use tokio::sync::mpsc;

const ADDR: &str = "127.0.0.1:9092";
const TOPIC: &str = "brook-facade-kafka";

/// (body, offset, delivery count) of each call.
type Call = (String, i64, Option<u32>);

/// This run's id and where the handler reports its calls.
static SEEN: Mutex<Option<(String, mpsc::UnboundedSender<Call>)>> = Mutex::new(None);

/// The first delivery of each message of this run fails: NackOnError seeks back to it.
#[subscriber(
    broker = kafka,
    topic = "brook-facade-kafka",
    group_id = "brook-facade",
    auto_offset_reset = earliest,
    ack_policy = NackOnError,
    max_deliveries = 3
)]
async fn retry(body: String, msg: &Message, kafka: &KafkaMessage) -> anyhow::Result<()> {
    let guard = SEEN.lock().unwrap();
    let Some((run, tx)) = guard.as_ref() else {
        return Ok(());
    };
    if !body.starts_with(run.as_str()) {
        return Ok(()); // left over from an earlier run
    }
    let _ = tx.send((body, kafka.offset(), msg.delivery_count()));
    if msg.delivery_count() == Some(1) {
        anyhow::bail!("first delivery fails");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_macro_declared_kafka_subscriber_rereads_a_nacked_message_and_commits() {
    let run = format!(
        "run-{}-{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default()
    );
    let (tx, mut rx) = mpsc::unbounded_channel();
    *SEEN.lock().unwrap() = Some((run.clone(), tx));
    let broker = KafkaBroker::new(ADDR);
    broker.connect().await.expect("Kafka on 127.0.0.1:9092");
    broker.create_topic(TOPIC, 1).await.expect("create topic");
    let app = App::new(broker.clone())
        .subscribe(retry)
        .start()
        .await
        .expect("start");
    let body = format!("{run}-a");
    broker.publish(body.as_str(), TOPIC).await.expect("publish");
    let mut calls = Vec::new();
    while calls.len() < 2 {
        let call = tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .expect("handler call")
            .expect("open");
        calls.push(call);
    }
    app.stop().await.expect("stop");
    assert_eq!(calls[0].0, body);
    assert_eq!(calls[1].0, body, "the nacked message is read again");
    assert_eq!(calls[0].1, calls[1].1, "at the same offset");
    assert_eq!((calls[0].2, calls[1].2), (Some(1), Some(2)));
    // The group's committed offset is past the message (committed on stop).
    let offset = calls[0].1;
    let committed = tokio::task::spawn_blocking(|| {
        use brook::kafka::rdkafka::consumer::{BaseConsumer, Consumer};
        use brook::kafka::rdkafka::{ClientConfig, Offset, TopicPartitionList};
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", ADDR)
            .set("group.id", "brook-facade")
            .create()
            .expect("consumer");
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(TOPIC, 0);
        let got = c
            .committed_offsets(tpl, Duration::from_secs(10))
            .expect("committed offsets");
        match got.find_partition(TOPIC, 0).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => Some(o),
            _ => None,
        }
    })
    .await
    .expect("join");
    assert_eq!(committed, Some(offset + 1));
}
