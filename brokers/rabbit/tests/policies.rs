//! Every policy row of RabbitMQ, observed on the broker afterwards: queue depth (passive
//! declare), what a second consumer receives (and its `redelivered` flag), and what the
//! dead-letter queue holds (with RabbitMQ's `x-death` reason).

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use brook_caps::Value;
use brook_rabbit::lapin::types::AMQPValue;
use brook_rabbit::{RabbitBroker, RabbitMessage};
use brook_runtime::{
    AckPolicy, App, Context, FromMessage, Handler, HandlerError, Headers, Message, Outgoing,
    RunningApp, Subscription, SubscriptionBuilder,
};
use bytes::Bytes;
use common::{fresh, Admin, URL, WAIT};
use tokio::sync::{mpsc, Notify};

/// What the handler does on a call.
#[derive(Clone)]
pub enum Act {
    Ok,
    Fail,
    /// Wait until notified, then succeed.
    Wait(Arc<Notify>),
    /// Wait until notified, then fail.
    WaitThenFail(Arc<Notify>),
    /// Return the `brook::Ack` interrupt (the engine acks, under every policy).
    AckInterrupt,
}

/// One handler call, with what RabbitMQ said about the delivery.
#[derive(Clone, Debug)]
pub struct Seen {
    pub body: Bytes,
    pub count: Option<u32>,
    pub redelivered: bool,
    pub no_ack: bool,
    pub headers: Headers,
}

pub struct Scripted {
    sub: SubscriptionBuilder,
    script: Box<dyn Fn(usize) -> Act + Send + Sync>,
    calls: AtomicUsize,
    seen: mpsc::UnboundedSender<Seen>,
}

impl Handler for Scripted {
    type Broker = brook_runtime::kind::Rabbit;

    fn subscription(&self) -> SubscriptionBuilder {
        self.sub.clone()
    }

    async fn call(&self, msg: &Message, ctx: &Context) -> brook_runtime::HandlerResult {
        let done: Result<(), HandlerError> = async move {
            let rabbit = <&RabbitMessage>::from_message(msg, ctx)?;
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            let _ = self.seen.send(Seen {
                body: msg.body().clone(),
                count: msg.delivery_count(),
                redelivered: rabbit.redelivered(),
                no_ack: rabbit.no_ack(),
                headers: msg.headers().clone(),
            });
            match (self.script)(n) {
                Act::Ok => Ok(()),
                Act::Fail => Err(HandlerError::Failed(anyhow::anyhow!("scripted failure"))),
                Act::Wait(n) => {
                    n.notified().await;
                    Ok(())
                }
                Act::WaitThenFail(n) => {
                    n.notified().await;
                    Err(HandlerError::Failed(anyhow::anyhow!("scripted failure")))
                }
                Act::AckInterrupt => Err(HandlerError::Failed(brook_runtime::Ack.into())),
            }
        }
        .await;
        done.map(|()| None)
    }
}

pub struct Running {
    pub app: Option<RunningApp<RabbitBroker>>,
    pub broker: RabbitBroker,
    pub seen: mpsc::UnboundedReceiver<Seen>,
}

