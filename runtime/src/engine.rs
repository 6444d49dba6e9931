//! The settlement engine: the one implementation of the ack-policy table and its rules.
//!
//! Every broker runs messages through [`process`]; broker crates never decide when to settle.
//! The decision itself is the pure function [`decide`], so the table is tested on its own.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use brook_caps::AckPolicy;
use brook_caps::BrokerKind;
use futures_util::FutureExt as _;
use tokio::sync::{mpsc, Mutex};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::broker::Consumer;
use crate::error::BrokerError;
use crate::extract::Context;
use crate::handler::{Handler, HandlerError};
use crate::headers::CORRELATION_ID;
use crate::interrupt::find_interrupt;
use crate::layer::{Delivery, Layers, PublishKind, Published};
use crate::message::{Message, SettleReport, Settled, Settlement, Settling};
use crate::output::{new_correlation_id, Output};
use crate::subscription::Subscription;

/// How a handler run ended, as far as settlement is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Completion {
    /// The handler returned `Ok` (or `()`).
    Succeeded,
    /// The handler returned an interrupt (`brook::Ack`, `Nack`, `Reject`).
    Interrupted(Settlement),
    /// The handler returned an error.
    Failed,
    /// The handler panicked (treated as an error).
    Panicked,
    /// The payload could not be decoded; the handler did not run.
    Undecodable,
}

/// What `policy` says to do after a handler run. `None`: leave the message as it is (already
/// acked by `AckFirst`, or the handler's to settle under `Manual`).
///
/// Interrupts apply under every policy, `Manual` included; a payload that cannot be decoded
/// gets `on_decode_error` (reject by default: redelivery cannot fix it) under every policy
/// but `AckFirst`, where the message is gone already.
#[inline]
pub fn decide(
    policy: AckPolicy,
    completion: Completion,
    on_decode_error: Settlement,
) -> Option<Settlement> {
    use AckPolicy::*;
    use Completion::*;
    match (policy, completion) {
        (_, Interrupted(settlement)) => Some(settlement),
        (AckFirst, _) => None,
        (_, Undecodable) => Some(on_decode_error),
        (Manual, _) => None,
        (Ack | RejectOnError | NackOnError, Succeeded) => Some(Settlement::Ack),
        (Ack, Failed | Panicked) => Some(Settlement::Ack),
        (RejectOnError, Failed | Panicked) => Some(Settlement::Reject),
        (NackOnError, Failed | Panicked) => Some(Settlement::NACK),
    }
}

/// What became of a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Settled (by the engine or by the handler).
    Settled(Settled),
    /// Left unsettled by the policy (`Manual` without a settlement; the broker redelivers it
    /// when the consumer goes away).
    Unsettled,
    /// The graceful-shutdown timeout cut the handler off; not settled, so redelivered.
    Cancelled,
    /// Settling failed on the broker (e.g. connection lost); the broker redelivers it.
    SettleFailed,
    /// The broker took the delivery back before the handler ran (it comes again): skipped.
    Superseded,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Settled(s) => s.as_str(),
            Outcome::Unsettled => "unsettled",
            Outcome::Cancelled => "cancelled",
            Outcome::SettleFailed => "settle_failed",
            Outcome::Superseded => "superseded",
        }
    }
}

