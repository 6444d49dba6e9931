//! The runtime's conformance suite against Mosquitto on 127.0.0.1:1883, speaking MQTT 5
//! (persistent session = clean start off + session expiry). Same capabilities as 3.1.1.

mod common;

brook_runtime::conformance_tests!(common::MqttAdapter::v5(); broker = mqtt, topic = _, qos = 1);
