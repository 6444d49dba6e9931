//! Handlers that publish, on the local RabbitMQ: a result reaches its output queue with the
//! input's correlation id before the input is acked; an output that cannot be published (an
//! exchange that does not exist) keeps the input unacked (NackOnError redelivers it,
//! RejectOnError dead-letters it); and request/reply over direct reply-to against brook
//! handlers: replies, timeouts, late replies dropped.
//!
//! Queue names are fresh per test (given at the mount site); every queue the tests declare has
//! `x-expires`, and the subscribers only consume (`declare = false`).

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use brook::prelude::*;
use brook::rabbit::lapin::message::Delivery;
use brook::rabbit::lapin::options::{BasicAckOptions, BasicCancelOptions, BasicConsumeOptions};
use brook::rabbit::lapin::types::{AMQPValue, FieldTable};
use brook::rabbit::{subscriber, RabbitBroker, RabbitMessage};
use brook::BrokerError;
use common::{fresh, Admin, URL, WAIT};
use futures_util::StreamExt as _;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, Notify};

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

fn invoice(order: &Order) -> Invoice {
    Invoice {
        order: order.id,
        total: order.amount * 2,
    }
}

/// The next message in `queue` (consumed and acked), within [`WAIT`].
async fn next_in(admin: &Admin, queue: &str) -> Delivery {
    let mut consumer = admin
        .channel
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let delivery = tokio::time::timeout(WAIT, consumer.next())
        .await
        .unwrap_or_else(|_| panic!("nothing arrived in {queue} within {WAIT:?}"))
        .expect("consumer alive")
        .expect("delivery");
    delivery.ack(BasicAckOptions::default()).await.expect("ack");
    let _ = admin
        .channel
        .basic_cancel(consumer.tag(), BasicCancelOptions::default())
        .await;
    delivery
}

fn property(p: &Option<brook::rabbit::lapin::types::ShortString>) -> Option<&str> {
    p.as_ref().map(|s| s.as_str())
}

async fn start<H: brook::Handler>(handler: H) -> (RabbitBroker, RunningApp)
where
    RabbitBroker: brook::Accepts<H::Broker>,
{
    let broker = RabbitBroker::new(URL);
    let app = App::new(broker.clone())
        .subscribe(handler)
        .graceful_timeout(Duration::from_secs(2))
        .start()
        .await
        .expect("App starts");
    (broker, app)
}

type RunningApp = brook::RunningApp<RabbitBroker>;

#[subscriber(queue = _, declare = false, publish = _, ack_policy = NackOnError)]
async fn bill(order: Order) -> anyhow::Result<Invoice> {
    Ok(invoice(&order))
}

#[tokio::test]
async fn the_result_reaches_the_output_queue_with_the_input_s_correlation_id_and_the_input_is_acked(
) {
    let admin = Admin::new().await;
    let (input, output) = (fresh("out-in"), fresh("out-invoices"));
    admin.queue(&input, None, None).await;
    admin.queue(&output, None, None).await;
    let (broker, app) = start(bill.queue(&input).publish(&output)).await;

    let order = Outgoing::encode(&Order { id: 7, amount: 21 }, &input)
        .unwrap()
        .with_correlation_id("chain-7");
    broker.publish_message(order).await.unwrap();

    let out = next_in(&admin, &output).await;
    let got: Invoice = serde_json::from_slice(&out.data).unwrap();
    assert_eq!(got, invoice(&Order { id: 7, amount: 21 }));
    assert_eq!(
        property(out.properties.correlation_id()),
        Some("chain-7"),
        "the input's correlation id"
    );
    assert_eq!(
        property(out.properties.content_type()),
        Some("application/json")
    );
    // Stopping hands back anything unacked: the input queue stays empty only if it was acked.
    app.stop().await.unwrap();
    assert_eq!(admin.wait_no_consumer(&input).await, 0);
    admin.wait_depth(&input, 0).await;
    admin.wait_depth(&output, 0).await;
    broker.close().await.unwrap();
}

