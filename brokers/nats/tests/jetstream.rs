//! JetStream specifics on 127.0.0.1:4222, each observing the server's state afterwards
//! (consumer info, stream contents), beyond what the conformance suite covers.

mod common;

use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, stream};
use brook_nats::{NatsBroker, NatsMessage};
use brook_runtime::ArgValue;
use brook_runtime::{AckPolicy, App, Broker, BrokerError, Outgoing};
use common::{
    assert_quiet, consumer_info, drain_durable, js_builder, js_sub, names, next_seen, scripted,
    Act, URL,
};

#[tokio::test]
async fn publish_waits_for_the_stream_and_headers_reach_the_handler() {
    let n = names("js_publish");
    let _cleanup = common::cleanup(&[&n.stream]);
    let broker = NatsBroker::new(URL);
    let sub = js_builder(&n, &[("ack_policy", AckPolicy::Ack.into())]);
    let (handler, mut seen) = scripted(sub, |_| Act::Succeed);
    let running = App::new(broker.clone())
        .subscribe(handler)
        .start()
        .await
        .unwrap();

    let out = Outgoing::encode(&serde_json::json!({"n": 1}), n.subject.clone())
        .unwrap()
        .with_correlation_id("c-42")
        .with_reply_to("replies.here");
    broker.publish_message(out).await.unwrap();
    // Auto mode published through JetStream and waited for its ack: the stream has it now.
    let js = jetstream::new(common::client().await);
    let info = js
        .get_stream(&n.stream)
        .await
        .unwrap()
        .get_info()
        .await
        .unwrap();
    assert_eq!(info.state.messages, 1);

    let got = next_seen(&mut seen).await;
    assert_eq!(&got.body[..], br#"{"n":1}"#);
    assert_eq!(got.headers.get("content-type"), Some("application/json"));
    assert_eq!(got.headers.get("correlation_id"), Some("c-42"));
    // On JetStream, reply_to travels as a header (as FastStream does).
    assert_eq!(got.headers.get("reply_to"), Some("replies.here"));
    assert_eq!(got.delivery_count, Some(1));
    assert_eq!(got.stream_seq, Some(1));
    running.stop().await.unwrap();

    let c = consumer_info(&js, &n.stream, &n.durable).await;
    assert_eq!((c.num_pending, c.num_ack_pending), (0, 0));
    assert_eq!(c.ack_floor.stream_sequence, 1, "acked");

    // publish_jetstream reports the stream and sequence.
    let ack = broker
        .publish_jetstream(Outgoing::new(n.subject.clone(), "x"))
        .await
        .unwrap();
    assert_eq!((ack.stream.as_str(), ack.sequence), (n.stream.as_str(), 2));
    // message_id becomes Nats-Msg-Id: the stream stores a re-sent message once.
    for _ in 0..2 {
        broker
            .publish_message(
                Outgoing::new(n.subject.clone(), "once").with_header("message_id", "m-1"),
            )
            .await
            .unwrap();
    }
    let info = js
        .get_stream(&n.stream)
        .await
        .unwrap()
        .get_info()
        .await
        .unwrap();
    assert_eq!(info.state.messages, 3, "x, and \"once\" stored once");
    broker.close().await.unwrap();
}

#[tokio::test]
async fn in_progress_keeps_a_long_handler_from_being_redelivered() {
    let n = names("js_wpi");
    let _cleanup = common::cleanup(&[&n.stream]);
    let broker = NatsBroker::new(URL);
    let sub = js_builder(
        &n,
        &[
            ("ack_policy", AckPolicy::NackOnError.into()),
            ("ack_wait_ms", 700u64.into()),
        ],
    );
    let (handler, mut seen) = scripted(sub, |_| Act::WorkLong {
        total: Duration::from_millis(2500),
        every: Duration::from_millis(250),
    });
    let running = App::new(broker.clone())
        .subscribe(handler)
        .start()
        .await
        .unwrap();
    broker.publish("long", &n.subject).await.unwrap();
    assert_eq!(next_seen(&mut seen).await.delivery_count, Some(1));
    // Far longer than ack_wait: without +WPI it would come back meanwhile.
    assert_quiet(&mut seen, Duration::from_millis(3000)).await;
    running.stop().await.unwrap();
    let js = jetstream::new(common::client().await);
    let c = consumer_info(&js, &n.stream, &n.durable).await;
    assert_eq!(c.num_redelivered, 0, "+WPI extended the ack deadline");
    assert_eq!(c.ack_floor.stream_sequence, 1);
    assert_eq!(
        drain_durable(&js, &n.stream, &n.durable)
            .await
            .unwrap()
            .len(),
        0
    );
}

#[tokio::test]
async fn jetstream_max_deliver_stops_redelivery_on_the_server() {
    let n = names("js_maxdeliver");
    let _cleanup = common::cleanup(&[&n.stream]);
    let broker = NatsBroker::new(URL);
    let sub = js_builder(
        &n,
        &[
            ("ack_policy", AckPolicy::NackOnError.into()),
            ("max_deliver", 2u64.into()),
        ],
    );
    let (handler, mut seen) = scripted(sub, |_| Act::Fail);
    let running = App::new(broker.clone())
        .subscribe(handler)
        .start()
        .await
        .unwrap();
    broker.publish("poison", &n.subject).await.unwrap();
    assert_eq!(next_seen(&mut seen).await.delivery_count, Some(1));
    assert_eq!(next_seen(&mut seen).await.delivery_count, Some(2));
    assert_quiet(&mut seen, Duration::from_millis(1000)).await;
    running.stop().await.unwrap();
    let js = jetstream::new(common::client().await);
    let c = consumer_info(&js, &n.stream, &n.durable).await;
    assert_eq!(c.config.max_deliver, 2);
    assert_eq!(c.delivered.stream_sequence, 1);
    // Two deliveries in all, and none since the quiet window began: the server gave up.
    // (num_pending would be 0 either way: it counts messages never delivered.)
    assert_eq!(c.delivered.consumer_sequence, 2, "{c:?}");
}

#[tokio::test]
async fn a_terminated_message_is_not_redelivered_and_the_ack_floor_moves() {
    let n = names("js_term");
    let _cleanup = common::cleanup(&[&n.stream]);
    let broker = NatsBroker::new(URL);
    let sub = js_builder(&n, &[]); // default policy: RejectOnError
    let (handler, mut seen) = scripted(sub, |m| {
        if &m.body()[..] == b"bad" {
            Act::Fail
        } else {
            Act::Succeed
        }
    });
    let running = App::new(broker.clone())
        .subscribe(handler)
        .start()
        .await
        .unwrap();
    broker.publish("bad", &n.subject).await.unwrap();
    broker.publish("good", &n.subject).await.unwrap();
    assert_eq!(&next_seen(&mut seen).await.body[..], b"bad");
    assert_eq!(&next_seen(&mut seen).await.body[..], b"good");
    running.stop().await.unwrap();
    let js = jetstream::new(common::client().await);
    assert!(drain_durable(&js, &n.stream, &n.durable)
        .await
        .unwrap()
        .is_empty());
    let c = consumer_info(&js, &n.stream, &n.durable).await;
    assert_eq!(
        c.ack_floor.stream_sequence, 2,
        "+TERM and +ACK both moved the floor"
    );
    assert_eq!(c.num_redelivered, 0);
    // The stream still holds the terminated message (JetStream has no dead-letter place).
    let s = js.get_stream(&n.stream).await.unwrap();
    assert_eq!(&s.get_raw_message(1).await.unwrap().payload[..], b"bad");
}

#[tokio::test]
async fn the_nats_message_argument_carries_jetstream_metadata() {
    let n = names("js_raw");
    let _cleanup = common::cleanup(&[&n.stream]);
    let broker = NatsBroker::new(URL);
    let sub = js_builder(&n, &[("ack_policy", AckPolicy::Manual.into())]);
    let consumer_name = n.durable.clone();
    let stream_name = n.stream.clone();
    let (handler, mut seen) = scripted(sub, move |m| {
        let raw = m.raw::<NatsMessage>().expect("NatsMessage");
        let info = raw.info().expect("JetStream info");
        assert_eq!(
            (info.stream, info.consumer),
            (stream_name.as_str(), consumer_name.as_str())
        );
        assert!(raw.is_jetstream());
        Act::Ack
    });
    let running = App::new(broker.clone())
        .subscribe(handler)
        .start()
        .await
        .unwrap();
    broker.publish("m", &n.subject).await.unwrap();
    assert_eq!(next_seen(&mut seen).await.stream_seq, Some(1));
    running.stop().await.unwrap();
    let js = jetstream::new(common::client().await);
    assert_eq!(
        consumer_info(&js, &n.stream, &n.durable)
            .await
            .ack_floor
            .stream_sequence,
        1
    );
}

async fn existing_consumer(n: &common::Names, max_ack_pending: i64) -> jetstream::Context {
    let js = jetstream::new(common::client().await);
    let s = js
        .create_stream(stream::Config {
            name: n.stream.clone(),
            subjects: vec![n.subject.clone()],
            ..Default::default()
        })
        .await
        .unwrap();
    s.create_consumer(pull::Config {
        durable_name: Some(n.durable.clone()),
        name: Some(n.durable.clone()),
        filter_subject: n.subject.clone(),
        max_ack_pending,
        ..Default::default()
    })
    .await
    .unwrap();
    js
}

#[tokio::test]
async fn an_existing_consumer_that_differs_is_refused_not_reconfigured() {
    let n = names("js_mismatch");
    let _cleanup = common::cleanup(&[&n.stream]);
    let js = existing_consumer(&n, 10).await;
    let broker = NatsBroker::new(URL);
    let err = broker
        .subscribe(&js_sub(
            &n,
            &[
                ("max_ack_pending", 20u64.into()),
                ("deliver_policy", ArgValue::Ident("new".into())),
            ],
        ))
        .await
        .err()
        .expect("refused");
    let text = err.to_string();
    assert!(matches!(err, BrokerError::Invalid { .. }), "{err:?}");
    assert!(text.contains("max_ack_pending is 10"), "{text}");
    assert!(text.contains("deliver_policy"), "{text}");
    assert!(text.contains("never reconfigures"), "{text}");
    let c = consumer_info(&js, &n.stream, &n.durable).await;
    assert_eq!(c.config.max_ack_pending, 10, "left as it was");

    // The same settings (or none) are accepted, and the consumer is used as it is.
    broker
        .subscribe(&js_sub(&n, &[("max_ack_pending", 10u64.into())]))
        .await
        .expect("matching settings");
    broker
        .subscribe(&js_sub(&n, &[]))
        .await
        .expect("no settings");
    // A different filter subject is refused too.
    let mut other = common::names("js_mismatch_other");
    other.stream = n.stream.clone();
    let err = broker
        .subscribe(&js_sub(&other, &[]))
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("filter subject"), "{err}");
}

