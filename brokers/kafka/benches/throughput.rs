//! Throughput: consume + settle N pre-published ~100-byte JSON messages from one topic with a
//! fresh consumer group, brook (policy Ack, concurrency 1) vs the strongest idiomatic
//! hand-written rdkafka loop with the same settings (StreamConsumer, background
//! `enable.auto.commit` with `enable.auto.offset.store = false`, one
//! `store_offset_from_message` per message), both decoding with `brook_runtime::bench::decode`, in the same run, on both tokio
//! runtime flavours, alternating which side goes first.
//!
//! Both sides are timed from the first message received to the N-th settled: the raw loop's
//! N-th offset store, brook's N-th handled (its Ack then stores the offset, locally, before
//! the consumer asks for the next message). Creating the consumer, subscribing and joining the
//! group happen before the first message and stay outside the window. The process CPU time
//! used in the same window is measured too (`bench::Mark` at both ends). Per round the bench
//! prints both rates, both CPU µs/msg and the two brook/raw ratios, and per flavour their
//! medians (`brook_runtime::bench`).
//!
//! ```text
//! cargo bench -p brook-kafka --bench throughput
//! BROOK_BENCH_N=100000 BROOK_BENCH_ROUNDS=5 cargo bench -p brook-kafka --bench throughput
//! ```
//! `BROOK_BENCH_N` (default 20000), `BROOK_BENCH_ROUNDS` (3); `BROOK_BENCH_SIDE=raw|brook`
//! runs one side only, for profiling. Needs a Kafka-protocol broker on 127.0.0.1:9092.

use std::time::{SystemTime, UNIX_EPOCH};

use brook_kafka::KafkaBroker;
use brook_runtime::bench::{self, Mark, Round, Side};
use brook_runtime::kind;
use brook_runtime::{Broker as _, Outgoing};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::Message as _;

const ADDR: &str = "127.0.0.1:9092";

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn fresh(tag: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("brook-bench-{tag}-{}-{nanos}", std::process::id())
}

/// The consumer settings both sides share.
const CONSUMER: &[(&str, &str)] = &[
    ("session.timeout.ms", "6000"),
    ("heartbeat.interval.ms", "500"),
    ("fetch.wait.max.ms", "100"),
];

async fn prefill(topic: &str, n: u64) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", ADDR)
        .create()
        .expect("admin");
    for r in admin
        .create_topics(
            &[NewTopic::new(topic, 1, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .expect("create topic")
    {
        r.expect("create topic");
    }
    let broker = KafkaBroker::new(ADDR).with_producer_config("linger.ms", "5");
    let mut pending = Vec::with_capacity(1000);
    for i in 0..n {
        let b = broker.clone();
        let topic = topic.to_owned();
        pending.push(tokio::spawn(async move {
            b.publish_message(Outgoing::new(topic, bench::payload(i)))
                .await
        }));
        if pending.len() == 1000 {
            for p in pending.drain(..) {
                p.await.expect("join").expect("publish");
            }
        }
    }
    for p in pending {
        p.await.expect("join").expect("publish");
    }
}

/// The raw loop: same client and settings, same decode, store each offset for the background
/// commit, commit synchronously at the end (as brook does on close). Returns the window: first
/// message received to the N-th offset stored.
async fn raw(topic: String, group: String, n: u64) -> Side {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", ADDR)
        .set("group.id", &group)
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .set("enable.auto.commit", "true")
        .set("enable.auto.offset.store", "false");
    for (k, v) in CONSUMER {
        config.set(*k, *v);
    }
    let consumer: StreamConsumer = config.create().expect("consumer");
    consumer.subscribe(&[&topic]).expect("subscribe");
    let mut first = None;
    let mut seen = 0;
    while seen < n {
        let m = consumer.recv().await.expect("message");
        first.get_or_insert_with(Mark::now);
        std::hint::black_box(bench::decode(m.payload().unwrap_or_default()));
        // The cheapest store rdkafka offers: the message's own topic handle, no name lookup.
        consumer.store_offset_from_message(&m).expect("store");
        seen += 1;
    }
    let window = first.map_or(Side::SKIPPED, Mark::until_now);
    consumer
        .commit_consumer_state(rdkafka::consumer::CommitMode::Sync)
        .expect("commit");
    window
}

async fn raw_side(topic: &str, group: String, n: u64) -> Side {
    let topic = topic.to_owned();
    // In a spawned task, as brook's consumer runs (on the multi-thread runtime `block_on` runs
    // outside the worker threads).
    tokio::spawn(raw(topic, group, n)).await.expect("raw loop")
}

async fn brook_side(topic: &str, group: String, n: u64) -> Side {
    let mut broker = KafkaBroker::new(ADDR);
    for (k, v) in CONSUMER {
        broker = broker.with_consumer_config(*k, *v);
    }
    bench::run_brook_until::<_, kind::Kafka, _>(
        broker,
        vec![
            ("topic", topic.to_owned().into()),
            ("group_id", group.into()),
            (
                "auto_offset_reset",
                brook_runtime::ArgValue::Ident("earliest".into()),
            ),
        ],
        n,
        1,
        // brook's Ack stores the offset (local, no I/O) as soon as the handler returns:
        // there is nothing on the broker to wait for.
        async {},
    )
    .await
    .expect("brook run")
    .window()
}

async fn flavour(flavour: &str, n: u64, rounds: u32) {
    let topic = fresh(flavour);
    prefill(&topic, n).await;
    let only = std::env::var("BROOK_BENCH_SIDE").unwrap_or_default();
    let mut results = Vec::new();
    for i in 0..rounds {
        let (mut raw, mut brook) = (Side::SKIPPED, Side::SKIPPED);
        // Odd rounds run brook first: neither side always meets the warmer broker.
        let brook_first = i % 2 == 1;
        for brook_turn in [brook_first, !brook_first] {
            if brook_turn && only != "raw" {
                brook = brook_side(&topic, format!("{topic}-brook{i}"), n).await;
            } else if !brook_turn && only != "brook" {
                raw = raw_side(&topic, format!("{topic}-raw{i}"), n).await;
            }
        }
        let r = Round { raw, brook };
        println!("{}", r.line(&format!("  round {i}, {flavour}"), n));
        results.push(r);
    }
    println!(
        "{}",
        bench::summary(&format!("kafka (tansu) ack, {flavour}"), n, &results)
    );
}

fn main() {
    let n = env("BROOK_BENCH_N", 20_000);
    let rounds = env("BROOK_BENCH_ROUNDS", 3).max(1) as u32;
    for f in bench::FLAVOURS {
        bench::runtime(f)
            .expect("runtime")
            .block_on(flavour(f, n, rounds));
    }
}
