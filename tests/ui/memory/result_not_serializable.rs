use brook::prelude::*;

struct Invoice {
    total: u32,
}

#[subscriber(topic = "orders", publish = "invoices")]
async fn bill(_order: String) -> anyhow::Result<Invoice> {
    Ok(Invoice { total: 1 })
}

fn main() {}