/// Each handler call: the order id and whether RabbitMQ had delivered it before.
type Calls = Mutex<Option<mpsc::UnboundedSender<(u64, bool)>>>;

static NACKED_CALLS: Calls = Mutex::new(None);
static REJECTED_CALLS: Calls = Mutex::new(None);

fn record(calls: &Calls, id: u64, rabbit: &RabbitMessage) {
    if let Some(tx) = calls.lock().unwrap().as_ref() {
        let _ = tx.send((id, rabbit.redelivered()));
    }
}

fn calls(calls: &Calls) -> mpsc::UnboundedReceiver<(u64, bool)> {
    let (tx, rx) = mpsc::unbounded_channel();
    *calls.lock().unwrap() = Some(tx);
    rx
}

async fn next_call(rx: &mut mpsc::UnboundedReceiver<(u64, bool)>) -> (u64, bool) {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("a handler call in time")
        .expect("handler alive")
}

/// With a key, `publish` names an exchange (this crate's meaning of a destination), and the
/// tests give it one that does not exist: RabbitMQ closes the channel (404), the publish fails.
#[subscriber(queue = _, declare = false, publish = _, ack_policy = NackOnError)]
async fn bill_nowhere_nack(order: Order, rabbit: &RabbitMessage) -> Publish<Invoice> {
    record(&NACKED_CALLS, order.id, rabbit);
    Publish::new(invoice(&order)).key("invoices")
}

