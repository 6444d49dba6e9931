//! Handlers that publish, on the real broker (tansu, 127.0.0.1:9092): a handler's result goes
//! to its output topic with the input's correlation id before the input's offset is committed;
//! an output that cannot be published leaves the offset where it was (NackOnError reads the
//! input again); request/reply through this client's reply topic, its timeout, and a late
//! reply that is dropped.
mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use brook::prelude::*;
use brook::{BrokerError, Outgoing};
use brook_runtime::testing::{Calls, Probe};
use bytes::Bytes;
use common::*;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers as _;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::Message as _;
use serde::{Deserialize, Serialize};

#[derive(Debug, Deserialize, Serialize, PartialEq)]
struct Order {
    id: u64,
    amount: u32,
}

#[derive(Debug, Deserialize, Serialize, PartialEq)]
struct Invoice {
    order: u64,
    total: u32,
}

const OPEN: usize = Probe::OPEN;

#[brook::kafka::subscriber(
    topic = _,
    group_id = _,
    publish = _,
    auto_offset_reset = earliest,
    ack_policy = NackOnError
)]
async fn bill(order: Order, msg: &Message, probe: State<Probe>) -> anyhow::Result<Invoice> {
    probe.pass(msg).await?;
    Ok(Invoice {
        order: order.id,
        total: order.amount * 2,
    })
}

#[brook::kafka::subscriber(
    topic = _,
    group_id = _,
    auto_offset_reset = earliest,
    ack_policy = NackOnError
)]
async fn square(n: u64, msg: &Message, probe: State<Probe>) -> anyhow::Result<u64> {
    probe.pass(msg).await?;
    Ok(n * n)
}

/// The next handler call: (correlation_id, reply_to, delivery count).
async fn next_call(calls: &mut Calls) -> (Option<String>, Option<String>, Option<u32>) {
    let c = calls.next(WAIT).await.expect("a handler call in time");
    (c.correlation_id, c.reply_to, c.delivery_count)
}

/// A record as the broker holds it.
#[derive(Debug)]
struct Record {
    body: Bytes,
    headers: HashMap<String, String>,
}

