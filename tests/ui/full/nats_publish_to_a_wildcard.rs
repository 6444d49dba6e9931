#[brook::nats::subscriber(subject = "orders", publish = "invoices.*")]
async fn bill(order: String) -> String {
    order
}

fn main() {}
