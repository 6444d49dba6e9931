//! Interrupts: error values that settle the message now, under every policy.
//!
//! A handler, or anything it calls, returns `Err(brook::Reject.into())` (or uses `?` on a
//! function returning one) and the engine settles the message that way at once. They are not
//! failures and are not logged as such. Unlike FastStream, which ignores them under MANUAL,
//! brook applies them under [`AckPolicy::Manual`](crate::AckPolicy::Manual) too: an interrupt
//! is an explicit instruction, and ignoring it would leave the message unsettled.
//!
//! ```
//! use brook_runtime::{Nack, Reject};
//! use std::time::Duration;
//!
//! fn validate(amount: f64) -> Result<(), Reject> {
//!     if amount < 0.0 { return Err(Reject) }
//!     Ok(())
//! }
//!
//! async fn handle(amount: f64, backend_up: bool) -> anyhow::Result<()> {
//!     validate(amount)?;                                  // Reject from any depth with `?`
//!     if !backend_up {
//!         return Err(Nack::after(Duration::from_secs(5)).into()); // retry later
//!     }
//!     Ok(())
//! }
//! ```

use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

use crate::message::Settlement;

/// Interrupt: acknowledge the message now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ack;

/// Interrupt: negatively acknowledge the message now, so it is delivered again (after `delay`
/// where the broker supports one).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Nack {
    /// Wait this long before redelivery, where the broker can.
    pub delay: Option<Duration>,
}

impl Nack {
    /// Nack with a redelivery delay.
    pub const fn after(delay: Duration) -> Nack {
        Nack { delay: Some(delay) }
    }
}

/// Interrupt: reject the message now (no redelivery; dead-lettered where possible).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reject;

impl fmt::Display for Ack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("interrupted: ack the message")
    }
}

impl fmt::Display for Nack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.delay {
            Some(d) => write!(f, "interrupted: nack the message (redeliver after {d:?})"),
            None => f.write_str("interrupted: nack the message"),
        }
    }
}

impl fmt::Display for Reject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("interrupted: reject the message")
    }
}

impl StdError for Ack {}
impl StdError for Nack {}
impl StdError for Reject {}

/// The interrupt in `error` or anywhere in its chain of sources, if there is one.
pub(crate) fn find_interrupt(error: &anyhow::Error) -> Option<Settlement> {
    // anyhow's own downcast sees through `.context(...)`; the chain covers errors that wrap an
    // interrupt as their `source()`.
    interrupt_of(
        error.downcast_ref::<Ack>(),
        error.downcast_ref(),
        error.downcast_ref(),
    )
    .or_else(|| {
        error
            .chain()
            .find_map(|e| interrupt_of(e.downcast_ref::<Ack>(), e.downcast_ref(), e.downcast_ref()))
    })
}

fn interrupt_of(
    ack: Option<&Ack>,
    nack: Option<&Nack>,
    reject: Option<&Reject>,
) -> Option<Settlement> {
    match (ack, nack, reject) {
        (Some(_), _, _) => Some(Settlement::Ack),
        (_, Some(n), _) => Some(Settlement::Nack { delay: n.delay }),
        (_, _, Some(_)) => Some(Settlement::Reject),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context as _;

    #[derive(Debug, thiserror::Error)]
    #[error("domain error")]
    struct Domain(#[source] Reject);

    #[test]
    fn found_directly_through_context_and_through_sources() {
        assert_eq!(
            find_interrupt(&anyhow::Error::new(Reject)),
            Some(Settlement::Reject)
        );
        let e = Err::<(), _>(Nack::after(Duration::from_secs(1)))
            .context("calling billing")
            .unwrap_err();
        assert_eq!(
            find_interrupt(&e),
            Some(Settlement::Nack {
                delay: Some(Duration::from_secs(1))
            })
        );
        assert_eq!(
            find_interrupt(&anyhow::Error::new(Domain(Reject))),
            Some(Settlement::Reject)
        );
        assert_eq!(find_interrupt(&anyhow::anyhow!("plain failure")), None);
    }
}
