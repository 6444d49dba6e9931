use brook::prelude::*;

#[subscriber(topic = "orders")]
async fn bill(_order: String) -> Result<u32, &'static [u8]> {
    Ok(1)
}

fn main() {}
