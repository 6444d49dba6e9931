#![cfg(all(feature = "full", feature = "asyncapi"))]
//! The AsyncAPI document of an App, checked from outside: the official parser
//! (`@asyncapi/parser`, with Node.js) accepts it with no errors or warnings, a snapshot pins it,
//! names from configuration appear as configured, and the HTML view renders the channels and
//! operations in headless Chromium (a screenshot is kept under the target's test tmpdir).
//!
//! The tools come from `scripts/asyncapi.sh` (scripts/test runs it): `BROOK_ASYNCAPI_NODE` is
//! the parser's npm folder, `BROOK_CHROMIUM` the browser. A test that cannot find them fails
//! and says how to install them; it never passes having checked nothing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use brook::asyncapi::AsyncApi;
use brook::prelude::*;
use serde_json::Value;

#[allow(dead_code)]
#[path = "../examples/asyncapi.rs"]
mod example;

fn config() -> example::Config {
    example::Config {
        amqp_url: "amqp://app:s3cret@127.0.0.1:5672/%2f".into(),
        kafka_url: "127.0.0.1:9092".into(),
        nats_url: "nats://127.0.0.1:4222".into(),
        redis_url: "redis://:hunter2@127.0.0.1:6379".into(),
        mqtt_url: "mqtt://127.0.0.1:1883?client_id=brook-example&protocol=5".into(),
        orders_queue: "orders".into(),
        invoices_topic: "invoices".into(),
    }
}

fn document() -> AsyncApi {
    example::document(&example::app(&config()))
}

fn node_dir() -> PathBuf {
    let dir = match std::env::var_os("BROOK_ASYNCAPI_NODE") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
            .join(".cache/brook-ci/asyncapi-node"),
    };
    assert!(
        dir.join("node_modules/@asyncapi/parser").exists(),
        "@asyncapi/parser is not in {}: run `bash scripts/asyncapi.sh` (scripts/test does), or set BROOK_ASYNCAPI_NODE",
        dir.display()
    );
    dir
}

/// Runs `program` with a deadline, returning its stdout. Output goes to files, not pipes: a
/// browser's DOM dump is megabytes, more than a pipe holds while nobody reads it.
fn run(program: &mut Command, timeout: Duration) -> String {
    static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let base = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("asyncapi-run-{}-{n}", std::process::id()));
    let (out_path, err_path) = (base.with_extension("out"), base.with_extension("err"));
    let mut child = program
        .stdout(std::fs::File::create(&out_path).expect("stdout file"))
        .stderr(std::fs::File::create(&err_path).expect("stderr file"))
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {program:?}: {e}"));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{program:?} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    let _ = (
        std::fs::remove_file(&out_path),
        std::fs::remove_file(&err_path),
    );
    assert!(status.success(), "{program:?} failed: {status}\n{stderr}");
    stdout
}

/// What the official parser says of `text` (JSON or YAML).
fn parse(text: &str, name: &str) -> Value {
    let dir = node_dir();
    let file = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    std::fs::write(&file, text).expect("write the document");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/asyncapi/validate.mjs");
    let out = run(
        Command::new("node")
            .arg(script)
            .arg(&file)
            .env("BROOK_ASYNCAPI_NODE", dir),
        Duration::from_secs(60),
    );
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("parser output {out:?}: {e}"))
}

fn problems(report: &Value) -> Vec<&Value> {
    report["diagnostics"]
        .as_array()
        .expect("diagnostics")
        .iter()
        .filter(|d| d["severity"] == "error" || d["severity"] == "warning")
        .collect()
}

#[test]
fn the_official_parser_accepts_the_document_as_json_and_yaml() {
    let doc = document();
    for (text, name) in [
        (doc.to_json(), "asyncapi.json"),
        (doc.to_yaml(), "asyncapi.yaml"),
    ] {
        let report = parse(&text, name);
        assert_eq!(report["parsed"], true, "{name}: {report:#}");
        assert_eq!(report["version"], "3.0.0");
        assert!(
            problems(&report).is_empty(),
            "{name}: errors or warnings: {report:#}"
        );
        // The parser sees what brook meant: every channel and operation, with its action.
        let channels = report["channels"].as_array().expect("channels");
        for address in [
            "orders",
            "invoices",
            "prices.quote",
            "shipments",
            "sensors/+/temperature",
            "audit",
        ] {
            assert!(
                channels.iter().any(|c| c == address),
                "{name}: no channel {address}: {channels:?}"
            );
        }
        let operations = report["operations"].as_array().expect("operations");
        for (id, action) in [
            ("bill", "receive"),
            ("bill_publish", "send"),
            ("record", "receive"),
            ("quote", "receive"),
            ("ship", "receive"),
            ("temperature", "receive"),
            ("publish_audit", "send"),
        ] {
            assert!(
                operations
                    .iter()
                    .any(|o| o["id"] == id && o["action"] == action),
                "{name}: no {action} operation {id}: {operations:?}"
            );
        }
    }
}

