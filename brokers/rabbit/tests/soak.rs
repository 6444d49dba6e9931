//! Crash and restart soaks on the local RabbitMQ: SIGKILL the App mid-stream and start another,
//! and cut its connection mid-stream; every id is handled, the queue ends empty, duplicates
//! stay within the prefetch window (see `brook_runtime::soak`).

mod common;

fn main() {
    brook_runtime::soak::main(common::RabbitAdapter::classic);
}
