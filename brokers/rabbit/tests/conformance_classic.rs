//! The runtime's conformance suite on classic queues with a dead-letter exchange. Classic
//! queues do not count deliveries (only the `redelivered` flag), so the delivery-count tests
//! are skipped here and run on quorum queues (conformance_quorum.rs).

mod common;

brook_runtime::conformance_tests!(common::RabbitAdapter::classic(); broker = rabbit, queue = _, declare = false);
