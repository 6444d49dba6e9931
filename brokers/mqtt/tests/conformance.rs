//! The runtime's conformance suite against Mosquitto on 127.0.0.1:1883.
//!
//! Which tests apply comes from brook-caps. MQTT has no reject (reject = ack; the test sources
//! have no `dead_letter_topic`, so nothing is dead-lettered here). brook-mqtt counts deliveries
//! and honours nack delays itself (tests/poison.rs); the suite's `max_deliveries` and
//! `nack_delay` tests run here once brook-caps declares that. `remaining()` resumes the test's
//! persistent session with the same client id and collects what the broker redelivers.

mod common;

brook_runtime::conformance_tests!(common::MqttAdapter::new(); broker = mqtt, topic = _, qos = 1);
