//! The App's lifecycle: hooks, shutdown by handle and by SIGTERM, start-up errors, and the
//! tracing span every message gets.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use brook::prelude::*;
use brook::testing::TestApp;
use tokio::sync::Notify;

#[subscriber(broker = memory, topic = "app.events", ack_policy = Ack)]
async fn record(body: String, log: State<Log>) {
    log.push(format!("handled {body}"));
}

#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<String>>>);

impl Log {
    fn push(&self, line: String) {
        self.0.lock().unwrap().push(line);
    }
    fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

#[tokio::test]
async fn hooks_run_around_consumption_and_run_returns_on_the_shutdown_handle() {
    let log = Log::default();
    let broker = MemoryBroker::new();
    let started = Arc::new(Notify::new());
    let (l1, l2, s) = (log.clone(), log.clone(), started.clone());
    let app = App::new(broker.clone())
        .state(log.clone())
        .subscribe(record)
        .on_startup(move || async move {
            l1.push("startup".into());
            s.notify_one();
            Ok(())
        })
        .on_shutdown(move || async move {
            l2.push("shutdown".into());
            Ok(())
        });
    let handle = app.shutdown_handle();
    broker.record();
    let run = tokio::spawn(app.run());
    tokio::time::timeout(Duration::from_secs(5), started.notified())
        .await
        .unwrap();
    let id = broker.publish_traced(Outgoing::encode("one", "app.events").unwrap());
    tokio::time::timeout(
        Duration::from_secs(5),
        broker.wait_for_trace(id, |t| t.is_final()),
    )
    .await
    .unwrap();
    handle.shutdown();
    tokio::time::timeout(Duration::from_secs(5), run)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(log.lines(), vec!["startup", "handled one", "shutdown"]);
}

#[tokio::test]
async fn a_failing_startup_hook_stops_the_start_with_its_error() {
    let app = App::new(MemoryBroker::new())
        .state(Log::default())
        .subscribe(record)
        .on_startup(|| async { anyhow::bail!("database unreachable") });
    let err = start_error(app).await;
    assert!(
        err.contains("startup hook failed: database unreachable"),
        "{err}"
    );
}

/// What `start` refused with (it must refuse).
async fn start_error(app: App<MemoryBroker>) -> String {
    app.start()
        .await
        .err()
        .expect("start must fail")
        .to_string()
}

struct Invalid;

impl brook::Handler for Invalid {
    type Broker = brook::kind::Memory;
    fn subscription(&self) -> brook::SubscriptionBuilder {
        brook::Subscription::new(brook::BrokerKind::Memory, "invalid")
            .arg("topic", "t")
            .arg("concurrency", 0u32)
    }
    async fn call(&self, _: &Message, _: &Context) -> brook::HandlerResult {
        let done: Result<(), brook::HandlerError> = async move { Ok(()) }.await;
        done.map(|()| None)
    }
}

#[tokio::test]
async fn an_invalid_hand_built_subscriber_is_reported_at_start() {
    let err = start_error(App::new(MemoryBroker::new()).subscribe(Invalid)).await;
    assert_eq!(
        err,
        "the App cannot start: subscriber `invalid` on the in-memory broker: `concurrency` must be at least 1"
    );
}

struct Db;

#[subscriber(topic = "app.needs_db", ack_policy = NackOnError)]
async fn needs_db(_body: String, _db: State<Db>) {}

#[subscriber(topic = _, group_id = _)]
async fn open_names(_body: String) {}

#[subscriber(topic = std::env::var("BROOK_TEST_NO_SUCH_VAR").unwrap_or_default())]
async fn from_env(_body: String) {}

#[tokio::test]
async fn start_reports_every_misconfigured_subscriber_and_consumes_nothing() {
    let broker = MemoryBroker::new();
    broker.record();
    let id = broker.publish_traced(Outgoing::encode("x", "app.needs_db").unwrap());
    let err = start_error(
        App::new(broker.clone())
            .subscribe(needs_db)
            .subscribe(open_names.topic("app.open")) // group_id = _ left without a value
            .subscribe(Invalid),
    )
    .await;
    assert!(err.starts_with("the App cannot start: 3 problems"), "{err}");
    assert!(
        err.contains("subscriber `needs_db`: argument `_db` can never be produced on this App: no state of type")
            && err.contains("Db` was registered"),
        "{err}"
    );
    assert!(
        err.contains("`group_id = _` is left to the mount site")
            && err.contains("open_names.group_id(...)"),
        "{err}"
    );
    assert!(err.contains("`concurrency` must be at least 1"), "{err}");
    // Nothing was consumed, so nothing was rejected or dead-lettered: the message waits.
    assert_eq!(broker.trace(id).deliveries, 0);
    assert!(broker.dead_letters("app.needs_db").is_empty());
    assert_eq!(broker.snapshot("app.needs_db").groups[0].waiting.len(), 1);
}

#[tokio::test]
async fn a_name_from_an_expression_is_checked_when_the_app_starts() {
    let err = start_error(App::new(MemoryBroker::new()).subscribe(from_env)).await;
    assert_eq!(
        err,
        "the App cannot start: subscriber `from_env` on the in-memory broker: `topic = \"\"`: a name cannot be empty"
    );
}

#[tokio::test]
async fn a_fixed_name_cannot_be_changed_at_the_mount_site_without_saying_so() {
    let err = start_error(App::new(MemoryBroker::new()).subscribe(record.topic("elsewhere"))).await;
    assert!(
        err.contains("`topic` is fixed by the attribute (topic = \"app.events\")"),
        "{err}"
    );
    let app = App::new(MemoryBroker::new())
        .state(Log::default())
        .subscribe(record.override_name("topic", "elsewhere"))
        .start()
        .await
        .expect("an explicit override starts");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn names_given_at_the_mount_site_are_consumed() {
    let harness = TestApp::start(
        App::new(MemoryBroker::new()).subscribe(open_names.topic("app.mounted").group_id("g")),
    )
    .await
    .unwrap();
    let published = harness.publish("hi", "app.mounted").await.unwrap();
    let trace = published.settled().await.unwrap();
    assert_eq!(trace.last(), Some(Settled::Acked));
}

#[tokio::test]
async fn sigterm_shuts_the_app_down_gracefully() {
    use tokio::signal::unix::{signal, SignalKind};
    // Registering a listener first replaces the default action (terminate the process) for the
    // whole test process, so the signal cannot kill the test before the App listens.
    let mut ours = signal(SignalKind::terminate()).unwrap();
    let started = Arc::new(Notify::new());
    let s = started.clone();
    let app = App::new(MemoryBroker::new())
        .state(Log::default())
        .subscribe(record)
        .on_startup(move || async move {
            s.notify_one();
            Ok(())
        });
    let mut run = tokio::spawn(app.run());
    tokio::time::timeout(Duration::from_secs(5), started.notified())
        .await
        .unwrap();
    // The App starts listening right after the startup hook; repeat the signal until it stops
    // (bounded), since a signal sent before it listens only reaches our own listener.
    let stopped = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            // SAFETY: sending a signal to our own process.
            unsafe { libc::kill(libc::getpid(), libc::SIGTERM) };
            ours.recv().await;
            if let Ok(result) = tokio::time::timeout(Duration::from_millis(100), &mut run).await {
                return result;
            }
        }
    })
    .await
    .expect("the App stops on SIGTERM");
    stopped.unwrap().unwrap();
}

