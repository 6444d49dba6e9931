//! Handlers that publish, on the real Redis: a stream subscriber's result lands in its output
//! with the input's correlation id and the input is acked only once it did; an output that
//! cannot be written (a key of the wrong type) leaves the input unacked (NackOnError:
//! redelivered; RejectOnError: dead-lettered). Request/reply: `broker.request` against brook
//! handlers on a channel, a list and a stream; timeouts; late, duplicate and foreign replies
//! dropped; no reply subscription left behind (PUBSUB NUMSUB).

mod common;

use std::time::Duration;

use brook::prelude::*;
use brook::redis::subscriber;
use brook::{BrokerError, BrokerKind, Headers};
use brook_redis::{envelope, RedisBroker};
use brook_runtime::RunningApp;
use bytes::Bytes;
use common::*;
use fred::clients::SubscriberClient;
use fred::prelude::*;
use fred::types::Value;
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

fn invoice(order: Order) -> Invoice {
    Invoice {
        order: order.id,
        total: order.amount * 2,
    }
}

#[subscriber(
    stream = _,
    group = _,
    consumer = _,
    publish = _,
    ack_policy = NackOnError
)]
async fn bill(order: Order) -> anyhow::Result<Invoice> {
    Ok(invoice(order))
}

#[subscriber(
    stream = _,
    group = _,
    consumer = _,
    dead_letter_stream = _,
    publish = _,
    ack_policy = RejectOnError
)]
async fn bill_or_reject(order: Order) -> anyhow::Result<Invoice> {
    Ok(invoice(order))
}

async fn start(app: App<RedisBroker>) -> RunningApp<RedisBroker> {
    tokio::time::timeout(WAIT, app.start())
        .await
        .expect("the App starts in time")
        .expect("the App starts")
}

async fn stop(app: RunningApp<RedisBroker>) {
    tokio::time::timeout(WAIT * 2, app.stop())
        .await
        .expect("stop finishes")
        .expect("clean stop");
}

async fn publish_order(broker: &RedisBroker, stream: &str, order: &Order, correlation_id: &str) {
    broker
        .publish_message(
            Outgoing::encode(order, format!("stream:{stream}"))
                .unwrap()
                .with_correlation_id(correlation_id),
        )
        .await
        .expect("publish");
}