/// Runs one message through the handler and settles it as the subscription's policy says.
/// Never panics and never returns an error: every failure is logged and becomes an [`Outcome`].
pub async fn process<H: Handler>(
    handler: &H,
    sub: &Subscription,
    ctx: &Context,
    msg: Message,
) -> Outcome {
    let span = tracing::info_span!(
        "brook.message",
        // An OpenTelemetry consumer span, with or without the `TraceContext` layer.
        otel.kind = "consumer",
        broker = msg.broker().name(),
        subscriber = sub.name(),
        topic = msg.topic(),
        message_id = %msg.id(),
        delivery = msg.delivery_count(),
        outcome = tracing::field::Empty,
    );
    let layers = sub.layers();
    // Tells the layers how it ended when dropped: also when the graceful timeout drops this
    // future mid-handler (then as `Cancelled`).
    let mut settled = (!layers.is_empty()).then(|| {
        layers.each("span", |l| l.span(Delivery::new(&msg, sub, ctx), &span));
        layers.each("received", |l| l.received(Delivery::new(&msg, sub, ctx)));
        SettledHook {
            layers,
            delivery: Delivery::new(&msg, sub, ctx),
            received: Instant::now(),
            outcome: Outcome::Cancelled,
        }
    });
    // Instrument a pinned reference, so the (large) future is not moved into the wrapper.
    let run = std::pin::pin!(run(handler, sub, ctx, &msg));
    // A span no subscriber took stays disabled for good, and entering it does nothing: then
    // the wrapper that enters it on every poll is skipped.
    let outcome = match span.is_disabled() {
        true => run.await,
        false => run.instrument(span.clone()).await,
    };
    // Only a span a subscriber takes records anything: skip naming the outcome otherwise.
    if !span.is_disabled() {
        span.record("outcome", outcome.as_str());
    }
    if let Some(hook) = &mut settled {
        hook.outcome = outcome;
    }
    outcome
}

/// Runs the layers' `settled` hook when dropped.
struct SettledHook<'a> {
    layers: &'a Layers,
    delivery: Delivery<'a>,
    received: Instant,
    outcome: Outcome,
}

impl Drop for SettledHook<'_> {
    fn drop(&mut self) {
        let elapsed = self.received.elapsed();
        self.layers.each("settled", |l| {
            l.settled(self.delivery, self.outcome, elapsed)
        });
    }
}

