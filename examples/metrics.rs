//! Metrics, health and docs over HTTP: an App on a Redis stream with brook's Prometheus layer,
//! and an axum server with `/metrics` (OpenMetrics text), `/health/live` and `/health/ready`
//! (200 or 503, with each subscriber's state as JSON), the endpoints a Prometheus scraper and a
//! Kubernetes probe use, and the App's AsyncAPI document at `/asyncapi` (the HTML view),
//! `/asyncapi.json` and `/asyncapi.yaml`.
//!
//! `cargo run --example metrics --features prometheus,redis,asyncapi` with Redis on 127.0.0.1:6379
//! (`REDIS_URL` to change it), then `curl 127.0.0.1:9464/metrics` (`METRICS_ADDR` to change
//! it) while publishing to the stream `ORDERS_STREAM` (default `brook.example.metrics`):
//! `redis-cli XADD brook.example.metrics '*' data '{"id":1}'`. Stops on Ctrl-C.

use std::time::Duration;

use axum::extract::State as AxumState;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use brook::asyncapi::AsyncApi;
use brook::metrics::{Metrics, CONTENT_TYPE};
use brook::prelude::*;
use brook::redis::RedisBroker;
use brook::{HealthHandle, Timeout};

/// An order, as the stream carries it.
#[derive(serde::Deserialize, schemars::JsonSchema)]
pub struct Order {
    id: u64,
}

#[brook::redis::subscriber(stream = _, group = "billing", ack_policy = NackOnError, max_deliveries = 5)]
pub async fn bill(order: Order) -> anyhow::Result<()> {
    tracing::info!(order.id, "billed");
    Ok(())
}

/// The HTTP side: `/metrics`, `/health/live`, `/health/ready`.
pub fn router(metrics: Metrics, health: HealthHandle) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(
                |AxumState((metrics, _)): AxumState<(Metrics, HealthHandle)>| async move {
                    ([(header::CONTENT_TYPE, CONTENT_TYPE)], metrics.encode())
                },
            ),
        )
        .route(
            "/health/live",
            get(
                |AxumState((_, health)): AxumState<(Metrics, HealthHandle)>| async move {
                    let health = health.health();
                    probe(health.is_alive(), &health)
                },
            ),
        )
        .route(
            "/health/ready",
            get(
                |AxumState((_, health)): AxumState<(Metrics, HealthHandle)>| async move {
                    let health = health.health();
                    probe(health.is_ready(), &health)
                },
            ),
        )
        .with_state((metrics, health))
}

/// The App's AsyncAPI document: `/asyncapi` (the HTML view), `/asyncapi.json`,
/// `/asyncapi.yaml`, rendered once.
pub fn docs(doc: &AsyncApi) -> Router {
    let (html, json, yaml) = (doc.to_html(), doc.to_json(), doc.to_yaml());
    Router::new()
        .route(
            "/asyncapi",
            get(
                move || async move { ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], html) },
            ),
        )
        .route(
            "/asyncapi.json",
            get(move || async move { ([(header::CONTENT_TYPE, "application/json")], json) }),
        )
        .route(
            "/asyncapi.yaml",
            get(move || async move { ([(header::CONTENT_TYPE, "application/yaml")], yaml) }),
        )
}

fn probe(ok: bool, health: &brook::Health) -> impl IntoResponse {
    let subscribers: Vec<_> = health
        .subscribers
        .iter()
        .map(|s| {
            serde_json::json!({
                "subscriber": s.subscriber,
                "broker": s.broker.name(),
                "source": s.source,
                "consuming": s.consuming,
                "ended": s.ended,
                "received": s.received,
                "seconds_since_last_message": s.last_message_at
                    .and_then(|at| at.elapsed().ok())
                    .map(|d| d.as_secs()),
                "consecutive_failures": s.consecutive_failures,
            })
        })
        .collect();
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::json!({ "ok": ok, "subscribers": subscribers });
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let stream = std::env::var("ORDERS_STREAM").unwrap_or_else(|_| "brook.example.metrics".into());
    let addr = std::env::var("METRICS_ADDR").unwrap_or_else(|_| "127.0.0.1:9464".into());

    let metrics = Metrics::new();
    let app = App::new(RedisBroker::new(url))
        .layer(metrics.clone())
        .layer(Timeout::new(Duration::from_secs(30)))
        .subscribe(bill.stream(stream));
    let doc = app
        .asyncapi()
        .title("brook example: metrics")
        .version(env!("CARGO_PKG_VERSION"));
    let running = app.start().await?;
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    tracing::info!(%addr, "serving /metrics, /health/live, /health/ready, /asyncapi");
    let routes = router(metrics, running.health_handle()).merge(docs(&doc));
    let server = axum::serve(listener, routes);
    let shutdown = running.shutdown_handle();
    tokio::select! {
        served = server => served?,
        _ = tokio::signal::ctrl_c() => shutdown.shutdown(),
    }
    running.wait().await?;
    Ok(())
}
