use brook::kafka::KafkaMessage;

#[brook::rabbit::subscriber(queue = "orders")]
async fn handle(_msg: &KafkaMessage) {}

fn main() {}
