//! Consume + acknowledge N pre-published ~100-byte JSON entries from a Redis stream through a
//! consumer group, brook (policy Ack) vs the strongest idiomatic hand-written fred loop
//! (XREADGROUP COUNT = batch, handle every entry, then one `XACK key group id1 id2 ...` for the
//! whole read), both decoding with `brook_runtime::bench::decode`, in the same run, on both
//! tokio runtime flavours. Both sides are timed from the first message received to the N-th
//! acknowledged on the server (brook: until XPENDING says 0, polled once the N-th is handled);
//! after each run the group must have no pending entry.
//!
//! `cargo bench -p brook-redis --bench throughput` (Redis on 127.0.0.1:6379). `BENCH_N`,
//! `BENCH_BATCH` and `BENCH_ROUNDS` override the defaults (50 000 entries, batch 100, 5 rounds);
//! `BENCH_SIDE=raw` or `brook` runs one side only (for profiling).

use std::time::{Duration, Instant};

use brook_redis::{envelope, RedisBroker};
use brook_runtime::bench::{decode, payload, rate, run_brook_until};
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

/// The hand-written loop: what one would write with fred alone, acknowledging each read's
/// entries with one XACK. Returns the time from the first entry received to the last XACK's
/// reply.
async fn raw_loop(stream: &str, n: u64, batch: u64) -> Duration {
    let reader = client().await;
    let acker = client().await;
    let mut seen = 0;
    let mut first = None;
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
        first.get_or_insert_with(Instant::now);
        let mut xack = vec![s(stream), s("bench")];
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
                xack.push(Value::Bytes(id));
                seen += 1;
            }
        }
        if xack.len() > 2 {
            call(&acker, "XACK", false, xack).await;
        }
    }
    let elapsed = first.map_or(Duration::ZERO, |f| f.elapsed());
    let _ = reader.quit().await;
    let _ = acker.quit().await;
    elapsed
}

/// How many entries of `stream` group `bench` are pending (XPENDING's summary).
async fn pending(c: &Client, stream: &str) -> i64 {
    call(c, "XPENDING", false, vec![s(stream), s("bench")])
        .await
        .into_array()
        .into_iter()
        .next()
        .and_then(|v| v.as_i64())
        .unwrap_or(-1)
}

/// Polls until the group has no pending entry (the N-th acknowledgement is on the server).
async fn until_settled(c: &Client, stream: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while pending(c, stream).await != 0 {
        assert!(
            Instant::now() < deadline,
            "{stream}: entries still pending after 30 s"
        );
    }
}

/// CPU time this process has used so far (user + system, all threads). Wall-clock rates on a
/// shared machine swing with other load; CPU per message shows what each side costs.
fn cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    if unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn per_msg(d: Duration, n: u64) -> f64 {
    d.as_secs_f64() * 1e6 / n as f64
}

/// One side's result: the window (first received to last acknowledged) and the process CPU
/// time it used (connecting and the App's start and stop included).
#[derive(Clone, Copy)]
struct Side {
    window: Duration,
    cpu: Duration,
}

#[derive(Clone, Copy)]
struct Round {
    raw: Side,
    brook: Side,
}

impl Round {
    fn rate_ratio(&self) -> f64 {
        self.raw.window.as_secs_f64() / self.brook.window.as_secs_f64()
    }

    fn cpu_ratio(&self) -> f64 {
        self.brook.cpu.as_secs_f64() / self.raw.cpu.as_secs_f64().max(1e-9)
    }

    fn line(&self, what: &str, n: u64) -> String {
        format!(
            "{what}: {n} msgs | raw {:>7.0} msg/s {:>5.1} µs/msg | brook {:>7.0} msg/s {:>5.1} µs/msg | brook/raw rate {:.2}, CPU {:.2}",
            rate(n, self.raw.window),
            per_msg(self.raw.cpu, n),
            rate(n, self.brook.window),
            per_msg(self.brook.cpu, n),
            self.rate_ratio(),
            self.cpu_ratio(),
        )
    }
}

async fn raw_side(c: &Client, n: u64, batch: u64) -> Side {
    let stream = prepare(c, n, "raw").await;
    // On a worker thread, as brook's consumer runs (block_on's own thread is not a worker, and
    // every wake-up would cross threads on the multi-thread runtime).
    let cpu0 = cpu();
    let s2 = stream.clone();
    let window = tokio::spawn(async move { raw_loop(&s2, n, batch).await })
        .await
        .expect("raw loop");
    let cpu = cpu() - cpu0;
    assert_eq!(pending(c, &stream).await, 0, "raw: entries left pending");
    call(c, "DEL", false, vec![s(&stream)]).await;
    Side { window, cpu }
}

async fn brook_side(c: &Client, n: u64, batch: u64) -> Side {
    let stream = prepare(c, n, "brook").await;
    let cpu0 = cpu();
    let run = run_brook_until::<_, kind::Redis, _>(
        RedisBroker::new(URL),
        vec![
            ("stream", stream.clone().into()),
            ("group", "bench".into()),
            ("batch", batch.into()),
        ],
        n,
        1,
        until_settled(c, &stream),
    )
    .await
    .expect("brook run");
    let cpu = cpu() - cpu0;
    assert_eq!(pending(c, &stream).await, 0, "brook: entries left pending");
    call(c, "DEL", false, vec![s(&stream)]).await;
    Side {
        window: run.window(),
        cpu,
    }
}

async fn round(n: u64, batch: u64, brook_first: bool) -> Round {
    let c = client().await;
    let side = std::env::var("BENCH_SIDE").unwrap_or_default();
    let skipped = Side {
        window: Duration::from_secs(1),
        cpu: Duration::from_secs(1),
    };
    let (mut raw, mut brook) = (skipped, skipped);
    for turn in [brook_first, !brook_first] {
        if turn && side != "raw" {
            brook = brook_side(&c, n, batch).await;
        } else if !turn && side != "brook" {
            raw = raw_side(&c, n, batch).await;
        }
    }
    let _ = c.quit().await;
    Round { raw, brook }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let n = env("BENCH_N", 50_000);
    let batch = env("BENCH_BATCH", 100);
    let rounds = env("BENCH_ROUNDS", 5).max(1) as usize;
    for flavour in ["current_thread", "multi_thread"] {
        let rt = match flavour {
            "current_thread" => tokio::runtime::Builder::new_current_thread(),
            _ => tokio::runtime::Builder::new_multi_thread(),
        }
        .enable_all()
        .build()
        .unwrap();
        rt.block_on(round(n / 10, batch, false)); // warm-up
        let results: Vec<Round> = (0..rounds)
            .map(|i| {
                let r = rt.block_on(round(n, batch, i % 2 == 1));
                println!("{}", r.line(&format!("  round {i}, {flavour}"), n));
                r
            })
            .collect();
        // Medians: one noisy round (the machine is shared) does not decide.
        let med = |f: &dyn Fn(&Round) -> f64| median(results.iter().map(f).collect());
        println!(
            "redis stream, batch {batch}, {flavour}, median of {rounds}: raw {:.0} msg/s {:.1} µs/msg | brook {:.0} msg/s {:.1} µs/msg | brook/raw rate {:.2}, CPU {:.2}",
            med(&|r| rate(n, r.raw.window)),
            med(&|r| per_msg(r.raw.cpu, n)),
            med(&|r| rate(n, r.brook.window)),
            med(&|r| per_msg(r.brook.cpu, n)),
            med(&Round::rate_ratio),
            med(&Round::cpu_ratio),
        );
    }
}