async fn run<H: Handler>(handler: &H, sub: &Subscription, ctx: &Context, msg: &Message) -> Outcome {
    if msg.superseded() {
        // A seek back re-reads it (Kafka, after a nack of an earlier message of its
        // partition): handling it now would handle it twice.
        tracing::debug!(subscriber = sub.name(), topic = msg.topic(), message_id = %msg.id(), "delivery superseded by the broker; skipped");
        return Outcome::Superseded;
    }
    let health = sub.health();
    health.received();
    let policy = sub.policy();
    let count = msg.delivery_count();
    if let (Some(max), Some(n)) = (sub.max_deliveries(), count) {
        if n > max {
            tracing::warn!(
                subscriber = sub.name(), topic = msg.topic(), message_id = %msg.id(),
                max_deliveries = max,
                "message delivered {n} times, more than max_deliveries; rejecting it without running the handler"
            );
            return settle(sub, msg, Settlement::Reject).await;
        }
    }
    if policy == AckPolicy::AckFirst {
        if let Err(error) = msg.ack().await {
            // At-most-once: a message we could not ack is not processed; the broker redelivers it.
            tracing::error!(subscriber = sub.name(), topic = msg.topic(), message_id = %msg.id(), %error, "ack_policy = AckFirst could not ack the message; not running the handler");
            return Outcome::SettleFailed;
        }
    }

    let layers = sub.layers();
    // Two awaits rather than one on an `Either`: the common one (no layers) polls the
    // handler's future directly.
    let result = match layers.is_empty() {
        true => {
            AssertUnwindSafe(handler.call(msg, ctx))
                .catch_unwind()
                .await
        }
        false => {
            AssertUnwindSafe(layers.call(handler, msg, sub, ctx))
                .catch_unwind()
                .await
        }
    };
    let (completion, failure) = match result {
        Ok(Ok(output)) => match publishes(sub, msg, output.as_deref()) {
            // Most messages publish nothing: keep the publishing future (large) out of this
            // one, which every message moves around.
            false => (Completion::Succeeded, None),
            true => match Box::pin(publish_results(sub, ctx, msg, output)).await {
                Ok(()) => (Completion::Succeeded, None),
                // The input is not acked when its result is not on the broker: the policy's
                // error path applies, as for a failed handler.
                Err(error) => (Completion::Failed, Some(error)),
            },
        },
        Ok(Err(HandlerError::Output(error))) => (Completion::Failed, Some(error.to_string())),
        Ok(Err(HandlerError::Extract(error))) => (
            Completion::Undecodable,
            Some(format!(
                "subscriber `{}` cannot use the message from `{}`: {error}",
                sub.name(),
                msg.topic()
            )),
        ),
        Ok(Err(HandlerError::Failed(error))) => match find_interrupt(&error) {
            Some(settlement) => (Completion::Interrupted(settlement), None),
            None => (
                Completion::Failed,
                Some(format!("handler failed: {error:#}")),
            ),
        },
        Err(panic) => (
            Completion::Panicked,
            Some(format!("handler panicked: {}", panic_message(&*panic))),
        ),
    };

    health.handled(matches!(
        completion,
        Completion::Succeeded | Completion::Interrupted(_)
    ));
    let mut decision = decide(policy, completion, sub.on_decode_error());
    if let (Some(Settlement::Nack { .. }), Some(max), Some(n)) =
        (decision, sub.max_deliveries(), count)
    {
        if n >= max {
            tracing::warn!(subscriber = sub.name(), topic = msg.topic(), message_id = %msg.id(), max_deliveries = max, "delivery {n} of at most {max} failed; rejecting instead of redelivering");
            decision = Some(Settlement::Reject);
        }
    }
    if let Some(failure) = failure {
        let action = match decision {
            Some(s) => s.kind().as_str(),
            None if policy == AckPolicy::AckFirst => "already acked",
            None => "left for the handler to settle",
        };
        tracing::error!(
            subscriber = sub.name(), topic = msg.topic(), message_id = %msg.id(), ack_policy = %policy,
            "{failure}; message {action}"
        );
    }
    match decision {
        // `settle`, with its common case (nothing to wait for) inline: this future is polled
        // once per message, a nested one would be too.
        Some(settlement) => match msg.start_settle(settlement, true) {
            Settling::Done(Ok(SettleReport::Settled(kind))) => Outcome::Settled(kind),
            Settling::Done(result) => settle_outcome(sub, msg, settlement, result),
            pending => settle_outcome(sub, msg, settlement, pending.finish().await),
        },
        None => msg.settled().map_or(Outcome::Unsettled, Outcome::Settled),
    }
}

/// Whether the handler's result goes anywhere: a reply to `reply_to`, or an output.
#[inline]
fn publishes(sub: &Subscription, msg: &Message, output: Option<&Output>) -> bool {
    (sub.replies() && msg.reply_to().is_some())
        || output.is_some_and(|out| out.destination.is_some() || sub.output().is_some())
}