#[test]
fn the_parser_check_can_fail() {
    // The same document with an operation on a channel that does not exist: if the parser did
    // not report it, the test above would prove nothing.
    let mut doc = document().to_value();
    doc["operations"]["bill"]["channel"]["$ref"] = "#/channels/nowhere".into();
    let report = parse(&doc.to_string(), "broken.json");
    assert!(
        report["diagnostics"]
            .as_array()
            .expect("diagnostics")
            .iter()
            .any(|d| d["severity"] == "error"),
        "a dangling $ref got no error: {report:#}"
    );
}

#[test]
fn snapshot_of_the_example_app() {
    let yaml = document().to_yaml();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots/asyncapi.yaml");
    if std::env::var_os("BROOK_UPDATE_SNAPSHOTS").is_some() {
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&path, &yaml).expect("write the snapshot");
        return;
    }
    let pinned = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (BROOK_UPDATE_SNAPSHOTS=1 writes it)",
            path.display()
        )
    });
    if pinned != yaml {
        let actual = Path::new(env!("CARGO_TARGET_TMPDIR")).join("asyncapi.snapshot.yaml");
        std::fs::write(&actual, &yaml).expect("write");
        panic!(
            "the document changed: compare {} with {} (BROOK_UPDATE_SNAPSHOTS=1 accepts it)",
            path.display(),
            actual.display()
        );
    }
}

#[test]
fn names_from_configuration_appear_as_configured() {
    let config = example::Config {
        orders_queue: "eu-west.orders.v2".into(),
        invoices_topic: "eu-west-invoices".into(),
        ..config()
    };
    let doc = example::document(&example::app(&config)).to_value();
    let addresses: Vec<&str> = doc["channels"]
        .as_object()
        .expect("channels")
        .values()
        .filter_map(|c| c["address"].as_str())
        .collect();
    assert!(addresses.contains(&"eu-west.orders.v2"), "{addresses:?}");
    assert!(addresses.contains(&"eu-west-invoices"), "{addresses:?}");
    assert!(!addresses.contains(&"orders"), "{addresses:?}");
    assert!(!addresses.contains(&"invoices"), "{addresses:?}");
    let queue = &doc["channels"]["rabbit_eu-west_orders_v2"]["bindings"]["amqp"]["queue"];
    assert_eq!(queue["name"], "eu-west.orders.v2", "{doc:#}");
    let kafka = &doc["channels"]["kafka_eu-west-invoices"]["bindings"]["kafka"];
    assert_eq!(kafka["topic"], "eu-west-invoices", "{doc:#}");
}

#[test]
fn servers_show_where_the_brokers_are_and_never_their_credentials() {
    let doc = document();
    let json = doc.to_json();
    for secret in ["s3cret", "hunter2", "app:"] {
        assert!(!json.contains(secret), "`{secret}` in the document");
    }
    let value = doc.to_value();
    let servers = &value["servers"];
    for (name, protocol, host) in [
        ("rabbit", "amqp", "127.0.0.1:5672"),
        ("kafka", "kafka", "127.0.0.1:9092"),
        ("nats", "nats", "127.0.0.1:4222"),
        ("redis", "redis", "127.0.0.1:6379"),
        ("mqtt", "mqtt", "127.0.0.1:1883"),
    ] {
        assert_eq!(servers[name]["protocol"], protocol, "{servers:#}");
        assert_eq!(servers[name]["host"], host, "{servers:#}");
    }
    assert_eq!(servers["mqtt"]["protocolVersion"], "5", "{servers:#}");
}

