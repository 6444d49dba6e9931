//! Connecting and reconnecting: clear, bounded errors for a wrong address or password (and no
//! password in them), and a consumer that survives a cut connection (client -> TcpProxy ->
//! RabbitMQ) without losing what it had not acknowledged.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use brook_rabbit::{RabbitBroker, RabbitMessage};
use brook_runtime::proxy::TcpProxy;
use brook_runtime::{
    AckPolicy, App, Broker, BrokerError, Context, FromMessage, Handler, HandlerError, Message,
    Outgoing, Subscription, SubscriptionBuilder,
};
use bytes::Bytes;
use common::{fresh, Admin, ADDR, URL, WAIT};
use tokio::sync::{mpsc, Notify};

#[tokio::test]
async fn a_closed_port_fails_fast_naming_rabbitmq_and_the_address() {
    // Port 1 on loopback: nothing listens there.
    let broker = RabbitBroker::new("amqp://guest:guest@127.0.0.1:1/%2f");
    let started = Instant::now();
    let err = broker
        .connect()
        .await
        .expect_err("nothing listens on port 1");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(matches!(err, BrokerError::Connect { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.starts_with("cannot connect to RabbitMQ at amqp://127.0.0.1:1/%2f"),
        "{text}"
    );
    assert!(!text.contains("guest:guest"), "{text}");
}

#[tokio::test]
async fn a_wrong_password_fails_within_the_timeout_and_is_never_shown() {
    let broker = RabbitBroker::new("amqp://guest:not-the-password@127.0.0.1:5672/%2f")
        .connect_timeout(Duration::from_secs(8));
    let started = Instant::now();
    let err = broker.connect().await.expect_err("wrong password");
    assert!(
        started.elapsed() < Duration::from_secs(9),
        "{:?}",
        started.elapsed()
    );
    assert!(matches!(err, BrokerError::Connect { .. }), "{err:?}");
    let shown = format!("{err} / {err:?} / {broker:?}");
    assert!(
        shown.contains("RabbitMQ") && shown.contains("127.0.0.1:5672"),
        "{shown}"
    );
    assert!(!shown.contains("not-the-password"), "{shown}");
}

#[tokio::test]
async fn a_silent_server_hits_the_connect_timeout() {
    // A listener that accepts and never speaks AMQP: the handshake cannot finish.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let _accepting = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let broker = RabbitBroker::new(format!("amqp://guest:guest@{addr}/%2f"))
        .connect_timeout(Duration::from_millis(500));
    let started = Instant::now();
    let err = broker.connect().await.expect_err("no handshake");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(err.to_string().contains(&addr.to_string()), "{err}");
}

/// Records each delivery (once acked; the held one before it waits); holds the first delivery
/// of `hold` until released.
struct Holding {
    sub: SubscriptionBuilder,
    hold: &'static [u8],
    release: Arc<Notify>,
    calls: AtomicUsize,
    seen: mpsc::UnboundedSender<(Bytes, bool)>,
    settled: mpsc::UnboundedSender<Result<(), String>>,
}

impl Handler for Holding {
    type Broker = brook_runtime::kind::Rabbit;

    fn subscription(&self) -> SubscriptionBuilder {
        self.sub.clone()
    }

    async fn call(&self, msg: &Message, ctx: &Context) -> brook_runtime::HandlerResult {
        let done: Result<(), HandlerError> = async move {
            let rabbit = <&RabbitMessage>::from_message(msg, ctx)?;
            self.calls.fetch_add(1, Ordering::SeqCst);
            let seen = (msg.body().clone(), rabbit.redelivered());
            if &msg.body()[..] == self.hold && !rabbit.redelivered() {
                let _ = self.seen.send(seen);
                self.release.notified().await;
                // Settle here (Manual) to observe how a settlement on the dead channel fails.
                let result = msg.ack().await.map(drop).map_err(|e| e.to_string());
                let _ = self.settled.send(result);
                return Ok(());
            }
            msg.ack()
                .await
                .map_err(|e| HandlerError::Failed(e.into()))?;
            // Reported once acked: a test that cuts the connection next must not find this
            // delivery unacknowledged (it would be redelivered first).
            let _ = self.seen.send(seen);
            Ok(())
        }
        .await;
        done.map(|()| None)
    }
}

async fn next(rx: &mut mpsc::UnboundedReceiver<(Bytes, bool)>) -> (Bytes, bool) {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("a delivery in time")
        .expect("handler alive")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_connection_is_recovered_and_nothing_unacknowledged_is_lost() {
    let admin = Admin::new().await;
    let queue = fresh("reconnect");
    admin.queue(&queue, None, None).await;
    let target: SocketAddr = ADDR.parse().expect("address");
    let proxy = TcpProxy::start(target).await.expect("proxy");
    let through_proxy = RabbitBroker::new(format!("amqp://guest:guest@{}/%2f", proxy.addr()))
        .reconnect_backoff(Duration::from_millis(50), Duration::from_millis(400));
    let direct = RabbitBroker::new(URL);

    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let (settled_tx, mut settled) = mpsc::unbounded_channel();
    let release = Arc::new(Notify::new());
    let handler = Holding {
        sub: Subscription::new(brook_runtime::BrokerKind::Rabbit, "reconnect")
            .arg("queue", queue.clone())
            .arg("declare", false)
            .arg("ack_policy", AckPolicy::Manual)
            .arg("concurrency", 2u32),
        hold: b"held",
        release: release.clone(),
        calls: AtomicUsize::new(0),
        seen: seen_tx,
        settled: settled_tx,
    };
    let app = App::new(through_proxy.clone())
        .subscribe(handler)
        .start()
        .await
        .expect("App starts");
    let publish = |body: &'static [u8]| {
        let direct = direct.clone();
        let queue = queue.clone();
        async move {
            direct
                .publish_message(Outgoing::new(queue, Bytes::from_static(body)))
                .await
                .expect("publish")
        }
    };

    publish(b"before").await;
    assert_eq!(
        next(&mut seen).await,
        (Bytes::from_static(b"before"), false)
    );
    publish(b"held").await;
    assert_eq!(next(&mut seen).await, (Bytes::from_static(b"held"), false));

    // The connection dies while "held" is being handled (by one of two workers). RabbitMQ
    // requeues it; once the network is back, the consumer reconnects and the other worker
    // gets it again, flagged as redelivered.
    let accepted_before_cut = proxy.connections_accepted();
    proxy.cut();
    proxy.restore();
    assert_eq!(next(&mut seen).await, (Bytes::from_static(b"held"), true));
    // Only now does the first handler finish: its delivery belongs to the dead channel, so
    // acking it fails cleanly (and touches nothing on the new channel).
    release.notify_one();
    let ack = tokio::time::timeout(WAIT, settled.recv())
        .await
        .expect("the handler settles in time")
        .expect("handler alive");
    let error = ack.expect_err("acking on a dead channel fails");
    assert!(
        error.contains("basic.ack") && error.contains("requeues"),
        "{error}"
    );
    // Publishing through the proxy works again too (the publishing connection is reopened).
    through_proxy
        .publish_message(Outgoing::new(queue.clone(), Bytes::from_static(b"after")))
        .await
        .expect("publish after the cut");
    assert_eq!(next(&mut seen).await, (Bytes::from_static(b"after"), false));
    assert!(
        proxy.connections_accepted() > accepted_before_cut,
        "new connections were made after the cut"
    );

    tokio::time::timeout(WAIT, app.stop())
        .await
        .expect("stops in time")
        .expect("stops cleanly");
    admin.wait_depth(&queue, 0).await;
    admin.delete(&queue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_queue_is_declared_again_and_consumed() {
    use brook_rabbit::lapin::options::QueueDeclareOptions;
    use brook_rabbit::lapin::types::FieldTable;

    let admin = Admin::new().await;
    let queue = fresh("deleted");
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let (settled_tx, mut settled) = mpsc::unbounded_channel();
    let release = Arc::new(Notify::new());
    let handler = Holding {
        sub: Subscription::new(brook_runtime::BrokerKind::Rabbit, "redeclare")
            .arg("queue", queue.clone())
            .arg("ack_policy", AckPolicy::Manual)
            .arg("concurrency", 2u32),
        hold: b"one",
        release: release.clone(),
        calls: AtomicUsize::new(0),
        seen: seen_tx,
        settled: settled_tx,
    };
    let broker = RabbitBroker::new(URL)
        .reconnect_backoff(Duration::from_millis(50), Duration::from_millis(400));
    let app = App::new(broker.clone())
        .subscribe(handler)
        .start()
        .await
        .expect("App starts");
    let publish = |body: &'static [u8]| {
        let broker = broker.clone();
        let queue = queue.clone();
        async move {
            broker
                .publish_message(Outgoing::new(queue, Bytes::from_static(body)))
                .await
                .expect("publish")
        }
    };
    publish(b"one").await;
    assert_eq!(next(&mut seen).await.0, Bytes::from_static(b"one"));

    // Someone deletes the queue: RabbitMQ cancels the consumer, which declares the queue
    // again and consumes it. Wait (bounded) until a consumer is back on the new queue.
    admin.delete(&queue).await;
    let deadline = Instant::now() + WAIT;
    loop {
        let options = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        // A failed passive declare closes the channel: use a fresh one per probe.
        let probe = Admin::new().await;
        if let Ok(q) = probe
            .channel
            .queue_declare(queue.as_str().into(), options, FieldTable::default())
            .await
        {
            if q.consumer_count() == 1 {
                break;
            }
        }
        assert!(Instant::now() < deadline, "the consumer never came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    publish(b"two").await;
    assert_eq!(next(&mut seen).await.0, Bytes::from_static(b"two"));
    // "one" was still being handled when RabbitMQ cancelled the consumer: its channel was
    // kept open (not dropped with the cancelled consumer), so its ack still reaches RabbitMQ.
    release.notify_one();
    let ack = tokio::time::timeout(WAIT, settled.recv())
        .await
        .expect("the held handler settles in time")
        .expect("handler alive");
    assert_eq!(
        ack,
        Ok(()),
        "the cancelled consumer's channel is still usable"
    );
    tokio::time::timeout(WAIT, app.stop())
        .await
        .expect("stops in time")
        .expect("stops cleanly");
    admin.delete(&queue).await;
}

#[tokio::test]
async fn tls_to_a_plain_port_fails_cleanly() {
    // RabbitMQ on 5672 speaks plain AMQP: the rustls handshake must fail (or time out) as a
    // Connect error, not panic (e.g. over a missing crypto provider).
    let broker = RabbitBroker::new("amqps://guest:guest@127.0.0.1:5672/%2f")
        .connect_timeout(Duration::from_secs(3));
    let started = Instant::now();
    let err = broker.connect().await.expect_err("no TLS on 5672");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(matches!(err, BrokerError::Connect { .. }), "{err:?}");
    assert!(err.to_string().contains("amqps://127.0.0.1:5672"), "{err}");
}

/// Fails on "bad", holds the first delivery of "held" until released, acks the rest.
struct CutUnderReject {
    sub: SubscriptionBuilder,
    release: Arc<Notify>,
    seen: mpsc::UnboundedSender<(Bytes, bool)>,
    finished: mpsc::UnboundedSender<()>,
}

impl Handler for CutUnderReject {
    type Broker = brook_runtime::kind::Rabbit;

    fn subscription(&self) -> SubscriptionBuilder {
        self.sub.clone()
    }

    async fn call(&self, msg: &Message, ctx: &Context) -> brook_runtime::HandlerResult {
        let done: Result<(), HandlerError> = async move {
            let rabbit = <&RabbitMessage>::from_message(msg, ctx)?;
            let _ = self.seen.send((msg.body().clone(), rabbit.redelivered()));
            match &msg.body()[..] {
                b"bad" => Err(HandlerError::Failed(anyhow::anyhow!("bad"))),
                b"held" if !rabbit.redelivered() => {
                    self.release.notified().await;
                    let _ = self.finished.send(());
                    Ok(())
                }
                _ => Ok(()),
            }
        }
        .await;
        done.map(|()| None)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_under_reject_on_error_on_a_quorum_queue_dead_letters_only_failures() {
    let admin = Admin::new().await;
    let queue = fresh("cut-quorum");
    let (dlx, dlq) = admin.dead_letter_place(&queue).await;
    admin.queue(&queue, Some("quorum"), Some(&dlx)).await;
    let proxy = TcpProxy::start(ADDR.parse().expect("address"))
        .await
        .expect("proxy");
    let through_proxy = RabbitBroker::new(format!("amqp://guest:guest@{}/%2f", proxy.addr()))
        .reconnect_backoff(Duration::from_millis(50), Duration::from_millis(400));
    let direct = RabbitBroker::new(URL);
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let (finished_tx, mut finished) = mpsc::unbounded_channel();
    let release = Arc::new(Notify::new());
    let handler = CutUnderReject {
        // RejectOnError is the default policy.
        sub: Subscription::new(brook_runtime::BrokerKind::Rabbit, "cut-reject")
            .arg("queue", queue.clone())
            .arg("declare", false)
            .arg("concurrency", 2u32),
        release: release.clone(),
        seen: seen_tx,
        finished: finished_tx,
    };
    let app = App::new(through_proxy.clone())
        .subscribe(handler)
        .start()
        .await
        .expect("App starts");
    let publish = |body: &'static [u8]| {
        let direct = direct.clone();
        let queue = queue.clone();
        async move {
            direct
                .publish_message(Outgoing::new(queue, Bytes::from_static(body)))
                .await
                .expect("publish")
        }
    };
    publish(b"held").await;
    assert_eq!(next(&mut seen).await, (Bytes::from_static(b"held"), false));
    let accepted_before_cut = proxy.connections_accepted();
    proxy.cut();
    proxy.restore();
    // The cut requeues "held" (no reject, no dead letter): the other worker gets it again.
    assert_eq!(next(&mut seen).await, (Bytes::from_static(b"held"), true));
    release.notify_one();
    tokio::time::timeout(WAIT, finished.recv())
        .await
        .expect("the held handler finishes in time")
        .expect("handler alive");
    assert!(proxy.connections_accepted() > accepted_before_cut);
    // A real failure after the reconnect is rejected and dead-lettered.
    publish(b"bad").await;
    assert_eq!(next(&mut seen).await, (Bytes::from_static(b"bad"), false));
    tokio::time::timeout(WAIT, app.stop())
        .await
        .expect("stops in time")
        .expect("stops cleanly");
    assert_eq!(admin.wait_no_consumer(&queue).await, 0, "nothing left");
    admin.wait_depth(&queue, 0).await;
    let dead = common::bodies(&admin.drain(&dlq).await);
    assert_eq!(dead, vec![Bytes::from_static(b"bad")], "only the failure");
    admin.delete(&queue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_reconnect_is_reported_by_next_and_recovers_once_fixed() {
    use brook_runtime::Consumer as _;
    let admin = Admin::new().await;
    let queue = fresh("vanished");
    admin.queue(&queue, None, None).await;
    let broker = RabbitBroker::new(URL)
        .reconnect_backoff(Duration::from_millis(50), Duration::from_millis(200));
    let sub = Subscription::new(brook_runtime::BrokerKind::Rabbit, "vanished")
        .arg("queue", queue.clone())
        .arg("declare", false)
        .build()
        .expect("valid");
    let mut consumer = broker.subscribe(&sub).await.expect("subscribes");
    // The queue goes; with declare = false consuming again fails with NOT_FOUND each time,
    // and every attempt shows up as an error instead of a silent retry loop.
    admin.delete(&queue).await;
    for _ in 0..2 {
        let next = tokio::time::timeout(WAIT, consumer.next())
            .await
            .expect("next() answers in time");
        let Some(Err(error)) = next else {
            panic!("expected a reconnect error, got {next:?}");
        };
        let text = error.to_string();
        assert!(text.contains("basic.consume"), "{text}");
    }
    // Someone declares it again: the consumer recovers by itself.
    admin.queue(&queue, None, None).await;
    broker
        .publish_message(Outgoing::new(queue.clone(), Bytes::from_static(b"back")))
        .await
        .expect("publish");
    let deadline = Instant::now() + WAIT;
    let msg = loop {
        let next = tokio::time::timeout(WAIT, consumer.next())
            .await
            .expect("next() answers in time");
        match next {
            Some(Ok(msg)) => break msg,
            Some(Err(_)) if Instant::now() < deadline => {}
            other => panic!("never recovered: {other:?}"),
        }
    };
    assert_eq!(msg.body(), &Bytes::from_static(b"back"));
    msg.ack().await.expect("ack");
    consumer.close().await.expect("closes");
    admin.wait_depth(&queue, 0).await;
    admin.delete(&queue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_to_a_missing_exchange_fails_without_retry_or_reconnect() {
    let admin = Admin::new().await;
    let queue = fresh("after-404");
    admin.queue(&queue, None, None).await;
    let proxy = TcpProxy::start(ADDR.parse().expect("address"))
        .await
        .expect("proxy");
    let broker = RabbitBroker::new(format!("amqp://guest:guest@{}/%2f", proxy.addr()));
    broker.connect().await.expect("connects");
    let out = Outgoing::new(queue.clone(), Bytes::from_static(b"x"));
    let err = broker
        .publish_to(&fresh("no-such-exchange"), "key", &out)
        .await
        .expect_err("a missing exchange is an error");
    assert!(err.to_string().contains("basic.publish"), "{err}");
    // The channel error closed only the channel: the next publish opens a channel on the same
    // connection (no retry, no second connection).
    broker
        .publish_message(out)
        .await
        .expect("publish after a channel error");
    admin.wait_depth(&queue, 1).await;
    assert_eq!(proxy.connections_accepted(), 1, "one connection throughout");
    broker.close().await.expect("closes");
    admin.delete(&queue).await;
}
