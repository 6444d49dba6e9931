#![cfg(feature = "nats")]
//! Supervision on a real broker (NATS JetStream on 127.0.0.1:4222): a durable deleted under a
//! running App with `create = false` makes `App::wait` return `SubscriberEnded` naming the
//! subscriber, after the App stopped gracefully; with `App::restart_ended` the subscriber is
//! subscribed again once the durable is back, and handles the next message.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use brook::nats::async_nats::jetstream::{self, consumer::pull, stream};
use brook::nats::NatsBroker;
use brook::prelude::*;
use brook::{AppError, Restart};
use tokio::sync::mpsc;

const URL: &str = "nats://127.0.0.1:4222";
const WAIT: Duration = Duration::from_secs(10);

struct Names {
    stream: String,
    subject: String,
    durable: String,
}

fn fresh(test: &str) -> Names {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let id = format!("{}_{nanos}", std::process::id());
    Names {
        stream: format!("SUPERVISE_{test}_{id}"),
        subject: format!("supervise.{test}.{id}"),
        durable: format!("dur_{test}_{id}"),
    }
}

static SEEN: std::sync::Mutex<Option<mpsc::UnboundedSender<String>>> = std::sync::Mutex::new(None);

#[brook::nats::subscriber(subject = _, stream = _, durable = _, create = false, ack_policy = Ack)]
async fn billing(body: String) {
    if let Some(tx) = SEEN.lock().unwrap().as_ref() {
        let _ = tx.send(body);
    }
}

async fn context() -> jetstream::Context {
    let client = brook::nats::async_nats::connect(URL)
        .await
        .expect("NATS on 127.0.0.1:4222");
    jetstream::new(client)
}

async fn create_durable(js: &jetstream::Context, n: &Names) {
    js.get_or_create_stream(stream::Config {
        name: n.stream.clone(),
        subjects: vec![n.subject.clone()],
        max_age: Duration::from_secs(600),
        ..Default::default()
    })
    .await
    .unwrap()
    .create_consumer(pull::Config {
        durable_name: Some(n.durable.clone()),
        filter_subject: n.subject.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
}

async fn delete_durable(js: &jetstream::Context, n: &Names) {
    js.get_stream(&n.stream)
        .await
        .unwrap()
        .delete_consumer(&n.durable)
        .await
        .unwrap();
}

fn app(n: &Names, broker: &NatsBroker) -> App<NatsBroker> {
    App::new(broker.clone()).subscribe(
        billing
            .subject(&n.subject)
            .stream(&n.stream)
            .durable(&n.durable),
    )
}

async fn next(seen: &mut mpsc::UnboundedReceiver<String>) -> String {
    tokio::time::timeout(WAIT, seen.recv())
        .await
        .expect("handled in time")
        .expect("open")
}

// One test at a time uses SEEN, so both cases run in one test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_deleted_under_a_running_app_ends_it_or_restarts_the_subscriber() {
    let (tx, mut seen) = mpsc::unbounded_channel();
    *SEEN.lock().unwrap() = Some(tx);
    let js = context().await;
    let broker = NatsBroker::new(URL);

    // Without restarts: the App stops and says which subscriber ended, and why.
    let n = fresh("ends");
    create_durable(&js, &n).await;
    let running = app(&n, &broker).start().await.unwrap();
    broker.publish("first", &n.subject).await.unwrap();
    assert_eq!(next(&mut seen).await, "first");
    delete_durable(&js, &n).await;
    let err = tokio::time::timeout(WAIT, running.wait())
        .await
        .expect("the App stops on its own")
        .unwrap_err();
    match &err {
        AppError::SubscriberEnded { subscriber, reason } => {
            assert_eq!(subscriber, "billing");
            assert!(reason.contains(&n.durable), "{reason}");
        }
        other => panic!("expected SubscriberEnded, got {other}"),
    }
    let _ = js.delete_stream(&n.stream).await;

    // With restarts: once the durable is back, the subscriber consumes again.
    let n = fresh("restarts");
    create_durable(&js, &n).await;
    let restart = Restart::new(20).backoff(Duration::from_millis(50), Duration::from_millis(200));
    let running = app(&n, &broker)
        .restart_ended(restart)
        .start()
        .await
        .unwrap();
    let probe = running.health_handle();
    broker.publish("before", &n.subject).await.unwrap();
    assert_eq!(next(&mut seen).await, "before");
    delete_durable(&js, &n).await;
    // The subscriber ends (health says so), then the durable is recreated by hand.
    tokio::time::timeout(WAIT, async {
        while probe.health().subscribers[0].ended.is_none() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the subscriber ended");
    create_durable(&js, &n).await;
    broker.publish("after", &n.subject).await.unwrap();
    // The recreated durable starts at the stream's start, so "before" may come again first.
    while next(&mut seen).await != "after" {}
    let health = probe.health();
    assert!(health.subscribers[0].restarts >= 1, "{health:?}");
    assert!(health.subscribers[0].consuming);
    running.stop().await.unwrap();
    let _ = js.delete_stream(&n.stream).await;
}
