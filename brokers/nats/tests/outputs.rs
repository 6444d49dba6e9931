//! Handlers that publish, on a real NATS server (127.0.0.1:4222): a result published to its
//! output subject on core NATS and through JetStream (the input settled only after the
//! output's publish, and not acked when it fails), replies, and `Broker::request` (answered,
//! unanswered, timed out with a late reply dropped), each observed on the server.

mod common;

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream};
use brook::nats::{NatsBroker, NatsConfig, PublishMode};
use brook::prelude::*;
use brook::{BrokerError, Outgoing, State};
use common::{consumer_info, fresh, names, URL, WAIT};
use futures_util::StreamExt as _;
use tokio::sync::mpsc;

/// Fresh core subject.
fn subject(prefix: &str) -> String {
    fresh(prefix).replace('_', ".")
}

/// What the handlers tell the test: one delivery count per call.
#[derive(Clone)]
struct Calls(mpsc::UnboundedSender<Option<u32>>);

fn calls() -> (Calls, mpsc::UnboundedReceiver<Option<u32>>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (Calls(tx), rx)
}

async fn next_call(rx: &mut mpsc::UnboundedReceiver<Option<u32>>) -> Option<u32> {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("a handler call within the bound")
        .expect("handler alive")
}

async fn next_msg(sub: &mut async_nats::Subscriber) -> async_nats::Message {
    tokio::time::timeout(WAIT, sub.next())
        .await
        .expect("a message within the bound")
        .expect("subscription alive")
}

fn header<'a>(msg: &'a async_nats::Message, name: &str) -> Option<&'a str> {
    msg.headers.as_ref()?.get(name).map(|v| v.as_str())
}

#[brook::nats::subscriber(subject = _, publish = _)]
async fn double(n: u64) -> u64 {
    n * 2
}

#[tokio::test]
async fn a_core_handler_s_result_reaches_its_output_subject_with_the_correlation_id() {
    let (input, output) = (subject("brook.out.core.in"), subject("brook.out.core.out"));
    let watcher = common::client().await;
    let mut out = watcher.subscribe(output.clone()).await.unwrap();
    watcher.flush().await.unwrap();

    let broker = NatsBroker::new(URL);
    let running = App::new(broker.clone())
        .subscribe(double.subject(&input).name("publish", &output))
        .start()
        .await
        .unwrap();
    broker
        .publish_message(
            Outgoing::encode(&21u64, input.clone())
                .unwrap()
                .with_correlation_id("chain-core"),
        )
        .await
        .unwrap();
    let got = next_msg(&mut out).await;
    assert_eq!(&got.payload[..], b"42");
    assert_eq!(header(&got, "correlation_id"), Some("chain-core"));
    assert_eq!(header(&got, "content-type"), Some("application/json"));
    running.stop().await.unwrap();
    broker.close().await.unwrap();
}

#[brook::nats::subscriber(stream = _, subject = _, durable = "worker", publish = _, ack_policy = NackOnError)]
async fn js_double(n: u64) -> u64 {
    n * 2
}

#[tokio::test]
async fn a_jetstream_handler_s_result_is_stored_in_the_output_stream_then_the_input_acked() {
    let (i, o) = (names("out_js_in"), names("out_js_out"));
    let _cleanup = common::cleanup(&[&i.stream, &o.stream]);
    let js = jetstream::new(common::client().await);
    js.create_stream(stream::Config {
        name: o.stream.clone(),
        subjects: vec![o.subject.clone()],
        ..Default::default()
    })
    .await
    .unwrap();
    // The output, as it is published (the stream's copy is checked below).
    let watcher = common::client().await;
    let mut out = watcher.subscribe(o.subject.clone()).await.unwrap();
    watcher.flush().await.unwrap();

    let broker = NatsBroker::new(URL);
    let running = App::new(broker.clone())
        .subscribe(
            js_double
                .stream(&i.stream)
                .subject(&i.subject)
                .name("publish", &o.subject),
        )
        .start()
        .await
        .unwrap();
    broker
        .publish_message(
            Outgoing::encode(&5u64, i.subject.clone())
                .unwrap()
                .with_correlation_id("chain-js"),
        )
        .await
        .unwrap();
    let got = next_msg(&mut out).await;
    assert_eq!(&got.payload[..], b"10");
    running.stop().await.unwrap();

    // Stored (the publish awaited the stream's ack), with the input's correlation id.
    let stored = js
        .get_stream(&o.stream)
        .await
        .unwrap()
        .get_raw_message(1)
        .await
        .unwrap();
    assert_eq!(&stored.payload[..], b"10");
    assert_eq!(
        stored.headers.get("correlation_id").map(|v| v.as_str()),
        Some("chain-js")
    );
    // And the input was acked, once.
    let c = consumer_info(&js, &i.stream, &i.durable).await;
    assert_eq!((c.num_pending, c.num_ack_pending), (0, 0), "{c:?}");
    assert_eq!(c.ack_floor.stream_sequence, 1);
    assert_eq!(c.num_redelivered, 0);
    broker.close().await.unwrap();
}

