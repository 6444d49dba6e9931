//! Request/reply with the real FastStream 0.7.8 (aio-pika) on the local RabbitMQ, both ways:
//! FastStream's `broker.request(...)` answered by a brook handler, and brook's `request()`
//! answered by a FastStream subscriber. Both use direct reply-to (`amq.rabbitmq.reply-to`).
//! The Python scripts print JSON lines the test reads; queue names are fresh per test.

mod common;

use std::time::Duration;

use brook::prelude::*;
use brook::rabbit::{subscriber, RabbitBroker};
use brook_runtime::interop::FastStream;
use common::{fresh, Admin, URL};
use serde::{Deserialize, Serialize};
use serde_json::json;

const SCRIPT_WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, Deserialize, Serialize)]
struct Ask {
    n: u64,
}

#[derive(Debug, Deserialize, Serialize)]
struct Answer {
    n: u64,
    by: String,
}

/// Answers with a header of its own and one echoing the request's; the key it sets is
/// ignored for a reply, which always goes through the default exchange to `reply_to`.
#[subscriber(queue = _, declare = false)]
async fn double(ask: Ask, msg: &Message) -> Publish<Answer> {
    let note = msg.headers().get("x-note").unwrap_or("(none)").to_owned();
    Publish::new(Answer {
        n: ask.n * 2,
        by: "brook".into(),
    })
    .header("x-echo", note)
    .header("x-brook", "réponse ✓")
    .key("not-for-replies")
}

#[tokio::test]
async fn faststream_s_request_gets_brook_s_reply() {
    let admin = Admin::new().await;
    let queue = fresh("fs-rpc-brook");
    admin.queue(&queue, None, None).await;
    let broker = RabbitBroker::new(URL);
    let app = App::new(broker.clone())
        .subscribe(double.queue(&queue))
        .start()
        .await
        .expect("App starts");

    let correlation_id = fresh("fs-ask");
    let mut fs = FastStream::spawn(
        include_str!("faststream_request.py"),
        &[&queue, &correlation_id],
    );
    let reply = fs.next(SCRIPT_WAIT).await;
    fs.finish(SCRIPT_WAIT).await;

    let body: serde_json::Value = serde_json::from_str(reply["body"].as_str().unwrap()).unwrap();
    assert_eq!(body, json!({"n": 42, "by": "brook"}), "{reply}");
    assert_eq!(reply["decoded"], json!({"n": 42, "by": "brook"}), "{reply}");
    assert_eq!(reply["correlation_id"], json!(correlation_id), "{reply}");
    assert_eq!(reply["content_type"], json!("application/json"), "{reply}");
    assert_eq!(
        reply["headers"]["x-echo"],
        json!("café ünïcode ✓"),
        "{reply}"
    );
    assert_eq!(reply["headers"]["x-brook"], json!("réponse ✓"), "{reply}");

    app.stop().await.unwrap();
    admin.wait_depth(&queue, 0).await;
    broker.close().await.unwrap();
}

#[tokio::test]
async fn brook_s_request_gets_faststream_s_reply() {
    let queue = fresh("fs-rpc-faststream");
    let mut fs = FastStream::spawn(include_str!("faststream_responder.py"), &[&queue]);
    assert_eq!(fs.next(SCRIPT_WAIT).await, json!({"ready": true}));

    let broker = RabbitBroker::new(URL);
    broker.connect().await.unwrap();
    let correlation_id = fresh("brook-ask");
    let request = Outgoing::encode(&Ask { n: 41 }, &queue)
        .unwrap()
        .with_correlation_id(&correlation_id);
    let reply = broker
        .request_message(request, Duration::from_secs(10))
        .await
        .unwrap();

    let seen = fs.next(SCRIPT_WAIT).await;
    assert_eq!(seen["got"], json!({"n": 41}), "{seen}");
    assert_eq!(seen["correlation_id"], json!(correlation_id), "{seen}");
    let reply_to = seen["reply_to"].as_str().unwrap_or_default();
    assert!(
        reply_to.starts_with("amq.rabbitmq.reply-to."),
        "FastStream saw reply_to {reply_to}"
    );

    let answer: Answer = serde_json::from_slice(reply.body()).unwrap();
    assert_eq!(answer.n, 42);
    assert_eq!(answer.by, "faststream");
    assert_eq!(reply.correlation_id(), Some(correlation_id.as_str()));
    assert_eq!(
        reply.headers().get("content-type"),
        Some("application/json")
    );

    broker
        .publish(&json!({"stop": true}), &queue)
        .await
        .unwrap();
    fs.finish(SCRIPT_WAIT).await;
    broker.close().await.unwrap();
}