/// Publishes what the handler returned, before the input is settled: the reply to the input's
/// `reply_to` (unless `reply = false`; an empty one for a handler that returned nothing), then
/// the output to the subscriber's `publish` (or the [`Publish::to`](crate::Publish::to)
/// destination). Both carry the input's `correlation_id`, or a new one. An `Err` says what
/// could not be published.
async fn publish_results(
    sub: &Subscription,
    ctx: &Context,
    msg: &Message,
    output: Option<Box<Output>>,
) -> Result<(), String> {
    let reply_to = msg.reply_to().filter(|_| sub.replies());
    let target = output.as_ref().and_then(|out| {
        let broker = sub.output().map_or(msg.broker(), |t| t.broker);
        match (&out.destination, sub.output()) {
            (Some(destination), _) => Some((destination.as_str(), broker)),
            (None, Some(t)) => Some((t.destination.as_str(), broker)),
            (None, None) => None,
        }
    });
    if reply_to.is_none() && target.is_none() {
        return Ok(());
    }
    let generated;
    let correlation_id = match msg.correlation_id() {
        Some(id) => id,
        None => {
            generated = new_correlation_id();
            &generated
        }
    };
    if let Some(reply_to) = reply_to {
        let mut reply = output
            .as_ref()
            .map_or_else(Output::default, |out| Output::clone(out))
            .to_outgoing(reply_to, correlation_id);
        // The requester matches the reply by the request's id, whatever the handler set.
        reply.headers.insert(CORRELATION_ID, correlation_id);
        sub.layers().publishing(&mut reply, PublishKind::Reply);
        let started = Instant::now();
        let published = match ctx.publishers().get(msg.broker()) {
            Ok(broker) => broker.publish_reply(reply).await,
            Err(e) => Err(e),
        };
        tell_layers(
            sub.layers(),
            msg.broker(),
            reply_to,
            PublishKind::Reply,
            started,
            &published,
        );
        published.map_err(|e| format!("could not publish the reply to `{reply_to}`: {e}"))?;
        tracing::debug!(
            subscriber = sub.name(),
            reply_to,
            correlation_id,
            "reply published"
        );
    }
    if let (Some(out), Some((destination, broker))) = (&output, target) {
        let mut message = out.to_outgoing(destination, correlation_id);
        sub.layers().publishing(&mut message, PublishKind::Output);
        let started = Instant::now();
        let published = match ctx.publishers().get(broker) {
            Ok(publisher) => publisher.publish(message).await,
            Err(e) => Err(e),
        };
        tell_layers(
            sub.layers(),
            broker,
            destination,
            PublishKind::Output,
            started,
            &published,
        );
        published.map_err(|e| {
            format!(
                "could not publish the result to `{destination}` on {}: {e}",
                broker.display_name()
            )
        })?;
        tracing::debug!(
            subscriber = sub.name(),
            destination,
            correlation_id,
            "result published"
        );
    }
    Ok(())
}

/// Runs the layers' `published` hook, if there are layers.
pub(crate) fn tell_layers(
    layers: &Layers,
    broker: BrokerKind,
    destination: &str,
    kind: PublishKind,
    started: Instant,
    result: &Result<(), BrokerError>,
) {
    if layers.is_empty() {
        return;
    }
    let event = Published {
        broker,
        destination,
        kind,
        elapsed: started.elapsed(),
        error: result.as_ref().err(),
    };
    layers.each("published", |l| l.published(&event));
}

/// The engine's own settlements, made once the handler returned (or instead of running it:
/// `max_deliveries`). They go through [`Settler::settle_later`](crate::Settler::settle_later),
/// so a broker crate with a settlement pipeline queues them and the consumer moves on to the
/// next message instead of waiting for the broker's round trip; `Settled` then means handed
/// over, and a later failure on the wire is the broker crate's to log (the message stays
/// unsettled and is redelivered). AckFirst's ack before the handler is not one of these: it
/// is awaited, since the handler must not run on a message the broker did not take.
async fn settle(sub: &Subscription, msg: &Message, settlement: Settlement) -> Outcome {
    let result = match msg.start_settle(settlement, true) {
        // The common case (a broker whose settlement is local, or one with a pipeline): no
        // future to poll.
        Settling::Done(result) => result,
        pending => pending.finish().await,
    };
    settle_outcome(sub, msg, settlement, result)
}