#[test]
fn operations_carry_policies_bindings_replies_and_schemas() {
    let doc = document().to_value();
    let ops = &doc["operations"];
    assert_eq!(ops["bill"]["x-brook-ack-policy"], "NackOnError");
    assert_eq!(
        ops["bill"]["summary"],
        "Bills an order and publishes its invoice on Kafka."
    );
    assert_eq!(
        ops["bill"]["description"],
        "A failure hands the order back to the queue, to be delivered again."
    );
    assert_eq!(ops["bill"]["bindings"]["amqp"]["ack"], true);
    assert_eq!(ops["ship"]["x-brook-max-deliveries"], 5);
    assert_eq!(ops["ship"]["x-brook-redis"]["group"], "shipping");
    assert_eq!(
        ops["ship"]["x-brook-redis"]["deadLetterStream"],
        "shipments.dead"
    );
    assert_eq!(
        ops["record"]["bindings"]["kafka"]["groupId"]["enum"][0],
        "ledger"
    );
    assert_eq!(ops["quote"]["bindings"]["nats"]["queue"], "pricing");
    assert_eq!(ops["temperature"]["bindings"]["mqtt"]["qos"], 1);
    // The output is published on Kafka, to the configured topic.
    assert_eq!(
        ops["bill_publish"]["channel"]["$ref"],
        "#/channels/kafka_invoices"
    );
    // Request/reply: the result goes to the request's reply_to.
    let reply = &ops["quote"]["reply"];
    assert_eq!(reply["address"]["location"], "$message.header#/reply_to");
    assert_eq!(
        reply["messages"][0]["$ref"],
        "#/channels/quote_reply/messages/Quote"
    );
    // A handler that returns nothing answers no request with a body: no reply.
    assert!(ops["ship"].get("reply").is_none());

    let messages = &doc["components"]["messages"];
    assert_eq!(
        messages["Order"]["payload"]["$ref"],
        "#/components/schemas/Order"
    );
    let schemas = &doc["components"]["schemas"];
    let order = &schemas["Order"];
    assert_eq!(
        order["properties"]["id"]["description"],
        "The order's number."
    );
    assert_eq!(
        order["properties"]["lines"]["items"]["$ref"],
        "#/components/schemas/Line"
    );
    assert!(schemas["Line"]["properties"]["sku"].is_object());
    // No schema: still there, and says so.
    let reading = &messages["Reading"]["payload"]["description"];
    assert!(
        reading.as_str().is_some_and(|d| d.starts_with("No schema")),
        "{reading}"
    );
    assert_eq!(
        messages["Order"]["headers"]["$ref"],
        "#/components/schemas/brook.Headers"
    );
    assert!(schemas["brook.Headers"]["properties"]["correlation_id"].is_object());
}

// What `#[subscriber]` describes, for the shapes a handler can have.
#[derive(serde::Deserialize, serde::Serialize, schemars::JsonSchema)]
struct Invoice {
    total_cents: u64,
}

#[subscriber(topic = "in.a", publish = "out.a")]
async fn optional_publish(text: String) -> anyhow::Result<Option<Publish<Invoice>>> {
    Ok(Some(Publish::new(Invoice {
        total_cents: text.len() as u64,
    })))
}

#[subscriber(topic = "in.b")]
async fn raw(msg: &Message, headers: &Headers) {
    let _ = (msg, headers);
}

/// A hand-written handler with an output: it describes nothing of itself.
struct HandWritten;

impl brook::Handler for HandWritten {
    type Broker = brook::kind::Memory;

    fn subscription(&self) -> brook::SubscriptionBuilder {
        brook::Subscription::new(brook::BrokerKind::Memory, "hand")
            .arg("topic", "orders:{eu}")
            .arg("publish", "out.c")
    }

    async fn call(&self, _: &Message, _: &brook::Context) -> brook::HandlerResult {
        Ok(None)
    }
}

