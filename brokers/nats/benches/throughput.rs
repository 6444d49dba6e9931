//! Throughput: consume + ack N pre-published ~100-byte JSON messages from a JetStream durable
//! pull consumer, brook (policy Ack, concurrency 1) vs a hand-written async-nats loop with the
//! same pull settings (batch 64, 1 s idle heartbeat), both decoding with
//! `brook_runtime::bench::decode`, in the same run, on both tokio runtime flavours.
//!
//! `cargo bench -p brook-nats` (N: `BROOK_BENCH_N`, default 20000; batch: `BROOK_BENCH_BATCH`,
//! default 64; rounds: `BROOK_BENCH_ROUNDS`, default 5; `BROOK_BENCH_SIDE=raw|brook` runs one
//! side only, for profiling). Needs nats-server with JetStream on 127.0.0.1:4222.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, consumer::pull, stream};
use brook_nats::NatsBroker;
use brook_runtime::bench;
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

/// The raw loop: same client, a durable pull consumer with the same settings and pull batch,
/// the same decode, ack each message.
async fn raw(stream_name: &str, subject: &str, durable: &str, n: u64, batch: usize) -> Duration {
    let started = Instant::now();
    let client = async_nats::connect(URL).await.expect("connect");
    let js = jetstream::new(client.clone());
    let consumer = js
        .get_stream(stream_name)
        .await
        .expect("stream")
        .create_consumer(pull::Config {
            durable_name: Some(durable.into()),
            name: Some(durable.into()),
            filter_subject: subject.to_owned(),
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
    let mut seen = 0;
    while let Some(m) = messages.next().await {
        let m = m.expect("message");
        std::hint::black_box(bench::decode(&m.payload));
        m.ack().await.expect("ack");
        seen += 1;
        if seen == n {
            break;
        }
    }
    let elapsed = started.elapsed();
    client.flush().await.expect("flush");
    elapsed
}

/// CPU time (user + system, all threads) this process has used so far, from /proc (10 ms
/// resolution); `None` where /proc is not available.
fn cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

/// Runs `f`, returning its wall time and the process CPU time it used.
async fn measured<F: std::future::Future<Output = Duration>>(f: F) -> (Duration, Option<Duration>) {
    let before = cpu_time();
    let wall = f.await;
    let cpu = cpu_time().zip(before).map(|(a, b)| a.saturating_sub(b));
    (wall, cpu)
}

fn per_msg(cpu: Option<Duration>, n: u64) -> String {
    cpu.map_or("n/a".into(), |c| {
        format!("{:.1} µs", c.as_secs_f64() * 1e6 / n as f64)
    })
}

/// Both sides `ROUNDS` times, alternating which goes first, each with a fresh durable consumer
/// on one prefilled stream (so both read exactly the same data). The raw loop runs in a
/// spawned task, as brook's consumer does. Reports each round (wall-time rates and process
/// CPU time per message, which a busy machine disturbs less) and the best of each side.
async fn flavour(flavour: &str, n: u64, batch: u64, rounds: u32) {
    let client = async_nats::connect(URL).await.expect("connect");
    let js = jetstream::new(client);
    let (stream_name, subject) = fresh(&flavour.to_uppercase());
    prefill(&js, &stream_name, &subject, n).await;
    // BROOK_BENCH_SIDE=brook (or raw) runs one side only, for profiling.
    let side = std::env::var("BROOK_BENCH_SIDE").unwrap_or_default();

    let (mut best_raw, mut best_brook) = (Duration::MAX, Duration::MAX);
    for round in 0..rounds {
        let run_raw = || {
            let (stream_name, subject) = (stream_name.clone(), subject.clone());
            async move {
                tokio::spawn(async move {
                    raw(
                        &stream_name,
                        &subject,
                        &format!("raw{round}"),
                        n,
                        batch as usize,
                    )
                    .await
                })
                .await
                .expect("raw loop")
            }
        };
        let run_brook = || {
            let (stream_name, subject) = (stream_name.clone(), subject.clone());
            async move {
                bench::run_brook::<_, kind::Nats>(
                    NatsBroker::new(URL),
                    vec![
                        ("subject", subject.into()),
                        ("stream", stream_name.into()),
                        ("durable", format!("brook{round}").into()),
                        ("batch", batch.into()),
                    ],
                    n,
                    1,
                )
                .await
                .expect("brook run")
            }
        };
        let skip = (Duration::from_secs(1), None);
        let ((raw_time, raw_cpu), (brook_time, brook_cpu)) = if side == "brook" {
            (skip, measured(run_brook()).await)
        } else if side == "raw" {
            (measured(run_raw()).await, skip)
        } else if round % 2 == 0 {
            let r = measured(run_raw()).await;
            (r, measured(run_brook()).await)
        } else {
            let b = measured(run_brook()).await;
            (measured(run_raw()).await, b)
        };
        println!(
            "  round {round}: {} | cpu/msg raw {} brook {}",
            bench::report(flavour, n, raw_time, brook_time),
            per_msg(raw_cpu, n),
            per_msg(brook_cpu, n)
        );
        best_raw = best_raw.min(raw_time);
        best_brook = best_brook.min(brook_time);
    }
    println!(
        "{}",
        bench::report(
            &format!("nats jetstream ack, batch {batch}, {flavour}, best of {rounds}"),
            n,
            best_raw,
            best_brook
        )
    );
    let _ = js.delete_stream(stream_name).await;
}

fn main() {
    let n = env("BROOK_BENCH_N", 20_000);
    let batch = env("BROOK_BENCH_BATCH", 64);
    let rounds = env("BROOK_BENCH_ROUNDS", 5) as u32;
    let current = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    current.block_on(flavour("current_thread", n, batch, rounds));
    let multi = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    multi.block_on(flavour("multi_thread", n, batch, rounds));
}