/// What an engine settlement's `result` makes of the message, logged.
fn settle_outcome(
    sub: &Subscription,
    msg: &Message,
    settlement: Settlement,
    result: Result<SettleReport, BrokerError>,
) -> Outcome {
    match result {
        Ok(SettleReport::Settled(kind)) => Outcome::Settled(kind),
        Ok(SettleReport::AlreadySettled(kind)) => {
            tracing::debug!("already settled as {kind} by the handler; the engine sends nothing");
            Outcome::Settled(kind)
        }
        Err(error) => {
            tracing::error!(subscriber = sub.name(), topic = msg.topic(), message_id = %msg.id(), %error, "could not settle the message ({:?}); the broker will redeliver it", settlement.kind());
            Outcome::SettleFailed
        }
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(non-string panic payload)")
}

/// Runs a subscriber until `stop`: reads messages from `consumer`, handles up to `concurrency`
/// at once (keeping messages with the same ordering key in order), and on `stop` lets in-flight
/// handlers finish until `abort` (the graceful timeout) cuts them off unsettled. Then closes the
/// consumer, which commits or hands back what is left.
pub(crate) async fn run_consumer<H: Handler, C: Consumer>(
    handler: Arc<H>,
    sub: Arc<Subscription>,
    ctx: Context,
    mut consumer: C,
    stop: CancellationToken,
    abort: CancellationToken,
) -> Result<Ended, crate::BrokerError> {
    let workers = sub.concurrency();
    let mut ended = Ended::Stopped;
    if workers <= 1 {
        while let Some(msg) = next_message(&mut consumer, &sub, &stop, &mut ended).await {
            run_until_abort(&*handler, &sub, &ctx, msg, &abort).await;
        }
        consumer.close().await?;
        return Ok(ended);
    }

    // Unkeyed messages go to whichever worker is free; keyed ones always to the same worker,
    // so their order holds.
    let (shared_tx, shared_rx) = mpsc::channel::<Message>(workers);
    let shared_rx = Arc::new(Mutex::new(shared_rx));
    let mut keyed = Vec::with_capacity(workers);
    let mut tasks = JoinSet::new();
    for _ in 0..workers {
        let (tx, rx) = mpsc::channel::<Message>(1);
        keyed.push(tx);
        let worker = Worker {
            handler: handler.clone(),
            sub: sub.clone(),
            ctx: ctx.clone(),
            abort: abort.clone(),
        };
        tasks.spawn(worker.run(rx, shared_rx.clone()));
    }
    while let Some(msg) = next_message(&mut consumer, &sub, &stop, &mut ended).await {
        let sent = match msg.ordering_key() {
            Some(key) => keyed[(key % workers as u64) as usize].send(msg).await,
            None => shared_tx.send(msg).await,
        };
        if sent.is_err() {
            break;
        }
    }
    drop(keyed);
    drop(shared_tx);
    while tasks.join_next().await.is_some() {}
    consumer.close().await?;
    Ok(ended)
}

/// Why a subscriber's loop ended.
#[derive(Debug)]
pub(crate) enum Ended {
    /// The App is stopping.
    Stopped,
    /// The consumer ended for good on its own; the last error it reported, if any.
    ConsumerEnded(Option<String>),
}

struct Worker<H> {
    handler: Arc<H>,
    sub: Arc<Subscription>,
    ctx: Context,
    abort: CancellationToken,
}

impl<H: Handler> Worker<H> {
    async fn run(
        self,
        mut own: mpsc::Receiver<Message>,
        shared: Arc<Mutex<mpsc::Receiver<Message>>>,
    ) {
        let mut own_open = true;
        loop {
            let msg = tokio::select! {
                m = own.recv(), if own_open => match m {
                    Some(m) => m,
                    None => { own_open = false; continue }
                },
                m = async { shared.lock().await.recv().await } => match m {
                    Some(m) => m,
                    None => break, // the dispatcher is done
                },
            };
            run_until_abort(&*self.handler, &self.sub, &self.ctx, msg, &self.abort).await;
        }
        while let Some(msg) = own.recv().await {
            run_until_abort(&*self.handler, &self.sub, &self.ctx, msg, &self.abort).await;
        }
    }
}

/// The next message; `None` when the App stops or the consumer ended (then `ended` says so,
/// with the consumer's last error as the reason).
async fn next_message<C: Consumer>(
    consumer: &mut C,
    sub: &Subscription,
    stop: &CancellationToken,
    ended: &mut Ended,
) -> Option<Message> {
    let mut last_error = None;
    loop {
        // The stop is checked first with a load, then the consumer is polled before the stop
        // token: a message that is ready is taken without registering (and removing again) a
        // waiter on the token, about 100 instructions per message.
        if stop.is_cancelled() {
            return None;
        }
        let next = tokio::select! {
            biased;
            next = consumer.next() => next,
            _ = stop.cancelled() => return None,
        };
        match next {
            Some(Ok(msg)) => return Some(msg),
            None => {
                *ended = Ended::ConsumerEnded(last_error);
                return None;
            }
            Some(Err(error)) => {
                tracing::error!(subscriber = sub.name(), %error, "consumer error");
                last_error = Some(error.to_string());
                // Back off a little so a persistent failure does not spin.
                tokio::select! {
                    _ = stop.cancelled() => return None,
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
            }
        }
    }
}

async fn run_until_abort<H: Handler>(
    handler: &H,
    sub: &Subscription,
    ctx: &Context,
    msg: Message,
    abort: &CancellationToken,
) -> Outcome {
    let cancelled = || {
        tracing::warn!(
            subscriber = sub.name(),
            "graceful shutdown timed out; message left unsettled for redelivery"
        );
        Outcome::Cancelled
    };
    if abort.is_cancelled() {
        return cancelled();
    }
    // The handler first, as in `next_message`: one that completes without waiting never
    // registers a waiter on the abort token.
    tokio::select! {
        biased;
        outcome = process(handler, sub, ctx, msg) => outcome,
        _ = abort.cancelled() => cancelled(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use AckPolicy::*;
    use Completion::*;

    const R: Settlement = Settlement::Reject;
    const A: Settlement = Settlement::Ack;
    const N: Settlement = Settlement::NACK;

    use crate::handler::kind;
    use crate::message::{SettleFuture, Settler};
    use crate::subscription::SubscriptionBuilder;
    use brook_caps::BrokerKind;
    use std::sync::Mutex as StdMutex;

    /// Which settler path a settlement took.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Path {
        Awaited(Settlement),
        Later(Settlement),
    }

    struct Recorder(Arc<StdMutex<Vec<Path>>>);

    impl Settler for Recorder {
        fn settle(&self, s: Settlement) -> SettleFuture<'_> {
            self.0.lock().unwrap().push(Path::Awaited(s));
            SettleFuture::ready(Ok(()))
        }

        fn settle_later(&self, s: Settlement) -> SettleFuture<'_> {
            self.0.lock().unwrap().push(Path::Later(s));
            SettleFuture::ready(Ok(()))
        }
    }

    /// Acks through the message first when `early`, then returns `result`.
    struct Scripted {
        sub: SubscriptionBuilder,
        early: bool,
        result: fn() -> Result<(), HandlerError>,
        calls: Arc<StdMutex<u32>>,
    }

    impl Handler for Scripted {
        type Broker = kind::Memory;

        fn subscription(&self) -> SubscriptionBuilder {
            self.sub.clone()
        }

        async fn call(&self, msg: &Message, _: &Context) -> crate::HandlerResult {
            let done: Result<(), HandlerError> = async move {
                *self.calls.lock().unwrap() += 1;
                if self.early {
                    msg.ack()
                        .await
                        .map_err(|e| HandlerError::Failed(e.into()))?;
                }
                (self.result)()
            }
            .await;
            done.map(|()| None)
        }
    }

    async fn run_one(
        policy: AckPolicy,
        early: bool,
        result: fn() -> Result<(), HandlerError>,
        delivery: Option<u32>,
    ) -> (Outcome, Vec<Path>, u32) {
        let sub = crate::subscription::Subscription::new(BrokerKind::Memory, "h")
            .arg("topic", "t")
            .arg("ack_policy", policy)
            .arg("max_deliveries", 3u32);
        let handler = Scripted {
            sub: sub.clone(),
            early,
            result,
            calls: Arc::default(),
        };
        let seen = Arc::new(StdMutex::new(Vec::new()));
        let mut msg = Message::new(
            BrokerKind::Memory,
            "t".into(),
            bytes::Bytes::new(),
            Recorder(seen.clone()),
        );
        if let Some(n) = delivery {
            msg = msg.with_delivery_count(n);
        }
        let outcome = process(&handler, &sub.build().unwrap(), &Context::default(), msg).await;
        let paths = seen.lock().unwrap().clone();
        let calls = *handler.calls.lock().unwrap();
        (outcome, paths, calls)
    }

    fn ok() -> Result<(), HandlerError> {
        Ok(())
    }

    fn failed() -> Result<(), HandlerError> {
        Err(HandlerError::Failed(anyhow::anyhow!("boom")))
    }

    fn rejected() -> Result<(), HandlerError> {
        Err(HandlerError::Failed(crate::interrupt::Reject.into()))
    }

    #[tokio::test]
    async fn the_engines_own_settlements_are_handed_over_and_a_handlers_are_awaited() {
        use Path::*;
        // Policy decisions after the handler returned: through settle_later.
        let (outcome, paths, _) = run_one(Ack, false, ok, None).await;
        assert_eq!(
            (outcome, paths),
            (Outcome::Settled(Settled::Acked), vec![Later(A)])
        );
        let (_, paths, _) = run_one(NackOnError, false, failed, Some(1)).await;
        assert_eq!(paths, vec![Later(N)]);
        let (_, paths, _) = run_one(Manual, false, rejected, None).await;
        assert_eq!(paths, vec![Later(R)], "an interrupt");
        // The last allowed delivery fails: rejected instead of nacked, handed over too.
        let (_, paths, _) = run_one(NackOnError, false, failed, Some(3)).await;
        assert_eq!(paths, vec![Later(R)]);
        // Past max_deliveries: rejected without running the handler.
        let (_, paths, calls) = run_one(NackOnError, false, ok, Some(4)).await;
        assert_eq!((paths, calls), (vec![Later(R)], 0));
        // The handler's own ack is awaited, and the engine sends nothing after it (settle once).
        let (outcome, paths, _) = run_one(Manual, true, ok, None).await;
        assert_eq!(
            (outcome, paths),
            (Outcome::Settled(Settled::Acked), vec![Awaited(A)])
        );
        let (outcome, paths, _) = run_one(RejectOnError, true, failed, None).await;
        assert_eq!(
            (outcome, paths),
            (Outcome::Settled(Settled::Acked), vec![Awaited(A)])
        );
        // AckFirst acks before the handler runs: awaited.
        let (_, paths, _) = run_one(AckFirst, false, ok, None).await;
        assert_eq!(paths, vec![Awaited(A)]);
    }

    #[test]
    fn the_policy_table() {
        // policy, Succeeded, Failed, Panicked, Undecodable
        let table = [
            (AckFirst, None, None, None, None),
            (Ack, Some(A), Some(A), Some(A), Some(R)),
            (RejectOnError, Some(A), Some(R), Some(R), Some(R)),
            (NackOnError, Some(A), Some(N), Some(N), Some(R)),
            (Manual, None, None, None, Some(R)),
        ];
        for (policy, ok, failed, panicked, undecodable) in table {
            assert_eq!(decide(policy, Succeeded, R), ok, "{policy} ok");
            assert_eq!(decide(policy, Failed, R), failed, "{policy} failed");
            assert_eq!(decide(policy, Panicked, R), panicked, "{policy} panicked");
            assert_eq!(
                decide(policy, Undecodable, R),
                undecodable,
                "{policy} undecodable"
            );
        }
    }

    #[test]
    fn interrupts_apply_under_every_policy_and_decode_errors_can_nack() {
        for policy in AckPolicy::ALL {
            for s in [
                A,
                N,
                R,
                Settlement::Nack {
                    delay: Some(Duration::from_secs(1)),
                },
            ] {
                assert_eq!(decide(policy, Interrupted(s), R), Some(s), "{policy} {s:?}");
            }
        }
        assert_eq!(decide(NackOnError, Undecodable, N), Some(N));
    }
}
