#![cfg(all(feature = "prometheus", feature = "redis", feature = "asyncapi"))]
//! The metrics layer and the health endpoints over HTTP, after real traffic on Redis: the
//! example's axum router (`examples/metrics.rs`) is served on a free port and scraped the way
//! Prometheus and a readiness probe would.

use std::time::Duration;

use brook::metrics::Metrics;
use brook::prelude::*;
use brook::redis::RedisBroker;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[allow(dead_code)] // its `main` is the example's
#[path = "../examples/metrics.rs"]
mod example;

const URL: &str = "redis://127.0.0.1:6379";

fn fresh(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{prefix}.{}.{nanos}", std::process::id())
}

/// GET `path` over HTTP/1.1; the status code and the body.
async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// The value of the sample `name{labels}` (labels as written by the encoder, in order).
fn sample(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name_and_labels)?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_endpoint_counts_real_traffic_and_the_probes_answer() {
    let stream = fresh("brook.metrics.orders");
    let broker = RedisBroker::new(URL);
    let metrics = Metrics::new();
    let app = App::new(broker.clone())
        .layer(metrics.clone())
        .subscribe(example::bill.stream(&stream));
    let doc = app.asyncapi().title("metrics test");
    let running = app.start().await.expect("start on Redis");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = example::router(metrics, running.health_handle()).merge(example::docs(&doc));
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let destination = format!("stream:{stream}");
    for id in 0..5u64 {
        broker
            .publish(&serde_json::json!({ "id": id }), &destination)
            .await
            .unwrap();
    }
    for _ in 0..2 {
        broker.publish("not an order", &destination).await.unwrap();
    }

    let labels = format!("broker=\"redis\",subscriber=\"bill\",source=\"{stream}\"");
    let acked = format!("brook_messages_handled_total{{{labels},outcome=\"acked\"}}");
    let rejected = format!("brook_messages_handled_total{{{labels},outcome=\"rejected\"}}");
    // Wait for the numbers the traffic must produce, scraping as Prometheus would.
    let text = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            let (status, text) = get(addr, "/metrics").await;
            assert_eq!(status, 200);
            if sample(&text, &acked) == Some(5.0) && sample(&text, &rejected) == Some(2.0) {
                return text;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("5 acked and 2 rejected within 15 s");
    assert_eq!(
        sample(&text, &format!("brook_messages_received_total{{{labels}}}")),
        Some(7.0)
    );
    assert_eq!(
        sample(&text, &format!("brook_decode_failures_total{{{labels}}}")),
        Some(2.0)
    );
    assert_eq!(
        sample(&text, &format!("brook_messages_in_flight{{{labels}}}")),
        Some(0.0)
    );
    assert_eq!(
        sample(
            &text,
            &format!("brook_handler_duration_seconds_count{{{labels}}}")
        ),
        Some(7.0)
    );
    assert!(text.ends_with("# EOF\n"));

    let (status, body) = get(addr, "/health/ready").await;
    assert_eq!(status, 200, "{body}");
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["subscribers"][0]["received"], 7);
    assert_eq!(health["subscribers"][0]["consuming"], true);
    assert_eq!(get(addr, "/health/live").await.0, 200);

    // The App's document, served next to the metrics, shows the stream as configured.
    let (status, body) = get(addr, "/asyncapi.json").await;
    assert_eq!(status, 200);
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["operations"]["bill"]["action"], "receive", "{doc:#}");
    assert_eq!(doc["operations"]["bill"]["x-brook-max-deliveries"], 5);
    let channel = doc["operations"]["bill"]["channel"]["$ref"]
        .as_str()
        .and_then(|r| r.strip_prefix("#/channels/"))
        .unwrap()
        .to_owned();
    assert_eq!(doc["channels"][&channel]["address"], stream.as_str());
    let (status, yaml) = get(addr, "/asyncapi.yaml").await;
    assert_eq!(status, 200);
    assert!(yaml.contains(&format!("address: \"{stream}\"")), "{yaml}");
    let (status, html) = get(addr, "/asyncapi").await;
    assert_eq!(status, 200);
    assert!(html.contains("AsyncApiStandalone.render"));
    assert!(html.contains(&stream));

    running.stop().await.unwrap();
    server.abort();
}