#[test]
fn results_are_taken_out_of_result_option_and_publish() {
    let app = App::new(MemoryBroker::new())
        .subscribe(optional_publish)
        .subscribe(raw)
        .subscribe(HandWritten);
    let doc = app.asyncapi().to_value();
    let messages = &doc["components"]["messages"];
    // The payload is a string: sent as text.
    assert_eq!(messages["String"]["contentType"], "text/plain", "{doc:#}");
    // The result is the Invoice inside Result<Option<Publish<..>>>.
    assert_eq!(
        doc["channels"]["memory_out_a"]["messages"]["Invoice"]["$ref"],
        "#/components/messages/Invoice",
        "{doc:#}"
    );
    assert_eq!(
        messages["Invoice"]["payload"]["$ref"],
        "#/components/schemas/Invoice"
    );
    // An output is documented even when the handler cannot say what it publishes.
    assert_eq!(
        doc["operations"]["hand_publish"]["messages"][0]["$ref"],
        "#/channels/memory_out_c/messages/UndescribedResult",
        "{doc:#}"
    );
    // Braces in a name are literal: declared as a parameter with itself as the only value.
    let channel = &doc["channels"]["memory_orders__eu_"];
    assert_eq!(channel["address"], "orders:{eu}", "{doc:#}");
    assert_eq!(channel["parameters"]["eu"]["enum"][0], "{eu}", "{doc:#}");
    // A handler that decodes nothing reads the raw message.
    assert_eq!(
        doc["operations"]["raw"]["messages"][0]["$ref"],
        "#/channels/memory_in_b/messages/RawMessage",
        "{doc:#}"
    );
}

fn chromium() -> PathBuf {
    let path = std::env::var_os("BROOK_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    assert!(
        path.exists(),
        "Chromium is not at {}: run `bash scripts/asyncapi.sh` (scripts/test does), or set BROOK_CHROMIUM",
        path.display()
    );
    path
}

fn headless(chromium: &Path, profile: &Path) -> Command {
    let mut cmd = Command::new(chromium);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        // Lets the viewer parse the document and render before the DOM is taken.
        "--virtual-time-budget=5000",
    ])
    .arg(format!("--user-data-dir={}", profile.display()));
    cmd
}

#[test]
fn the_html_view_renders_channels_and_operations_in_chromium() {
    let chromium = chromium();
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("asyncapi-html");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let page = dir.join("asyncapi.html");
    std::fs::write(&page, document().to_html()).expect("write the page");
    let url = format!("file://{}", page.display());

    let dom = run(
        headless(&chromium, &dir.join("profile-dom"))
            .arg("--dump-dom")
            .arg(&url),
        Duration::from_secs(120),
    );
    let text = visible_text(&dom);
    for expected in [
        "brook example: orders",
        "orders",
        "invoices",
        "prices.quote",
        "sensors/+/temperature",
        "shipments",
        "Bills an order and publishes its invoice on Kafka.",
        "Answers price requests.",
        "QuoteRequest",
        "Invoice",
    ] {
        assert!(
            text.contains(expected),
            "the rendered page does not show `{expected}`; its text: {}",
            &text[..text.len().min(3000)]
        );
    }
    // The viewer renders, it does not show a parse error.
    assert!(!text.contains("Error"), "the viewer shows an error: {text}");

    let screenshot = dir.join("asyncapi.png");
    let _ = std::fs::remove_file(&screenshot);
    run(
        headless(&chromium, &dir.join("profile-shot"))
            .arg("--window-size=1400,2400")
            .arg(format!("--screenshot={}", screenshot.display()))
            .arg(&url),
        Duration::from_secs(120),
    );
    let png = std::fs::metadata(&screenshot).expect("a screenshot was written");
    assert!(
        png.len() > 10_000,
        "an empty screenshot: {} bytes",
        png.len()
    );
    eprintln!("screenshot: {}", screenshot.display());
}

/// The text of an HTML document, without tags, scripts or styles.
fn visible_text(html: &str) -> String {
    let mut text = String::new();
    let mut rest = html;
    while let Some(start) = rest.find('<') {
        text.push_str(&rest[..start]);
        let tag = &rest[start..];
        let skip_to = ["<script", "<style"]
            .iter()
            .find(|t| tag.starts_with(**t))
            .map(|t| format!("</{}", &t[1..]));
        rest = match skip_to {
            Some(close) => match tag.find(&close) {
                Some(end) => &tag[end..],
                None => "",
            },
            None => match tag.find('>') {
                Some(end) => &tag[end + 1..],
                None => "",
            },
        };
        text.push(' ');
    }
    text.push_str(rest);
    text.replace("&amp;", "&")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#x27;", "'")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}
