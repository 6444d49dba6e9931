//! Crash and restart soaks on the local Redis (a stream read through a group): SIGKILL the App
//! mid-stream and start another, and cut its connection mid-stream; every id is handled,
//! nothing stays pending, duplicates stay within one read (see `brook_runtime::soak`).

mod common;

fn main() {
    brook_runtime::soak::main(common::RedisAdapter::new);
}
