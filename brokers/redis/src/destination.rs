//! Where a publish goes: a pub/sub channel (PUBLISH), a list (RPUSH) or a stream (XADD).
//!
//! `Outgoing::destination` is one string, so the kind travels as a prefix, the way FastStream's
//! `broker.publish(msg, channel=...)` / `list=...` / `stream=...` keywords distinguish them:
//!
//! | destination | command |
//! |---|---|
//! | `"orders"` or `"channel:orders"` | `PUBLISH orders` |
//! | `"list:orders"` | `RPUSH orders` |
//! | `"stream:orders"` | `XADD orders * __data__ <payload>` |
//! | `"stream:orders?maxlen=1000"` | `XADD orders MAXLEN 1000 * ...` |
//! | `"stream:orders?maxlen=~1000"` | `XADD orders MAXLEN ~ 1000 * ...` (approximate, cheaper) |
//!
//! Only these three prefixes are special; a channel whose name starts with one of them is
//! written with an explicit `channel:` prefix (`"channel:list:x"`).

use std::fmt;

use brook_runtime::{BrokerError, BrokerKind};

/// A stream length cap for XADD.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaxLen {
    /// Keep at most this many entries.
    pub len: u64,
    /// `~`: let Redis trim lazily (whole macro nodes), which is much cheaper.
    pub approximate: bool,
}

/// A parsed publish destination.
///
/// ```
/// use brook_redis::Destination;
/// assert_eq!(Destination::parse("orders").unwrap(), Destination::channel("orders"));
/// assert_eq!(Destination::parse("list:jobs").unwrap(), Destination::list("jobs"));
/// assert_eq!(
///     Destination::parse("stream:events?maxlen=~500").unwrap(),
///     Destination::stream("events").with_maxlen(500, true)
/// );
/// assert_eq!(Destination::stream("events").to_string(), "stream:events");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Destination {
    /// PUBLISH to a channel.
    Channel(String),
    /// RPUSH onto a list.
    List(String),
    /// XADD to a stream, optionally capped.
    Stream {
        /// The stream key.
        name: String,
        /// MAXLEN cap.
        maxlen: Option<MaxLen>,
    },
}

impl Destination {
    /// A pub/sub channel.
    pub fn channel(name: impl Into<String>) -> Self {
        Destination::Channel(name.into())
    }

    /// A list.
    pub fn list(name: impl Into<String>) -> Self {
        Destination::List(name.into())
    }

    /// A stream, uncapped.
    pub fn stream(name: impl Into<String>) -> Self {
        Destination::Stream {
            name: name.into(),
            maxlen: None,
        }
    }

    /// Caps a stream destination at `len` entries (no effect on channels and lists).
    pub fn with_maxlen(self, len: u64, approximate: bool) -> Self {
        match self {
            Destination::Stream { name, .. } => Destination::Stream {
                name,
                maxlen: Some(MaxLen { len, approximate }),
            },
            other => other,
        }
    }

    /// Parses the string form (see the module docs).
    pub fn parse(destination: &str) -> Result<Self, BrokerError> {
        if let Some(name) = destination.strip_prefix("channel:") {
            return Ok(Destination::channel(name));
        }
        if let Some(name) = destination.strip_prefix("list:") {
            return Ok(Destination::list(name));
        }
        let Some(rest) = destination.strip_prefix("stream:") else {
            return Ok(Destination::channel(destination));
        };
        let Some((name, query)) = rest.split_once('?') else {
            return Ok(Destination::stream(rest));
        };
        let invalid = || {
            BrokerError::Invalid {
            broker: BrokerKind::Redis,
            message: format!(
                "cannot read the stream destination `{destination}`: write `stream:<name>`, `stream:<name>?maxlen=<n>` or `stream:<name>?maxlen=~<n>`"
            ),
        }
        };
        let value = query.strip_prefix("maxlen=").ok_or_else(invalid)?;
        let (approximate, digits) = match value.strip_prefix('~') {
            Some(d) => (true, d),
            None => (false, value),
        };
        let len = digits.parse().map_err(|_| invalid())?;
        Ok(Destination::stream(name).with_maxlen(len, approximate))
    }

    /// The key or channel name.
    pub fn name(&self) -> &str {
        match self {
            Destination::Channel(n) | Destination::List(n) => n,
            Destination::Stream { name, .. } => name,
        }
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Destination::Channel(n) => write!(f, "channel:{n}"),
            Destination::List(n) => write!(f, "list:{n}"),
            Destination::Stream { name, maxlen } => {
                write!(f, "stream:{name}")?;
                match maxlen {
                    Some(MaxLen {
                        len,
                        approximate: true,
                    }) => write!(f, "?maxlen=~{len}"),
                    Some(MaxLen { len, .. }) => write!(f, "?maxlen={len}"),
                    None => Ok(()),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form_and_round_trips() {
        for s in [
            "channel:a",
            "list:b",
            "stream:c",
            "stream:c?maxlen=10",
            "stream:c?maxlen=~10",
            "channel:list:x",
        ] {
            assert_eq!(Destination::parse(s).unwrap().to_string(), s);
        }
        assert_eq!(
            Destination::parse("plain").unwrap(),
            Destination::channel("plain")
        );
        assert!(Destination::parse("stream:c?max=1").is_err());
        assert!(Destination::parse("stream:c?maxlen=x").is_err());
    }
}
