//! Which consumers of a group are gone, so that their pending entries are never stranded.
//!
//! Redis cannot tell a dead consumer from a slow one: XPENDING's idle time grows the same way
//! for both, and XINFO CONSUMERS's idle time grows for a consumer whose handler runs long
//! (it reads nothing meanwhile). So every brook stream consumer of a group says that it is
//! alive itself:
//!
//! - a **liveness key** `brook:<len stream>:<len group>:{<stream>}:<group>:alive:<consumer>`,
//!   set with a TTL (`RedisBroker::liveness_timeout`, 10 s by default) and renewed four times
//!   per TTL by a task of its own, so a long handler run does not make it look dead;
//! - an entry in the group's **registry** hash `brook:<len stream>:<len group>:{<stream>}:<group>:consumers`
//!   (consumer name → `generated` / `fixed`), so that a consumer without a liveness key is known
//!   to be a brook consumer that is gone, not a consumer of another client (FastStream, a
//!   script), which brook leaves alone.
//!
//! A consumer is **gone** when it is in the registry and its liveness key is missing: it closed
//! (the key is deleted on close) or it stopped renewing it for a TTL (crash, kill, lost
//! network). Every live consumer of the group checks about once a second, claims what gone
//! consumers left pending (XCLAIM), and removes a gone consumer once it holds nothing: from the
//! registry, and from the group (XGROUP DELCONSUMER) when its name was generated. The removal is
//! one Lua script that checks, atomically, that the liveness key is still missing and that the
//! consumer holds no entry, so a consumer that comes back never loses its pending entries.
//!
//! The lengths in the key names keep them unambiguous whatever the names contain; the stream
//! name in braces is a cluster hash tag, so a group's keys share a slot.

use std::sync::Arc;
use std::time::Duration;

use brook_runtime::BrokerError;
use fred::prelude::*;
use fred::types::Value;

use crate::message::op_error;
use crate::wire::{self, s};

/// Registry value of a consumer whose name brook generated (removed from the group once gone).
pub(crate) const GENERATED: &str = "generated";
/// Registry value of a consumer with a name from the subscriber (it stays listed in the group).
pub(crate) const FIXED: &str = "fixed";

/// Removes a gone consumer when it holds nothing, atomically.
/// KEYS: stream, registry, liveness key; ARGV: group, consumer, `1` to XGROUP DELCONSUMER.
/// Returns 1 when it was removed, 0 when it is alive or still holds entries.
const RETIRE: &str = r"
if redis.call('EXISTS', KEYS[3]) == 1 then return 0 end
local ok, rows = pcall(redis.call, 'XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2])
if ok and #rows > 0 then return 0 end
if ok and ARGV[3] == '1' then
  redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
end
redis.call('HDEL', KEYS[2], ARGV[2])
return 1
";

/// The liveness keys of one stream and group.
#[derive(Clone, Debug)]
pub(crate) struct Keys {
    /// The registry hash (consumer name → `generated` / `fixed`).
    pub registry: Arc<str>,
    /// The liveness key of a consumer is this prefix followed by its name.
    alive_prefix: Arc<str>,
}

impl Keys {
    pub(crate) fn new(stream: &str, group: &str) -> Self {
        let base = format!(
            "brook:{}:{}:{{{stream}}}:{group}",
            stream.len(),
            group.len()
        );
        Keys {
            registry: format!("{base}:consumers").into(),
            alive_prefix: format!("{base}:alive:").into(),
        }
    }

    pub(crate) fn alive(&self, consumer: &str) -> String {
        format!("{}{consumer}", self.alive_prefix)
    }
}

/// The heartbeat of one consumer.
#[derive(Clone, Debug)]
pub(crate) struct Beat {
    pub client: Client,
    pub keys: Keys,
    pub consumer: Arc<str>,
    pub generated: bool,
    pub ttl: Duration,
}

impl Beat {
    /// Renews the liveness key, then (re-)registers the consumer: in that order, so that no
    /// other consumer ever sees it registered without a liveness key while it lives.
    pub(crate) async fn once(&self) -> Result<(), BrokerError> {
        let kind = if self.generated { GENERATED } else { FIXED };
        let ttl_ms = i64::try_from(self.ttl.as_millis())
            .unwrap_or(i64::MAX)
            .max(1);
        wire::call(
            &self.client,
            "SET",
            false,
            vec![
                s(&self.keys.alive(&self.consumer)),
                s(kind),
                s("PX"),
                Value::from(ttl_ms),
            ],
        )
        .await
        .map_err(|e| op_error("SET (liveness)", e))?;
        wire::call(
            &self.client,
            "HSET",
            false,
            vec![s(&self.keys.registry), s(&self.consumer), s(kind)],
        )
        .await
        .map_err(|e| op_error("HSET (consumer registry)", e))?;
        Ok(())
    }

    /// Renews the liveness key every quarter of its TTL until aborted.
    pub(crate) fn spawn(self) -> Heartbeat {
        let every = (self.ttl / 4).max(Duration::from_millis(25));
        Heartbeat(tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                if let Err(error) = self.once().await {
                    tracing::warn!(consumer = %self.consumer, %error, "could not renew the stream consumer's liveness key; if it lapses, the group's other consumers take over its pending entries");
                }
            }
        }))
    }
}

