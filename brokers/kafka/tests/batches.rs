//! The test broker and record batches: tansu cannot serve a read that starts inside a
//! multi-record batch, so the tests produce one record per batch, and the helper that reads
//! what a group has left ([`common::remaining`]) refuses to report a read that skipped records.
mod common;

use std::time::Duration;

use brook_kafka::KafkaBroker;
use bytes::Bytes;
use common::*;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

/// Commits `offset` of partition 0 for `group` (as a member that left would have).
async fn commit(group: &str, topic: &str, offset: i64) {
    let (group, topic) = (group.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", ADDR)
            .set("group.id", &group)
            .set("enable.auto.commit", "false")
            .create()
            .expect("consumer");
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&topic, 0, Offset::Offset(offset))
            .expect("offset");
        c.commit(&tpl, CommitMode::Sync).expect("commit");
    })
    .await
    .expect("join");
}

/// Publishes `n` messages to partition 0 all at once (not one after the other).
async fn publish_concurrently(broker: &KafkaBroker, topic: &str, n: usize) -> Vec<i64> {
    let sends = (0..n).map(|i| {
        broker.publish_to_partition(
            brook_runtime::Outgoing::new(topic.to_owned(), Bytes::from(format!("m{i}"))),
            Some(0),
        )
    });
    futures_util::future::join_all(sends)
        .await
        .into_iter()
        .map(|r| r.expect("publish").1)
        .collect()
}

/// The tests' producer settings keep even concurrent publishes one record per batch, so a
/// read from any offset (here: a committed offset in the middle) starts at that offset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_test_producer_writes_one_record_per_batch() {
    let (topic, group) = fresh_topic("onebatch", 1).await;
    let mut offsets = publish_concurrently(&broker(), &topic, 20).await;
    offsets.sort();
    assert_eq!(offsets, (0..20).collect::<Vec<_>>());
    commit(&group, &topic, 5).await;
    let read: Vec<i64> = remaining(&group, &topic, 1)
        .await
        .into_iter()
        .map(|(_, o, _)| o)
        .collect();
    assert_eq!(read, (5..20).collect::<Vec<_>>());
}

/// A read that starts inside a multi-record batch either works (a broker that serves it) or
/// fails [`remaining`] loudly; it never reports fewer messages than there are. On tansu 0.6 it
/// fails: a raw librdkafka consumer starting at offset 5 of a 20-record batch gets the
/// record after the batch, again and again, never offsets 5..19.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_from_inside_a_multi_record_batch_never_passes_silently() {
    let (topic, group) = fresh_topic("multibatch", 1).await;
    // Lingering: the 20 concurrent publishes go out as one batch.
    let batching = KafkaBroker::new(ADDR).with_producer_config("linger.ms", "200");
    publish_concurrently(&batching, &topic, 20).await;
    commit(&group, &topic, 5).await;
    let (g, t) = (group.clone(), topic.clone());
    let read = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::spawn(async move { remaining(&g, &t, 1).await }),
    )
    .await
    .expect("bounded");
    match read {
        Ok(read) => {
            let offsets: Vec<i64> = read.into_iter().map(|(_, o, _)| o).collect();
            assert_eq!(offsets, (5..20).collect::<Vec<_>>());
            eprintln!("this broker serves reads from inside a multi-record batch");
        }
        Err(e) => {
            let panic = e.into_panic();
            let text = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default();
            assert!(
                text.contains("skipped or repeated records"),
                "remaining() failed for another reason: {text}"
            );
            eprintln!("this broker cannot serve a read from inside a multi-record batch: {text}");
        }
    }
}