/// The recorded fields of one span.
type Fields = Vec<(String, String)>;

/// Collects the fields of every `brook.message` span.
#[derive(Clone, Default)]
struct SpanFields(Arc<Mutex<Vec<Fields>>>);

struct Visitor<'a>(&'a mut Fields);

impl tracing::field::Visit for Visitor<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.push((
            field.name().to_owned(),
            format!("{value:?}").trim_matches('"').to_owned(),
        ));
    }
}

impl<S> tracing_subscriber::Layer<S> for SpanFields
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        if attrs.metadata().name() != "brook.message" {
            return;
        }
        let mut fields = Vec::new();
        attrs.record(&mut Visitor(&mut fields));
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(fields);
        }
    }

    fn on_record(
        &self,
        id: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        if let Some(span) = ctx.span(id) {
            if let Some(fields) = span.extensions_mut().get_mut::<Fields>() {
                values.record(&mut Visitor(fields));
            }
        }
    }

    fn on_close(&self, id: tracing::span::Id, ctx: tracing_subscriber::layer::Context<'_, S>) {
        if let Some(span) = ctx.span(&id) {
            if let Some(fields) = span.extensions_mut().remove::<Fields>() {
                self.0.lock().unwrap().push(fields);
            }
        }
    }
}

#[subscriber(broker = memory, topic = "app.traced", ack_policy = RejectOnError)]
async fn traced(body: String) -> anyhow::Result<()> {
    anyhow::ensure!(body != "bad", "bad input");
    Ok(())
}