/// The heartbeat task; stops when dropped (a consumer dropped without closing stops renewing
/// its liveness key, as a crashed process would).
pub(crate) struct Heartbeat(tokio::task::JoinHandle<()>);

impl Heartbeat {
    /// Stops the task and waits until it is gone, so no renewal follows.
    pub(crate) async fn stop(mut self) {
        self.0.abort();
        let _ = (&mut self.0).await;
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The registered consumers other than `me` whose liveness key is missing, with whether their
/// name was generated.
pub(crate) async fn gone(
    client: &Client,
    keys: &Keys,
    me: &str,
) -> Result<Vec<(Arc<str>, bool)>, BrokerError> {
    let reply = wire::call(client, "HGETALL", false, vec![s(&keys.registry)])
        .await
        .map_err(|e| op_error("HGETALL (consumer registry)", e))?;
    let others: Vec<(Arc<str>, bool)> = wire::pairs(reply)
        .into_iter()
        .filter(|(name, _)| **name != *me)
        .map(|(name, kind)| (name, &*kind != FIXED))
        .collect();
    if others.is_empty() {
        return Ok(Vec::new());
    }
    let reply = wire::call(
        client,
        "MGET",
        false,
        others
            .iter()
            .map(|(name, _)| s(&keys.alive(name)))
            .collect(),
    )
    .await
    .map_err(|e| op_error("MGET (liveness)", e))?;
    let alive: Vec<bool> = reply
        .into_array()
        .into_iter()
        .map(|v| !v.is_null())
        .collect();
    Ok(others
        .into_iter()
        .zip(alive.into_iter().chain(std::iter::repeat(true)))
        .filter(|(_, alive)| !alive)
        .map(|(other, _)| other)
        .collect())
}

/// Removes `consumer` from the registry, and from the group when `generated`, if (atomically)
/// it has no liveness key and holds no pending entry. `true` when it was removed.
pub(crate) async fn retire(
    client: &Client,
    stream: &str,
    group: &str,
    keys: &Keys,
    consumer: &str,
    generated: bool,
) -> Result<bool, BrokerError> {
    let reply = wire::call_at(
        client,
        "EVAL",
        false,
        2,
        vec![
            s(RETIRE),
            Value::from(3i64),
            s(stream),
            s(&keys.registry),
            s(&keys.alive(consumer)),
            s(group),
            s(consumer),
            s(if generated { "1" } else { "0" }),
        ],
    )
    .await
    .map_err(|e| op_error("EVAL (retire a gone consumer)", e))?;
    Ok(reply.as_i64() == Some(1))
}

/// Deletes `consumer`'s liveness key: the group's other consumers treat it as gone from now on.
pub(crate) async fn forget(
    client: &Client,
    keys: &Keys,
    consumer: &str,
) -> Result<(), BrokerError> {
    wire::call(client, "DEL", false, vec![s(&keys.alive(consumer))])
        .await
        .map(drop)
        .map_err(|e| op_error("DEL (liveness)", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_names_are_unambiguous_and_share_the_streams_hash_tag() {
        let k = Keys::new("orders", "billing");
        assert_eq!(&*k.registry, "brook:6:7:{orders}:billing:consumers");
        assert_eq!(k.alive("w-1"), "brook:6:7:{orders}:billing:alive:w-1");
        // Colons in names cannot make two (group, consumer) pairs share a key.
        assert_ne!(
            Keys::new("s", "a:b").alive("c"),
            Keys::new("s", "a").alive("b:c")
        );
        assert_ne!(
            Keys::new("a:b", "c").registry,
            Keys::new("a", "b:c").registry
        );
    }
}
