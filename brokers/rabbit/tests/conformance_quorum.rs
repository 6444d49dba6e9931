//! The runtime's conformance suite on quorum queues (with a dead-letter exchange): they count
//! deliveries (`x-delivery-count`), so `max_deliveries` is tested here too.

mod common;

brook_runtime::conformance_tests!(common::RabbitAdapter::quorum(); broker = rabbit, queue = _, declare = false, queue_type = quorum);
