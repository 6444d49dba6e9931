//! Handlers that publish, on the in-memory broker: outputs (`publish = ...`), `Publish<T>`,
//! `Option<T>`, replies to `reply_to` with the request's correlation id, request/reply, the
//! `Publisher` argument, and what happens to the input when its output cannot be published.

use std::time::Duration;

use brook::prelude::*;
use brook::testing::TestApp;
use brook::{BrokerError, BrokerKind};
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

#[subscriber(topic = "out.orders", publish = "out.invoices", ack_policy = NackOnError)]
async fn bill(order: Order) -> anyhow::Result<Invoice> {
    anyhow::ensure!(order.amount > 0, "an order of nothing");
    Ok(Invoice {
        order: order.id,
        total: order.amount * 2,
    })
}

#[tokio::test]
async fn the_result_is_published_with_the_input_s_correlation_id_before_the_ack() {
    let test = TestApp::start(App::new(MemoryBroker::new()).subscribe(bill))
        .await
        .unwrap();
    let order = Outgoing::encode(&Order { id: 7, amount: 21 }, "out.orders")
        .unwrap()
        .with_correlation_id("chain-1");
    let sent = test.publish_message(order);
    assert_eq!(sent.settled().await.unwrap().last(), Some(Settled::Acked));
    // Settled means published: the output was recorded before the ack.
    let published = test.published("out.invoices");
    assert_eq!(published.len(), 1);
    let invoice: Invoice = serde_json::from_slice(&published[0].body).unwrap();
    assert_eq!(
        invoice,
        Invoice {
            order: 7,
            total: 42
        }
    );
    assert_eq!(published[0].headers.get("correlation_id"), Some("chain-1"));
    assert_eq!(
        published[0].headers.get("content-type"),
        Some("application/json")
    );
    test.stop().await.unwrap();
}

// NackOnError redelivers at once: a runtime thread of its own keeps the test responsive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_handler_publishes_nothing_and_the_policy_applies() {
    let test = TestApp::start(App::new(MemoryBroker::new()).subscribe(bill))
        .await
        .unwrap();
    let sent = test
        .publish(&Order { id: 8, amount: 0 }, "out.orders")
        .await
        .unwrap();
    // NackOnError: redelivered, and never published.
    sent.delivered(2).await.unwrap();
    assert!(test.published("out.invoices").is_empty());
    test.stop().await.unwrap();
}

#[tokio::test]
async fn an_input_without_correlation_id_gets_a_new_one_on_its_output() {
    let test = TestApp::start(App::new(MemoryBroker::new()).subscribe(bill))
        .await
        .unwrap();
    // Built by hand, so it has no correlation id.
    let raw = Outgoing::encode(&Order { id: 9, amount: 1 }, "out.orders").unwrap();
    assert!(raw.headers.get("correlation_id").is_none());
    test.publish_message(raw).settled().await.unwrap();
    let published = test.wait_published("out.invoices", 1).await.unwrap();
    let id = published[0].headers.get("correlation_id").unwrap();
    assert_eq!(id.len(), 36, "a UUID, as FastStream makes them: {id}");
    test.stop().await.unwrap();
}

#[tokio::test]
async fn publish_gives_a_message_a_correlation_id_that_its_output_keeps() {
    let broker = MemoryBroker::new();
    let test = TestApp::start(App::new(broker.clone()).subscribe(keep_even))
        .await
        .unwrap();
    broker.publish(&8u64, "out.maybe").await.unwrap();
    let kept = test.wait_published("out.kept", 1).await.unwrap();
    let sent = test.published("out.maybe");
    let id = sent[0]
        .headers
        .get("correlation_id")
        .expect("set by publish");
    assert_eq!(kept[0].headers.get("correlation_id"), Some(id));
    test.stop().await.unwrap();
}

#[subscriber(topic = "out.maybe", publish = "out.kept")]
async fn keep_even(n: u64) -> Option<u64> {
    n.is_multiple_of(2).then_some(n)
}

