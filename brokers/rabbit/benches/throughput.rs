//! Throughput: consume + ack N pre-published ~100-byte JSON messages, brook (`ack_policy =
//! Ack`, concurrency 1) against the strongest idiomatic hand-written lapin loop with the same
//! prefetch, both decoding with `brook_runtime::bench::decode`, on both tokio runtime flavours,
//! in the same run, alternating which side goes first.
//!
//! The raw loop acknowledges with `basic.ack multiple=true`: it keeps the last delivery's tag
//! and sends one ack covering everything so far when no further delivery is ready at once (the
//! next `consumer.next()` polled with `now_or_never`) or when half the prefetch has
//! accumulated. Its window runs from the first delivery received to the ack covering the N-th
//! having been sent (the ack's future resolved). brook's window runs from its handler's first
//! call to the App's `stop` having returned: the stop flushes brook's settlements, and
//! RabbitMQ cannot be asked from outside how many messages a connected consumer still holds
//! unacknowledged (`queue.declare passive` counts only ready messages; the management API is
//! not assumed to be there). So brook's window also holds closing its consumer, channel and
//! connection (a few round trips; printed per round as `brook stop`). After each side, a
//! passive declare must show 0 ready messages: nothing was requeued, everything was acked.
//! Connecting, `basic.qos` and `basic.consume` stay outside both windows; the process CPU time used
//! in the same window is measured too (`bench::Mark` at both ends). Per round the bench prints both rates, both CPU µs/msg and the two brook/raw
//! ratios, and per flavour their medians (`brook_runtime::bench`).
//!
//! ```text
//! cargo bench -p brook-rabbit --bench throughput            # N = 20000, prefetch = 64
//! BENCH_N=50000 BENCH_PREFETCH=256 BENCH_ROUNDS=6 BENCH_FLAVOURS=current_thread \
//!     cargo bench -p brook-rabbit --bench throughput
//! ```
//! `BENCH_N` (default 20000), `BENCH_PREFETCH` (64), `BENCH_ROUNDS` (4), `BENCH_FLAVOURS`
//! (comma-separated, default `current_thread,multi_thread`), `BENCH_SIDE=raw|brook` runs one
//! side only, for profiling. Needs RabbitMQ on 127.0.0.1:5672 (guest/guest).

use std::time::{Duration, Instant};

use brook_caps::Value;
use brook_rabbit::lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use brook_rabbit::lapin::types::{AMQPValue, FieldTable};
use brook_rabbit::lapin::{BasicProperties, Connection, ConnectionProperties};
use brook_rabbit::RabbitBroker;
use brook_runtime::bench::{self, decode, payload, run_brook_until, Mark, Round, Side};
use brook_runtime::kind::Rabbit;
use futures_util::{FutureExt as _, StreamExt as _};

const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

type BoxResult<T> = Result<T, Box<dyn std::error::Error>>;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A fresh queue holding `n` bench payloads (published with confirms).
async fn prepare(n: u64, tag: &str) -> BoxResult<String> {
    let queue = format!(
        "brook-bench-{tag}-{}-{}",
        std::process::id(),
        Instant::now().elapsed().as_nanos() ^ rand_ish()
    );
    let conn = Connection::connect(URL, ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let mut args = FieldTable::default();
    args.insert("x-expires".into(), AMQPValue::LongLongInt(10 * 60 * 1000));
    let options = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.queue_declare(queue.as_str().into(), options, args)
        .await?;
    let props = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2);
    let mut confirms = Vec::with_capacity(1000);
    for i in 0..n {
        let confirm = ch
            .basic_publish(
                "".into(),
                queue.as_str().into(),
                BasicPublishOptions::default(),
                &payload(i),
                props.clone(),
            )
            .await?;
        confirms.push(confirm);
        if confirms.len() == 1000 {
            for c in confirms.drain(..) {
                c.await?;
            }
        }
    }
    for c in confirms {
        c.await?;
    }
    conn.close(200, "bye".into()).await?;
    Ok(queue)
}

fn rand_ish() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

