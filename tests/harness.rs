//! `#[subscriber]` handlers run through the test harness on the in-memory broker: what a user
//! writing unit tests for handlers relies on.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use brook::prelude::*;
use brook::testing::TestApp;
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct Order {
    id: u64,
    amount: f64,
}

static FLAKY_CALLS: AtomicU32 = AtomicU32::new(0);

#[subscriber(broker = memory, topic = "harness.flaky", ack_policy = NackOnError)]
async fn flaky(order: Order, msg: &Message) -> anyhow::Result<()> {
    FLAKY_CALLS.fetch_add(1, Ordering::SeqCst);
    if msg.delivery_count() < Some(3) {
        anyhow::bail!("backend unavailable for order {}", order.id);
    }
    Ok(())
}

#[tokio::test]
async fn nack_on_error_redelivers_until_the_handler_succeeds() {
    let test = TestApp::start(App::new(MemoryBroker::new()).subscribe(flaky))
        .await
        .unwrap();
    let sent = test
        .publish(&Order { id: 1, amount: 5.0 }, "harness.flaky")
        .await
        .unwrap();
    let trace = sent.settled().await.unwrap();
    assert_eq!(trace.deliveries, 3);
    assert_eq!(
        trace.settlements,
        vec![Settled::Nacked, Settled::Nacked, Settled::Acked]
    );
    assert_eq!(FLAKY_CALLS.load(Ordering::SeqCst), 3);
    test.stop().await.unwrap();
}

fn check_amount(order: &Order) -> Result<(), brook::Reject> {
    if order.amount < 0.0 {
        return Err(brook::Reject);
    }
    Ok(())
}

#[subscriber(broker = memory, topic = "harness.validate", ack_policy = NackOnError)]
async fn validate(order: Order) -> anyhow::Result<()> {
    check_amount(&order)?; // an interrupt from a nested function, through `?`
    Ok(())
}

#[tokio::test]
async fn a_reject_interrupt_from_any_depth_dead_letters_instead_of_nacking() {
    let test = TestApp::start(App::new(MemoryBroker::new()).subscribe(validate))
        .await
        .unwrap();
    let bad = test
        .publish(
            &Order {
                id: 2,
                amount: -1.0,
            },
            "harness.validate",
        )
        .await
        .unwrap();
    let good = test
        .publish(&Order { id: 3, amount: 1.0 }, "harness.validate")
        .await
        .unwrap();
    assert_eq!(
        bad.settled().await.unwrap().settlements,
        vec![Settled::Rejected]
    );
    assert_eq!(
        good.settled().await.unwrap().settlements,
        vec![Settled::Acked]
    );
    let dead = test.broker().dead_letters("harness.validate");
    assert_eq!(dead.len(), 1);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&dead[0].body).unwrap()["id"],
        2
    );
    test.stop().await.unwrap();
}

#[subscriber(broker = memory, topic = "harness.decode", ack_policy = NackOnError)]
async fn typed(order: Order) {
    let _ = order;
}

#[tokio::test]
async fn malformed_or_unknown_payloads_are_rejected_and_the_consumer_goes_on() {
    let test = TestApp::start(App::new(MemoryBroker::new()).subscribe(typed))
        .await
        .unwrap();
    let wrong_schema = test
        .publish(&serde_json::json!({"id": "x"}), "harness.decode")
        .await
        .unwrap();
    let not_json = test.publish_message(Outgoing::new("harness.decode", &b"{oops"[..]));
    let xml = test.publish_message(
        Outgoing::new("harness.decode", &b"<order/>"[..])
            .with_header("content-type", "application/xml"),
    );
    let fine = test
        .publish(&Order { id: 4, amount: 2.0 }, "harness.decode")
        .await
        .unwrap();
    for sent in [&wrong_schema, &not_json, &xml] {
        let trace = sent.settled().await.unwrap();
        assert_eq!(
            trace.settlements,
            vec![Settled::Rejected],
            "not nacked: a redelivery cannot fix it"
        );
        assert_eq!(trace.deliveries, 1);
    }
    assert_eq!(fine.settled().await.unwrap().last(), Some(Settled::Acked));
    assert_eq!(test.broker().dead_letters("harness.decode").len(), 3);
    test.stop().await.unwrap();
}