#[tokio::test]
async fn create_false_refuses_missing_streams_and_consumers() {
    let n = names("js_nocreate");
    let _cleanup = common::cleanup(&[&n.stream]);
    let broker = NatsBroker::new(URL);
    let err = broker
        .subscribe(&js_sub(&n, &[("create", false.into())]))
        .await
        .err()
        .expect("refused");
    assert!(
        err.to_string()
            .contains("does not exist and create = false"),
        "{err}"
    );

    let js = existing_consumer(&n, 0).await;
    let mut missing = common::names("js_nocreate");
    missing.stream = n.stream.clone();
    missing.subject = n.subject.clone();
    missing.durable = "other".into();
    let err = broker
        .subscribe(&js_sub(&missing, &[("create", false.into())]))
        .await
        .err()
        .expect("refused");
    assert!(
        err.to_string().contains("consumer `other` does not exist"),
        "{err}"
    );
    let mut names = js.get_stream(&n.stream).await.unwrap().consumer_names();
    use futures_util::StreamExt as _;
    let mut all = Vec::new();
    while let Some(name) = names.next().await {
        all.push(name.unwrap());
    }
    assert_eq!(all, vec![n.durable.clone()], "nothing was created");
}

#[tokio::test]
async fn an_ephemeral_consumer_is_used_without_a_durable() {
    let n = names("js_ephemeral");
    let _cleanup = common::cleanup(&[&n.stream]);
    let broker = NatsBroker::new(URL);
    let sub = brook_runtime::Subscription::new(brook_runtime::BrokerKind::Nats, "eph")
        .arg("subject", n.subject.clone())
        .arg("stream", n.stream.clone())
        .arg("deliver_policy", ArgValue::Ident("all".into()));
    let (handler, mut seen) = scripted(sub, |_| Act::Succeed);
    let running = App::new(broker.clone())
        .subscribe(handler)
        .start()
        .await
        .unwrap();
    broker.publish("e", &n.subject).await.unwrap();
    assert_eq!(&next_seen(&mut seen).await.body[..], b"e");
    running.stop().await.unwrap();
    // One consumer on the stream, without a durable name, and it acked the message.
    use futures_util::StreamExt as _;
    let js = jetstream::new(common::client().await);
    let mut consumers = js.get_stream(&n.stream).await.unwrap().consumers();
    let mut all = Vec::new();
    while let Some(info) = consumers.next().await {
        all.push(info.unwrap());
    }
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(all[0].config.durable_name, None);
    assert_eq!(all[0].ack_floor.stream_sequence, 1);
    assert_eq!(all[0].num_ack_pending, 0);
}

