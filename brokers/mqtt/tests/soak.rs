//! Crash and restart soaks on the local Mosquitto (QoS 1, a persistent session): SIGKILL the App
//! mid-stream and start another on the same session, and cut its connection mid-stream; every
//! id is handled, the session holds nothing afterwards, duplicates stay within Mosquitto's
//! in-flight window (see `brook_runtime::soak`).

mod common;

fn main() {
    brook_runtime::soak::main(common::MqttAdapter::new);
}
