//! What a crash costs: the consumer runs in a child process (this test binary, run again with
//! one test selected and its settings in the environment) that is killed with SIGKILL, so no
//! graceful stop, no librdkafka close (dropping an rdkafka consumer closes it, and librdkafka's
//! close commits the stored offsets: only killing the process really skips the final commit).
//! The group's committed offset after the kill is what a new member reads from.
mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use brook_runtime::{AckPolicy, App, Context, Handler, HandlerError, Message, Outgoing};
use bytes::Bytes;
use common::*;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;

/// Set in the child: `topic group commit_every interval_ms block_at session_ms policy`.
const CHILD: &str = "BROOK_KAFKA_CRASH_CHILD";
/// What the child prints for each handler call (before the handler settles it).
const CALL: &str = "brook-crash-child call ";

#[derive(Clone, Copy)]
struct Settings {
    /// `KafkaBroker::commit_every` (0: off).
    commit_every: u32,
    /// `KafkaBroker::commit_interval`.
    interval: Duration,
    /// The child's handler blocks (forever) on the message at this offset, so exactly the
    /// messages before it are handled and settled when the child is killed.
    block_at: i64,
    /// `session.timeout.ms`: how long the group waits for a member that stopped heartbeating.
    session: Duration,
    /// `Ack` or `AckFirst`.
    policy: AckPolicy,
}

const fn settings(commit_every: u32, interval: Duration, block_at: i64) -> Settings {
    Settings {
        commit_every,
        interval,
        block_at,
        session: SESSION,
        policy: AckPolicy::Ack,
    }
}

/// Reports each call on stdout, then blocks forever on `block_at`.
struct Reporter {
    sub: brook_runtime::SubscriptionBuilder,
    block_at: i64,
}

impl Handler for Reporter {
    type Broker = brook_runtime::kind::Kafka;

    fn subscription(&self) -> brook_runtime::SubscriptionBuilder {
        self.sub.clone()
    }

    async fn call(&self, msg: &Message, _: &Context) -> brook_runtime::HandlerResult {
        let done: Result<(), HandlerError> = async move {
            let offset = msg
                .raw::<brook_kafka::KafkaMessage>()
                .expect("a Kafka message")
                .offset();
            println!("{CALL}{offset}");
            if offset >= self.block_at {
                std::future::pending::<()>().await;
            }
            Ok(())
        }
        .await;
        done.map(|()| None)
    }
}

/// The child: an App with `settings` on `topic`/`group` until it is killed (bounded: it ends
/// by itself after a minute, failing).
async fn child(config: &str) {
    let f: Vec<&str> = config.split(' ').collect();
    let [topic, group, every, interval, block_at, session, policy] = f[..] else {
        panic!("bad {CHILD}: {config}");
    };
    let broker = broker()
        .commit_every(every.parse().expect("commit_every"))
        .commit_interval(Duration::from_millis(interval.parse().expect("interval")))
        .with_consumer_config("session.timeout.ms", session);
    let handler = Reporter {
        sub: subscription(
            topic,
            group,
            match policy {
                "AckFirst" => AckPolicy::AckFirst,
                _ => AckPolicy::Ack,
            },
        ),
        block_at: block_at.parse().expect("block_at"),
    };
    let _app = App::new(broker)
        .subscribe(handler)
        .start()
        .await
        .expect("child start");
    tokio::time::sleep(Duration::from_secs(60)).await;
    panic!("the crash child was not killed within a minute");
}

/// A running child, killed on drop.
struct Child {
    process: tokio::process::Child,
    calls: mpsc::UnboundedReceiver<i64>,
}

