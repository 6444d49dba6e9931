//! Throughput: consume + ack N pre-published ~100-byte JSON messages, brook (`ack_policy =
//! Ack`) against a hand-written lapin loop with the same prefetch, both decoding with
//! `brook_runtime::bench::decode`, on both tokio runtime flavours, in the same run.
//!
//! ```text
//! cargo bench -p brook-rabbit --bench throughput            # N = 20000, prefetch = 64
//! BENCH_N=50000 BENCH_PREFETCH=256 BENCH_ROUNDS=6 BENCH_FLAVOURS=current_thread \
//!     cargo bench -p brook-rabbit --bench throughput
//! ```
//! Needs RabbitMQ on 127.0.0.1:5672 (guest/guest).

use std::time::{Duration, Instant};

use brook_caps::Value;
use brook_rabbit::lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use brook_rabbit::lapin::types::{AMQPValue, FieldTable};
use brook_rabbit::lapin::{BasicProperties, Connection, ConnectionProperties};
use brook_rabbit::RabbitBroker;
use brook_runtime::bench::{decode, payload, report, run_brook};
use brook_runtime::kind::Rabbit;
use futures_util::StreamExt as _;

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

/// CPU time this process used so far (all threads: tokio's and lapin's I/O thread), from
/// /proc/self/stat; None where that does not exist. Less sensitive to a busy machine than
/// wall time.
fn cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which is in parentheses and may contain spaces).
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the name.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // CLK_TCK is 100 on Linux.
    Some(Duration::from_millis(ticks * 10))
}

fn per_msg(cpu: Option<Duration>, n: u64) -> String {
    cpu.map_or("?".to_owned(), |d| {
        format!("{:.1}", d.as_secs_f64() * 1e6 / n as f64)
    })
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

/// The hand-written loop: same prefetch, decode, ack one by one; timed from connecting to
/// the n-th ack, as brook's side is.
async fn raw(queue: &str, n: u64, prefetch: u16) -> BoxResult<Duration> {
    let started = Instant::now();
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
    let mut seen = 0;
    while let Some(delivery) = consumer.next().await {
        let delivery = delivery?;
        std::hint::black_box(decode(&delivery.data));
        delivery.ack(BasicAckOptions::default()).await?;
        seen += 1;
        if seen == n {
            break;
        }
    }
    let elapsed = started.elapsed();
    conn.close(200, "bye".into()).await?;
    Ok(elapsed)
}

async fn run_raw(queue: String, n: u64, prefetch: u16) -> BoxResult<Duration> {
    // In a task, as brook's consumer loop is (on a multi-thread runtime, `block_on` itself
    // runs outside the worker threads).
    let task =
        tokio::spawn(async move { raw(&queue, n, prefetch).await.map_err(|e| e.to_string()) });
    Ok(task.await??)
}

async fn round(n: u64, prefetch: u16, flavour: &str, raw_first: bool) -> BoxResult<f64> {
    let raw_queue = prepare(n, "raw").await?;
    let brook_queue = prepare(n, "brook").await?;
    let source = vec![
        ("queue", Value::from(brook_queue.clone())),
        ("declare", Value::from(false)),
        ("prefetch", Value::from(u64::from(prefetch))),
    ];
    let timed_raw = || async {
        let before = cpu_time();
        let wall = run_raw(raw_queue.clone(), n, prefetch).await?;
        Ok::<_, Box<dyn std::error::Error>>((wall, cpu_time().zip(before).map(|(a, b)| a - b)))
    };
    let timed_brook = || async {
        let before = cpu_time();
        let wall = run_brook::<_, Rabbit>(RabbitBroker::new(URL), source.clone(), n, 1).await?;
        Ok::<_, Box<dyn std::error::Error>>((wall, cpu_time().zip(before).map(|(a, b)| a - b)))
    };
    let ((raw_time, raw_cpu), (brook_time, brook_cpu)) = if raw_first {
        let r = timed_raw().await?;
        (r, timed_brook().await?)
    } else {
        let b = timed_brook().await?;
        (timed_raw().await?, b)
    };
    println!(
        "{} | cpu us/msg raw {} brook {}",
        report(
            &format!("rabbit {flavour:<14} prefetch={prefetch}"),
            n,
            raw_time,
            brook_time
        ),
        per_msg(raw_cpu, n),
        per_msg(brook_cpu, n)
    );
    delete(&raw_queue).await?;
    delete(&brook_queue).await?;
    Ok(raw_time.as_secs_f64() / brook_time.as_secs_f64())
}

fn main() -> BoxResult<()> {
    let n = env("BENCH_N", 20_000);
    let prefetch = u16::try_from(env("BENCH_PREFETCH", 64))?;
    let rounds = env("BENCH_ROUNDS", 4);
    let flavours = std::env::var("BENCH_FLAVOURS")
        .unwrap_or_else(|_| "current_thread,multi_thread".to_owned());
    for flavour in flavours.split(',') {
        let rt = match flavour {
            "current_thread" => tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?,
            _ => tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?,
        };
        // Alternate which side runs first, so neither always gets the warmer broker.
        let mut ratios = Vec::new();
        for i in 0..rounds {
            ratios.push(rt.block_on(round(n, prefetch, flavour, i % 2 == 0))?);
        }
        ratios.sort_by(f64::total_cmp);
        let median = match ratios.len() {
            0 => f64::NAN,
            len if len % 2 == 1 => ratios[len / 2],
            len => (ratios[len / 2 - 1] + ratios[len / 2]) / 2.0,
        };
        println!("rabbit {flavour}: median brook/raw over {rounds} rounds = {median:.2}");
    }
    Ok(())
}
