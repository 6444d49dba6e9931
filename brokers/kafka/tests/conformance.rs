//! The runtime's conformance suite against tansu on 127.0.0.1:9092.
mod common;

brook_runtime::conformance_tests!(common::KafkaAdapter::new(); broker = kafka, topic = _, group_id = _, auto_offset_reset = earliest);