async fn delete(queue: &str) -> BoxResult<()> {
    let conn = Connection::connect(URL, ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    ch.queue_delete(queue.into(), QueueDeleteOptions::default())
        .await?;
    conn.close(200, "bye".into()).await?;
    Ok(())
}

/// How many messages of `queue` are ready (not delivered to any consumer), by a passive declare.
async fn ready(queue: &str) -> BoxResult<u32> {
    let conn = Connection::connect(URL, ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    let options = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let count = ch
        .queue_declare(queue.into(), options, FieldTable::default())
        .await?
        .message_count();
    conn.close(200, "bye".into()).await?;
    Ok(count)
}

/// The hand-written loop: same prefetch, decode each, one `basic.ack multiple=true` for what
/// has accumulated whenever no further delivery is ready at once or half the prefetch is
/// unacknowledged. Returns the window: first delivery received to the ack covering the N-th
/// sent.
async fn raw(queue: &str, n: u64, prefetch: u16) -> BoxResult<Side> {
    let conn = Connection::connect(URL, ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    ch.basic_qos(prefetch, BasicQosOptions::default()).await?;
    let mut consumer = ch
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    // Half the prefetch: the broker keeps sending while the other half is still in flight.
    let ack_every = u64::from(prefetch / 2).max(1);
    let multiple = BasicAckOptions { multiple: true };
    let (mut first, mut seen, mut unacked, mut last_tag) = (None, 0, 0, 0);
    while seen < n {
        // A delivery ready now is taken (never dropped); only when none is, the ones so far
        // are acknowledged before waiting for more.
        let next = match consumer.next().now_or_never() {
            Some(next) => next,
            None => {
                if unacked > 0 {
                    ch.basic_ack(last_tag, multiple).await?;
                    unacked = 0;
                }
                consumer.next().await
            }
        };
        let delivery = next.ok_or("the consumer was cancelled")??;
        first.get_or_insert_with(Mark::now);
        std::hint::black_box(decode(&delivery.data));
        last_tag = delivery.delivery_tag;
        seen += 1;
        unacked += 1;
        if unacked >= ack_every || seen == n {
            ch.basic_ack(last_tag, multiple).await?;
            unacked = 0;
        }
    }
    let window = first.map_or(Side::SKIPPED, Mark::until_now);
    conn.close(200, "bye".into()).await?;
    Ok(window)
}

async fn raw_side(queue: &str, n: u64, prefetch: u16) -> BoxResult<Side> {
    let queue = queue.to_owned();
    // In a task, as brook's consumer loop is (on a multi-thread runtime, `block_on` itself
    // runs outside the worker threads).
    let side =
        tokio::spawn(async move { raw(&queue, n, prefetch).await.map_err(|e| e.to_string()) })
            .await??;
    Ok(side)
}

/// brook's side, and how long its App's stop took (part of its window).
async fn brook_side(queue: &str, n: u64, prefetch: u16) -> BoxResult<(Side, Duration)> {
    let source = vec![
        ("queue", Value::from(queue.to_owned())),
        ("declare", Value::from(false)),
        ("prefetch", Value::from(u64::from(prefetch))),
    ];
    let run =
        run_brook_until::<_, Rabbit, _>(RabbitBroker::new(URL), source, n, 1, async {}).await?;
    Ok((run.until_stopped(), run.stopped.at - run.settled.at))
}

async fn round(n: u64, prefetch: u16, flavour: &str, i: u64) -> BoxResult<Round> {
    let only = std::env::var("BENCH_SIDE").unwrap_or_default();
    let raw_queue = prepare(n, "raw").await?;
    let brook_queue = prepare(n, "brook").await?;
    let (mut raw, mut brook, mut stop) = (Side::SKIPPED, Side::SKIPPED, Duration::ZERO);
    // Odd rounds run brook first: neither side always meets the warmer broker.
    let brook_first = i % 2 == 1;
    for brook_turn in [brook_first, !brook_first] {
        if brook_turn && only != "raw" {
            (brook, stop) = brook_side(&brook_queue, n, prefetch).await?;
            assert_eq!(ready(&brook_queue).await?, 0, "brook: messages requeued");
        } else if !brook_turn && only != "brook" {
            raw = raw_side(&raw_queue, n, prefetch).await?;
            assert_eq!(ready(&raw_queue).await?, 0, "raw: messages requeued");
        }
    }
    delete(&raw_queue).await?;
    delete(&brook_queue).await?;
    let r = Round { raw, brook };
    println!(
        "{} | brook stop {:.1} ms",
        r.line(&format!("  round {i}, {flavour}, prefetch {prefetch}"), n),
        stop.as_secs_f64() * 1e3
    );
    Ok(r)
}

fn main() -> BoxResult<()> {
    let n = env("BENCH_N", 20_000);
    let prefetch = u16::try_from(env("BENCH_PREFETCH", 64))?;
    let rounds = env("BENCH_ROUNDS", 4).max(1);
    let flavours = std::env::var("BENCH_FLAVOURS").unwrap_or_else(|_| bench::FLAVOURS.join(","));
    for flavour in flavours.split(',') {
        let rt = bench::runtime(flavour)?;
        let mut results = Vec::new();
        for i in 0..rounds {
            results.push(rt.block_on(round(n, prefetch, flavour, i))?);
        }
        println!(
            "{}",
            bench::summary(
                &format!("rabbit ack, prefetch {prefetch}, {flavour}"),
                n,
                &results
            )
        );
    }
    Ok(())
}