#[tokio::test]
async fn none_publishes_nothing() {
    let test = TestApp::start(App::new(MemoryBroker::new()).subscribe(keep_even))
        .await
        .unwrap();
    for n in 1..=4u64 {
        test.publish(&n, "out.maybe")
            .await
            .unwrap()
            .settled()
            .await
            .unwrap();
    }
    let kept: Vec<u64> = test
        .published("out.kept")
        .iter()
        .map(|m| serde_json::from_slice(&m.body).unwrap())
        .collect();
    assert_eq!(kept, vec![2, 4]);
    test.stop().await.unwrap();
}

#[subscriber(topic = "out.routed")]
async fn route(order: Order) -> Publish<Invoice> {
    Publish::new(Invoice {
        order: order.id,
        total: order.amount,
    })
    .to(format!("out.region.{}", order.id % 2))
    .header("x-région", "café ünïcode")
    .key(order.id.to_string())
}

#[tokio::test]
async fn publish_t_sets_destination_headers_and_key() {
    let test = TestApp::start(App::new(MemoryBroker::new()).subscribe(route))
        .await
        .unwrap();
    test.publish(&Order { id: 3, amount: 5 }, "out.routed")
        .await
        .unwrap()
        .settled()
        .await
        .unwrap();
    let published = test.published("out.region.1");
    assert_eq!(published.len(), 1);
    assert_eq!(published[0].headers.get("x-région"), Some("café ünïcode"));
    assert_eq!(published[0].key.as_deref(), Some(&b"3"[..]));
    test.stop().await.unwrap();
}

#[subscriber(topic = "out.square")]
async fn square(n: u64) -> u64 {
    n * n
}

#[subscriber(topic = "out.silent")]
async fn silent(_: &Message) {}

#[subscriber(topic = "out.noreply", reply = false)]
async fn no_reply(n: u64) -> u64 {
    n
}

