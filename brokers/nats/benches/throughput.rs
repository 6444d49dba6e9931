//! Throughput: consume + ack N pre-published ~100-byte JSON messages from a JetStream durable
//! pull consumer, brook (policy Ack, concurrency 1) vs a hand-written async-nats loop with the
//! same consumer and pull settings (explicit acks, batch 64, 1 s idle heartbeat, `ack()` each),
//! both decoding with `brook_runtime::bench::decode`, in the same run, on both tokio runtime
//! flavours, alternating which side goes first.
//!
//! Both sides are timed from the first message received to the N-th acknowledged on the
//! server: once the N-th is handled, the bench polls the consumer's info (from its own
//! connection) until `num_pending == 0` and `num_ack_pending == 0`. Creating the consumer and
//! sending the first pull request stay outside the window. The process CPU time used in
//! the same window is measured too (`bench::Mark` at both ends; the info polls are inside).
//! Per round the bench prints both rates, both CPU µs/msg and the two brook/raw ratios, and per
//! flavour their medians (`brook_runtime::bench`).
//!
//! ```text
//! cargo bench -p brook-nats --bench throughput
//! BROOK_BENCH_N=50000 BROOK_BENCH_BATCH=64 BROOK_BENCH_ROUNDS=5 cargo bench -p brook-nats --bench throughput
//! ```
//! `BROOK_BENCH_N` (default 20000), `BROOK_BENCH_BATCH` (64), `BROOK_BENCH_ROUNDS` (5);
//! `BROOK_BENCH_SIDE=raw|brook` runs one side only, for profiling. Needs nats-server with
//! JetStream on 127.0.0.1:4222.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, consumer::pull, stream};
use brook_nats::NatsBroker;
use brook_runtime::bench::{self, Mark, Round, Side};
use brook_runtime::kind;
use futures_util::StreamExt as _;

const URL: &str = "nats://127.0.0.1:4222";

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn fresh(tag: &str) -> (String, String) {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let base = format!("BROOK_BENCH_{tag}_{}_{nanos}", std::process::id());
    (base.clone(), format!("brook.bench.{}", base.to_lowercase()))
}

/// A stream holding `n` bench payloads on `subject`.
async fn prefill(js: &jetstream::Context, stream_name: &str, subject: &str, n: u64) {
    js.create_stream(stream::Config {
        name: stream_name.to_owned(),
        subjects: vec![subject.to_owned()],
        ..Default::default()
    })
    .await
    .expect("create stream");
    let mut acks = Vec::with_capacity(1000);
    for i in 0..n {
        acks.push(
            js.publish(subject.to_owned(), bench::payload(i).into())
                .await
                .expect("publish"),
        );
        if acks.len() == 1000 {
            for a in acks.drain(..) {
                a.await.expect("publish ack");
            }
        }
    }
    for a in acks {
        a.await.expect("publish ack");
    }
}

/// The consumer's (pending, ack pending) as the server reports them.
async fn counts(observer: &stream::Stream, durable: &str) -> (u64, usize) {
    let info = observer
        .consumer_info(durable)
        .await
        .expect("consumer info");
    (info.num_pending, info.num_ack_pending)
}

/// Polls the consumer's info until the server has delivered everything and holds no
/// unacknowledged message: the N-th acknowledgement has arrived.
async fn until_settled(observer: &stream::Stream, durable: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (pending, ack_pending) = counts(observer, durable).await;
        if pending == 0 && ack_pending == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{durable}: {pending} pending, {ack_pending} unacknowledged after 30 s"
        );
    }
}

