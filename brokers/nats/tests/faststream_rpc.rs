//! FastStream 0.7.8 (the real one, `brook_runtime::interop`) and brook doing request/reply
//! with each other over core NATS on 127.0.0.1:4222: FastStream's `broker.request` answered by
//! a brook handler, and brook's `Broker::request` answered by a FastStream subscriber.

mod common;

use std::time::Duration;

use brook::nats::NatsBroker;
use brook::output::Publish;
use brook::prelude::*;
use brook::Headers;
use brook_runtime::interop::FastStream;
use common::{fresh, URL, WAIT};
use serde::{Deserialize, Serialize};
use serde_json::json;

const REQUESTER: &str = include_str!("faststream_requests_brook.py");
const RESPONDER: &str = include_str!("faststream_responder.py");
/// Python start-up plus FastStream's import.
const PYTHON: Duration = Duration::from_secs(30);

#[derive(Deserialize)]
struct Req {
    n: u64,
}

#[derive(Serialize)]
struct Tripled {
    tripled: u64,
    from: String,
}

#[brook::nats::subscriber(subject = _)]
async fn triple(req: Req, headers: &Headers) -> Publish<Tripled> {
    Publish::new(Tripled {
        tripled: req.n * 3,
        from: headers.get("x-from").unwrap_or_default().to_owned(),
    })
    .header("x-greeting", "grüße ☕ café")
}

#[tokio::test]
async fn faststream_request_gets_brook_s_reply() {
    let subject = fresh("brook.fs.rpc").replace('_', ".");
    let broker = NatsBroker::new(URL);
    let running = App::new(broker.clone())
        .subscribe(triple.subject(&subject))
        .start()
        .await
        .unwrap();
    let mut fs = FastStream::spawn(REQUESTER, &[&subject]);
    let reply = fs.next(PYTHON).await;
    assert_eq!(
        reply["body"],
        json!({"tripled": 18, "from": "faststream"}),
        "{reply}"
    );
    assert_eq!(reply["correlation_id"], "fs-corr-1", "{reply}");
    assert_eq!(reply["content_type"], "application/json", "{reply}");
    assert_eq!(reply["headers"]["x-greeting"], "grüße ☕ café", "{reply}");
    fs.finish(WAIT).await;
    running.stop().await.unwrap();
    broker.close().await.unwrap();
}

#[tokio::test]
async fn brook_request_gets_faststream_s_reply() {
    let subject = fresh("brook.fs.responder").replace('_', ".");
    let mut fs = FastStream::spawn(RESPONDER, &[&subject]);
    assert_eq!(fs.next(PYTHON).await, json!({"ready": true}));
    let broker = NatsBroker::new(URL);
    let reply = broker
        .request_message(
            brook::Outgoing::encode(&json!({"n": 21}), subject.clone())
                .unwrap()
                .with_correlation_id("brook-corr-1"),
            WAIT,
        )
        .await
        .unwrap();
    let body: serde_json::Value = serde_json::from_slice(reply.body()).unwrap();
    assert_eq!(body, json!({"doubled": 42, "seen": "brook-corr-1"}));
    assert_eq!(reply.correlation_id(), Some("brook-corr-1"));
    assert_eq!(reply.content_type(), Some("application/json"));
    // What FastStream saw: brook's correlation id, and the reply subject as its reply_to.
    let seen = fs.next(WAIT).await;
    assert_eq!(seen["body"], json!({"n": 21}), "{seen}");
    assert_eq!(seen["correlation_id"], "brook-corr-1", "{seen}");
    assert_eq!(seen["reply_to"], reply.topic(), "{seen}");
    broker
        .publish("done", &format!("{subject}.done"))
        .await
        .unwrap();
    fs.finish(WAIT).await;
    broker.close().await.unwrap();
}