#[test]
fn every_message_gets_a_span_with_broker_topic_id_and_outcome() {
    use tracing_subscriber::layer::SubscriberExt;
    let spans = SpanFields::default();
    let subscriber = tracing_subscriber::registry().with(spans.clone());
    let _guard = tracing::subscriber::set_default(subscriber);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let test = TestApp::start(App::new(MemoryBroker::new()).subscribe(traced))
            .await
            .unwrap();
        let good = test.publish("good", "app.traced").await.unwrap();
        let bad = test.publish("bad", "app.traced").await.unwrap();
        good.settled().await.unwrap();
        bad.settled().await.unwrap();
        test.stop().await.unwrap();
    });
    let spans = spans.0.lock().unwrap().clone();
    assert_eq!(spans.len(), 2, "{spans:?}");
    let get = |span: &Fields, k: &str| {
        span.iter()
            .rev()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
    };
    for (span, outcome) in spans.iter().zip(["acked", "rejected"]) {
        assert_eq!(get(span, "broker").as_deref(), Some("memory"));
        assert_eq!(get(span, "subscriber").as_deref(), Some("traced"));
        assert_eq!(get(span, "topic").as_deref(), Some("app.traced"));
        assert!(get(span, "message_id").is_some());
        assert_eq!(get(span, "delivery").as_deref(), Some("1"));
        assert_eq!(get(span, "outcome").as_deref(), Some(outcome), "{span:?}");
    }
}

#[subscriber(topic = "app.doomed")]
async fn doomed(_body: String) {}

/// A subscriber whose consumer ends for good (here: the broker ends it, as a deleted queue
/// would) fails the App, naming it, instead of leaving a process that looks alive and does
/// nothing; the other subscribers are stopped gracefully.
#[tokio::test]
async fn a_consumer_that_ends_for_good_fails_the_app() {
    let broker = MemoryBroker::new();
    let started = Arc::new(Notify::new());
    let s = started.clone();
    let app = App::new(broker.clone())
        .state(Log::default())
        .subscribe(record)
        .subscribe(doomed)
        .on_startup(move || async move {
            s.notify_one();
            Ok(())
        });
    let run = tokio::spawn(app.run());
    tokio::time::timeout(Duration::from_secs(5), started.notified())
        .await
        .unwrap();
    broker.end_consumers("app.doomed", "the queue was deleted");
    let result = tokio::time::timeout(Duration::from_secs(5), run)
        .await
        .expect("run returns instead of running on")
        .unwrap();
    let err = result.expect_err("the App fails");
    assert_eq!(
        err.to_string(),
        "subscriber `doomed` stopped consuming for good: the in-memory broker: the queue was deleted"
    );
}
