//! The runtime's conformance suite against JetStream on 127.0.0.1:4222 (core NATS has no
//! settlement to conform to; see `core.rs`).

mod common;

brook_runtime::conformance_tests!(common::NatsAdapter::new(); broker = nats, subject = _, stream = _, durable = _);
