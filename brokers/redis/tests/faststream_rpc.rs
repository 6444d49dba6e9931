//! Request/reply with the real FastStream 0.7.8 (`brook_runtime::interop`): FastStream's
//! `broker.request(...)` gets brook handlers' replies (channel, list, stream), and brook's
//! `request()` gets a FastStream subscriber's reply, with correlation ids and non-ASCII
//! header values intact both ways.

mod common;

use std::time::Duration;

use brook::prelude::*;
use brook::redis::subscriber;
use brook_redis::RedisBroker;
use brook_runtime::interop::FastStream;
use common::*;
use serde::{Deserialize, Serialize};
use serde_json::json;

/// FastStream's Python starts slowly; this bounds each line it prints.
const PY: Duration = Duration::from_secs(30);

#[derive(Debug, Deserialize, Serialize)]
struct Ask {
    n: u64,
}

#[derive(Debug, Deserialize, Serialize)]
struct Answer {
    squared: u64,
}

fn answer(ask: Ask, msg: &Message) -> Publish<Answer> {
    Publish::new(Answer {
        squared: ask.n * ask.n,
    })
    .header("x-reply-city", "Zürich-é")
    // The request's non-ASCII header as brook read it, sent back.
    .header(
        "x-seen-city",
        msg.headers().get("x-city").unwrap_or("<none>"),
    )
}

#[subscriber(channel = _)]
async fn on_channel(ask: Ask, msg: &Message) -> Publish<Answer> {
    answer(ask, msg)
}

#[subscriber(list = _)]
async fn on_list(ask: Ask, msg: &Message) -> Publish<Answer> {
    answer(ask, msg)
}

#[subscriber(stream = _, group = _, ack_policy = NackOnError)]
async fn on_stream(ask: Ask, msg: &Message) -> anyhow::Result<Publish<Answer>> {
    Ok(answer(ask, msg))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faststream_requests_get_brook_s_replies_on_a_channel_a_list_and_a_stream() {
    let (channel, list, stream) = (unique("fsrpc-ch"), unique("fsrpc-list"), unique("fsrpc-st"));
    let broker = RedisBroker::new(URL);
    let app = tokio::time::timeout(
        WAIT,
        App::new(broker.clone())
            .subscribe(on_channel.channel(&channel))
            .subscribe(on_list.list(&list))
            .subscribe(on_stream.stream(&stream).group("fs"))
            .start(),
    )
    .await
    .expect("starts in time")
    .expect("starts");
    let mut fs = FastStream::spawn(
        include_str!("faststream_request.py"),
        &[&channel, &list, &stream],
    );
    for (to, n) in [("channel", 3u64), ("list", 4), ("stream", 5)] {
        let line = fs.next(PY).await;
        assert_eq!(line["to"], to, "{line}");
        let body: serde_json::Value = serde_json::from_str(line["body"].as_str().unwrap()).unwrap();
        assert_eq!(body, json!({"squared": n * n}), "{to}");
        assert_eq!(line["correlation_id"], format!("fs-cid-{n}"), "{to}");
        assert_eq!(line["headers"]["x-reply-city"], "Zürich-é", "{to}");
        assert_eq!(line["headers"]["x-seen-city"], "Zürich", "{to}");
        assert_eq!(
            line["headers"]["correlation_id"],
            format!("fs-cid-{n}"),
            "{to}"
        );
    }
    fs.finish(PY).await;
    tokio::time::timeout(WAIT * 2, app.stop())
        .await
        .expect("stops in time")
        .expect("stops");
    let c = raw().await;
    del(&c, &[&list, &stream]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn brook_s_request_gets_a_faststream_subscriber_s_reply() {
    let (channel, done) = (unique("fsrpc-serve"), unique("fsrpc-done"));
    let mut fs = FastStream::spawn(include_str!("faststream_respond.py"), &[&channel, &done]);
    assert_eq!(fs.next(PY).await, json!({"ready": true}));
    let broker = RedisBroker::new(URL);
    let reply = broker
        .request_message(
            Outgoing::encode(&json!({"n": 21}), channel.as_str())
                .unwrap()
                .with_correlation_id("brook-cid-1"),
            WAIT,
        )
        .await
        .expect("FastStream replies");
    let body: serde_json::Value = serde_json::from_slice(reply.body()).unwrap();
    assert_eq!(body, json!({"doubled": 42}));
    assert_eq!(reply.correlation_id(), Some("brook-cid-1"));
    assert_eq!(reply.headers().get("x-city"), Some("Zürich"));
    // FastStream saw the request with brook's correlation id and reply channel.
    let handled = fs.next(PY).await;
    assert_eq!(handled["handled"], json!({"n": 21}));
    assert_eq!(handled["correlation_id"], "brook-cid-1");
    assert_eq!(handled["reply_to"].as_str(), Some(reply.topic()));
    broker.publish("done", &done).await.unwrap();
    fs.finish(PY).await;
    broker.close().await.unwrap();
}
