//! Crash and restart soaks on the local tansu (a topic read through a group): SIGKILL the App
//! mid-stream and start another; every id is handled, the group's committed offset reaches the
//! end, duplicates stay within what `commit_every(1)` allows (see `brook_runtime::soak`). The
//! connection-cut soak runs on a private tansu that advertises the proxy it is cut through
//! (a proxy in front of the shared broker would be bypassed: clients reconnect to the
//! advertised listener).

mod common;

fn main() {
    brook_runtime::soak::main_with(common::KafkaAdapter::new, common::PrivateKafkaAdapter::new);
}