/// The first `n` records of partition 0 of `topic`, read by a consumer of its own (bounded).
async fn read_topic(topic: &str, n: usize) -> Vec<Record> {
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", ADDR)
            .set("group.id", fresh("reader"))
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", "50")
            .create()
            .expect("reader");
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&topic, 0, Offset::Beginning)
            .expect("offset");
        c.assign(&tpl).expect("assign");
        let started = Instant::now();
        let mut out = Vec::new();
        while out.len() < n {
            assert!(
                started.elapsed() < WAIT,
                "only {} of {n} records in `{topic}` within {WAIT:?}: {out:?}",
                out.len()
            );
            if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
                let mut headers = HashMap::new();
                if let Some(h) = m.headers() {
                    for h in h.iter() {
                        let value = String::from_utf8_lossy(h.value.unwrap_or_default());
                        headers.insert(h.key.to_owned(), value.into_owned());
                    }
                }
                out.push(Record {
                    body: Bytes::copy_from_slice(m.payload().unwrap_or_default()),
                    headers,
                });
            }
        }
        out
    })
    .await
    .expect("join")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_output_is_published_with_the_correlation_id_before_the_offset_is_committed() {
    let (input, group) = fresh_topic("out-in", 1).await;
    let (output, _) = fresh_topic("out-out", 1).await;
    let (probe, mut calls, gate) = Probe::new(0);
    let app = App::new(broker())
        .state(probe)
        .subscribe(bill.topic(&input).group_id(&group).publish(&output))
        .start()
        .await
        .expect("start");
    let order = Outgoing::encode(&Order { id: 7, amount: 21 }, &input)
        .expect("encode")
        .with_correlation_id("chain-7");
    broker().publish_message(order).await.expect("publish");
    let (correlation, _, delivery) = next_call(&mut calls).await;
    assert_eq!(
        (correlation.as_deref(), delivery),
        (Some("chain-7"), Some(1))
    );
    // The handler is running: nothing is committed yet.
    assert_eq!(committed(&group, &input, 1).await, [None]);
    gate.add_permits(1);
    // Committed past the input...
    assert_eq!(wait_committed(&group, &input, &[Some(1)]).await, [Some(1)]);
    // ...and by then the output is on the broker, with the input's correlation id.
    let out = read_topic(&output, 1).await;
    let invoice: Invoice = serde_json::from_slice(&out[0].body).expect("an invoice");
    assert_eq!(
        invoice,
        Invoice {
            order: 7,
            total: 42
        }
    );
    assert_eq!(
        out[0].headers.get("correlation_id").map(String::as_str),
        Some("chain-7")
    );
    assert_eq!(
        out[0].headers.get("content-type").map(String::as_str),
        Some("application/json")
    );
    app.stop().await.expect("stop");
    assert!(remaining(&group, &input, 1).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_output_that_cannot_be_published_leaves_the_input_uncommitted_and_redelivered() {
    let (input, group) = fresh_topic("outfail-in", 1).await;
    // Never created: tansu does not create topics on produce, so librdkafka fails the
    // message once `message.timeout.ms` is over.
    let missing = fresh("outfail-missing");
    let (probe, mut calls, _gate) = Probe::new(OPEN);
    let app = App::new(broker().with_producer_config("message.timeout.ms", "1500"))
        .state(probe)
        .subscribe(bill.topic(&input).group_id(&group).publish(&missing))
        .start()
        .await
        .expect("start");
    broker()
        .publish_message(
            Outgoing::encode(&Order { id: 1, amount: 1 }, &input)
                .expect("encode")
                .with_correlation_id("lost-1"),
        )
        .await
        .expect("publish");
    // The failed publish fails the handler: NackOnError reads the input again.
    assert_eq!(next_call(&mut calls).await.2, Some(1));
    assert_eq!(next_call(&mut calls).await.2, Some(2));
    app.stop().await.expect("stop");
    assert_eq!(committed(&group, &input, 1).await, [None]);
    let left = remaining(&group, &input, 1).await;
    assert_eq!(left.len(), 1, "the input is still to be read: {left:?}");
    let order: Order = serde_json::from_slice(&left[0].2).expect("the order");
    assert_eq!(order, Order { id: 1, amount: 1 });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_gets_the_handler_s_result_back_by_correlation_id() {
    let (topic, group) = fresh_topic("rpc", 1).await;
    let (probe, mut calls, _gate) = Probe::new(OPEN);
    let client = broker();
    let app = App::new(broker())
        .state(probe)
        .subscribe(square.topic(&topic).group_id(&group))
        .start()
        .await
        .expect("start");
    let request = Outgoing::encode(&12u64, &topic)
        .expect("encode")
        .with_correlation_id("ask-12");
    let reply = client
        .request_message(request, WAIT)
        .await
        .expect("a reply");
    assert_eq!(&reply.body()[..], b"144");
    assert_eq!(reply.correlation_id(), Some("ask-12"));
    let reply_topic = reply.topic().to_owned();
    assert!(reply_topic.starts_with("brook-replies-"), "{reply_topic}");
    // The request reached the handler with this client's reply topic.
    let (correlation, reply_to, _) = next_call(&mut calls).await;
    assert_eq!(correlation.as_deref(), Some("ask-12"));
    assert_eq!(reply_to.as_deref(), Some(reply_topic.as_str()));
    // Concurrent requests share the reply topic; each gets its own reply.
    let (a, b, c) = tokio::join!(
        client.request(&2u64, &topic, WAIT),
        client.request(&3u64, &topic, WAIT),
        client.request(&4u64, &topic, WAIT),
    );
    let bodies: Vec<Bytes> = [a, b, c]
        .into_iter()
        .map(|r| {
            let r = r.expect("a reply");
            assert_eq!(r.topic(), reply_topic, "one reply topic per client");
            r.body().clone()
        })
        .collect();
    assert_eq!(bodies, [&b"4"[..], b"9", b"16"]);
    // On the broker: the handler's replies, each with its request's correlation id.
    let on_broker = read_topic(&reply_topic, 4).await;
    assert_eq!(
        on_broker[0]
            .headers
            .get("correlation_id")
            .map(String::as_str),
        Some("ask-12")
    );
    app.stop().await.expect("stop");
    client.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_nobody_answers_times_out() {
    // A topic nobody consumes.
    let (topic, _) = fresh_topic("rpc-nobody", 1).await;
    let client = broker();
    let started = Instant::now();
    let err = client
        .request(&1u64, &topic, Duration::from_millis(700))
        .await
        .expect_err("no reply");
    assert!(
        matches!(&err, BrokerError::RequestTimeout { destination, timeout, .. }
            if destination == &topic && *timeout == Duration::from_millis(700)),
        "{err:?}"
    );
    assert!(started.elapsed() < WAIT);
    // The request is on the broker, with where to reply and the id to reply with.
    let sent = read_topic(&topic, 1).await;
    let reply_to = sent[0].headers.get("reply_to").expect("reply_to");
    assert!(reply_to.starts_with("brook-replies-"), "{reply_to}");
    assert_eq!(
        sent[0].headers.get("correlation_id").map(String::len),
        Some(36),
        "a new UUID: {:?}",
        sent[0].headers
    );
    client.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_reply_is_dropped_and_the_next_request_gets_its_own() {
    let (topic, group) = fresh_topic("rpc-late", 1).await;
    let (probe, mut calls, gate) = Probe::new(0);
    let client = broker();
    let app = App::new(broker())
        .state(probe)
        .subscribe(square.topic(&topic).group_id(&group))
        .start()
        .await
        .expect("start");
    let late = Outgoing::encode(&5u64, &topic)
        .expect("encode")
        .with_correlation_id("late-5");
    let err = client
        .request_message(late, Duration::from_millis(500))
        .await
        .expect_err("the handler is held back");
    assert!(matches!(err, BrokerError::RequestTimeout { .. }), "{err:?}");
    let (_, reply_to, _) = next_call(&mut calls).await;
    let reply_topic = reply_to.expect("reply_to");
    // Let the handler go: it replies to the timed-out request (late), then to the next one.
    gate.add_permits(OPEN);
    let on_time = Outgoing::encode(&6u64, &topic)
        .expect("encode")
        .with_correlation_id("on-time-6");
    let reply = client
        .request_message(on_time, WAIT)
        .await
        .expect("a reply");
    assert_eq!(
        (reply.correlation_id(), &reply.body()[..]),
        (Some("on-time-6"), &b"36"[..])
    );
    // The late reply did reach this client's reply topic first, and was dropped.
    let on_broker = read_topic(&reply_topic, 2).await;
    let ids: Vec<_> = on_broker
        .iter()
        .map(|r| r.headers.get("correlation_id").cloned())
        .collect();
    assert_eq!(
        ids,
        [Some("late-5".to_owned()), Some("on-time-6".to_owned())]
    );
    assert_eq!(&on_broker[0].body[..], b"25");
    app.stop().await.expect("stop");
    client.close().await.expect("close");
}
