//! Kafka broker for brook (rdkafka). Being built under issue #6.
