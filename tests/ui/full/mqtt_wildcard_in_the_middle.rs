use brook::mqtt::subscriber;

#[subscriber(topic = "sensors/#/temperature")]
async fn handle(_body: String) {}

fn main() {}