#[tokio::test]
async fn a_request_gets_the_handler_s_result_as_its_reply() {
    let test = TestApp::start(
        App::new(MemoryBroker::new())
            .subscribe(square)
            .subscribe(silent),
    )
    .await
    .unwrap();
    let reply = test.request(&12u64, "out.square").await.unwrap();
    let n: u64 = serde_json::from_slice(reply.body()).unwrap();
    assert_eq!(n, 144);
    assert!(reply.correlation_id().is_some());
    // The requester's correlation id comes back.
    let request = Outgoing::encode(&3u64, "out.square")
        .unwrap()
        .with_correlation_id("ask-1");
    let reply = test
        .broker()
        .request_message(request, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(reply.correlation_id(), Some("ask-1"));
    assert_eq!(&reply.body()[..], b"9");
    // A handler that returns nothing still answers (an empty reply), as FastStream does.
    let reply = test.request("ping", "out.silent").await.unwrap();
    assert!(reply.body().is_empty());
    test.stop().await.unwrap();
}

#[tokio::test]
async fn a_request_nobody_answers_times_out_and_a_late_reply_is_dropped() {
    let broker = MemoryBroker::new();
    let test = TestApp::start(App::new(broker.clone()).subscribe(no_reply))
        .await
        .unwrap();
    let err = broker
        .request(&1u64, "out.noreply", Duration::from_millis(200))
        .await
        .unwrap_err();
    assert!(
        matches!(err, BrokerError::RequestTimeout { ref destination, .. } if destination == "out.noreply"),
        "{err}"
    );
    // The handler ran and acked; `reply = false` sent nothing back.
    let asked = test.published("out.noreply");
    assert_eq!(asked.len(), 1);
    let inbox = asked[0].headers.get("reply_to").unwrap().to_owned();
    assert!(test.published(&inbox).is_empty());
    // A reply after the timeout goes nowhere: no topic is left holding it.
    broker.publish(&"late", &inbox).await.unwrap();
    assert!(broker.snapshot(&inbox).groups.is_empty());
    test.stop().await.unwrap();
}

#[subscriber(topic = "out.fanout")]
async fn fan_out(lines: Vec<String>, publisher: Publisher<'_>) -> anyhow::Result<()> {
    for line in &lines {
        publisher.publish(line, "out.lines").await?;
    }
    Ok(())
}

#[tokio::test]
async fn the_publisher_argument_fans_out_with_the_input_s_correlation_id() {
    let test = TestApp::start(App::new(MemoryBroker::new()).subscribe(fan_out))
        .await
        .unwrap();
    let input = Outgoing::encode(&["a", "b", "c"], "out.fanout")
        .unwrap()
        .with_correlation_id("fan-1");
    test.publish_message(input).settled().await.unwrap();
    let lines = test.published("out.lines");
    let bodies: Vec<&[u8]> = lines.iter().map(|m| &m.body[..]).collect();
    assert_eq!(bodies, vec![&b"a"[..], b"b", b"c"]);
    assert!(lines
        .iter()
        .all(|m| m.headers.get("correlation_id") == Some("fan-1")));
    test.stop().await.unwrap();
}

/// A broker whose publishes all fail, around the in-memory one: the output cannot reach it.
#[derive(Clone)]
struct FailingOutput(MemoryBroker);

impl Broker for FailingOutput {
    type Consumer = <MemoryBroker as Broker>::Consumer;
    fn kind(&self) -> BrokerKind {
        BrokerKind::Memory
    }
    async fn connect(&self) -> Result<(), BrokerError> {
        Ok(())
    }
    async fn subscribe(&self, sub: &brook::Subscription) -> Result<Self::Consumer, BrokerError> {
        self.0.subscribe(sub).await
    }
    async fn publish_message(&self, message: Outgoing) -> Result<(), BrokerError> {
        Err(BrokerError::Invalid {
            broker: BrokerKind::Memory,
            message: format!("`{}` is unreachable", message.destination),
        })
    }
    async fn close(&self) -> Result<(), BrokerError> {
        Ok(())
    }
}

impl<K: brook::kind::Kind> brook::Accepts<K> for FailingOutput {}

#[subscriber(topic = "out.fails", publish = "out.nowhere", ack_policy = RejectOnError)]
async fn doomed(n: u64) -> u64 {
    n
}

// NackOnError redelivers at once: a runtime thread of its own keeps the test responsive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_output_that_cannot_be_published_takes_the_policy_s_error_path() {
    let broker = MemoryBroker::new();
    broker.record();
    let running = App::new(FailingOutput(broker.clone()))
        .subscribe(bill)
        .subscribe(doomed)
        .start()
        .await
        .unwrap();
    // NackOnError: the input is redelivered, not acked.
    let nacked =
        broker.publish_traced(Outgoing::encode(&Order { id: 1, amount: 1 }, "out.orders").unwrap());
    let trace = tokio::time::timeout(
        Duration::from_secs(5),
        broker.wait_for_trace(nacked, |t| t.deliveries >= 2),
    )
    .await
    .unwrap();
    assert_eq!(trace.settlements[0], Settled::Nacked);
    // RejectOnError: the input is rejected (dead-lettered here), not acked.
    let rejected = broker.publish_traced(Outgoing::encode(&5u64, "out.fails").unwrap());
    let trace = tokio::time::timeout(
        Duration::from_secs(5),
        broker.wait_for_trace(rejected, |t| t.is_final()),
    )
    .await
    .unwrap();
    assert_eq!(trace.last(), Some(Settled::Rejected));
    assert_eq!(broker.dead_letters("out.fails").len(), 1);
    running.stop().await.unwrap();
}

#[cfg(all(feature = "kafka", feature = "rabbit"))]
#[brook::kafka::subscriber(topic = "out.kafka", group_id = "g", publish = "out.rabbit", publish_broker = rabbit)]
async fn bridge(n: u64) -> u64 {
    n + 1
}

#[cfg(all(feature = "kafka", feature = "rabbit"))]
#[tokio::test]
async fn an_output_on_another_broker_is_published_in_memory_by_a_memory_app() {
    let test = TestApp::start(App::new(MemoryBroker::new()).subscribe(bridge))
        .await
        .unwrap();
    test.publish(&1u64, "out.kafka")
        .await
        .unwrap()
        .settled()
        .await
        .unwrap();
    assert_eq!(&test.published("out.rabbit")[0].body[..], b"2");
    test.stop().await.unwrap();
}