/// The raw loop: same client, a durable pull consumer with brook's settings and pull batch,
/// the same decode, `ack()` each. Returns the window: first message received to the consumer
/// info showing nothing pending or unacknowledged.
async fn raw(
    observer: stream::Stream,
    subject: String,
    durable: String,
    n: u64,
    batch: usize,
) -> Side {
    let client = async_nats::connect(URL).await.expect("connect");
    let js = jetstream::new(client.clone());
    let consumer = js
        .get_stream(&observer.cached_info().config.name)
        .await
        .expect("stream")
        .create_consumer(pull::Config {
            durable_name: Some(durable.clone()),
            name: Some(durable.clone()),
            filter_subject: subject,
            ..Default::default()
        })
        .await
        .expect("consumer");
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(batch)
        // brook's pull requests carry a 1 s idle heartbeat (to notice lost requests): same here.
        .heartbeat(Duration::from_secs(1))
        .messages()
        .await
        .expect("messages");
    let mut first = None;
    let mut seen = 0;
    while seen < n {
        let m = messages
            .next()
            .await
            .expect("message stream ended")
            .expect("message");
        first.get_or_insert_with(Mark::now);
        std::hint::black_box(bench::decode(&m.payload));
        m.ack().await.expect("ack");
        seen += 1;
    }
    until_settled(&observer, &durable).await;
    let window = first.map_or(Side::SKIPPED, Mark::until_now);
    drop(messages);
    client.flush().await.expect("flush");
    window
}

async fn raw_side(
    observer: &stream::Stream,
    subject: &str,
    durable: String,
    n: u64,
    batch: u64,
) -> Side {
    let (observer, subject) = (observer.clone(), subject.to_owned());
    // In a spawned task, as brook's consumer runs (on the multi-thread runtime `block_on` runs
    // outside the worker threads).
    tokio::spawn(raw(observer, subject, durable, n, batch as usize))
        .await
        .expect("raw loop")
}

async fn brook_side(
    observer: &stream::Stream,
    subject: &str,
    durable: String,
    n: u64,
    batch: u64,
) -> Side {
    let stream_name = observer.cached_info().config.name.clone();
    bench::run_brook_until::<_, kind::Nats, _>(
        NatsBroker::new(URL),
        vec![
            ("subject", subject.to_owned().into()),
            ("stream", stream_name.into()),
            ("durable", durable.clone().into()),
            ("batch", batch.into()),
        ],
        n,
        1,
        until_settled(observer, &durable),
    )
    .await
    .expect("brook run")
    .window()
}

/// Both sides `rounds` times, alternating which goes first, each with a fresh durable consumer
/// on one prefilled stream (so both read exactly the same data).
async fn flavour(flavour: &str, n: u64, batch: u64, rounds: u32) {
    let client = async_nats::connect(URL).await.expect("connect");
    let js = jetstream::new(client);
    let (stream_name, subject) = fresh(&flavour.to_uppercase());
    prefill(&js, &stream_name, &subject, n).await;
    let observer = js.get_stream(&stream_name).await.expect("stream");
    let side = std::env::var("BROOK_BENCH_SIDE").unwrap_or_default();

    let mut results = Vec::new();
    for i in 0..rounds {
        let (mut raw, mut brook) = (Side::SKIPPED, Side::SKIPPED);
        // Odd rounds run brook first: neither side always meets the warmer broker.
        let brook_first = i % 2 == 1;
        for brook_turn in [brook_first, !brook_first] {
            if brook_turn && side != "raw" {
                brook = brook_side(&observer, &subject, format!("brook{i}"), n, batch).await;
            } else if !brook_turn && side != "brook" {
                raw = raw_side(&observer, &subject, format!("raw{i}"), n, batch).await;
            }
        }
        let r = Round { raw, brook };
        println!("{}", r.line(&format!("  round {i}, {flavour}"), n));
        results.push(r);
    }
    println!(
        "{}",
        bench::summary(
            &format!("nats jetstream ack, batch {batch}, {flavour}"),
            n,
            &results
        )
    );
    let _ = js.delete_stream(stream_name).await;
}

fn main() {
    let n = env("BROOK_BENCH_N", 20_000);
    let batch = env("BROOK_BENCH_BATCH", 64);
    let rounds = env("BROOK_BENCH_ROUNDS", 5).max(1) as u32;
    for f in bench::FLAVOURS {
        bench::runtime(f)
            .expect("runtime")
            .block_on(flavour(f, n, batch, rounds));
    }
}
