//! A JetStream consumer (or its stream) deleted under a running subscriber, on 127.0.0.1:4222:
//! with `create = true` brook recreates it and goes on consuming; with `create = false` the
//! consumer ends (an error naming the consumer, then `None`), so the App can fail instead of
//! running on as a silent, dead subscriber.

mod common;

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull, stream};
use brook_nats::NatsBroker;
use brook_runtime::proxy::TcpProxy;
use brook_runtime::{App, Broker, Consumer as _};
use common::{consumer_info, js_builder, js_sub, names, next_seen, scripted, Act, Names, Seen};
use tokio::sync::mpsc::UnboundedReceiver;

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// Fresh names, with a durable name of its own (so an error "naming the consumer" is seen).
fn fresh_names(test: &str) -> Names {
    let mut n = names(test);
    n.durable = common::fresh("dur");
    n
}

/// Handler calls until one with `body` (a recreated durable starts over where its
/// `deliver_policy` says, so earlier messages may come again first).
async fn wait_for(seen: &mut UnboundedReceiver<Seen>, body: &[u8]) {
    while &next_seen(seen).await.body[..] != body {}
}

/// Polls (bounded) until the durable exists again on the server.
async fn wait_until_the_consumer_exists(js: &jetstream::Context, n: &Names) {
    let deadline = Instant::now() + common::WAIT;
    loop {
        if let Ok(s) = js.get_stream(&n.stream).await {
            if s.consumer_info(&n.durable).await.is_ok() {
                return;
            }
        }
        assert!(Instant::now() < deadline, "the consumer was not recreated");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn delete_durable(js: &jetstream::Context, n: &Names) {
    js.get_stream(&n.stream)
        .await
        .unwrap()
        .delete_consumer(&n.durable)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_deleted_durable_is_recreated_and_the_app_goes_on_handling() {
    init_tracing();
    let n = fresh_names("js_deleted_recreated");
    let _cleanup = common::cleanup(&[&n.stream]);
    let broker = NatsBroker::new(common::URL);
    let (handler, mut seen) = scripted(js_builder(&n, &[]), |_| Act::Succeed);
    let running = App::new(broker.clone())
        .subscribe(handler)
        .start()
        .await
        .unwrap();
    broker.publish("before", &n.subject).await.unwrap();
    wait_for(&mut seen, b"before").await;

    let js = jetstream::new(common::client().await);
    delete_durable(&js, &n).await;
    broker.publish("after", &n.subject).await.unwrap();
    wait_for(&mut seen, b"after").await;

    // The durable exists again, with the subscriber's settings.
    let c = consumer_info(&js, &n.stream, &n.durable).await;
    assert_eq!(c.config.durable_name.as_deref(), Some(n.durable.as_str()));
    assert_eq!(c.config.filter_subject, n.subject);
    running.stop().await.unwrap();
}

#[tokio::test]
async fn a_deleted_stream_is_recreated_with_its_consumer() {
    init_tracing();
    let n = fresh_names("js_deleted_stream");
    let _cleanup = common::cleanup(&[&n.stream]);
    let broker = NatsBroker::new(common::URL);
    let (handler, mut seen) = scripted(js_builder(&n, &[]), |_| Act::Succeed);
    let running = App::new(broker.clone())
        .subscribe(handler)
        .start()
        .await
        .unwrap();
    broker.publish("before", &n.subject).await.unwrap();
    wait_for(&mut seen, b"before").await;

    let js = jetstream::new(common::client().await);
    js.delete_stream(&n.stream).await.unwrap();
    // Published before the stream is back, "after" would be stored nowhere: wait for it.
    wait_until_the_consumer_exists(&js, &n).await;
    broker.publish("after", &n.subject).await.unwrap();
    wait_for(&mut seen, b"after").await;
    running.stop().await.unwrap();
}

/// Deleted while the client was disconnected: the server's "Consumer Deleted" notice never
/// arrives, and pull requests to a missing consumer get no answer at all. The pull loop's
/// silence check has to find out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_deleted_while_disconnected_is_recreated_after_reconnecting() {
    init_tracing();
    let n = fresh_names("js_deleted_offline");
    let _cleanup = common::cleanup(&[&n.stream]);
    let proxy = TcpProxy::start("127.0.0.1:4222".parse().unwrap())
        .await
        .unwrap();
    let via_proxy = NatsBroker::new(format!("nats://{}", proxy.addr()));
    let direct = NatsBroker::new(common::URL);
    let (handler, mut seen) = scripted(js_builder(&n, &[]), |_| Act::Succeed);
    let running = App::new(via_proxy.clone())
        .subscribe(handler)
        .start()
        .await
        .unwrap();
    direct.publish("before", &n.subject).await.unwrap();
    wait_for(&mut seen, b"before").await;

    let js = jetstream::new(common::client().await);
    proxy.cut();
    delete_durable(&js, &n).await;
    proxy.restore();
    direct.publish("after", &n.subject).await.unwrap();
    wait_for(&mut seen, b"after").await;
    assert!(proxy.connections_accepted() >= 2, "the client reconnected");
    consumer_info(&js, &n.stream, &n.durable).await;
    running.stop().await.unwrap();
}

async fn existing_durable(n: &Names) -> jetstream::Context {
    let js = jetstream::new(common::client().await);
    js.create_stream(stream::Config {
        name: n.stream.clone(),
        subjects: vec![n.subject.clone()],
        ..Default::default()
    })
    .await
    .unwrap()
    .create_consumer(pull::Config {
        durable_name: Some(n.durable.clone()),
        name: Some(n.durable.clone()),
        filter_subject: n.subject.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    js
}

/// After the durable is gone, `next` yields one error naming it, then `None` (bounded), and
/// nothing is recreated.
async fn assert_ends(consumer: &mut brook_nats::NatsConsumer, js: &jetstream::Context, n: &Names) {
    let started = Instant::now();
    let text = match tokio::time::timeout(common::WAIT, consumer.next())
        .await
        .expect("an answer within the bound")
    {
        Some(Err(e)) => e.to_string(),
        other => panic!(
            "expected the consumer's error, got {:?}",
            other.map(|r| r.map(|m| m.body().clone()))
        ),
    };
    assert!(text.contains(&n.durable), "{text}");
    assert!(text.contains(&n.stream), "{text}");
    assert!(text.contains("create = false"), "{text}");
    let end = tokio::time::timeout(common::WAIT, consumer.next())
        .await
        .expect("an answer within the bound");
    assert!(end.is_none(), "the consumer ended for good");
    eprintln!("ended {:?} after the deletion: {text}", started.elapsed());
    let s = js.get_stream(&n.stream).await.unwrap();
    assert!(s.consumer_info(&n.durable).await.is_err(), "not recreated");
}

#[tokio::test]
async fn with_create_false_a_deleted_durable_ends_the_consumer() {
    init_tracing();
    let n = fresh_names("js_deleted_nocreate");
    let _cleanup = common::cleanup(&[&n.stream]);
    let js = existing_durable(&n).await;
    let broker = NatsBroker::new(common::URL);
    let mut consumer = broker
        .subscribe(&js_sub(&n, &[("create", false.into())]))
        .await
        .unwrap();
    // One delivery first, so a pull request is waiting on the server when the durable goes.
    broker.publish("m", &n.subject).await.unwrap();
    let m = tokio::time::timeout(common::WAIT, consumer.next())
        .await
        .expect("a delivery")
        .expect("open")
        .expect("no error");
    m.ack().await.unwrap();
    delete_durable(&js, &n).await;
    assert_ends(&mut consumer, &js, &n).await;
    consumer.close().await.unwrap();
}

/// The same when no pull request was waiting (so no "Consumer Deleted" notice comes).
#[tokio::test]
async fn with_create_false_a_durable_deleted_unnoticed_ends_the_consumer() {
    init_tracing();
    let n = fresh_names("js_deleted_nocreate_silent");
    let _cleanup = common::cleanup(&[&n.stream]);
    let js = existing_durable(&n).await;
    let broker = NatsBroker::new(common::URL);
    let mut consumer = broker
        .subscribe(&js_sub(&n, &[("create", false.into())]))
        .await
        .unwrap();
    delete_durable(&js, &n).await;
    assert_ends(&mut consumer, &js, &n).await;
    consumer.close().await.unwrap();
}

/// What a user sees with `create = false`: the App does not run on with a dead subscriber;
/// `RunningApp::wait` (as `App::run`) returns an error naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_create_false_a_deleted_durable_fails_the_app() {
    init_tracing();
    let n = fresh_names("js_deleted_app");
    let _cleanup = common::cleanup(&[&n.stream]);
    let js = existing_durable(&n).await;
    let broker = NatsBroker::new(common::URL);
    let (handler, _seen) = scripted(js_builder(&n, &[("create", false.into())]), |_| {
        Act::Succeed
    });
    let running = App::new(broker.clone())
        .subscribe(handler)
        .start()
        .await
        .unwrap();
    delete_durable(&js, &n).await;
    let err = tokio::time::timeout(common::WAIT, running.wait())
        .await
        .expect("the App stops instead of running on")
        .expect_err("the App fails");
    let text = err.to_string();
    assert!(
        text.starts_with("subscriber `test` stopped consuming for good:")
            && text.contains(&n.durable),
        "{text}"
    );
}

/// A message still being handled when its durable is deleted: its settlement must not reach the
/// recreated durable of the same name (an old `+ACK` could move it past messages it has not
/// delivered yet). The recreated durable delivers it again, and afterwards nothing is pending
/// or unacknowledged on the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_in_flight_across_the_deletion_is_settled_by_the_recreated_durable() {
    init_tracing();
    let n = fresh_names("js_deleted_in_flight");
    let _cleanup = common::cleanup(&[&n.stream]);
    let broker = NatsBroker::new(common::URL);
    let (handler, mut seen) = scripted(
        js_builder(&n, &[("concurrency", 2u32.into())]),
        |m: &brook_runtime::Message| match &m.body()[..] {
            b"slow" if m.delivery_count() == Some(1) => Act::WorkLong {
                total: Duration::from_millis(1500),
                every: Duration::from_millis(300),
            },
            _ => Act::Succeed,
        },
    );
    let running = App::new(broker.clone())
        .subscribe(handler)
        .start()
        .await
        .unwrap();
    broker.publish("slow", &n.subject).await.unwrap();
    wait_for(&mut seen, b"slow").await;

    let js = jetstream::new(common::client().await);
    delete_durable(&js, &n).await;
    broker.publish("after", &n.subject).await.unwrap();
    wait_for(&mut seen, b"after").await;

    // Every message of the stream ends acknowledged on the recreated durable.
    let deadline = Instant::now() + common::WAIT;
    loop {
        let c = consumer_info(&js, &n.stream, &n.durable).await;
        if c.num_pending == 0 && c.num_ack_pending == 0 && c.ack_floor.stream_sequence >= 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still pending on the recreated durable: {} unread, {} unacknowledged, ack floor {}",
            c.num_pending,
            c.num_ack_pending,
            c.ack_floor.stream_sequence
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    running.stop().await.unwrap();
}