#[tokio::test]
async fn pull_request_limits_are_checked_at_subscribe_and_refusals_surface_as_errors() {
    use brook_runtime::Consumer as _;
    let n = names("js_maxbatch");
    let _cleanup = common::cleanup(&[&n.stream]);
    let js = existing_consumer(&n, 0).await;
    let stream = js.get_stream(&n.stream).await.unwrap();
    let broker = NatsBroker::new(URL);
    let mut consumer = broker
        .subscribe(&js_sub(&n, &[("batch", 10u64.into())]))
        .await
        .expect("no limits yet");

    // Someone lowers the consumer's max_batch under the running subscriber: the server now
    // refuses every pull request. That must reach the App as an error (bounded), not spin.
    // (Without a create action, the JetStream API's create request updates an existing one.)
    stream
        .create_consumer(pull::Config {
            durable_name: Some(n.durable.clone()),
            name: Some(n.durable.clone()),
            filter_subject: n.subject.clone(),
            max_batch: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        consumer_info(&js, &n.stream, &n.durable)
            .await
            .config
            .max_batch,
        1
    );
    let next = tokio::time::timeout(common::WAIT, consumer.next())
        .await
        .expect("an answer within the bound");
    let err = match next {
        Some(Err(e)) => e.to_string(),
        other => panic!("expected a refusal, got {:?}", other.map(|r| r.map(|_| ()))),
    };
    assert!(err.contains("MaxRequestBatch"), "{err}");
    consumer.close().await.unwrap();

    // A new subscriber asking for more than the consumer allows is refused at subscribe.
    let err = broker
        .subscribe(&js_sub(&n, &[("batch", 10u64.into())]))
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("max_batch is 1"), "{err}");
    broker
        .subscribe(&js_sub(&n, &[("batch", 1u64.into())]))
        .await
        .expect("batch = 1 fits");
    broker.close().await.unwrap();
}