impl Running {
    pub async fn start(
        broker: RabbitBroker,
        args: Vec<(&'static str, Value)>,
        script: impl Fn(usize) -> Act + Send + Sync + 'static,
    ) -> Running {
        let mut b = Subscription::new(brook_runtime::BrokerKind::Rabbit, "policy-test");
        for (n, v) in args {
            b = b.arg(n, v);
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let handler = Scripted {
            sub: b,
            script: Box::new(script),
            calls: AtomicUsize::new(0),
            seen: tx,
        };
        let app = App::new(broker.clone())
            .subscribe(handler)
            .graceful_timeout(Duration::from_millis(500))
            .start()
            .await
            .expect("App starts");
        Running {
            app: Some(app),
            broker,
            seen: rx,
        }
    }

    pub async fn next(&mut self) -> Seen {
        tokio::time::timeout(WAIT, self.seen.recv())
            .await
            .expect("a handler call in time")
            .expect("handler alive")
    }

    pub async fn publish(&self, queue: &str, body: &'static [u8]) {
        use brook_runtime::Broker as _;
        self.broker
            .publish_message(Outgoing::new(queue, Bytes::from_static(body)))
            .await
            .expect("publish");
    }

    pub async fn stop(&mut self) {
        if let Some(app) = self.app.take() {
            tokio::time::timeout(WAIT, app.stop())
                .await
                .expect("stops in time")
                .expect("stops cleanly");
        }
    }
}

/// A fresh classic queue whose dead-letter exchange feeds `<q>.dlq`, declared here with
/// `x-expires` (so a failed test leaves nothing behind for long); the subscriber only consumes.
async fn setup(admin: &Admin, prefix: &str) -> (String, String, Vec<(&'static str, Value)>) {
    let queue = fresh(prefix);
    let (dlx, dlq) = admin.dead_letter_place(&queue).await;
    admin.queue(&queue, None, Some(&dlx)).await;
    let args = vec![
        ("queue", Value::from(queue.clone())),
        ("declare", Value::from(false)),
    ];
    (queue, dlq, args)
}

/// The same, but brook declares the queue (with its dead-letter exchange). brook cannot set
/// `x-expires`, so the test deletes the queue at the end.
async fn setup_declared_by_brook(
    admin: &Admin,
    prefix: &str,
) -> (String, String, Vec<(&'static str, Value)>) {
    let queue = fresh(prefix);
    let (dlx, dlq) = admin.dead_letter_place(&queue).await;
    let args = vec![
        ("queue", Value::from(queue.clone())),
        ("dead_letter_exchange", Value::from(dlx)),
    ];
    (queue, dlq, args)
}

fn with(mut args: Vec<(&'static str, Value)>, policy: AckPolicy) -> Vec<(&'static str, Value)> {
    args.push(("ack_policy", Value::from(policy)));
    args
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_removes_the_message_from_the_queue() {
    let admin = Admin::new().await;
    let (queue, dlq, args) = setup(&admin, "ack").await;
    let mut run = Running::start(RabbitBroker::new(URL), with(args, AckPolicy::Ack), |_| {
        Act::Fail
    })
    .await;
    run.publish(&queue, b"a").await;
    let seen = run.next().await;
    assert_eq!(
        (seen.count, seen.redelivered, seen.no_ack),
        (Some(1), false, false)
    );
    run.stop().await;
    admin.wait_depth(&queue, 0).await;
    admin.wait_depth(&dlq, 0).await;
    admin.delete(&queue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nack_requeues_and_rabbitmq_flags_the_redelivery() {
    let admin = Admin::new().await;
    let (queue, dlq, args) = setup(&admin, "nack").await;
    let mut run = Running::start(
        RabbitBroker::new(URL),
        with(args, AckPolicy::NackOnError),
        |n| if n == 0 { Act::Fail } else { Act::Ok },
    )
    .await;
    run.publish(&queue, b"n").await;
    let first = run.next().await;
    let second = run.next().await;
    assert_eq!(first.body, second.body);
    assert!(!first.redelivered);
    assert!(
        second.redelivered,
        "basic.nack requeue=true: RabbitMQ redelivers it, flagged"
    );
    // A classic queue does not count: brook reports no count rather than a guess.
    assert_eq!((first.count, second.count), (Some(1), None));
    run.stop().await;
    admin.wait_depth(&queue, 0).await;
    admin.wait_depth(&dlq, 0).await;
    admin.delete(&queue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_dead_letters_through_the_queue_dlx() {
    let admin = Admin::new().await;
    let (queue, dlq, args) = setup_declared_by_brook(&admin, "reject").await;
    // RejectOnError is the default policy: no ack_policy given.
    let mut run = Running::start(RabbitBroker::new(URL), args, |_| Act::Fail).await;
    run.publish(&queue, b"bad").await;
    run.next().await;
    run.stop().await;
    admin.wait_depth(&queue, 0).await;
    let dead = admin.drain(&dlq).await;
    assert_eq!(common::bodies(&dead), vec![Bytes::from_static(b"bad")]);
    // RabbitMQ's own record: rejected, from our queue.
    let death = dead[0]
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-death").cloned());
    let Some(AMQPValue::FieldArray(deaths)) = death else {
        panic!("no x-death header: {death:?}");
    };
    let Some(AMQPValue::FieldTable(first)) = deaths.as_slice().first() else {
        panic!("x-death: {deaths:?}");
    };
    let text = |name: &str| match first.inner().get(name) {
        Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        other => format!("{other:?}"),
    };
    assert_eq!(
        (text("reason"), text("queue")),
        ("rejected".to_owned(), queue.clone())
    );
    admin.delete(&queue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_first_consumes_with_no_ack_so_an_unfinished_handler_loses_the_message() {
    let admin = Admin::new().await;
    let (queue, dlq, mut args) = setup(&admin, "ackfirst").await;
    // RabbitMQ ignores the prefetch only for a no_ack consumer: with prefetch = 2 and a
    // blocked handler, an acking consumer would leave 8 of 10 ready.
    args.push(("prefetch", Value::from(2u32)));
    let hang = Arc::new(Notify::new());
    let h = hang.clone();
    let mut run = Running::start(
        RabbitBroker::new(URL),
        with(args, AckPolicy::AckFirst),
        move |_| Act::Wait(h.clone()),
    )
    .await;
    for _ in 0..10 {
        run.publish(&queue, b"gone").await;
    }
    let seen = run.next().await;
    assert!(seen.no_ack);
    // All ten left the queue while the one handler is still blocked: no_ack on the wire.
    admin.wait_depth(&queue, 0).await;
    // While the handler still runs, RabbitMQ already forgot the messages: the graceful
    // timeout (500 ms) cuts the handler off, and nothing comes back.
    run.stop().await;
    assert_eq!(admin.wait_no_consumer(&queue).await, 0);
    admin.wait_depth(&queue, 0).await;
    admin.wait_depth(&dlq, 0).await;
    admin.delete(&queue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_without_settlement_returns_the_message_to_the_next_consumer() {
    let admin = Admin::new().await;
    let (queue, _dlq, args) = setup(&admin, "manual").await;
    let mut run = Running::start(
        RabbitBroker::new(URL),
        with(args, AckPolicy::Manual),
        |_| Act::Ok,
    )
    .await;
    run.publish(&queue, b"keep").await;
    run.next().await;
    run.stop().await;
    admin.wait_depth(&queue, 1).await;
    let again = admin.drain(&queue).await;
    assert_eq!(common::bodies(&again), vec![Bytes::from_static(b"keep")]);
    assert!(
        again[0].redelivered,
        "a second consumer sees it as redelivered"
    );
    admin.delete(&queue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_queues_count_deliveries_and_max_deliveries_dead_letters() {
    let admin = Admin::new().await;
    let queue = fresh("quorum-max");
    let (dlx, dlq) = admin.dead_letter_place(&queue).await;
    let args = vec![
        ("queue", Value::from(queue.clone())),
        ("queue_type", Value::Ident("quorum".into())),
        ("dead_letter_exchange", Value::from(dlx)),
        ("ack_policy", Value::from(AckPolicy::NackOnError)),
        ("max_deliveries", Value::from(3u32)),
    ];
    let mut run = Running::start(RabbitBroker::new(URL), args, |_| Act::Fail).await;
    run.publish(&queue, b"poison").await;
    let counts: Vec<_> = [run.next().await, run.next().await, run.next().await]
        .iter()
        .map(|s| s.count)
        .collect();
    assert_eq!(counts, vec![Some(1), Some(2), Some(3)]);
    run.stop().await;
    admin.wait_depth(&queue, 0).await;
    let dead = admin.drain(&dlq).await;
    assert_eq!(common::bodies(&dead), vec![Bytes::from_static(b"poison")]);
    assert!(run.seen.try_recv().is_err(), "no fourth delivery");
    admin.delete(&queue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binds_to_an_exchange_and_publishes_with_a_routing_key() {
    let queue = fresh("bound");
    let exchange = fresh("events");
    let args = vec![
        ("queue", Value::from(queue.clone())),
        ("exchange", Value::from(exchange.clone())),
        ("exchange_type", Value::Ident("topic".into())),
        ("routing_key", Value::from("user.*")),
        ("durable", Value::from(false)),
        ("auto_delete", Value::from(true)),
        ("ack_policy", Value::from(AckPolicy::Ack)),
    ];
    let mut run = Running::start(RabbitBroker::new(URL), args, |_| Act::Ok).await;
    use brook_runtime::Broker as _;
    for key in ["order.created", "user.created"] {
        run.broker
            .publish_message(
                Outgoing::new(exchange.clone(), key.to_owned()).with_key(key.to_owned()),
            )
            .await
            .expect("publish to the exchange");
    }
    let seen = run.next().await;
    assert_eq!(
        seen.body,
        Bytes::from_static(b"user.created"),
        "only the matching key is routed"
    );
    run.stop().await;
    // The queue was auto-delete; the exchange brook declared is not.
    let admin = Admin::new().await;
    admin
        .channel
        .exchange_delete(exchange.as_str().into(), Default::default())
        .await
        .expect("delete the test exchange");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faststream_properties_and_headers_round_trip() {
    let admin = Admin::new().await;
    let (queue, _dlq, args) = setup(&admin, "props").await;
    let mut run = Running::start(RabbitBroker::new(URL), with(args, AckPolicy::Ack), |_| {
        Act::Ok
    })
    .await;
    use brook_runtime::Broker as _;
    let out = Outgoing::encode(&serde_json::json!({"id": 7}), queue.clone())
        .expect("encode")
        .with_correlation_id("corr-1")
        .with_reply_to("replies")
        .with_header("message_id", "msg-1")
        .with_header("x-tenant", "acme");
    run.broker.publish_message(out).await.expect("publish");
    let seen = run.next().await;
    for (name, value) in [
        ("content-type", "application/json"),
        ("correlation_id", "corr-1"),
        ("reply_to", "replies"),
        ("message_id", "msg-1"),
        ("x-tenant", "acme"),
    ] {
        assert_eq!(seen.headers.get(name), Some(value), "{name}");
    }
    run.stop().await;

    // On the wire, as FastStream reads it: AMQP properties, persistent, custom headers in
    // the headers table.
    let raw_queue = fresh("props-raw");
    admin.queue(&raw_queue, None, None).await;
    let out = Outgoing::encode(&serde_json::json!({"id": 8}), raw_queue.clone())
        .expect("encode")
        .with_correlation_id("corr-2")
        .with_header("x-tenant", "acme");
    run.broker.publish_message(out).await.expect("publish");
    let got = admin.drain(&raw_queue).await;
    let p = &got[0].properties;
    assert_eq!(
        p.content_type().as_ref().map(|s| s.as_str()),
        Some("application/json")
    );
    assert_eq!(
        p.correlation_id().as_ref().map(|s| s.as_str()),
        Some("corr-2")
    );
    assert_eq!(p.delivery_mode(), &Some(2), "persistent");
    let tenant = p
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-tenant").cloned());
    assert_eq!(tenant, Some(AMQPValue::LongString("acme".into())));
    admin.delete(&raw_queue).await;
    admin.delete(&queue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passive_subscriber_fails_on_a_missing_queue() {
    let sub = Subscription::new(brook_runtime::BrokerKind::Rabbit, "passive")
        .arg("queue", fresh("missing"))
        .arg("passive", true)
        .build()
        .expect("valid");
    use brook_runtime::Broker as _;
    let err = RabbitBroker::new(URL)
        .subscribe(&sub)
        .await
        .err()
        .expect("a missing queue is an error");
    let text = err.to_string();
    assert!(
        text.contains("RabbitMQ queue.declare (passive) failed"),
        "{text}"
    );
}

#[tokio::test]
async fn rabbit_message_is_refused_on_messages_of_other_brokers() {
    use brook_runtime::{SettleFuture, Settlement, Settler};
    struct Noop;
    impl Settler for Noop {
        fn settle(&self, _: Settlement) -> SettleFuture<'_> {
            SettleFuture::ready(Ok(()))
        }
    }
    let msg = Message::new(
        brook_runtime::BrokerKind::Memory,
        "t".into(),
        Bytes::new(),
        Noop,
    );
    let err = <&RabbitMessage>::from_message(&msg, &Context::default()).expect_err("wrong broker");
    assert!(err.to_string().contains("RabbitMessage"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_mid_stream_finishes_the_handler_and_returns_prefetched_messages() {
    let admin = Admin::new().await;
    let (queue, dlq, args) = setup(&admin, "drain").await;
    let release = Arc::new(Notify::new());
    let r = release.clone();
    // concurrency 1 (the default): after the stop, no further message is handed out.
    let mut run = Running::start(
        RabbitBroker::new(URL),
        with(args, AckPolicy::NackOnError),
        move |n| {
            if n == 0 {
                Act::Wait(r.clone())
            } else {
                Act::Ok
            }
        },
    )
    .await;
    for body in [b"0" as &'static [u8], b"1", b"2", b"3", b"4"] {
        run.publish(&queue, body).await;
    }
    assert_eq!(run.next().await.body, Bytes::from_static(b"0"));
    // Stop while the first handler runs (the rest sit prefetched in the client), then let it
    // finish: it is acked, the prefetched ones go back to the queue.
    let app = run.app.take().expect("running");
    // `join!` polls `stop()` first: its first poll asks the App to stop, then the handler is
    // released.
    let (stopped, ()) = tokio::time::timeout(WAIT, async {
        tokio::join!(app.stop(), async { release.notify_one() })
    })
    .await
    .expect("stops in time");
    stopped.expect("clean stop");
    let mut handled = 1;
    while run.seen.try_recv().is_ok() {
        handled += 1;
    }
    assert_eq!(
        handled, 1,
        "the stop was requested before the others were handled"
    );
    let left = 4;
    admin.wait_depth(&queue, left).await;
    let bodies = common::bodies(&admin.drain(&queue).await);
    let expected: Vec<Bytes> = [b"1" as &'static [u8], b"2", b"3", b"4"]
        .into_iter()
        .map(Bytes::from_static)
        .collect();
    assert_eq!(
        bodies, expected,
        "the finished one was acked, the others returned"
    );
    admin.wait_depth(&dlq, 0).await;
    admin.delete(&queue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_bounds_what_rabbitmq_hands_out_unacknowledged() {
    let admin = Admin::new().await;
    let (queue, _dlq, mut args) = setup(&admin, "prefetch").await;
    args.push(("prefetch", Value::from(2u32)));
    // Manual without settling: every delivery stays unacknowledged.
    let mut run = Running::start(
        RabbitBroker::new(URL),
        with(args, AckPolicy::Manual),
        |_| Act::Ok,
    )
    .await;
    for body in [b"0" as &'static [u8], b"1", b"2", b"3", b"4"] {
        run.publish(&queue, body).await;
    }
    run.next().await;
    run.next().await;
    // basic.qos(2): RabbitMQ keeps the other three ready and sends nothing more.
    admin.wait_depth(&queue, 3).await;
    assert!(
        run.seen.try_recv().is_err(),
        "a third delivery despite prefetch = 2"
    );
    run.stop().await;
    admin.wait_depth(&queue, 5).await;
    admin.delete(&queue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_delivery_count_on_a_first_delivery_is_ignored() {
    let admin = Admin::new().await;
    let queue = fresh("forged-count");
    let (dlx, dlq) = admin.dead_letter_place(&queue).await;
    admin.queue(&queue, Some("quorum"), Some(&dlx)).await;
    let args = vec![
        ("queue", Value::from(queue.clone())),
        ("declare", Value::from(false)),
        ("queue_type", Value::Ident("quorum".into())),
        ("ack_policy", Value::from(AckPolicy::NackOnError)),
        ("max_deliveries", Value::from(3u32)),
    ];
    let mut run = Running::start(RabbitBroker::new(URL), args, |_| Act::Ok).await;
    // A publisher (or a message forwarded from another queue) carries counting headers that
    // would exceed max_deliveries; RabbitMQ delivers it for the first time.
    admin
        .publish_with_int_headers(
            &queue,
            b"fresh",
            &[("x-delivery-count", 5), ("x-acquired-count", 9)],
        )
        .await;
    let seen = run.next().await;
    assert_eq!(
        (seen.body, seen.count, seen.redelivered),
        (Bytes::from_static(b"fresh"), Some(1), false)
    );
    run.stop().await;
    admin.wait_depth(&queue, 0).await;
    assert!(admin.drain(&dlq).await.is_empty(), "nothing dead-lettered");
    admin.delete(&queue).await;
}

/// Declaration arguments under `passive = true` or `declare = false` would be ignored in
/// silence: brook-caps refuses each of them when the subscription is built (at compile time for
/// a literal attribute), naming the argument. `queue_type` is not one of them: there it says
/// what the existing queue is.
#[test]
fn declaration_arguments_without_declaring_are_refused() {
    let declare_only: [(&str, Value); 6] = [
        ("exchange", Value::from("events")),
        ("exchange_type", Value::Ident("fanout".into())),
        ("routing_key", Value::from("key")),
        ("dead_letter_exchange", Value::from("dlx")),
        ("durable", Value::from(false)),
        ("auto_delete", Value::from(true)),
    ];
    for (mode, value) in [("passive", true), ("declare", false)] {
        for (argument, given) in declare_only.clone() {
            let err = Subscription::new(brook_runtime::BrokerKind::Rabbit, "nodeclare")
                .arg("queue", fresh("never"))
                .arg(mode, value)
                .arg(argument, given)
                .build()
                .expect_err("refused");
            assert_eq!(err.source.argument, Some(argument), "{err}");
            let text = err.to_string();
            assert!(
                text.contains(argument) && text.contains(&format!("{mode} = {value}")),
                "{text}"
            );
        }
        let sub = Subscription::new(brook_runtime::BrokerKind::Rabbit, "existing")
            .arg("queue", fresh("existing"))
            .arg(mode, value)
            .arg("queue_type", Value::Ident("quorum".into()))
            .build()
            .expect("queue_type describes the existing queue");
        assert_eq!(
            sub.source(),
            brook_runtime::Source::RabbitQueue { quorum: true }
        );
    }
}

// The settlement pipeline (`basic.ack multiple` for runs of acks from the lowest unsettled
// tag; everything else one frame each): what it sends must settle exactly what the handlers
// settled. A multiple ack that covered the wrong tag would ack a message that must come back,
// or hit a tag already settled (RabbitMQ then closes the channel and every unacknowledged
// delivery comes again: seen twice).

/// Publishes `bodies` to `queue` before the subscriber starts, so they are prefetched
/// together (consecutive delivery tags on one channel).
async fn prefill(queue: &str, bodies: &[&'static [u8]]) {
    use brook_runtime::Broker as _;
    let broker = RabbitBroker::new(URL);
    for body in bodies {
        broker
            .publish_message(Outgoing::new(queue, Bytes::from_static(body)))
            .await
            .expect("publish");
    }
    broker.close().await.expect("close the publisher");
}

/// Stops the App, then checks on the broker that nothing came back (every delivery was
/// acknowledged, none requeued when the channel closed, none dead-lettered), and deletes the
/// queue.
async fn stop_and_expect_everything_acked(
    run: &mut Running,
    admin: &Admin,
    queue: &str,
    dlq: &str,
) {
    run.stop().await;
    admin.wait_depth(queue, 0).await;
    assert_eq!(admin.wait_no_consumer(queue).await, 0);
    admin.wait_depth(dlq, 0).await;
    admin.delete(queue).await;
}

/// Takes `n` handler calls, then checks for [`common::QUIET`] that no other comes.
async fn calls(run: &mut Running, n: usize) -> Vec<Seen> {
    let mut seen = Vec::new();
    for _ in 0..n {
        seen.push(run.next().await);
    }
    if let Ok(Some(extra)) = tokio::time::timeout(common::QUIET, run.seen.recv()).await {
        panic!("an extra delivery after {n}: {extra:?}");
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_after_a_delivery_left_unsettled_do_not_acknowledge_it() {
    let admin = Admin::new().await;
    let (queue, dlq, args) = setup(&admin, "pipe-unsettled").await;
    prefill(&queue, &[b"m0", b"m1", b"m2", b"m3", b"m4", b"m5"]).await;
    // Manual: the engine acks each interrupt; m2 is left unsettled by its handler.
    let mut run = Running::start(
        RabbitBroker::new(URL),
        with(args, AckPolicy::Manual),
        |n| match n {
            2 => Act::Ok,
            _ => Act::AckInterrupt,
        },
    )
    .await;
    let seen = calls(&mut run, 6).await;
    assert!(seen.iter().all(|s| !s.redelivered), "{seen:?}");
    run.stop().await;
    // The channel closed with m2 unacknowledged: RabbitMQ requeued exactly it.
    let back = admin.drain(&queue).await;
    assert_eq!(common::bodies(&back), vec![Bytes::from_static(b"m2")]);
    assert!(back[0].redelivered);
    admin.wait_depth(&dlq, 0).await;
    admin.delete(&queue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nacks_between_acks_are_redelivered_and_the_acks_hold() {
    let admin = Admin::new().await;
    let (queue, dlq, args) = setup(&admin, "pipe-nack").await;
    prefill(&queue, &[b"m0", b"m1", b"m2", b"m3", b"m4", b"m5"]).await;
    // Fails calls 1 and 3: the first deliveries of m1 and m3 (concurrency 1, in order).
    let mut run = Running::start(
        RabbitBroker::new(URL),
        with(args, AckPolicy::NackOnError),
        |n| match n {
            1 | 3 => Act::Fail,
            _ => Act::Ok,
        },
    )
    .await;
    let seen = calls(&mut run, 8).await;
    let first: Vec<_> = seen
        .iter()
        .filter(|s| !s.redelivered)
        .map(|s| s.body.clone())
        .collect();
    let again: Vec<_> = seen
        .iter()
        .filter(|s| s.redelivered)
        .map(|s| s.body.clone())
        .collect();
    assert_eq!(first.len(), 6, "each message once first: {seen:?}");
    assert_eq!(again.len(), 2, "the two failed ones again: {seen:?}");
    assert!(
        again.iter().all(|b| first[1] == b || first[3] == b),
        "{seen:?}"
    );
    stop_and_expect_everything_acked(&mut run, &admin, &queue, &dlq).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_of_later_messages_do_not_cover_one_still_being_handled() {
    let admin = Admin::new().await;
    let (queue, dlq, mut args) = setup(&admin, "pipe-order").await;
    args.push(("concurrency", Value::from(4u64)));
    prefill(
        &queue,
        &[b"m0", b"m1", b"m2", b"m3", b"m4", b"m5", b"m6", b"m7"],
    )
    .await;
    // The first call is held while later messages are acked (one frame each: no multiple ack
    // may cover it yet), then fails: m0 must come back. The acks after it then go out as one
    // multiple ack passing the ones already sent.
    let release = Arc::new(Notify::new());
    let held = release.clone();
    let mut run = Running::start(
        RabbitBroker::new(URL),
        with(args, AckPolicy::NackOnError),
        move |n| match n {
            0 => Act::WaitThenFail(held.clone()),
            _ => Act::Ok,
        },
    )
    .await;
    let mut seen = Vec::new();
    for _ in 0..6 {
        seen.push(run.next().await);
    }
    release.notify_one();
    seen.extend(calls(&mut run, 3).await);
    let again: Vec<_> = seen.iter().filter(|s| s.redelivered).collect();
    assert_eq!(again.len(), 1, "{seen:?}");
    assert_eq!(again[0].body, seen[0].body, "the held message came back");
    assert_eq!(
        seen.iter().filter(|s| !s.redelivered).count(),
        8,
        "{seen:?}"
    );
    stop_and_expect_everything_acked(&mut run, &admin, &queue, &dlq).await;
}
