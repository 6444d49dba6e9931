//! Consume + settle N pre-published ~100-byte JSON entries from a Redis stream through a
//! consumer group (policy Ack: one XACK per entry), brook vs a hand-written fred loop with the
//! same settings (XREADGROUP COUNT = batch, one XACK per entry awaited in turn), both decoding
//! with `brook_runtime::bench::decode`, in the same run, on both tokio runtime flavours.
//!
//! `cargo bench -p brook-redis` (Redis on 127.0.0.1:6379). `BENCH_N`, `BENCH_BATCH` and
//! `BENCH_ROUNDS` override the defaults (20 000 entries, batch 64, 5 rounds); `BENCH_SIDE=raw` or
//! `brook` runs one side only (for profiling).

use std::time::{Duration, Instant};

use brook_redis::{envelope, RedisBroker};
use brook_runtime::bench::{decode, payload, report, run_brook};
use brook_runtime::{kind, Headers};
use bytes::Bytes;
use fred::prelude::*;
use fred::types::{ClusterHash, CustomCommand, Value};

const URL: &str = "redis://127.0.0.1:6379";

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn s(v: &str) -> Value {
    Value::String(v.into())
}

async fn call(c: &Client, name: &'static str, blocking: bool, args: Vec<Value>) -> Value {
    c.custom::<Value, Value>(
        CustomCommand::new_static(name, ClusterHash::FirstKey, blocking),
        args,
    )
    .await
    .unwrap_or_else(|e| panic!("{name}: {e}"))
}

async fn client() -> Client {
    let c = Builder::from_config(Config::from_url(URL).unwrap())
        .with_connection_config(|c| c.tcp.nodelay = Some(true))
        .build()
        .unwrap();
    c.init().await.unwrap();
    c
}

/// A fresh stream with group `bench` holding `n` entries, enveloped as brook publishes them.
async fn prepare(c: &Client, n: u64, tag: &str) -> String {
    let stream = format!(
        "brook-bench:{tag}:{}:{}",
        std::process::id(),
        Instant::now().elapsed().as_nanos() ^ rand_ish()
    );
    call(
        c,
        "XGROUP",
        false,
        vec![s("CREATE"), s(&stream), s("bench"), s("$"), s("MKSTREAM")],
    )
    .await;
    let mut headers = Headers::new();
    headers.insert("content-type", "application/json");
    let mut i = 0;
    while i < n {
        let chunk: Vec<_> = (i..(i + 500).min(n))
            .map(|k| {
                let wire = envelope::encode(&payload(k), &headers).unwrap();
                call(
                    c,
                    "XADD",
                    false,
                    vec![s(&stream), s("*"), s("__data__"), Value::Bytes(wire)],
                )
            })
            .collect();
        futures_util::future::join_all(chunk).await;
        i += 500;
    }
    stream
}

fn rand_ish() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// The hand-written loop: what one would write with fred alone.
async fn raw_loop(stream: &str, n: u64, batch: u64) -> Duration {
    let started = Instant::now();
    let reader = client().await;
    let acker = client().await;
    let mut seen = 0;
    while seen < n {
        let reply = call(
            &reader,
            "XREADGROUP",
            true,
            vec![
                s("GROUP"),
                s("bench"),
                s("raw"),
                s("COUNT"),
                Value::from(batch as i64),
                s("BLOCK"),
                Value::from(2000i64),
                s("STREAMS"),
                s(stream),
                s(">"),
            ],
        )
        .await;
        for st in reply.into_array() {
            let mut parts = st.into_array().into_iter();
            parts.next();
            for entry in parts.next().map(Value::into_array).unwrap_or_default() {
                let mut e = entry.into_array().into_iter();
                let id = e.next().and_then(Value::into_bytes).unwrap_or_default();
                let mut fields = e
                    .next()
                    .map(Value::into_array)
                    .unwrap_or_default()
                    .into_iter();
                let mut data = Bytes::new();
                while let (Some(k), Some(v)) = (fields.next(), fields.next()) {
                    if k.as_bytes() == Some(b"__data__") {
                        data = v.into_bytes().unwrap_or_default();
                    }
                }
                let (body, _) = envelope::decode(&data);
                std::hint::black_box(decode(&body).expect("a bench order"));
                call(
                    &acker,
                    "XACK",
                    false,
                    vec![s(stream), s("bench"), Value::Bytes(id)],
                )
                .await;
                seen += 1;
            }
        }
    }
    let elapsed = started.elapsed();
    let _ = reader.quit().await;
    let _ = acker.quit().await;
    elapsed
}

