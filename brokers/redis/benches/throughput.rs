//! Consume + acknowledge N pre-published ~100-byte JSON entries from a Redis stream through a
//! consumer group, brook (policy Ack) vs the strongest idiomatic hand-written fred loop
//! (XREADGROUP COUNT = batch, handle every entry, then one `XACK key group id1 id2 ...` for the
//! whole read, sent on a second connection together with the next XREADGROUP), both decoding with `brook_runtime::bench::decode`, in the same run, on both
//! tokio runtime flavours. Both sides are timed from the first message received to the N-th
//! acknowledged on the server (brook: until XPENDING says 0, polled once the N-th is handled);
//! after each run the group must have no pending entry. The process CPU time used in the same
//! window is measured too (`bench::Mark` at both ends); see `brook_runtime::bench` for the
//! shared measurement and report lines.
//!
//! `cargo bench -p brook-redis --bench throughput` (Redis on 127.0.0.1:6379). `BENCH_N`,
//! `BENCH_BATCH` and `BENCH_ROUNDS` override the defaults (50 000 entries, batch 100, 5 rounds);
//! `BENCH_SIDE=raw` or `brook` runs one side only (for profiling).

use std::time::{Duration, Instant};

use brook_redis::{envelope, RedisBroker};
use brook_runtime::bench::{self, decode, payload, run_brook_until, Mark, Round, Side};
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
/// entries with one XACK, sent while the next XREADGROUP is already on its way (on a second
/// connection, so the blocking read never holds an XACK back): the acks never wait for a read,
/// nor a read for the acks. Returns the time from the first entry received to the last XACK's
/// reply.
async fn raw_loop(stream: &str, n: u64, batch: u64) -> Side {
    let reader = client().await;
    let acker = client().await;
    let mut seen = 0;
    let mut first = None;
    // The previous read's XACK, sent together with the next read.
    let mut unsent: Option<Vec<Value>> = None;
    while seen < n {
        let read = call(
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
        );
        let reply = match unsent.take() {
            Some(xack) => tokio::join!(call(&acker, "XACK", false, xack), read).1,
            None => read.await,
        };
        first.get_or_insert_with(Mark::now);
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
            unsent = Some(xack);
        }
    }
    if let Some(xack) = unsent {
        call(&acker, "XACK", false, xack).await;
    }
    let elapsed = first.map_or(Side::SKIPPED, Mark::until_now);
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

async fn raw_side(c: &Client, n: u64, batch: u64) -> Side {
    let stream = prepare(c, n, "raw").await;
    // On a worker thread, as brook's consumer runs (block_on's own thread is not a worker, and
    // every wake-up would cross threads on the multi-thread runtime).
    let s2 = stream.clone();
    let side = tokio::spawn(async move { raw_loop(&s2, n, batch).await })
        .await
        .expect("raw loop");
    assert_eq!(pending(c, &stream).await, 0, "raw: entries left pending");
    call(c, "DEL", false, vec![s(&stream)]).await;
    side
}

async fn brook_side(c: &Client, n: u64, batch: u64) -> Side {
    let stream = prepare(c, n, "brook").await;
    let side = run_brook_until::<_, kind::Redis, _>(
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
    .expect("brook run")
    .window();
    assert_eq!(pending(c, &stream).await, 0, "brook: entries left pending");
    call(c, "DEL", false, vec![s(&stream)]).await;
    side
}

async fn round(n: u64, batch: u64, brook_first: bool) -> Round {
    let c = client().await;
    let side = std::env::var("BENCH_SIDE").unwrap_or_default();
    let (mut raw, mut brook) = (Side::SKIPPED, Side::SKIPPED);
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

fn main() {
    let n = env("BENCH_N", 50_000);
    let batch = env("BENCH_BATCH", 100);
    let rounds = env("BENCH_ROUNDS", 5).max(1) as usize;
    for flavour in bench::FLAVOURS {
        let rt = bench::runtime(flavour).expect("runtime");
        rt.block_on(round(n / 10, batch, false)); // warm-up
        let results: Vec<Round> = (0..rounds)
            .map(|i| {
                let r = rt.block_on(round(n, batch, i % 2 == 1));
                println!("{}", r.line(&format!("  round {i}, {flavour}"), n));
                r
            })
            .collect();
        println!(
            "{}",
            bench::summary(
                &format!("redis stream, batch {batch}, {flavour}"),
                n,
                &results
            )
        );
    }
}