#[brook::nats::subscriber(stream = _, subject = _, durable = "worker", publish = _, ack_policy = NackOnError, max_deliver = 2)]
async fn nack_unpublishable(n: u64, msg: &Message, calls: State<Calls>) -> u64 {
    let _ = calls.0.send(msg.delivery_count());
    n
}

#[brook::nats::subscriber(stream = _, subject = _, durable = "worker", publish = _, ack_policy = RejectOnError)]
async fn reject_unpublishable(n: u64, msg: &Message, calls: State<Calls>) -> u64 {
    let _ = calls.0.send(msg.delivery_count());
    n
}

/// A broker that publishes through JetStream only, so an output to a subject no stream
/// captures fails ("no responders").
fn jetstream_only() -> NatsBroker {
    NatsBroker::with_config(NatsConfig::new(URL).publish_mode(PublishMode::JetStream))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_output_that_cannot_be_published_leaves_the_input_unacked_and_nack_redelivers_it() {
    let i = names("out_fail_nack");
    let _cleanup = common::cleanup(&[&i.stream]);
    let nowhere = subject("brook.out.nowhere");
    let broker = jetstream_only();
    let (tx, mut rx) = calls();
    let running = App::new(broker.clone())
        .state(tx)
        .subscribe(
            nack_unpublishable
                .stream(&i.stream)
                .subject(&i.subject)
                .name("publish", &nowhere),
        )
        .start()
        .await
        .unwrap();
    broker.publish(&1u64, &i.subject).await.unwrap();
    assert_eq!(next_call(&mut rx).await, Some(1));
    // Redelivered at once (-NAK), not after ack_wait (30 s).
    assert_eq!(next_call(&mut rx).await, Some(2));
    running.stop().await.unwrap();
    let js = jetstream::new(common::client().await);
    let c = consumer_info(&js, &i.stream, &i.durable).await;
    assert_eq!(c.ack_floor.stream_sequence, 0, "never acked: {c:?}");
    assert_eq!(c.delivered.consumer_sequence, 2, "{c:?}");
    broker.close().await.unwrap();
}

#[tokio::test]
async fn an_output_that_cannot_be_published_gets_the_input_terminated_under_reject_on_error() {
    let i = names("out_fail_term");
    let _cleanup = common::cleanup(&[&i.stream]);
    let nowhere = subject("brook.out.nowhere");
    let watcher = common::client().await;
    let mut terminated = watcher
        .subscribe(format!(
            "$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.{}.{}",
            i.stream, i.durable
        ))
        .await
        .unwrap();
    watcher.flush().await.unwrap();
    let broker = jetstream_only();
    let (tx, mut rx) = calls();
    let running = App::new(broker.clone())
        .state(tx)
        .subscribe(
            reject_unpublishable
                .stream(&i.stream)
                .subject(&i.subject)
                .name("publish", &nowhere),
        )
        .start()
        .await
        .unwrap();
    broker.publish(&1u64, &i.subject).await.unwrap();
    assert_eq!(next_call(&mut rx).await, Some(1));
    let advisory: serde_json::Value =
        serde_json::from_slice(&next_msg(&mut terminated).await.payload).unwrap();
    assert_eq!(advisory["stream_seq"], 1, "+TERM: {advisory}");
    running.stop().await.unwrap();
    let js = jetstream::new(common::client().await);
    let c = consumer_info(&js, &i.stream, &i.durable).await;
    assert_eq!(c.num_redelivered, 0, "{c:?}");
    assert_eq!(c.delivered.consumer_sequence, 1, "{c:?}");
    assert!(rx.try_recv().is_err(), "delivered once");
    broker.close().await.unwrap();
}

#[brook::nats::subscriber(subject = _)]
async fn square(n: u64) -> u64 {
    n * n
}

#[tokio::test]
async fn a_request_gets_the_handler_s_result_with_its_correlation_id() {
    let input = subject("brook.rpc.square");
    let broker = NatsBroker::new(URL);
    let running = App::new(broker.clone())
        .subscribe(square.subject(&input))
        .start()
        .await
        .unwrap();
    let reply = broker
        .request_message(
            Outgoing::encode(&7u64, input.clone())
                .unwrap()
                .with_correlation_id("req-1"),
            WAIT,
        )
        .await
        .unwrap();
    assert_eq!(&reply.body()[..], b"49");
    assert_eq!(reply.correlation_id(), Some("req-1"));
    assert_eq!(reply.content_type(), Some("application/json"));
    // `request` makes a correlation id (a UUID) when there is none.
    let reply = broker.request(&3u64, &input, WAIT).await.unwrap();
    assert_eq!(&reply.body()[..], b"9");
    assert_eq!(reply.correlation_id().map(str::len), Some(36));
    running.stop().await.unwrap();
    broker.close().await.unwrap();
}

#[tokio::test]
async fn a_request_nobody_subscribes_to_fails_at_once() {
    let broker = NatsBroker::new(URL);
    broker.connect().await.unwrap();
    let nowhere = subject("brook.rpc.nobody");
    let started = Instant::now();
    let error = broker
        .request(&1u64, &nowhere, Duration::from_secs(10))
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(
        matches!(
            &error,
            BrokerError::Operation {
                operation: "request",
                ..
            }
        ),
        "{error:?}"
    );
    assert!(error.to_string().contains("no responders"), "{error}");
    assert!(error.to_string().contains(&nowhere), "{error}");
    broker.close().await.unwrap();
}

#[tokio::test]
async fn a_request_times_out_its_late_reply_is_dropped_and_the_next_request_works() {
    let slow = subject("brook.rpc.slow");
    let responder = common::client().await;
    let mut requests = responder.subscribe(slow.clone()).await.unwrap();
    responder.flush().await.unwrap();
    let broker = NatsBroker::new(URL);

    let limit = Duration::from_millis(300);
    let error = broker.request(&1u64, &slow, limit).await.unwrap_err();
    assert!(
        matches!(&error, BrokerError::RequestTimeout { destination, timeout, .. } if *destination == slow && *timeout == limit),
        "{error:?}"
    );
    let first = next_msg(&mut requests).await;
    let first_reply = first.reply.clone().expect("a NATS reply subject");
    // The reply subject is also in the header (what JetStream handlers read).
    assert_eq!(header(&first, "reply_to"), Some(first_reply.as_str()));
    let first_id = header(&first, "correlation_id").unwrap().to_owned();

    let (again, s) = (broker.clone(), slow.clone());
    let second = tokio::spawn(async move { again.request(&2u64, &s, WAIT).await });
    let req = next_msg(&mut requests).await;
    let reply_to = req.reply.clone().expect("a NATS reply subject");
    assert_ne!(reply_to, first_reply, "one reply subject per request");
    let id = header(&req, "correlation_id").unwrap().to_owned();
    assert_ne!(id, first_id);
    let answer = |id: &str| {
        let mut h = async_nats::HeaderMap::new();
        h.insert("correlation_id", id);
        h
    };
    // The late reply to the first request, then one with a wrong id, then the real one.
    responder
        .publish_with_headers(first_reply, answer(&first_id), "late".into())
        .await
        .unwrap();
    responder
        .publish_with_headers(reply_to.clone(), answer("someone-else"), "wrong".into())
        .await
        .unwrap();
    responder
        .publish_with_headers(reply_to, answer(&id), "second".into())
        .await
        .unwrap();
    let reply = tokio::time::timeout(WAIT, second)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(&reply.body()[..], b"second");
    assert_eq!(reply.correlation_id(), Some(id.as_str()));
    broker.close().await.unwrap();
}

#[brook::nats::subscriber(stream = _, subject = _, durable = "worker", ack_policy = NackOnError)]
async fn js_square(n: u64) -> u64 {
    n * n
}

#[tokio::test]
async fn a_jetstream_handler_replies_on_core_nats_even_when_publishing_through_jetstream() {
    let i = names("rpc_js");
    let _cleanup = common::cleanup(&[&i.stream]);
    let broker = jetstream_only();
    let running = App::new(broker.clone())
        .subscribe(js_square.stream(&i.stream).subject(&i.subject))
        .start()
        .await
        .unwrap();
    // The request is stored in the stream (a JetStream publish) with the reply subject in its
    // reply_to header; the reply goes to that inbox on core NATS.
    let reply = broker
        .request_message(
            Outgoing::encode(&4u64, i.subject.clone())
                .unwrap()
                .with_correlation_id("js-req"),
            WAIT,
        )
        .await
        .unwrap();
    assert_eq!(&reply.body()[..], b"16");
    assert_eq!(reply.correlation_id(), Some("js-req"));
    running.stop().await.unwrap();
    let js = jetstream::new(common::client().await);
    let c = consumer_info(&js, &i.stream, &i.durable).await;
    assert_eq!(
        (
            c.ack_floor.stream_sequence,
            c.num_ack_pending,
            c.num_redelivered
        ),
        (1, 0, 0),
        "{c:?}"
    );
    broker.close().await.unwrap();
}
