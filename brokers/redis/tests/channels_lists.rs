//! Pub/sub channels (plain and patterns) and lists: delivery, headers, and what the broker
//! holds afterwards.

mod common;

use std::sync::Arc;

use brook_redis::RedisBroker;
use brook_runtime::{AckPolicy, Broker, Outgoing};
use bytes::Bytes;
use common::*;
use tokio::sync::Notify;

/// PUBSUB NUMSUB: how many subscribers a channel has (the subscription is live).
async fn subscribers(c: &fred::prelude::Client, channel: &str) -> i64 {
    call(c, "PUBSUB", vec![s("NUMSUB"), s(channel)])
        .await
        .into_array()
        .get(1)
        .and_then(|v| v.as_i64())
        .unwrap_or(0)
}

async fn pattern_subscribers(c: &fred::prelude::Client) -> i64 {
    call(c, "PUBSUB", vec![s("NUMPAT")])
        .await
        .as_i64()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_messages_arrive_with_their_headers() {
    let (channel, c, broker) = (unique("ch"), raw().await, RedisBroker::new(URL));
    let mut run = start(
        broker.clone(),
        subscription(vec![("channel", channel.clone().into())]),
        WAIT,
        |_| Act::Ok,
    )
    .await;
    assert_eq!(subscribers(&c, &channel).await, 1);
    broker
        .publish_message(
            Outgoing::encode(&serde_json::json!({"id": 1}), channel.clone())
                .unwrap()
                .with_correlation_id("corr-1")
                .with_header("x-tenant", "acme"),
        )
        .await
        .unwrap();
    let seen = run.next().await;
    assert_eq!(seen.body, Bytes::from_static(br#"{"id":1}"#));
    assert_eq!(seen.headers.get("content-type"), Some("application/json"));
    assert_eq!(seen.headers.get("correlation_id"), Some("corr-1"));
    assert_eq!(seen.headers.get("x-tenant"), Some("acme"));
    assert_eq!(seen.topic, channel);
    assert_eq!(seen.deliveries, None, "pub/sub has no delivery count");
    run.stop().await;
    assert_eq!(
        subscribers(&c, &channel).await,
        0,
        "unsubscribed on shutdown"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_name_with_glob_characters_is_a_pattern() {
    let (base, c, broker) = (unique("pat"), raw().await, RedisBroker::new(URL));
    let before = pattern_subscribers(&c).await;
    let pattern = format!("{base}.*");
    let mut run = start(
        broker.clone(),
        subscription(vec![("channel", pattern.clone().into())]),
        WAIT,
        |_| Act::Ok,
    )
    .await;
    assert!(
        pattern_subscribers(&c).await > before,
        "PSUBSCRIBE was used"
    );
    broker
        .publish(&"hello", &format!("channel:{base}.eu"))
        .await
        .unwrap();
    let seen = run.next().await;
    assert_eq!(
        seen.topic,
        format!("{base}.eu"),
        "the topic is the channel, not the pattern"
    );
    assert_eq!(seen.pattern.as_deref(), Some(pattern.as_str()));
    assert_eq!(seen.body, Bytes::from_static(b"hello"));
    assert_eq!(seen.headers.get("content-type"), Some("text/plain"));
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_subscriptions_survive_a_reconnect() {
    let (channel, broker) = (unique("ch-reconnect"), RedisBroker::new(URL));
    let proxy = brook_runtime::proxy::TcpProxy::start(ADDR.parse().unwrap())
        .await
        .unwrap();
    let sub_broker = RedisBroker::new(format!("redis://{}", proxy.addr()));
    let mut run = start(
        sub_broker,
        subscription(vec![("channel", channel.clone().into())]),
        WAIT,
        |_| Act::Ok,
    )
    .await;
    let c = raw().await;
    proxy.cut();
    eventually("the subscriber is gone", || async {
        subscribers(&c, &channel).await == 0
    })
    .await;
    proxy.restore();
    eventually("fred re-subscribed", || async {
        subscribers(&c, &channel).await == 1
    })
    .await;
    broker.publish(&"after", &channel).await.unwrap();
    assert_eq!(run.next().await.body, Bytes::from_static(b"after"));
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_elements_are_popped_in_order() {
    let (list, c, broker) = (unique("list"), raw().await, RedisBroker::new(URL));
    let sub = subscription(vec![
        ("list", list.clone().into()),
        ("ack_policy", AckPolicy::Ack.into()),
    ]);
    let mut run = start(broker.clone(), sub, WAIT, |_| Act::Ok).await;
    for i in 0..5u32 {
        broker.publish(&i, &format!("list:{list}")).await.unwrap();
    }
    for i in 0..5u32 {
        assert_eq!(run.next().await.body, Bytes::from(i.to_string()));
    }
    run.stop().await;
    assert_eq!(llen(&c, &list).await, 0, "popping removed them");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn popped_but_unhandled_list_elements_go_back_on_shutdown() {
    let (list, c, broker) = (unique("list-back"), raw().await, RedisBroker::new(URL));
    for i in 0..5u32 {
        broker.publish(&i, &format!("list:{list}")).await.unwrap();
    }
    let release = Arc::new(Notify::new());
    let r = release.clone();
    let sub = subscription(vec![("list", list.clone().into()), ("batch", 5u64.into())]);
    let mut run = start(broker.clone(), sub, WAIT, move |s| {
        if s.body == Bytes::from_static(b"0") {
            Act::WaitThenOk(r.clone())
        } else {
            Act::Ok
        }
    })
    .await;
    assert_eq!(run.next().await.body, Bytes::from_static(b"0"));
    assert_eq!(llen(&c, &list).await, 0, "the batch popped all five");
    let app = run.app.take().unwrap();
    let stopping = tokio::spawn(app.stop());
    release.notify_one();
    stopping.await.unwrap().unwrap();
    // The engine may take one or two more before it sees the stop; every other element must be
    // back at the head of the list, in order: nothing lost, nothing twice.
    let mut handled = vec![Bytes::from_static(b"0")];
    while let Ok(seen) = run.seen.try_recv() {
        handled.push(seen.body);
    }
    let back: Vec<Bytes> = lrange(&c, &list)
        .await
        .iter()
        .map(|b| brook_redis::envelope::decode(b).0)
        .collect();
    assert_eq!(
        [handled.clone(), back].concat(),
        ["0", "1", "2", "3", "4"]
            .map(|s| Bytes::from(s.to_owned()))
            .to_vec(),
        "handled {handled:?}; the rest must be back at the head, in order"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_consumption_resumes_after_a_reconnect() {
    let (list, broker) = (unique("list-reconnect"), RedisBroker::new(URL));
    let proxy = brook_runtime::proxy::TcpProxy::start(ADDR.parse().unwrap())
        .await
        .unwrap();
    let sub_broker = RedisBroker::new(format!("redis://{}", proxy.addr()));
    let mut run = start(
        sub_broker,
        subscription(vec![("list", list.clone().into())]),
        WAIT,
        |_| Act::Ok,
    )
    .await;
    broker
        .publish(&"one", &format!("list:{list}"))
        .await
        .unwrap();
    assert_eq!(run.next().await.body, Bytes::from_static(b"one"));
    // BLPOP is at-most-once: an element popped for a connection that is dying is lost with the
    // reply. So publish once the client is back, on a new connection.
    let before = proxy.connections_accepted();
    proxy.cut();
    proxy.restore();
    eventually("the client reconnected", || async {
        proxy.connections_accepted() > before
    })
    .await;
    broker
        .publish(&"two", &format!("list:{list}"))
        .await
        .unwrap();
    assert_eq!(run.next().await.body, Bytes::from_static(b"two"));
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_list_element_is_gone_whatever_the_policy_since_lists_do_not_acknowledge() {
    let (list, c, broker) = (unique("list-fail"), raw().await, RedisBroker::new(URL));
    // RejectOnError is the default (FastStream's); on a list it can only log.
    let mut run = start(
        broker.clone(),
        subscription(vec![("list", list.clone().into())]),
        WAIT,
        |_| Act::Fail,
    )
    .await;
    broker.publish(&"x", &format!("list:{list}")).await.unwrap();
    broker.publish(&"y", &format!("list:{list}")).await.unwrap();
    assert_eq!(run.next().await.body, Bytes::from_static(b"x"));
    assert_eq!(
        run.next().await.body,
        Bytes::from_static(b"y"),
        "the failure did not stop the consumer"
    );
    run.stop().await;
    assert_eq!(
        llen(&c, &list).await,
        0,
        "nothing is put back after a failure"
    );
}

/// AckFirst on a list with LPOP COUNT and handlers running concurrently: a graceful stop hands
/// out nothing more; what was popped and queued for a handler is handled, what was popped but
/// not handed out is back at the head of the list, in order. Nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_under_ack_first_loses_no_popped_list_element() {
    let (list, c, broker) = (unique("list-ackfirst"), raw().await, RedisBroker::new(URL));
    for i in 0..10u32 {
        broker.publish(&i, &format!("list:{list}")).await.unwrap();
    }
    let release = Arc::new(Notify::new());
    let r = release.clone();
    let sub = subscription(vec![
        ("list", list.clone().into()),
        ("batch", 10u64.into()),
        ("concurrency", 2u64.into()),
        ("ack_policy", AckPolicy::AckFirst.into()),
    ]);
    let mut run = start(broker.clone(), sub, WAIT, move |s| {
        if s.body == Bytes::from_static(b"0") {
            Act::WaitThenOk(r.clone())
        } else {
            Act::SleepThenOk(std::time::Duration::from_millis(200))
        }
    })
    .await;
    let mut handled = vec![run.next().await.body, run.next().await.body];
    assert_eq!(llen(&c, &list).await, 0, "one LPOP took all ten");
    let app = run.app.take().unwrap();
    let stopping = tokio::spawn(app.stop());
    release.notify_one();
    stopping.await.unwrap().unwrap();
    while let Ok(seen) = run.seen.try_recv() {
        handled.push(seen.body);
    }
    handled.sort_by_key(|b| std::str::from_utf8(b).unwrap().parse::<u32>().unwrap());
    let back: Vec<Bytes> = lrange(&c, &list)
        .await
        .iter()
        .map(|b| brook_redis::envelope::decode(b).0)
        .collect();
    assert!(
        !back.is_empty(),
        "the stop came while elements were buffered"
    );
    assert_eq!(
        [handled.clone(), back].concat(),
        (0..10u32)
            .map(|i| Bytes::from(i.to_string()))
            .collect::<Vec<_>>(),
        "handled {handled:?}; the rest must be back at the head, in order"
    );
}
