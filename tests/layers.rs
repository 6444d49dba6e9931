//! Middleware and health on the in-memory broker: the order layers run in, what a layer's
//! interrupt, error or panic does to the message, the hooks' view of outcomes and publishes,
//! and `RunningApp::health`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use brook::engine::Outcome;
use brook::layer::{BoxFuture, Delivery, Layer, Next, PublishKind, Published};
use brook::prelude::*;
use brook::{AppError, HandlerError, HandlerResult, Timeout};

type Log = Arc<Mutex<Vec<String>>>;

/// Writes down everything it sees, under a name.
struct Recorder {
    name: &'static str,
    log: Log,
}

impl Recorder {
    fn write(&self, line: String) {
        self.log
            .lock()
            .unwrap()
            .push(format!("{}:{line}", self.name));
    }
}

impl Layer for Recorder {
    fn received(&self, d: Delivery<'_>) {
        self.write(format!("received {}", d.subscriber()));
    }

    fn call<'a>(&'a self, d: Delivery<'a>, next: Next<'a>) -> BoxFuture<'a, HandlerResult> {
        Box::pin(async move {
            self.write(format!("before {}", d.topic()));
            let result = next.run().await;
            self.write(format!("after ok={}", result.is_ok()));
            result
        })
    }

    fn settled(&self, _: Delivery<'_>, outcome: Outcome, _: Duration) {
        self.write(format!("settled {outcome:?}"));
    }

    fn published(&self, event: &Published<'_>) {
        self.write(format!(
            "published {:?} {} ok={}",
            event.kind,
            event.destination,
            event.error.is_none()
        ));
    }
}

static HANDLED: Mutex<Vec<String>> = Mutex::new(Vec::new());

#[subscriber(topic = "layers.orders", publish = "layers.out", ack_policy = NackOnError)]
async fn handle(body: String) -> String {
    HANDLED.lock().unwrap().push(body.clone());
    body
}

fn lines(log: &Log) -> Vec<String> {
    log.lock().unwrap().clone()
}

#[tokio::test]
async fn app_layers_wrap_subscriber_layers_first_added_outermost() {
    let log = Log::default();
    let layer = |name| Recorder {
        name,
        log: log.clone(),
    };
    let test = brook::testing::TestApp::start(
        App::new(MemoryBroker::new())
            .layer(layer("app1"))
            .layer(layer("app2"))
            .subscribe(handle.layer(layer("sub"))),
    )
    .await
    .unwrap();
    test.publish("x", "layers.orders")
        .await
        .unwrap()
        .settled()
        .await
        .unwrap();
    test.stop().await.unwrap();
    assert_eq!(
        lines(&log),
        [
            "app1:received handle",
            "app2:received handle",
            "sub:received handle",
            "app1:before layers.orders",
            "app2:before layers.orders",
            "sub:before layers.orders",
            "sub:after ok=true",
            "app2:after ok=true",
            "app1:after ok=true",
            "app1:published Output layers.out ok=true",
            "app2:published Output layers.out ok=true",
            "sub:published Output layers.out ok=true",
            "app1:settled Settled(Acked)",
            "app2:settled Settled(Acked)",
            "sub:settled Settled(Acked)",
        ]
    );
}

/// Refuses messages with a `x-block` header without running the handler.
struct Gate;

impl Layer for Gate {
    fn call<'a>(&'a self, d: Delivery<'a>, next: Next<'a>) -> BoxFuture<'a, HandlerResult> {
        match d.headers().get("x-block") {
            Some(_) => Box::pin(async { Err(HandlerError::Failed(brook::Reject.into())) }),
            None => next.run(),
        }
    }
}

#[subscriber(topic = "layers.gated", ack_policy = NackOnError)]
async fn gated(body: String) {
    HANDLED.lock().unwrap().push(body);
}

#[tokio::test]
async fn a_layer_short_circuits_with_an_interrupt_and_the_handler_never_runs() {
    let test =
        brook::testing::TestApp::start(App::new(MemoryBroker::new()).layer(Gate).subscribe(gated))
            .await
            .unwrap();
    let blocked = test.publish_message(
        Outgoing::encode("blocked-body", "layers.gated")
            .unwrap()
            .with_header("x-block", "1"),
    );
    assert_eq!(
        blocked.settled().await.unwrap().last(),
        Some(Settled::Rejected)
    );
    let passed = test.publish("passed-body", "layers.gated").await.unwrap();
    assert_eq!(passed.settled().await.unwrap().last(), Some(Settled::Acked));
    let handled = HANDLED.lock().unwrap().clone();
    assert!(handled.contains(&"passed-body".to_owned()));
    assert!(!handled.contains(&"blocked-body".to_owned()));
    test.stop().await.unwrap();
}

/// Panics in `call`.
struct Panics;

impl Layer for Panics {
    fn call<'a>(&'a self, d: Delivery<'a>, next: Next<'a>) -> BoxFuture<'a, HandlerResult> {
        Box::pin(async move {
            if d.body().as_ref() == b"boom" {
                panic!("layer bug");
            }
            next.run().await
        })
    }

    fn settled(&self, _: Delivery<'_>, _: Outcome, _: Duration) {
        panic!("a hook's bug");
    }
}

#[subscriber(topic = "layers.panics", ack_policy = RejectOnError)]
async fn after_panic(_: String) {}

#[tokio::test]
async fn a_panicking_layer_is_a_failed_handler_and_a_panicking_hook_is_ignored() {
    let test = brook::testing::TestApp::start(
        App::new(MemoryBroker::new())
            .layer(Panics)
            .subscribe(after_panic),
    )
    .await
    .unwrap();
    let boom = test.publish("boom", "layers.panics").await.unwrap();
    assert_eq!(
        boom.settled().await.unwrap().last(),
        Some(Settled::Rejected)
    );
    // The consumer survived both panics.
    let fine = test.publish("fine", "layers.panics").await.unwrap();
    assert_eq!(fine.settled().await.unwrap().last(), Some(Settled::Acked));
    test.stop().await.unwrap();
}

