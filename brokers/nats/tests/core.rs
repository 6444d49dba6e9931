//! Core NATS subjects on 127.0.0.1:4222: delivery with headers, queue groups, wildcards, and
//! the no-op settlement (nothing to acknowledge).

mod common;

use std::collections::HashSet;
use std::time::Duration;

use brook_nats::{NatsBroker, NatsMessage, PublishMode};
use brook_runtime::{
    AckPolicy, App, Broker, BrokerKind, Consumer, Message, Outgoing, Subscription,
};
use bytes::Bytes;
use common::{fresh, next_seen, scripted, Act, URL, WAIT};

fn core_sub(subject: &str, group: Option<&str>) -> Subscription {
    let mut b = Subscription::new(BrokerKind::Nats, "core").arg("subject", subject.to_owned());
    if let Some(g) = group {
        b = b.arg("queue_group", g.to_owned());
    }
    b.build().expect("valid")
}

async fn next(consumer: &mut brook_nats::NatsConsumer) -> Message {
    tokio::time::timeout(WAIT, consumer.next())
        .await
        .expect("a message within the bound")
        .expect("consumer alive")
        .expect("no consumer error")
}

#[tokio::test]
async fn core_delivers_payload_and_faststream_headers() {
    let subject = fresh("brook.core.headers").replace('_', ".");
    let broker = NatsBroker::new(URL);
    let mut consumer = broker.subscribe(&core_sub(&subject, None)).await.unwrap();
    broker.client().await.unwrap().flush().await.unwrap();

    let out = Outgoing::encode(&serde_json::json!({"id": 7}), subject.clone())
        .unwrap()
        .with_correlation_id("corr-1")
        .with_reply_to("answers.here")
        .with_header("x-tenant", "acme");
    broker.publish_message(out).await.unwrap();

    let msg = next(&mut consumer).await;
    assert_eq!(&msg.body()[..], br#"{"id":7}"#);
    assert_eq!(msg.content_type(), Some("application/json"));
    assert_eq!(msg.correlation_id(), Some("corr-1"));
    assert_eq!(msg.reply_to(), Some("answers.here"));
    assert_eq!(msg.headers().get("x-tenant"), Some("acme"));
    assert_eq!(
        msg.delivery_count(),
        None,
        "core NATS has no delivery count"
    );
    let raw = msg.raw::<NatsMessage>().expect("NatsMessage");
    assert!(!raw.is_jetstream());
    assert_eq!(raw.subject(), subject);
    // FastStream's core reply: the NATS reply subject itself.
    assert_eq!(raw.reply(), Some("answers.here"));
    // Settling is a no-op that succeeds (nothing to acknowledge).
    msg.ack().await.unwrap();
    consumer.close().await.unwrap();
}

#[tokio::test]
async fn queue_group_members_share_and_plain_subscribers_see_all() {
    let subject = fresh("brook.core.queue").replace('_', ".");
    let broker =
        NatsBroker::with_config(brook_nats::NatsConfig::new(URL).publish_mode(PublishMode::Core));
    let mut a = broker
        .subscribe(&core_sub(&subject, Some("workers")))
        .await
        .unwrap();
    let mut b = broker
        .subscribe(&core_sub(&subject, Some("workers")))
        .await
        .unwrap();
    let mut all = broker.subscribe(&core_sub(&subject, None)).await.unwrap();
    broker.client().await.unwrap().flush().await.unwrap();

    const N: usize = 40;
    for i in 0..N {
        broker.publish(&format!("m{i}"), &subject).await.unwrap();
    }
    // The fan-out subscriber gets every message.
    let mut fan = Vec::new();
    for _ in 0..N {
        fan.push(next(&mut all).await.body().clone());
    }
    assert_eq!(fan.len(), N);

    // The group members get each message exactly once between them.
    let mut got: Vec<Bytes> = Vec::new();
    let (mut from_a, mut from_b) = (0, 0);
    while got.len() < N {
        tokio::select! {
            m = next(&mut a) => { from_a += 1; got.push(m.body().clone()); }
            m = next(&mut b) => { from_b += 1; got.push(m.body().clone()); }
        }
    }
    let distinct: HashSet<_> = got.iter().collect();
    assert_eq!(distinct.len(), N, "each message once across the group");
    assert!(
        from_a > 0 && from_b > 0,
        "both members got work: {from_a} / {from_b}"
    );
    for c in [a, b, all] {
        c.close().await.unwrap();
    }
}

#[tokio::test]
async fn wildcards_match_tokens() {
    let base = fresh("brook.core.wild").replace('_', ".");
    let broker = NatsBroker::new(URL);
    let mut star = broker
        .subscribe(&core_sub(&format!("{base}.*.created"), None))
        .await
        .unwrap();
    let mut tail = broker
        .subscribe(&core_sub(&format!("{base}.>"), None))
        .await
        .unwrap();
    broker.client().await.unwrap().flush().await.unwrap();

    for s in ["a.created", "b.deleted", "c.created", "d.e.created"] {
        broker.publish(s, &format!("{base}.{s}")).await.unwrap();
    }
    broker
        .publish("end", &format!("{base}.z.created"))
        .await
        .unwrap();

    let mut star_got = Vec::new();
    loop {
        let m = next(&mut star).await;
        let body = String::from_utf8(m.body().to_vec()).unwrap();
        let subject = m.raw::<NatsMessage>().unwrap().subject().to_owned();
        assert!(subject.ends_with(&body) || body == "end");
        if body == "end" {
            break;
        }
        star_got.push(body);
    }
    assert_eq!(star_got, vec!["a.created", "c.created"]);
    let mut tail_got = Vec::new();
    for _ in 0..5 {
        tail_got.push(String::from_utf8(next(&mut tail).await.body().to_vec()).unwrap());
    }
    assert_eq!(
        tail_got,
        vec!["a.created", "b.deleted", "c.created", "d.e.created", "end"]
    );
}

#[tokio::test]
async fn an_app_consumes_a_core_subject_and_ack_first_is_accepted() {
    let subject = fresh("brook.core.app").replace('_', ".");
    let sub = Subscription::new(BrokerKind::Nats, "core_app")
        .arg("subject", subject.clone())
        .arg("ack_policy", AckPolicy::AckFirst);
    let (handler, mut seen) = scripted(sub, |_| Act::Fail);
    let broker = NatsBroker::new(URL);
    let running = App::new(broker.clone())
        .subscribe(handler)
        .start()
        .await
        .unwrap();
    // The subscription exists once start() returned; flush this connection's SUB first.
    broker.client().await.unwrap().flush().await.unwrap();
    broker.publish("one", &subject).await.unwrap();
    broker.publish("two", &subject).await.unwrap();
    assert_eq!(&next_seen(&mut seen).await.body[..], b"one");
    // A failing handler does not stop the consumer (and nothing is redelivered: core NATS).
    assert_eq!(&next_seen(&mut seen).await.body[..], b"two");
    common::assert_quiet(&mut seen, Duration::from_millis(300)).await;
    running.stop().await.unwrap();
}

#[test]
fn core_subjects_refuse_policies_that_need_acknowledgement() {
    for policy in [AckPolicy::NackOnError, AckPolicy::Manual] {
        let err = Subscription::new(BrokerKind::Nats, "h")
            .arg("subject", "a.b")
            .arg("ack_policy", policy)
            .build()
            .unwrap_err()
            .to_string();
        assert!(err.contains("NATS core subject `a.b`"), "{err}");
    }
}
