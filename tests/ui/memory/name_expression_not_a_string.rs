use brook::prelude::*;

fn port() -> u16 {
    9092
}

#[subscriber(topic = port())]
async fn handle(_body: String) {}

fn main() {}