#[subscriber(topic = "layers.slow", ack_policy = Ack, max_deliveries = 2)]
async fn slow(msg: &Message) {
    if msg.delivery_count() == Some(1) {
        tokio::time::sleep(Duration::from_secs(30)).await;
    }
}

#[tokio::test]
async fn the_timeout_layer_nacks_a_handler_that_runs_too_long() {
    let test = brook::testing::TestApp::start(
        App::new(MemoryBroker::new())
            .subscribe(slow.layer(Timeout::new(Duration::from_millis(100)))),
    )
    .await
    .unwrap();
    let sent = test.publish("x", "layers.slow").await.unwrap();
    // A Nack interrupt applies even under `Ack`; the second delivery is quick.
    let trace = sent.settled().await.unwrap();
    assert_eq!(trace.settlements, vec![Settled::Nacked, Settled::Acked]);
    test.stop().await.unwrap();
}

#[subscriber(topic = "layers.health", ack_policy = RejectOnError)]
async fn flaky(n: u32) -> anyhow::Result<()> {
    anyhow::ensure!(n != 0, "zero");
    Ok(())
}

#[tokio::test]
async fn health_counts_messages_and_failures_and_reports_an_ended_subscriber() {
    let broker = MemoryBroker::new();
    broker.record();
    let running = App::new(broker.clone())
        .subscribe(flaky)
        .start()
        .await
        .unwrap();
    let before = running.health();
    assert!(before.is_ready() && before.is_alive());
    assert_eq!(before.subscribers[0].received, 0);
    assert_eq!(before.subscribers[0].last_message_at, None);
    for n in [1u32, 0, 0] {
        let id = broker.publish_traced(Outgoing::encode(&n, "layers.health").unwrap());
        tokio::time::timeout(
            Duration::from_secs(5),
            broker.wait_for_trace(id, |t| t.is_final()),
        )
        .await
        .unwrap();
    }
    let health = running.health();
    let s = &health.subscribers[0];
    assert_eq!(
        (s.subscriber.as_str(), s.source.as_str()),
        ("flaky", "layers.health")
    );
    assert_eq!(s.received, 3);
    assert_eq!(s.consecutive_failures, 2);
    assert!(s.last_message_at.is_some());
    assert!(s.consuming);

    let probe = running.health_handle();
    broker.end_consumers("layers.health", "queue deleted");
    let err = tokio::time::timeout(Duration::from_secs(5), running.wait())
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, AppError::SubscriberEnded { .. }), "{err}");
    let after = probe.health();
    assert!(!after.is_alive() && !after.is_ready());
    assert_eq!(
        after.subscribers[0].ended.as_deref(),
        Some("the in-memory broker: queue deleted")
    );
}

#[subscriber(topic = "layers.fan")]
async fn fan(publisher: Publisher<'_>) -> anyhow::Result<()> {
    publisher.publish("side", "layers.side").await?;
    Ok(())
}

#[tokio::test]
async fn app_layers_hear_of_publisher_publishes() {
    let log = Log::default();
    let test = brook::testing::TestApp::start(
        App::new(MemoryBroker::new())
            .layer(Recorder {
                name: "app",
                log: log.clone(),
            })
            .subscribe(fan),
    )
    .await
    .unwrap();
    test.publish("go", "layers.fan")
        .await
        .unwrap()
        .settled()
        .await
        .unwrap();
    test.stop().await.unwrap();
    assert!(lines(&log).contains(&"app:published Publisher layers.side ok=true".to_owned()));
    let _ = PublishKind::Publisher;
}

#[subscriber(topic = "layers.restart")]
async fn restartable(_: String) {}

/// Waits (5 s at most) until the subscriber has been restarted `n` times.
async fn restarted(probe: &brook::HealthHandle, n: u32) {
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let s = &probe.health().subscribers[0];
            if s.restarts >= n && s.consuming && s.ended.is_none() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("subscribed again within 5 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ended_subscriber_is_restarted_with_backoff_until_the_limit() {
    let broker = MemoryBroker::new();
    broker.record();
    let restart =
        brook::Restart::new(1).backoff(Duration::from_millis(10), Duration::from_millis(50));
    let running = App::new(broker.clone())
        .restart_ended(restart)
        .subscribe(restartable)
        .start()
        .await
        .unwrap();
    let probe = running.health_handle();
    broker.end_consumers("layers.restart", "queue deleted");
    restarted(&probe, 1).await;
    let id = broker.publish_traced(Outgoing::encode("after", "layers.restart").unwrap());
    let trace = tokio::time::timeout(
        Duration::from_secs(5),
        broker.wait_for_trace(id, |t| t.is_final()),
    )
    .await
    .expect("handled by the restarted consumer");
    assert_eq!(trace.last(), Some(Settled::Acked));
    // It consumed since, so it is restarted once more; ending it again with no message in
    // between exceeds the limit (1 in a row) and stops the App.
    broker.end_consumers("layers.restart", "deleted again");
    restarted(&probe, 2).await;
    broker.end_consumers("layers.restart", "deleted for good");
    let err = tokio::time::timeout(Duration::from_secs(5), running.wait())
        .await
        .expect("the App stops")
        .unwrap_err();
    assert!(
        matches!(&err, AppError::SubscriberEnded { reason, .. } if reason.contains("deleted for good")),
        "{err}"
    );
    assert_eq!(probe.health().subscribers[0].restarts, 2);
}