#[tokio::test]
async fn ack_first_is_recorded_by_the_server_before_the_handler_runs() {
    let n = names("js_ackfirst");
    let _cleanup = common::cleanup(&[&n.stream]);
    let broker = NatsBroker::new(URL);
    let sub = js_builder(&n, &[("ack_policy", AckPolicy::AckFirst.into())]);
    // The handler works for a while (and then fails: AckFirst does not care).
    let (handler, mut seen) = scripted(sub, |_| Act::WorkLong {
        total: Duration::from_millis(1500),
        every: Duration::from_millis(500),
    });
    let running = App::new(broker.clone())
        .subscribe(handler)
        .start()
        .await
        .unwrap();
    broker.publish("m", &n.subject).await.unwrap();
    assert_eq!(next_seen(&mut seen).await.delivery_count, Some(1));
    // The handler is still running, and the server has the ack already: the engine only
    // started the handler once the server confirmed the +ACK.
    let js = jetstream::new(common::client().await);
    let c = consumer_info(&js, &n.stream, &n.durable).await;
    assert_eq!(
        (c.ack_floor.stream_sequence, c.num_ack_pending),
        (1, 0),
        "{c:?}"
    );
    running.stop().await.unwrap();
    assert_eq!(
        consumer_info(&js, &n.stream, &n.durable)
            .await
            .num_redelivered,
        0
    );
}

#[tokio::test]
async fn close_hands_back_deliveries_still_on_their_way() {
    use brook_runtime::Consumer as _;
    let n = names("js_close_inflight");
    let _cleanup = common::cleanup(&[&n.stream]);
    let broker = NatsBroker::new(URL);
    // Default ack_wait (30 s): whatever close does not hand back stays pending far longer
    // than this test looks.
    let mut consumer = broker
        .subscribe(&js_sub(&n, &[("batch", 500u64.into())]))
        .await
        .unwrap();
    let body = vec![b'x'; 2000];
    for _ in 0..500 {
        broker
            .publish_message(Outgoing::new(n.subject.clone(), body.clone()))
            .await
            .unwrap();
    }
    // Take one delivery and close while the server is still sending the rest of the batch.
    let first = tokio::time::timeout(common::WAIT, consumer.next())
        .await
        .expect("a delivery")
        .expect("open")
        .expect("no error");
    first.ack().await.unwrap();
    consumer.close().await.unwrap();

    // Everything but the acked one is available to a new reader at once (drain_durable gives
    // up after 10 s, long before ack_wait would bring anything back).
    let js = jetstream::new(common::client().await);
    let rest = drain_durable(&js, &n.stream, &n.durable).await.unwrap();
    assert_eq!(rest.len(), 499);
    broker.close().await.unwrap();
}