impl Child {
    /// Starts this binary again, running only `test` as the child with `settings`.
    fn start(test: &str, topic: &str, group: &str, s: Settings) -> Child {
        let config = format!(
            "{topic} {group} {} {} {} {} {:?}",
            s.commit_every,
            s.interval.as_millis(),
            s.block_at,
            s.session.as_millis(),
            s.policy,
        );
        let mut process = tokio::process::Command::new(std::env::current_exe().expect("exe"))
            .args([test, "--exact", "--nocapture", "--test-threads", "1"])
            .env(CHILD, config)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("start the crash child");
        let stdout = process.stdout.take().expect("piped stdout");
        let (tx, calls) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(offset) = line.strip_prefix(CALL) {
                    let _ = tx.send(offset.trim().parse::<i64>().expect("offset"));
                }
            }
        });
        Child { process, calls }
    }

    /// Waits until the child's handler was called for `offset` (so every earlier message
    /// was handled and settled: one partition, concurrency 1).
    async fn wait_call(&mut self, offset: i64) {
        loop {
            match tokio::time::timeout(WAIT, self.calls.recv()).await {
                Ok(Some(o)) if o == offset => return,
                Ok(Some(_)) => {}
                _ => panic!("the crash child did not reach offset {offset} within {WAIT:?}"),
            }
        }
    }

    /// SIGKILL: no graceful stop, no close, no final commit.
    async fn kill(mut self) {
        self.process.kill().await.expect("SIGKILL the child");
    }
}

const MESSAGES: i64 = 10;

/// A fresh one-partition topic with [`MESSAGES`] messages, one record batch each (the test
/// broker, tansu, cannot serve a fetch that starts inside a multi-record batch; see the
/// Testing section of docs/brokers/kafka.md).
async fn topic_with_messages(prefix: &str) -> (String, String) {
    let (topic, group) = fresh_topic(prefix, 1).await;
    let b = broker();
    for i in 0..MESSAGES {
        b.publish_to_partition(
            Outgoing::new(topic.clone(), Bytes::from(format!("m{i}"))),
            Some(0),
        )
        .await
        .expect("publish");
    }
    (topic, group)
}

/// Offsets a fresh member of the group reads (from the committed offset on).
async fn reread(group: &str, topic: &str) -> Vec<i64> {
    remaining(group, topic, 1)
        .await
        .into_iter()
        .map(|(_, o, _)| o)
        .collect()
}

const LONG: Duration = Duration::from_secs(600);
const SESSION: Duration = Duration::from_secs(6);

/// In the child process (the environment says so): runs the child until it is killed.
/// Otherwise (the test itself, the parent) returns `false` at once.
async fn as_child() -> bool {
    match std::env::var(CHILD) {
        Ok(config) => {
            child(&config).await;
            true
        }
        Err(_) => false,
    }
}

/// `commit_every(1)`: every settled message is committed while the App runs, so after a
/// crash a new member reads again only the message that was being handled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_crash_commit_every_1_rereads_only_the_message_in_flight() {
    if as_child().await {
        return;
    }
    let (topic, group) = topic_with_messages("crash1").await;
    let k = 5;
    let mut c = Child::start(
        "after_a_crash_commit_every_1_rereads_only_the_message_in_flight",
        &topic,
        &group,
        // No background commit within the test: only commit_every commits.
        settings(1, LONG, k),
    );
    c.wait_call(k).await;
    // Committed while the child runs (the asynchronous commit lands within milliseconds;
    // without commit_every nothing is committed for 10 minutes).
    assert_eq!(
        wait_committed(&group, &topic, &[Some(k)]).await,
        [Some(k)],
        "commit_every(1) committed the {k} settled messages"
    );
    let killed = Instant::now();
    c.kill().await;
    assert_eq!(committed(&group, &topic, 1).await, [Some(k)]);
    assert_eq!(
        reread(&group, &topic).await,
        (k..MESSAGES).collect::<Vec<_>>()
    );

    // A new member takes over once the dead one's session timed out (6 s here; librdkafka's
    // default is 45 s), and starts at the committed offset.
    let (h, mut rx) = Scripted::new(subscription(&topic, &group, AckPolicy::Ack), |_, _| Ok(()));
    let app = App::new(broker())
        .subscribe(h)
        .start()
        .await
        .expect("start");
    let first = tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("the new member gets the partition")
        .expect("open")
        .offset;
    let recovery = killed.elapsed();
    eprintln!("recovery after the kill: {recovery:?} (session.timeout.ms {SESSION:?})");
    assert_eq!(first, k, "the new member starts at the committed offset");
    app.stop().await.expect("stop");
}