/// FastStream publishes bytes with `content-type: ""`; like FastStream, brook reads that as no
/// content type (JSON first) instead of refusing to decode it.
#[tokio::test]
async fn an_empty_content_type_is_no_content_type() {
    let test = TestApp::start(App::new(MemoryBroker::new()).subscribe(typed))
        .await
        .unwrap();
    let sent = test.publish_message(
        Outgoing::new("harness.decode", &br#"{"id":5,"amount":1.0}"#[..])
            .with_header("content-type", ""),
    );
    assert_eq!(sent.settled().await.unwrap().last(), Some(Settled::Acked));
    test.stop().await.unwrap();
}

struct Tenant(&'static str);
struct Seen(Arc<Mutex<Vec<String>>>);

#[subscriber(broker = memory, topic = "harness.extractors", ack_policy = Ack)]
async fn extractors(body: String, headers: &Headers, tenant: State<Tenant>, seen: State<Seen>) {
    let line = format!(
        "{body}|{}|{}",
        headers.get("x-request").unwrap_or("-"),
        tenant.0
    );
    seen.0.lock().unwrap().push(line);
}

#[tokio::test]
async fn string_headers_and_state_arguments() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let app = App::new(MemoryBroker::new())
        .state(Tenant("acme"))
        .state(Seen(seen.clone()))
        .subscribe(extractors);
    let test = TestApp::start(app).await.unwrap();
    let sent = test.publish_message(
        Outgoing::encode("hello", "harness.extractors")
            .unwrap()
            .with_header("x-request", "r-1"),
    );
    assert_eq!(
        sent.settled().await.unwrap().settlements,
        vec![Settled::Acked]
    );
    assert_eq!(*seen.lock().unwrap(), vec!["hello|r-1|acme".to_owned()]);
    test.stop().await.unwrap();
}

static ORDERED: Mutex<Vec<(String, u64)>> = Mutex::new(Vec::new());

#[derive(Debug, Serialize, Deserialize)]
struct Step {
    account: String,
    seq: u64,
}

#[subscriber(broker = memory, topic = "harness.keyed", ack_policy = Ack, concurrency = 4)]
async fn keyed(step: Step) {
    // Uneven work times: were two steps of one account run at once, they would finish out of
    // order.
    tokio::time::sleep(Duration::from_micros((step.seq * 7919 % 13) * 150)).await;
    ORDERED.lock().unwrap().push((step.account, step.seq));
}

#[tokio::test]
async fn messages_with_the_same_key_keep_their_order_under_concurrency() {
    let test = TestApp::start(App::new(MemoryBroker::new()).subscribe(keyed))
        .await
        .unwrap();
    let mut sent = Vec::new();
    for seq in 0..20u64 {
        for account in ["a", "b", "c"] {
            let step = Step {
                account: account.to_owned(),
                seq,
            };
            let out = Outgoing::encode(&step, "harness.keyed")
                .unwrap()
                .with_key(account.as_bytes().to_vec());
            sent.push(test.publish_message(out));
        }
    }
    for s in &sent {
        s.settled().await.unwrap();
    }
    let ordered = ORDERED.lock().unwrap().clone();
    for account in ["a", "b", "c"] {
        let seqs: Vec<u64> = ordered
            .iter()
            .filter(|(a, _)| a == account)
            .map(|(_, s)| *s)
            .collect();
        assert_eq!(seqs, (0..20).collect::<Vec<_>>(), "account {account}");
    }
    test.stop().await.unwrap();
}

static POISON_CALLS: AtomicU32 = AtomicU32::new(0);

#[subscriber(broker = memory, topic = "harness.poison", ack_policy = NackOnError, max_deliveries = 3)]
async fn poison(_order: Order) -> anyhow::Result<()> {
    POISON_CALLS.fetch_add(1, Ordering::SeqCst);
    anyhow::bail!("always fails")
}

#[tokio::test]
async fn max_deliveries_turns_an_endless_nack_loop_into_a_reject() {
    let test = TestApp::start(App::new(MemoryBroker::new()).subscribe(poison))
        .await
        .unwrap();
    let sent = test
        .publish(&Order { id: 9, amount: 1.0 }, "harness.poison")
        .await
        .unwrap();
    let trace = sent.settled().await.unwrap();
    assert_eq!(
        trace.settlements,
        vec![Settled::Nacked, Settled::Nacked, Settled::Rejected]
    );
    assert_eq!(POISON_CALLS.load(Ordering::SeqCst), 3);
    assert_eq!(
        test.broker().dead_letters("harness.poison")[0].deliveries,
        3
    );
    test.stop().await.unwrap();
}

static RETRIED_AT: Mutex<Vec<Instant>> = Mutex::new(Vec::new());

#[subscriber(broker = memory, topic = "harness.manual", ack_policy = Manual)]
async fn manual(_order: Order, msg: &Message) -> anyhow::Result<()> {
    RETRIED_AT.lock().unwrap().push(Instant::now());
    if msg.delivery_count() == Some(1) {
        msg.nack_after(Duration::from_millis(200)).await?;
    } else {
        msg.ack().await?;
    }
    Ok(())
}

#[tokio::test]
async fn manual_handlers_settle_themselves_and_nack_delays_apply() {
    let test = TestApp::start(App::new(MemoryBroker::new()).subscribe(manual))
        .await
        .unwrap();
    let sent = test
        .publish(&Order { id: 5, amount: 1.0 }, "harness.manual")
        .await
        .unwrap();
    let trace = sent.settled().await.unwrap();
    assert_eq!(trace.settlements, vec![Settled::Nacked, Settled::Acked]);
    let at = RETRIED_AT.lock().unwrap().clone();
    assert!(
        at[1] - at[0] >= Duration::from_millis(200),
        "redelivered after {:?}",
        at[1] - at[0]
    );
    test.stop().await.unwrap();
}

#[subscriber(broker = memory, topic = "harness.forgetful", ack_policy = Manual)]
async fn forgetful(_body: bytes::Bytes, _msg: &Message) {}

#[tokio::test]
async fn an_unsettled_manual_message_is_handed_back_when_the_app_stops() {
    let broker = MemoryBroker::new();
    let test = TestApp::start(App::new(broker.clone()).subscribe(forgetful))
        .await
        .unwrap();
    let sent = test.publish_message(Outgoing::new("harness.forgetful", &b"keep me"[..]));
    sent.delivered(1).await.unwrap();
    test.stop().await.unwrap();
    let snapshot = broker.snapshot("harness.forgetful");
    assert_eq!(
        snapshot.group("").unwrap().waiting,
        vec![bytes::Bytes::from_static(b"keep me")]
    );
    assert_eq!(snapshot.group("").unwrap().in_flight, 0);
}

#[subscriber(broker = memory, topic = "harness.direct")]
async fn direct(order: Order) -> anyhow::Result<()> {
    anyhow::ensure!(order.amount >= 0.0, "negative amount");
    Ok(())
}

#[tokio::test]
async fn the_function_stays_callable_for_plain_unit_tests() {
    assert!(direct::handle(Order { id: 1, amount: 1.0 }).await.is_ok());
    assert!(direct::handle(Order {
        id: 1,
        amount: -1.0
    })
    .await
    .is_err());
}

#[tokio::test]
async fn a_subscription_built_by_hand_is_checked_like_the_macro_checks_it() {
    let err = brook::Subscription::new(brook::BrokerKind::Nats, "by_hand")
        .arg("subject", "orders.created")
        .arg("ack_policy", AckPolicy::NackOnError)
        .build()
        .unwrap_err()
        .to_string();
    assert!(err.contains("NATS core subject `orders.created`"), "{err}");
    assert!(err.contains("stream = "), "{err}");
}

/// A handler may take no argument at all.
#[subscriber(topic = "harness.nothing")]
async fn takes_nothing() {}

#[tokio::test]
async fn a_handler_without_arguments_runs() {
    let test = TestApp::start(App::new(MemoryBroker::new()).subscribe(takes_nothing))
        .await
        .unwrap();
    let sent = test.publish("x", "harness.nothing").await.unwrap();
    assert_eq!(sent.settled().await.unwrap().last(), Some(Settled::Acked));
    test.stop().await.unwrap();
}