async fn key_type(c: &Client, key: &str) -> String {
    let v = call(c, "TYPE", vec![s(key)]).await;
    v.as_string().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_result_lands_in_the_output_stream_with_the_correlation_id_then_the_input_is_acked() {
    let (input, output, c) = (unique("out-in"), unique("out-out"), raw().await);
    let broker = RedisBroker::new(URL);
    let app = start(
        App::new(broker.clone()).subscribe(
            bill.stream(&input)
                .group("billing")
                .consumer("c1")
                .name("publish", format!("stream:{output}")),
        ),
    )
    .await;
    publish_order(&broker, &input, &Order { id: 7, amount: 21 }, "chain-7").await;
    eventually("the invoice is in the output stream", || async {
        !xrange(&c, &output).await.is_empty()
    })
    .await;
    let out = xrange(&c, &output).await;
    assert_eq!(out.len(), 1);
    let (body, headers) = envelope::decode(out[0].field("__data__").unwrap());
    let got: Invoice = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        got,
        Invoice {
            order: 7,
            total: 42
        }
    );
    assert_eq!(headers.get("correlation_id"), Some("chain-7"));
    assert_eq!(headers.get("content-type"), Some("application/json"));
    eventually("the input is acked", || async {
        pending(&c, &input, "billing").await.is_empty()
    })
    .await;
    stop(app).await;
    del(&c, &[&input, &output]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nack_on_error_an_output_that_cannot_be_written_leaves_the_input_pending_and_redelivers_it()
{
    let (input, output, c) = (unique("out-nack-in"), unique("out-nack-out"), raw().await);
    // XADD to a string key fails with WRONGTYPE.
    call(&c, "SET", vec![s(&output), s("not a stream")]).await;
    let broker = RedisBroker::new(URL);
    let app = start(
        App::new(broker.clone()).subscribe(
            bill.stream(&input)
                .group("billing")
                .consumer("c1")
                .name("publish", format!("stream:{output}")),
        ),
    )
    .await;
    publish_order(&broker, &input, &Order { id: 8, amount: 4 }, "chain-8").await;
    eventually("the input is redelivered, still pending", || async {
        matches!(&pending(&c, &input, "billing").await[..], [p] if p.deliveries >= 2)
    })
    .await;
    assert_eq!(key_type(&c, &output).await, "string", "nothing was written");
    // Once the output can be written, the next redelivery goes through and is acked.
    del(&c, &[&output]).await;
    eventually("the invoice is written and the input acked", || async {
        xrange(&c, &output).await.len() == 1 && pending(&c, &input, "billing").await.is_empty()
    })
    .await;
    let out = xrange(&c, &output).await;
    let (body, headers) = envelope::decode(out[0].field("__data__").unwrap());
    assert_eq!(&body[..], br#"{"order":8,"total":8}"#);
    assert_eq!(headers.get("correlation_id"), Some("chain-8"));
    stop(app).await;
    del(&c, &[&input, &output]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_on_error_an_output_that_cannot_be_written_dead_letters_the_input() {
    let (input, output, c) = (unique("out-rej-in"), unique("out-rej-out"), raw().await);
    let dead = format!("{input}:dead");
    // RPUSH to a string key fails with WRONGTYPE.
    call(&c, "SET", vec![s(&output), s("not a list")]).await;
    let broker = RedisBroker::new(URL);
    let app = start(
        App::new(broker.clone()).subscribe(
            bill_or_reject
                .stream(&input)
                .group("billing")
                .consumer("c1")
                .dead_letter_stream(&dead)
                .name("publish", format!("list:{output}")),
        ),
    )
    .await;
    publish_order(&broker, &input, &Order { id: 9, amount: 1 }, "chain-9").await;
    eventually("the input is dead-lettered", || async {
        xrange(&c, &dead).await.len() == 1
    })
    .await;
    eventually("and removed from the pending list", || async {
        pending(&c, &input, "billing").await.is_empty()
    })
    .await;
    let dl = xrange(&c, &dead).await;
    let (body, headers) = envelope::decode(dl[0].field("__data__").unwrap());
    assert_eq!(&body[..], br#"{"id":9,"amount":1}"#);
    assert_eq!(headers.get("correlation_id"), Some("chain-9"));
    assert_eq!(key_type(&c, &output).await, "string", "nothing was written");
    stop(app).await;
    del(&c, &[&input, &output, &dead]).await;
}

// ---------------------------------------------------------------------------------------------
// Request/reply

#[subscriber(channel = _)]
async fn square_on_channel(n: u64) -> u64 {
    n * n
}

#[subscriber(list = _)]
async fn square_on_list(n: u64) -> u64 {
    n * n
}

#[subscriber(stream = _, group = _, ack_policy = NackOnError)]
async fn square_on_stream(n: u64) -> anyhow::Result<u64> {
    Ok(n * n)
}

#[subscriber(channel = _)]
async fn silent(_: &Message) {}

/// How many clients are subscribed to `channel`.
async fn subscribers(c: &Client, channel: &str) -> i64 {
    let v = call(c, "PUBSUB", vec![s("NUMSUB"), s(channel)]).await;
    v.into_array()
        .get(1)
        .and_then(Value::as_i64)
        .expect("PUBSUB NUMSUB answers name, count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_gets_a_brook_handler_s_result_on_a_channel_a_list_and_a_stream() {
    let (channel, list, stream, quiet) = (
        unique("rq-ch"),
        unique("rq-list"),
        unique("rq-stream"),
        unique("rq-silent"),
    );
    let broker = RedisBroker::new(URL);
    let app = start(
        App::new(broker.clone())
            .subscribe(square_on_channel.channel(&channel))
            .subscribe(square_on_list.list(&list))
            .subscribe(square_on_stream.stream(&stream).group("sq"))
            .subscribe(silent.channel(&quiet)),
    )
    .await;
    for (n, destination) in [
        (12u64, channel.clone()),
        (5, format!("list:{list}")),
        (9, format!("stream:{stream}")),
    ] {
        let reply = broker
            .request(&n, &destination, WAIT)
            .await
            .unwrap_or_else(|e| panic!("{destination}: {e}"));
        let got: u64 = serde_json::from_slice(reply.body()).unwrap();
        assert_eq!(got, n * n, "{destination}");
        assert!(reply.correlation_id().is_some(), "{destination}");
        assert!(
            reply.topic().starts_with("brook:reply:"),
            "{}",
            reply.topic()
        );
    }
    // The requester's correlation id comes back.
    let reply = broker
        .request_message(
            Outgoing::encode(&3u64, channel.as_str())
                .unwrap()
                .with_correlation_id("ask-1"),
            WAIT,
        )
        .await
        .unwrap();
    assert_eq!(reply.correlation_id(), Some("ask-1"));
    assert_eq!(&reply.body()[..], b"9");
    // A handler that returns nothing still answers, with an empty body.
    let reply = broker.request("ping", &quiet, WAIT).await.unwrap();
    assert!(reply.body().is_empty());
    stop(app).await;
    let c = raw().await;
    del(&c, &[&list, &stream]).await;
}

/// A raw pub/sub client on `channel`, standing in for a responder the test controls.
async fn responder(channel: &str) -> (SubscriberClient, tokio::sync::broadcast::Receiver<PubSub>) {
    let client = Builder::from_config(Config::from_url(URL).unwrap())
        .build_subscriber_client()
        .unwrap();
    client.init().await.unwrap();
    let rx = client.message_rx();
    client.subscribe(channel).await.unwrap();
    (client, rx)
}

type PubSub = fred::types::Message;

/// The next request on the responder: body, correlation_id, reply_to.
async fn next_request(
    rx: &mut tokio::sync::broadcast::Receiver<PubSub>,
) -> (Bytes, String, String) {
    let m = tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("the request arrives in time")
        .unwrap();
    let (body, headers) = envelope::decode(&m.value.into_bytes().unwrap());
    (
        body,
        headers
            .get("correlation_id")
            .expect("correlation_id")
            .to_owned(),
        headers.get("reply_to").expect("reply_to").to_owned(),
    )
}

/// PUBLISHes `body` with `correlation_id` to `channel`; how many clients got it.
async fn reply(c: &Client, channel: &str, body: &[u8], correlation_id: &str) -> i64 {
    let headers: Headers = [("correlation_id", correlation_id)].into_iter().collect();
    let wire = envelope::encode(body, &headers).unwrap();
    call(c, "PUBLISH", vec![s(channel), Value::Bytes(wire)])
        .await
        .as_i64()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_nobody_answers_times_out_its_late_reply_is_dropped_and_nothing_stays_subscribed()
{
    let (channel, c) = (unique("rq-late"), raw().await);
    let (sub, mut rx) = responder(&channel).await;
    let broker = RedisBroker::new(URL);
    let timeout = Duration::from_millis(300);
    let asked = broker.request(&1u64, &channel, timeout);
    let (result, (_, correlation_id, reply_to)) = tokio::join!(asked, next_request(&mut rx));
    // The requester was subscribed to its reply channel while the request was out...
    assert!(reply_to.starts_with("brook:reply:"), "{reply_to}");
    match result {
        Err(BrokerError::RequestTimeout {
            broker: BrokerKind::Redis,
            destination,
            timeout: t,
        }) => {
            assert_eq!(destination, channel);
            assert_eq!(t, timeout);
        }
        other => panic!("expected a RequestTimeout, got {other:?}"),
    }
    // ... and is not any more: the late reply reaches nobody.
    assert_eq!(subscribers(&c, &reply_to).await, 0);
    assert_eq!(reply(&c, &reply_to, b"late", &correlation_id).await, 0);
    // The broker's reply connection still serves the next request.
    let next = broker.request(&2u64, &channel, WAIT);
    let answer = async {
        let (body, correlation_id, reply_to) = next_request(&mut rx).await;
        assert_eq!(&body[..], b"2");
        // While the request waits, its channel has exactly one subscriber: the requester.
        assert_eq!(subscribers(&c, &reply_to).await, 1);
        reply(&c, &reply_to, b"4", &correlation_id).await
    };
    let (got, receivers) = tokio::join!(next, answer);
    assert_eq!(receivers, 1);
    assert_eq!(&got.unwrap().body()[..], b"4");
    let _ = sub.quit().await;
    broker.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_reply_with_the_request_s_correlation_id_wins_and_the_channel_is_released() {
    let (channel, c) = (unique("rq-first"), raw().await);
    let (sub, mut rx) = responder(&channel).await;
    let broker = RedisBroker::new(URL);
    let asked = broker.request_message(
        Outgoing::new(channel.as_str(), "q").with_correlation_id("mine"),
        WAIT,
    );
    let answer = async {
        let (_, correlation_id, reply_to) = next_request(&mut rx).await;
        assert_eq!(correlation_id, "mine");
        // Another request's reply on the channel is not this one's; then two replies: the
        // first wins.
        reply(&c, &reply_to, b"foreign", "theirs").await;
        reply(&c, &reply_to, b"first", "mine").await;
        reply(&c, &reply_to, b"second", "mine").await;
        reply_to
    };
    let (got, reply_to) = tokio::join!(asked, answer);
    let got = got.unwrap();
    assert_eq!(&got.body()[..], b"first");
    assert_eq!(got.correlation_id(), Some("mine"));
    assert_eq!(got.topic(), reply_to);
    // request() returned after unsubscribing.
    assert_eq!(subscribers(&c, &reply_to).await, 0);
    let _ = sub.quit().await;
    broker.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_request_gives_its_reply_channel_up() {
    let (channel, c) = (unique("rq-drop"), raw().await);
    let (sub, mut rx) = responder(&channel).await;
    let broker = RedisBroker::new(URL);
    let reply_to = {
        let asked = broker.request(&1u64, &channel, WAIT);
        tokio::pin!(asked);
        // Drive the request until it is out, then drop it.
        tokio::select! {
            _ = &mut asked => panic!("nobody answered"),
            (_, _, reply_to) = next_request(&mut rx) => reply_to,
        }
    };
    eventually("the abandoned reply channel is unsubscribed", || async {
        subscribers(&c, &reply_to).await == 0
    })
    .await;
    let _ = sub.quit().await;
    broker.close().await.unwrap();
}
