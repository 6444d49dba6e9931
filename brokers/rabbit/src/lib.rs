//! RabbitMQ broker for brook (lapin). Being built under issue #3.
