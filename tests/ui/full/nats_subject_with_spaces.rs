use brook::nats::subscriber;

#[subscriber(subject = "orders created")]
async fn handle(_body: String) {}

fn main() {}
