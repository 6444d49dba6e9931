use brook::rabbit::subscriber;

#[subscriber(queue = "orders", prefetch = 70000)]
async fn handle(_body: String) {}

fn main() {}
