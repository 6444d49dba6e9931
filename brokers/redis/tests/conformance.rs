//! The runtime's conformance suite on a real Redis, through a stream read by a consumer group
//! with a dead-letter stream.

mod common;

use common::RedisAdapter;

brook_runtime::conformance_tests!(RedisAdapter::new(); broker = redis, stream = _, group = _, dead_letter_stream = _);
