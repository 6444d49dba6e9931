use brook::kafka::subscriber;

#[subscriber(topic = " , ", group_id = "billing", ack_policy = NackOnError)]
async fn handle(_body: String) {}

fn main() {}
