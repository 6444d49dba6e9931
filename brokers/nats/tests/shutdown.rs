//! Shutdown on 127.0.0.1:4222: a stop with nothing in flight waits for no fixed delay (no
//! quiet period, no pull request expiry), and what a stop must still do it still does.

use std::time::{Duration, Instant};

use async_nats::jetstream;
use brook_nats::NatsBroker;
use brook_runtime::testing::Bodies;
use brook_runtime::{kind, AckPolicy, App, Broker, BrokerKind, Subscription, SubscriptionBuilder};

const URL: &str = "nats://127.0.0.1:4222";
const WAIT: Duration = Duration::from_secs(20);
/// Stops measured per case; the median is what is asserted.
const STOPS: usize = 10;
/// What the median stop must stay under. The old JetStream close waited out a 250 ms quiet
/// period every time; a stop with nothing in flight is a few round trips on loopback.
const FAST: Duration = Duration::from_millis(150);

fn fresh(prefix: &str) -> String {
    brook_runtime::conformance::unique_name(prefix, '_')
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

/// Starts an App with one subscriber, has it handle one message (so its pull request or
/// subscription is live and nothing is in flight), and times `stop`.
async fn timed_stop(sub: SubscriptionBuilder, subject: &str) -> Duration {
    let broker = NatsBroker::new(URL);
    let (handler, mut rx) = Bodies::<kind::Nats>::new(sub);
    let running = App::new(broker.clone())
        .subscribe(handler)
        .start()
        .await
        .expect("start");
    // On the App's own connection: the server has the subscription before this message.
    broker.publish("x", subject).await.expect("publish");
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("handled within the bound")
        .expect("handler alive");
    let started = Instant::now();
    running.stop().await.expect("stop");
    started.elapsed()
}

async fn consumer_info(
    js: &jetstream::Context,
    stream: &str,
    durable: &str,
) -> jetstream::consumer::Info {
    let mut consumer: jetstream::consumer::PullConsumer = js
        .get_consumer_from_stream(durable, stream)
        .await
        .expect("consumer exists");
    consumer.info().await.expect("consumer info").clone()
}

#[tokio::test]
async fn an_idle_jetstream_subscriber_stops_without_waiting() {
    let base = fresh("brook_shutdown_js");
    let (stream, subject) = (base.to_uppercase(), format!("brook.{base}"));
    let client = async_nats::connect(URL).await.expect("connect");
    let js = jetstream::new(client);
    let mut times = Vec::new();
    for _ in 0..STOPS {
        let sub = Subscription::new(BrokerKind::Nats, "shutdown")
            .arg("subject", subject.clone())
            .arg("stream", stream.clone())
            .arg("durable", "worker")
            .arg("ack_policy", AckPolicy::Ack);
        times.push(timed_stop(sub, &subject).await);
    }
    eprintln!("JetStream stop times: {times:?}");
    let median = median(times);
    eprintln!("JetStream median stop: {median:?}");
    // Every message was acked before the stop returned (the ack is flushed), and nothing was
    // delivered into the closed inbox (it would be pending ack until ack_wait).
    let c = consumer_info(&js, &stream, "worker").await;
    let _ = js.delete_stream(&stream).await;
    assert_eq!(c.ack_floor.stream_sequence, STOPS as u64, "{c:?}");
    assert_eq!((c.num_pending, c.num_ack_pending), (0, 0), "{c:?}");
    assert!(median < FAST, "median stop {median:?} (over {FAST:?})");
}

#[tokio::test]
async fn an_idle_core_subscriber_stops_without_waiting() {
    let subject = format!("brook.{}", fresh("brook_shutdown_core"));
    let mut times = Vec::new();
    for _ in 0..STOPS {
        let sub = Subscription::new(BrokerKind::Nats, "shutdown").arg("subject", subject.clone());
        times.push(timed_stop(sub, &subject).await);
    }
    eprintln!("core stop times: {times:?}");
    let median = median(times);
    eprintln!("core median stop: {median:?}");
    assert!(median < FAST, "median stop {median:?} (over {FAST:?})");
}

/// Publishes `count` messages, takes and acks one through a consumer pulling `batch` at a
/// time, closes it while the server may still be sending the rest, and returns what a fresh
/// reader of the durable gets within 10 s (ack_wait is 30 s: a delivery lost on the way
/// would not be back by then).
async fn close_under_delivery(test: &str, batch: u64, count: usize) -> usize {
    use brook_runtime::Consumer as _;
    use futures_util::StreamExt as _;
    let base = fresh(test);
    let (stream, subject) = (base.to_uppercase(), format!("brook.{base}"));
    let broker = NatsBroker::new(URL);
    let sub = Subscription::new(BrokerKind::Nats, "shutdown")
        .arg("subject", subject.clone())
        .arg("stream", stream.clone())
        .arg("durable", "worker")
        .arg("batch", batch)
        .build()
        .expect("valid subscription");
    let mut consumer = broker.subscribe(&sub).await.expect("subscribe");
    let body = vec![b'x'; 2000];
    for _ in 0..count {
        broker
            .publish_message(brook_runtime::Outgoing::new(subject.clone(), body.clone()))
            .await
            .expect("publish");
    }
    let first = tokio::time::timeout(WAIT, consumer.next())
        .await
        .expect("a delivery within the bound")
        .expect("open")
        .expect("no error");
    first.ack().await.expect("ack");
    let started = Instant::now();
    consumer.close().await.expect("close");
    eprintln!(
        "{test}: close with a batch of {batch}, {count} messages: {:?}",
        started.elapsed()
    );

    let js = broker.jetstream().await.expect("jetstream");
    let reader: jetstream::consumer::PullConsumer = js
        .get_consumer_from_stream("worker", &stream)
        .await
        .expect("consumer");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut got = 0;
    while got < count - 1 && Instant::now() < deadline {
        let mut messages = reader
            .fetch()
            .max_messages(100)
            .expires(Duration::from_millis(500))
            .messages()
            .await
            .expect("fetch");
        while let Some(m) = messages.next().await {
            m.expect("message").double_ack().await.expect("ack");
            got += 1;
        }
    }
    let _ = js.delete_stream(&stream).await;
    broker.close().await.expect("close broker");
    got
}

#[tokio::test]
async fn close_hands_back_what_arrives_when_fewer_messages_than_requested() {
    // The server may still be sending when close asks whether it is done: close waits for it.
    let got = close_under_delivery("brook_shutdown_fewer", 400, 200).await;
    assert_eq!(got, 199);
}

#[tokio::test]
async fn close_hands_back_what_arrives_when_more_messages_than_requested() {
    // The pull request close sends to ask is queued behind the first and gets a message.
    let got = close_under_delivery("brook_shutdown_more", 50, 300).await;
    assert_eq!(got, 299);
}
