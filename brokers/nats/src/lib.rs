//! NATS broker for brook (async-nats). Being built under issue #4.
