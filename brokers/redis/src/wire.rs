//! Reading Redis replies (RESP2, as fred returns them) into plain Rust values, and the few
//! commands brook sends that fred has no typed call for with the options it needs.

use bytes::Bytes;
use fred::prelude::*;
use fred::types::{ClusterHash, CustomCommand, Value};

use std::sync::Arc;

/// The field FastStream (and brook) put the enveloped payload in.
pub(crate) const DATA_FIELD: &[u8] = b"__data__";

pub(crate) fn bytes(v: Value) -> Option<Bytes> {
    v.into_bytes()
}

pub(crate) fn text(v: Value) -> Option<Arc<str>> {
    let b = v.into_bytes()?;
    Some(Arc::from(String::from_utf8_lossy(&b).as_ref()))
}

/// Field/value pairs of a stream entry, in order.
pub(crate) type Fields = Vec<(Bytes, Bytes)>;

/// `[id, [field, value, ...]]` pairs; entries whose fields are nil (deleted from the stream
/// while pending) come back with `None` fields so the caller can acknowledge them away.
pub(crate) fn entries(v: Value) -> Vec<(Arc<str>, Option<Fields>)> {
    let Value::Array(items) = v else {
        return Vec::new();
    };
    items
        .into_iter()
        .filter_map(|item| {
            let mut parts = item.into_array().into_iter();
            let id = text(parts.next()?)?;
            let fields = match parts.next() {
                Some(Value::Null) | None => None,
                Some(list) => {
                    let mut flat = list.into_array().into_iter();
                    let mut fields = Vec::new();
                    while let (Some(k), Some(v)) = (flat.next(), flat.next()) {
                        fields.push((bytes(k).unwrap_or_default(), bytes(v).unwrap_or_default()));
                    }
                    Some(fields)
                }
            };
            Some((id, fields))
        })
        .collect()
}

/// An XREAD / XREADGROUP reply for one stream: its entries (nil on timeout: none).
pub(crate) fn xread_entries(v: Value) -> Vec<(Arc<str>, Option<Fields>)> {
    match v {
        Value::Null => Vec::new(),
        // RESP2: [[stream, [entries]]]; RESP3: {stream: [entries]}.
        Value::Array(streams) => streams
            .into_iter()
            .flat_map(|s| {
                let mut parts = s.into_array().into_iter();
                parts.next();
                parts.next().map(entries).unwrap_or_default()
            })
            .collect(),
        Value::Map(map) => map.inner().into_values().flat_map(entries).collect(),
        _ => Vec::new(),
    }
}

/// A hash's field/value pairs (HGETALL: a flat array in RESP2, a map in RESP3).
pub(crate) fn pairs(v: Value) -> Vec<(Arc<str>, Arc<str>)> {
    match v {
        Value::Array(flat) => {
            let mut flat = flat.into_iter();
            let mut out = Vec::new();
            while let (Some(k), Some(v)) = (flat.next(), flat.next()) {
                if let (Some(k), Some(v)) = (text(k), text(v)) {
                    out.push((k, v));
                }
            }
            out
        }
        Value::Map(map) => map
            .inner()
            .into_iter()
            .filter_map(|(k, v)| Some((text(Value::from(k))?, text(v)?)))
            .collect(),
        _ => Vec::new(),
    }
}

/// One row of the extended XPENDING form.
#[derive(Clone, Debug)]
pub(crate) struct Pending {
    pub id: Arc<str>,
    pub consumer: Arc<str>,
    /// Milliseconds since it was last delivered.
    pub idle_ms: u64,
    pub deliveries: u32,
}

pub(crate) fn pending(v: Value) -> Vec<Pending> {
    let Value::Array(rows) = v else {
        return Vec::new();
    };
    rows.into_iter()
        .filter_map(|row| {
            let mut p = row.into_array().into_iter();
            let id = text(p.next()?)?;
            let consumer = text(p.next()?)?;
            let idle_ms = p.next()?.as_u64()?;
            let deliveries = p.next()?.as_u64()?;
            Some(Pending {
                id,
                consumer,
                idle_ms,
                deliveries: u32::try_from(deliveries).unwrap_or(u32::MAX),
            })
        })
        .collect()
}

/// Sends `name args...` and returns the raw reply. The first argument is the key (routing in a
/// cluster); see [`call_at`] for commands where it is not.
pub(crate) async fn call<C: ClientLike>(
    client: &C,
    name: &'static str,
    blocking: bool,
    args: Vec<Value>,
) -> Result<Value, fred::error::Error> {
    call_at(client, name, blocking, 0, args).await
}

/// [`call`] for commands whose key is argument `key_at` (XREADGROUP, XREAD, XGROUP).
pub(crate) async fn call_at<C: ClientLike>(
    client: &C,
    name: &'static str,
    blocking: bool,
    key_at: usize,
    args: Vec<Value>,
) -> Result<Value, fred::error::Error> {
    let hash = if key_at == 0 {
        ClusterHash::FirstKey
    } else {
        ClusterHash::Offset(key_at)
    };
    client
        .custom::<Value, Value>(CustomCommand::new_static(name, hash, blocking), args)
        .await
}

/// A stream entry id as numbers (`ms-seq`), for ordering; unparsable parts count as 0.
pub(crate) fn parse_id(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}

pub(crate) fn s(v: &str) -> Value {
    Value::String(v.into())
}
