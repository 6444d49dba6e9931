//! The conformance suite against the in-memory broker.

use brook_runtime::conformance::{Adapter, TestSource};
use brook_runtime::{kind, BrokerError, MemoryBroker};
use bytes::Bytes;

struct MemoryAdapter {
    broker: MemoryBroker,
}

impl Adapter for MemoryAdapter {
    type Broker = MemoryBroker;
    type Kind = kind::Memory;

    async fn broker(&self) -> MemoryBroker {
        self.broker.clone()
    }

    async fn fresh_source(&self, test: &str) -> Result<TestSource, BrokerError> {
        let topic = brook_runtime::conformance::unique_name(test, '-');
        Ok(TestSource {
            args: vec![("topic".into(), topic.clone().into())],
            destination: topic,
        })
    }

    async fn remaining(&self, source: &TestSource) -> Result<Vec<Bytes>, BrokerError> {
        let snapshot = self.broker.snapshot(&source.destination);
        Ok(snapshot
            .group("")
            .map(|g| g.waiting.clone())
            .unwrap_or_default())
    }

    async fn dead_letters(&self, source: &TestSource) -> Result<Vec<Bytes>, BrokerError> {
        Ok(self
            .broker
            .dead_letters(&source.destination)
            .into_iter()
            .map(|d| d.body)
            .collect())
    }
}

brook_runtime::conformance_tests!(MemoryAdapter { broker: MemoryBroker::new() }; broker = memory, topic = _);
