//! MQTT broker for brook (rumqttc). Being built under issue #7.
