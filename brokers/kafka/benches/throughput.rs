//! Throughput: consume + settle N pre-published ~100-byte JSON messages from one topic with a
//! fresh consumer group, brook (policy Ack, concurrency 1) vs a hand-written rdkafka loop with
//! the same settings (StreamConsumer, `enable.auto.commit` with `enable.auto.offset.store =
//! false`, one `store_offset` per message), both decoding with `brook_runtime::bench::decode`,
//! in the same run, on both tokio runtime flavours. Each side's time includes joining the group.
//!
//! `cargo bench -p brook-kafka` (N: `BROOK_BENCH_N`, default 20000; rounds:
//! `BROOK_BENCH_ROUNDS`, default 3). Needs a Kafka-protocol broker on 127.0.0.1:9092.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use brook_kafka::KafkaBroker;
use brook_runtime::bench;
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
/// commit, commit synchronously at the end (as brook does on close).
async fn raw(topic: &str, group: &str, n: u64) -> Duration {
    let started = Instant::now();
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", ADDR)
        .set("group.id", group)
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .set("enable.auto.commit", "true")
        .set("enable.auto.offset.store", "false");
    for (k, v) in CONSUMER {
        config.set(*k, *v);
    }
    let consumer: StreamConsumer = config.create().expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let mut seen = 0;
    loop {
        let m = consumer.recv().await.expect("message");
        std::hint::black_box(bench::decode(m.payload().unwrap_or_default()));
        consumer
            .store_offset(m.topic(), m.partition(), m.offset())
            .expect("store");
        seen += 1;
        if seen == n {
            break;
        }
    }
    let elapsed = started.elapsed();
    consumer
        .commit_consumer_state(rdkafka::consumer::CommitMode::Sync)
        .expect("commit");
    elapsed
}

async fn flavour(flavour: &str, n: u64, rounds: u32) {
    let topic = fresh(flavour);
    prefill(&topic, n).await;
    let (mut best_raw, mut best_brook) = (Duration::MAX, Duration::MAX);
    for round in 0..rounds {
        let raw_time = raw(&topic, &format!("{topic}-raw{round}"), n).await;
        let mut broker = KafkaBroker::new(ADDR);
        for (k, v) in CONSUMER {
            broker = broker.with_consumer_config(*k, *v);
        }
        let brook_time = bench::run_brook::<_, kind::Kafka>(
            broker,
            vec![
                ("topic", topic.clone().into()),
                ("group_id", format!("{topic}-brook{round}").into()),
                (
                    "auto_offset_reset",
                    brook_runtime::ArgValue::Ident("earliest".into()),
                ),
            ],
            n,
            1,
        )
        .await
        .expect("brook run");
        println!(
            "  round {round}: {}",
            bench::report(flavour, n, raw_time, brook_time)
        );
        best_raw = best_raw.min(raw_time);
        best_brook = best_brook.min(brook_time);
    }
    println!(
        "{}",
        bench::report(
            &format!("kafka (tansu) ack, {flavour}, best of {rounds}"),
            n,
            best_raw,
            best_brook
        )
    );
}

fn main() {
    let n = env("BROOK_BENCH_N", 20_000);
    let rounds = env("BROOK_BENCH_ROUNDS", 3) as u32;
    let current = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    current.block_on(flavour("current_thread", n, rounds));
    let multi = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    multi.block_on(flavour("multi_thread", n, rounds));
}
