use brook::prelude::*;

struct Service;

impl Service {
    #[subscriber(topic = "orders")]
    async fn handle(&self, _body: String) {}
}

fn main() {}
