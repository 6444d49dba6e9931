use brook::kafka::subscriber;

#[subscriber(broker = kafka, topic = "orders", group_id = "billing")]
async fn handle(_body: String) {}

fn main() {}
