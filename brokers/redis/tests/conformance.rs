//! The runtime's conformance suite on a real Redis, through a stream read by a consumer group
//! with a dead-letter stream.

mod common;

use brook_redis::RedisBroker;
use brook_runtime::conformance::{Adapter, TestSource};
use brook_runtime::BrokerError;
use bytes::Bytes;
use common::*;

struct RedisAdapter;

impl RedisAdapter {
    fn new() -> Self {
        RedisAdapter
    }
}

fn arg<'a>(source: &'a TestSource, name: &str) -> &'a str {
    source
        .args
        .iter()
        .find(|(n, _)| n == name)
        .and_then(|(_, v)| v.as_str())
        .unwrap_or_default()
}

impl Adapter for RedisAdapter {
    type Broker = RedisBroker;
    type Kind = brook_runtime::kind::Redis;

    async fn broker(&self) -> RedisBroker {
        RedisBroker::new(URL)
    }

    async fn fresh_source(&self, test: &str) -> Result<TestSource, BrokerError> {
        let stream = unique(test);
        let dlq = format!("{stream}:dead");
        Ok(TestSource {
            args: vec![
                ("stream".into(), stream.clone().into()),
                ("group".into(), "conformance".into()),
                ("dead_letter_stream".into(), dlq.into()),
            ],
            destination: format!("stream:{stream}"),
        })
    }

    async fn remaining(&self, source: &TestSource) -> Result<Vec<Bytes>, BrokerError> {
        let c = raw().await;
        let entries = remaining(&c, arg(source, "stream"), arg(source, "group")).await;
        Ok(entries.iter().map(Entry::body).collect())
    }

    async fn dead_letters(&self, source: &TestSource) -> Result<Vec<Bytes>, BrokerError> {
        let c = raw().await;
        let entries = xrange(&c, arg(source, "dead_letter_stream")).await;
        Ok(entries.iter().map(Entry::body).collect())
    }
}

brook_runtime::conformance_tests!(RedisAdapter::new(); broker = redis, stream = _, group = _, dead_letter_stream = _);
