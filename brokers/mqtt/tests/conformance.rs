//! The runtime's conformance suite against Mosquitto on 127.0.0.1:1883.
//!
//! MQTT has no reject and no dead-letter place (`dead_letters = false`: reject = ack), no
//! delivery counter (`delivery_count = false`: `max_deliveries` cannot apply) and no nack delay
//! (`nack_delay = false`). `remaining()` resumes the test's persistent session with the same
//! client id and collects what the broker redelivers.

mod common;

brook_runtime::conformance_tests!(common::MqttAdapter::new(); broker = mqtt, topic = _, qos = 1);
