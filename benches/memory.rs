//! The in-memory path: decode + dispatch + settle, per ack policy.
//!
//! `cargo bench --bench memory` prints, per policy, wall time per message, messages per second
//! and heap allocations per message (counted by a wrapping global allocator: exact, not
//! sampled). Wall time is noisy on shared machines; `scripts/bench-memory` also runs the loop
//! under callgrind and prints instructions per message, which does not depend on load.
//!
//! What one iteration does: take the next message from an in-memory consumer (the broker's
//! queue bookkeeping included), decode `{"id":..,"amount":..}` into a struct, run a
//! `#[subscriber]` handler, settle as the policy says. Publishing happens before the clock
//! starts. Broker crates have their own benches against their raw clients (see
//! docs/benchmarks.md).

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use brook::prelude::*;
use brook::{Consumer, Context, Handler};
use serde::Deserialize;

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[derive(Deserialize)]
struct Order {
    id: u64,
    amount: f64,
}

#[subscriber(broker = memory, topic = "bench", ack_policy = AckFirst)]
async fn ack_first(order: Order) {
    black_box((order.id, order.amount));
}

#[subscriber(broker = memory, topic = "bench", ack_policy = Ack)]
async fn ack(order: Order) {
    black_box((order.id, order.amount));
}

#[subscriber(broker = memory, topic = "bench", ack_policy = RejectOnError)]
async fn reject_on_error(order: Order) -> anyhow::Result<()> {
    black_box((order.id, order.amount));
    Ok(())
}

#[subscriber(broker = memory, topic = "bench", ack_policy = NackOnError)]
async fn nack_on_error(order: Order) -> anyhow::Result<()> {
    black_box((order.id, order.amount));
    Ok(())
}

#[subscriber(broker = memory, topic = "bench", ack_policy = Manual)]
async fn manual(order: Order, msg: &Message) -> anyhow::Result<()> {
    black_box((order.id, order.amount));
    msg.ack().await?;
    Ok(())
}

struct Figures {
    per_message: Duration,
    allocations: f64,
}

/// What the clock covers.
#[derive(Clone, Copy, PartialEq)]
enum Path {
    /// next() from the in-memory consumer + decode + handler + settle.
    Consume,
    /// decode + handler + settle, on messages already taken from the broker.
    Engine,
}

/// Publishes `n` messages to a fresh broker, then times `n` iterations of `path`.
fn run<H: Handler>(handler: H, n: u64, path: Path) -> Figures {
    run_with(handler, Vec::new(), n, path)
}

/// `run`, with `layers` around the handler.
fn run_with<H: Handler>(
    handler: H,
    layers: Vec<std::sync::Arc<dyn brook::Layer>>,
    n: u64,
    path: Path,
) -> Figures {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let broker = MemoryBroker::new();
    let sub = handler.subscription().build().unwrap().with_layers(layers);
    let ctx = Context::default();
    let mut consumer = rt.block_on(broker.subscribe(&sub)).unwrap();
    for i in 0..n {
        let body = format!(r#"{{"id":{i},"amount":{}.5}}"#, i % 100);
        rt.block_on(broker.publish_message(Outgoing::new("bench", body)))
            .unwrap();
    }
    let delivered: Vec<Message> = match path {
        Path::Consume => Vec::new(),
        Path::Engine => rt.block_on(async {
            let mut v = Vec::with_capacity(n as usize);
            for _ in 0..n {
                v.push(consumer.next().await.unwrap().unwrap());
            }
            v
        }),
    };
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    let started = Instant::now();
    match path {
        Path::Consume => measured_loop(&rt, &mut consumer, &handler, &sub, &ctx, n),
        Path::Engine => measured_engine(&rt, delivered, &handler, &sub, &ctx),
    }
    let elapsed = started.elapsed();
    let allocations = (ALLOCATIONS.load(Ordering::Relaxed) - before) as f64 / n as f64;
    let snapshot = broker.snapshot("bench");
    assert!(
        snapshot
            .groups
            .iter()
            .all(|g| g.waiting.is_empty() && g.in_flight == 0),
        "every message must have been settled"
    );
    Figures {
        per_message: elapsed / n as u32,
        allocations,
    }
}

/// The measured part; `scripts/bench-memory` points callgrind's `--toggle-collect` at it.
#[inline(never)]
fn measured_loop<H: Handler>(
    rt: &tokio::runtime::Runtime,
    consumer: &mut brook::memory::MemoryConsumer,
    handler: &H,
    sub: &brook::Subscription,
    ctx: &Context,
    n: u64,
) {
    rt.block_on(async {
        for _ in 0..n {
            let msg = consumer.next().await.unwrap().unwrap();
            let outcome = brook::engine::process(handler, sub, ctx, msg).await;
            black_box(outcome);
        }
    })
}

/// The engine alone; `scripts/bench-memory` points callgrind at it too.
#[inline(never)]
fn measured_engine<H: Handler>(
    rt: &tokio::runtime::Runtime,
    delivered: Vec<Message>,
    handler: &H,
    sub: &brook::Subscription,
    ctx: &Context,
) {
    rt.block_on(async {
        for msg in delivered {
            let outcome = brook::engine::process(handler, sub, ctx, msg).await;
            black_box(outcome);
        }
    })
}

type Row = (&'static str, fn(u64, Path) -> Figures);

fn main() {
    #[allow(unused_mut)]
    let mut rows: Vec<Row> = vec![
        ("AckFirst", |n, p| run(ack_first, n, p)),
        ("Ack", |n, p| run(ack, n, p)),
        ("RejectOnError", |n, p| run(reject_on_error, n, p)),
        ("NackOnError", |n, p| run(nack_on_error, n, p)),
        ("Manual", |n, p| run(manual, n, p)),
    ];
    // The cost of the Prometheus layer: `Ack` again, with it.
    #[cfg(feature = "prometheus")]
    rows.push(("Ack+metrics", |n, p| {
        let metrics = brook::metrics::Metrics::new();
        run_with(ack, vec![std::sync::Arc::new(metrics)], n, p)
    }));
    // `--callgrind POLICY N consume|engine`: run only that loop (for scripts/bench-memory).
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|a| a == "--callgrind") {
        let (policy, n) = (&args[at + 1], args[at + 2].parse().unwrap());
        let path = if args[at + 3] == "engine" {
            Path::Engine
        } else {
            Path::Consume
        };
        let (_, f) = rows.iter().find(|(name, _)| name == policy).unwrap();
        f(n, path);
        return;
    }
    let n = 200_000;
    println!("in-memory path, {n} messages per policy, small JSON struct");
    println!(
        "consume = broker next() + decode + dispatch + settle; engine = decode + dispatch + settle"
    );
    println!(
        "{:<14} {:>14} {:>14} {:>12} {:>14} {:>12}",
        "policy", "consume ns/msg", "consume msg/s", "allocs/msg", "engine ns/msg", "allocs/msg"
    );
    for (name, f) in rows {
        let _warmup = f(10_000, Path::Consume);
        let consume = f(n, Path::Consume);
        let engine = f(n, Path::Engine);
        let ns = consume.per_message.as_nanos();
        println!(
            "{name:<14} {ns:>14} {:>14.0} {:>12.2} {:>14} {:>12.2}",
            1e9 / ns.max(1) as f64,
            consume.allocations,
            engine.per_message.as_nanos(),
            engine.allocations,
        );
    }
}