#[subscriber(queue = _, declare = false, publish = _, ack_policy = RejectOnError)]
async fn bill_nowhere_reject(order: Order, rabbit: &RabbitMessage) -> Publish<Invoice> {
    record(&REJECTED_CALLS, order.id, rabbit);
    Publish::new(invoice(&order)).key("invoices")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_output_that_cannot_be_published_keeps_the_input_under_nack_on_error() {
    let admin = Admin::new().await;
    let input = fresh("out-nack");
    admin.queue(&input, None, None).await;
    let mut seen = calls(&NACKED_CALLS);
    let missing_exchange = fresh("out-no-such-exchange");
    let (broker, app) = start(bill_nowhere_nack.queue(&input).publish(&missing_exchange)).await;

    // Sent on a connection of its own: not on the channel the failing output closes.
    admin
        .publish_with_int_headers(&input, br#"{"id":1,"amount":5}"#, &[])
        .await;
    assert_eq!(next_call(&mut seen).await, (1, false));
    // basic.nack(requeue): RabbitMQ delivers it again, flagged redelivered.
    assert_eq!(next_call(&mut seen).await, (1, true));
    app.stop().await.unwrap();
    // Never acked: back in the queue once the consumer is gone.
    assert_eq!(admin.wait_no_consumer(&input).await, 1);
    admin.wait_depth(&input, 1).await;
    admin.delete(&input).await;
    broker.close().await.unwrap();
}

#[tokio::test]
async fn an_output_that_cannot_be_published_dead_letters_the_input_under_reject_on_error() {
    let admin = Admin::new().await;
    let input = fresh("out-reject");
    let (dlx, dlq) = admin.dead_letter_place(&input).await;
    admin.queue(&input, None, Some(&dlx)).await;
    let mut seen = calls(&REJECTED_CALLS);
    let missing_exchange = fresh("out-no-such-exchange");
    let (broker, app) = start(bill_nowhere_reject.queue(&input).publish(&missing_exchange)).await;

    // Sent on a connection of its own: not on the channel the failing output closes.
    admin
        .publish_with_int_headers(&input, br#"{"id":2,"amount":5}"#, &[])
        .await;
    assert_eq!(next_call(&mut seen).await, (2, false));
    let dead = next_in(&admin, &dlq).await;
    let order: Order = serde_json::from_slice(&dead.data).unwrap();
    assert_eq!(order.id, 2);
    let reason = dead
        .properties
        .headers()
        .as_ref()
        .and_then(|h| match h.inner().get("x-death") {
            Some(AMQPValue::FieldArray(deaths)) => deaths.as_slice().first().cloned(),
            _ => None,
        })
        .and_then(|death| match death {
            AMQPValue::FieldTable(t) => t.inner().get("reason").cloned(),
            _ => None,
        });
    assert!(
        matches!(&reason, Some(AMQPValue::LongString(s)) if s.as_bytes() == b"rejected"),
        "x-death reason: {reason:?}"
    );
    app.stop().await.unwrap();
    assert_eq!(admin.wait_no_consumer(&input).await, 0);
    assert!(seen.try_recv().is_err(), "handled once, not redelivered");
    broker.close().await.unwrap();
}

#[subscriber(queue = _, declare = false)]
async fn square(n: u64) -> u64 {
    n * n
}

#[tokio::test]
async fn a_request_gets_the_brook_handler_s_result_with_its_correlation_id() {
    let admin = Admin::new().await;
    let queue = fresh("rpc-square");
    admin.queue(&queue, None, None).await;
    let (broker, app) = start(square.queue(&queue)).await;

    let reply = broker
        .request(&12u64, &queue, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(&reply.body()[..], b"144");
    assert_eq!(reply.correlation_id().map(str::len), Some(36), "a new UUID");

    let request = Outgoing::encode(&3u64, &queue)
        .unwrap()
        .with_correlation_id("ask-3");
    let reply = broker
        .request_message(request, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(reply.correlation_id(), Some("ask-3"));
    assert_eq!(&reply.body()[..], b"9");

    // Many at once on the one reply channel: each gets its own reply.
    let asks = (1..=20u64).map(|n| {
        let broker = broker.clone();
        let queue = queue.clone();
        async move {
            let reply = broker
                .request(&n, &queue, Duration::from_secs(10))
                .await
                .unwrap();
            (n, serde_json::from_slice::<u64>(reply.body()).unwrap())
        }
    });
    for (n, squared) in futures_util::future::join_all(asks).await {
        assert_eq!(squared, n * n);
    }
    app.stop().await.unwrap();
    admin.wait_depth(&queue, 0).await;
    broker.close().await.unwrap();
}

#[tokio::test]
async fn a_request_nobody_consumes_times_out_and_waits_in_the_queue_with_its_reply_address() {
    let admin = Admin::new().await;
    let queue = fresh("rpc-nobody");
    admin.queue(&queue, None, None).await;
    let broker = RabbitBroker::new(URL);
    broker.connect().await.unwrap();
    let request = Outgoing::encode("anyone?", &queue)
        .unwrap()
        .with_correlation_id("ask-nobody");
    let started = Instant::now();
    let err = broker
        .request_message(request, Duration::from_millis(300))
        .await
        .unwrap_err();
    let waited = started.elapsed();
    match &err {
        BrokerError::RequestTimeout {
            destination,
            timeout,
            ..
        } => {
            assert_eq!(destination, &queue);
            assert_eq!(*timeout, Duration::from_millis(300));
        }
        other => panic!("expected RequestTimeout, got {other:?}"),
    }
    assert!(waited < Duration::from_secs(5), "{waited:?}");
    // What RabbitMQ holds: the request, with a direct reply-to address and its id.
    let held = next_in(&admin, &queue).await;
    let reply_to = property(held.properties.reply_to()).unwrap_or_default();
    assert!(
        reply_to.starts_with("amq.rabbitmq.reply-to."),
        "reply_to: {reply_to}"
    );
    assert_eq!(
        property(held.properties.correlation_id()),
        Some("ask-nobody")
    );
    broker.close().await.unwrap();
}

static RELEASE_SLOW: LazyLock<Notify> = LazyLock::new(Notify::new);
static SLOW_CALLS: AtomicUsize = AtomicUsize::new(0);

/// Answers `slow` only once the test releases it; anything else at once. One at a time
/// (concurrency 1), so a reply to a later request comes after the late one.
#[subscriber(queue = _, declare = false)]
async fn slow_echo(text: String) -> String {
    SLOW_CALLS.fetch_add(1, Ordering::SeqCst);
    if text == "slow" {
        RELEASE_SLOW.notified().await;
    }
    format!("echo {text}")
}

#[tokio::test]
async fn a_late_reply_is_dropped_and_the_next_request_gets_its_own() {
    let admin = Admin::new().await;
    let queue = fresh("rpc-late");
    admin.queue(&queue, None, None).await;
    let (broker, app) = start(slow_echo.queue(&queue)).await;

    let err = broker
        .request("slow", &queue, Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(matches!(err, BrokerError::RequestTimeout { .. }), "{err:?}");
    // The handler answers now, to a request that gave up: that reply reaches the reply
    // channel before the next request's (the handler runs one message at a time).
    RELEASE_SLOW.notify_one();
    let request = Outgoing::encode("fast", &queue)
        .unwrap()
        .with_correlation_id("ask-fast");
    let reply = broker
        .request_message(request, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(&reply.body()[..], b"echo fast");
    assert_eq!(reply.correlation_id(), Some("ask-fast"));
    assert_eq!(SLOW_CALLS.load(Ordering::SeqCst), 2, "both were handled");
    // And the reply channel still serves requests.
    let reply = broker
        .request("again", &queue, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(&reply.body()[..], b"echo again");
    app.stop().await.unwrap();
    admin.wait_depth(&queue, 0).await;
    broker.close().await.unwrap();
}

#[tokio::test]
async fn a_request_to_an_exchange_that_does_not_exist_fails_and_the_next_one_works() {
    let admin = Admin::new().await;
    let queue = fresh("rpc-after-404");
    admin.queue(&queue, None, None).await;
    let (broker, app) = start(square.queue(&queue)).await;
    let nowhere = Outgoing::encode(&2u64, fresh("rpc-no-such-exchange"))
        .unwrap()
        .with_key("x");
    let err = broker
        .request_message(nowhere, Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(
        matches!(err, BrokerError::Operation { .. }),
        "a channel error, not a timeout: {err:?}"
    );
    // RabbitMQ closed the reply channel; the next request opens a new one.
    let reply = broker
        .request(&5u64, &queue, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(&reply.body()[..], b"25");
    app.stop().await.unwrap();
    broker.close().await.unwrap();
}

/// A failing output closes the shared publishing channel, and lapin fails every publish then
/// waiting on it with that error: brook retries those on a channel of their own, so only the
/// publishes to the missing exchange fail.
#[tokio::test]
async fn a_channel_error_fails_only_the_publishes_that_caused_it() {
    let admin = Admin::new().await;
    let queue = fresh("pub-innocent");
    admin.queue(&queue, None, None).await;
    let broker = RabbitBroker::new(URL);
    broker.connect().await.unwrap();
    let missing = fresh("pub-no-such-exchange");
    let publishes = (0..40u32).map(|i| {
        let broker = broker.clone();
        let (queue, missing) = (queue.clone(), missing.clone());
        async move {
            let out = Outgoing::new(queue, format!("m{i}"));
            let result = if i % 2 == 0 {
                broker.publish_message(out).await
            } else {
                broker.publish_to(&missing, "k", &out).await
            };
            (i, result)
        }
    });
    for (i, result) in futures_util::future::join_all(publishes).await {
        if i % 2 == 0 {
            result.unwrap_or_else(|e| panic!("publish {i} to the queue: {e}"));
        } else {
            let e = result.expect_err("the exchange does not exist");
            assert!(e.to_string().contains("NOT_FOUND"), "{e}");
        }
    }
    // Confirmed means enqueued (a retried one may be there twice: at-least-once).
    let depth = admin.depth(&queue).await;
    assert!(
        depth >= 20,
        "{depth} of 20 confirmed publishes in the queue"
    );
    admin.delete(&queue).await;
    broker.close().await.unwrap();
}
