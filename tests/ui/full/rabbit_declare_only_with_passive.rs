use brook::rabbit::subscriber;

#[subscriber(queue = "orders", passive = true, exchange = "billing")]
async fn handle(_body: String) {}

fn main() {}