/// CPU time this process has used so far (user + system, from /proc/self/stat; Linux only,
/// zero elsewhere). Wall-clock rates on a shared machine swing with other load; CPU per
/// message shows what each side costs.
fn cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which is in parentheses and may contain spaces).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    Duration::from_millis(ticks * 10) // USER_HZ is 100 on Linux
}

fn per_msg(d: Duration, n: u64) -> f64 {
    d.as_secs_f64() * 1e6 / n as f64
}

async fn round(n: u64, batch: u64) -> (Duration, Duration) {
    let c = client().await;
    let raw_stream = prepare(&c, n, "raw").await;
    let brook_stream = prepare(&c, n, "brook").await;
    // On a worker thread, as brook's consumer runs (block_on's own thread is not a worker, and
    // every wake-up would cross threads on the multi-thread runtime).
    let cpu0 = cpu();
    let side = std::env::var("BENCH_SIDE").unwrap_or_default();
    let raw = if side == "brook" {
        Duration::from_secs(1)
    } else {
        let stream = raw_stream.clone();
        tokio::spawn(async move { raw_loop(&stream, n, batch).await })
            .await
            .expect("raw loop")
    };
    let cpu1 = cpu();
    let brook = if side == "raw" {
        Duration::from_secs(1)
    } else {
        run_brook::<_, kind::Redis>(
            RedisBroker::new(URL),
            vec![
                ("stream", brook_stream.clone().into()),
                ("group", "bench".into()),
                ("batch", batch.into()),
            ],
            n,
            1,
        )
        .await
        .expect("brook run")
    };
    let cpu2 = cpu();
    println!(
        "    CPU in this process: raw {:.1} µs/msg, brook {:.1} µs/msg",
        per_msg(cpu1 - cpu0, n),
        per_msg(cpu2 - cpu1, n)
    );
    call(&c, "DEL", false, vec![s(&raw_stream), s(&brook_stream)]).await;
    let _ = c.quit().await;
    (raw, brook)
}

fn main() {
    let n = env("BENCH_N", 20_000);
    let batch = env("BENCH_BATCH", 64);
    let rounds = env("BENCH_ROUNDS", 5) as usize;
    for flavour in ["current_thread", "multi_thread"] {
        let rt = match flavour {
            "current_thread" => tokio::runtime::Builder::new_current_thread(),
            _ => tokio::runtime::Builder::new_multi_thread(),
        }
        .enable_all()
        .build()
        .unwrap();
        rt.block_on(round(n / 10, batch)); // warm-up
        let mut results: Vec<(Duration, Duration)> = (0..rounds)
            .map(|i| {
                let (raw, brook) = rt.block_on(round(n, batch));
                println!(
                    "{}",
                    report(&format!("  round {i}, {flavour}"), n, raw, brook)
                );
                (raw, brook)
            })
            .collect();
        // The median round by ratio: one noisy round (the machine is shared) does not decide.
        results.sort_by(|a, b| {
            let ratio = |(r, b): &(Duration, Duration)| r.as_secs_f64() / b.as_secs_f64();
            ratio(a).total_cmp(&ratio(b))
        });
        let (raw, brook) = results[results.len() / 2];
        println!(
            "{}",
            report(
                &format!("redis stream, batch {batch}, {flavour}, median of {rounds}"),
                n,
                raw,
                brook
            )
        );
    }
}
