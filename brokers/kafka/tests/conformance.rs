//! The runtime's conformance suite against tansu on 127.0.0.1:9092.
mod common;

brook_runtime::conformance_tests!(common::KafkaAdapter::new());
