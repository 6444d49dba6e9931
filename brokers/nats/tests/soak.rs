//! Crash and restart soaks on the local nats-server (a JetStream durable): SIGKILL the App
//! mid-stream and start another, and cut its connection mid-stream; every id is handled,
//! nothing is left for the durable, duplicates stay within one pull batch (see
//! `brook_runtime::soak`).

mod common;

fn main() {
    brook_runtime::soak::main(common::NatsAdapter::new);
}