/// `commit_every(3)`: the 3rd and the 6th settlement start a commit of the stored offsets
/// (which may already include the next message, settled while the request was queued); the
/// 7th starts none. So after the crash at most 3 of the 7 handled messages are read again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_crash_commit_every_n_rereads_at_most_n() {
    if as_child().await {
        return;
    }
    let (topic, group) = topic_with_messages("crash3").await;
    let (n, k) = (3, 7);
    let mut c = Child::start(
        "after_a_crash_commit_every_n_rereads_at_most_n",
        &topic,
        &group,
        settings(n, LONG, k),
    );
    c.wait_call(k).await;
    // The commit the 6th settlement started lands (nothing else commits within the test).
    let started = Instant::now();
    while committed(&group, &topic, 1).await[0] < Some(6) {
        assert!(
            started.elapsed() < WAIT,
            "no commit after the 6th settlement"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    c.kill().await;
    let after = committed(&group, &topic, 1).await[0].expect("committed");
    assert!(
        (k - i64::from(n)..=k).contains(&after),
        "committed {after}: within {n} of the {k} handled messages"
    );
    assert_eq!(
        reread(&group, &topic).await,
        (after..MESSAGES).collect::<Vec<_>>()
    );
}

/// `commit_interval`: the background commit (librdkafka's `auto.commit.interval.ms`) commits
/// the settled messages while the App runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_crash_a_short_commit_interval_rereads_only_the_message_in_flight() {
    if as_child().await {
        return;
    }
    let (topic, group) = topic_with_messages("crashint").await;
    let k = 4;
    let mut c = Child::start(
        "after_a_crash_a_short_commit_interval_rereads_only_the_message_in_flight",
        &topic,
        &group,
        settings(0, Duration::from_millis(200), k),
    );
    c.wait_call(k).await;
    assert_eq!(wait_committed(&group, &topic, &[Some(k)]).await, [Some(k)]);
    c.kill().await;
    assert_eq!(committed(&group, &topic, 1).await, [Some(k)]);
    assert_eq!(
        reread(&group, &topic).await,
        (k..MESSAGES).collect::<Vec<_>>()
    );
}

/// Between background commits, a crash loses the commits of everything settled since the
/// last one: a new member reads it all again (here: nothing was committed yet).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_crash_between_background_commits_everything_since_the_last_is_reread() {
    if as_child().await {
        return;
    }
    let (topic, group) = topic_with_messages("crashlag").await;
    let mut c = Child::start(
        "after_a_crash_between_background_commits_everything_since_the_last_is_reread",
        &topic,
        &group,
        settings(0, LONG, 5),
    );
    c.wait_call(5).await;
    c.kill().await;
    assert_eq!(
        committed(&group, &topic, 1).await,
        [None],
        "five messages were handled and settled, but none committed"
    );
    assert_eq!(
        reread(&group, &topic).await,
        (0..MESSAGES).collect::<Vec<_>>()
    );
}

/// `AckFirst` with `commit_every(1)`: the message is acked (its offset stored by librdkafka)
/// before the handler runs, and committed right away, so after a crash the message that was
/// being handled is not read again: at-most-once, as the policy says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_crash_ack_first_with_commit_every_1_does_not_reread_the_message_in_flight() {
    if as_child().await {
        return;
    }
    let (topic, group) = topic_with_messages("crashfirst").await;
    let k = 5;
    let mut c = Child::start(
        "after_a_crash_ack_first_with_commit_every_1_does_not_reread_the_message_in_flight",
        &topic,
        &group,
        Settings {
            policy: AckPolicy::AckFirst,
            ..settings(1, LONG, k)
        },
    );
    c.wait_call(k).await;
    assert_eq!(
        wait_committed(&group, &topic, &[Some(k + 1)]).await,
        [Some(k + 1)],
        "committed through the message whose handler is running"
    );
    c.kill().await;
    assert_eq!(committed(&group, &topic, 1).await, [Some(k + 1)]);
    assert_eq!(
        reread(&group, &topic).await,
        (k + 1..MESSAGES).collect::<Vec<_>>()
    );
}
