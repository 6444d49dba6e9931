//! Crash and restart soaks on the local tansu (a topic read through a group): SIGKILL the App
//! mid-stream and start another; every id is handled, the group's committed offset reaches the
//! end, duplicates stay within what `commit_every(1)` allows (see `brook_runtime::soak`). The
//! connection-cut soak is skipped here (see `SoakAdapter::upstream` in tests/common).

mod common;

fn main() {
    brook_runtime::soak::main(common::KafkaAdapter::new);
}
