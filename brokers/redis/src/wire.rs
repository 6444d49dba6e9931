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
    match v {
        // fred checked it is UTF-8 already.
        Value::String(s) => Some(Arc::from(&*s)),
        v => {
            let b = v.into_bytes()?;
            Some(Arc::from(String::from_utf8_lossy(&b).as_ref()))
        }
    }
}

/// Field/value pairs of a stream entry, in order. One pair (what brook and FastStream write:
/// `__data__`) is kept inline, so the common entry costs no allocation of its own.
#[derive(Clone, Default)]
pub(crate) enum Fields {
    #[default]
    None,
    One([(Bytes, Bytes); 1]),
    Many(Vec<(Bytes, Bytes)>),
}

impl std::fmt::Debug for Fields {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl std::ops::Deref for Fields {
    type Target = [(Bytes, Bytes)];

    fn deref(&self) -> &Self::Target {
        match self {
            Fields::None => &[],
            Fields::One(one) => one,
            Fields::Many(many) => many,
        }
    }
}

/// A stream entry as Redis sent it: its id and its fields (`[field, value, ...]`), both still
/// fred values, so that reading a batch allocates nothing per entry; [`Raw::id`] and
/// [`fields`] convert them when the entry is handed out. The fields are `None` when the entry
/// was deleted from the stream while pending.
pub(crate) struct Raw {
    pub id: Value,
    pub fields: Option<Value>,
}

impl Raw {
    /// The id as text.
    pub(crate) fn id(&self) -> Option<Arc<str>> {
        self.id.as_str_lossy().map(|id| Arc::from(&*id))
    }
}

/// `[field, value, ...]` as pairs.
pub(crate) fn fields(list: Value) -> Fields {
    let flat = list.into_array();
    let pair = |k: Value, v: Value| (bytes(k).unwrap_or_default(), bytes(v).unwrap_or_default());
    match <[Value; 2]>::try_from(flat) {
        Ok([k, v]) => Fields::One([pair(k, v)]),
        Err(flat) if flat.len() < 2 => Fields::None,
        Err(flat) => {
            let mut fields = Vec::with_capacity(flat.len() / 2);
            let mut flat = flat.into_iter();
            while let (Some(k), Some(v)) = (flat.next(), flat.next()) {
                fields.push(pair(k, v));
            }
            Fields::Many(fields)
        }
    }
}

/// `[id, [field, value, ...]]` pairs, unconverted (see [`Raw`]).
pub(crate) fn raw_entries(v: Value) -> Vec<Raw> {
    let Value::Array(items) = v else {
        return Vec::new();
    };
    items
        .into_iter()
        .filter_map(|item| {
            let mut parts = item.into_array().into_iter();
            let id = parts.next().filter(|id| !id.is_null())?;
            let fields = match parts.next() {
                Some(Value::Null) | None => None,
                Some(list) => Some(list),
            };
            Some(Raw { id, fields })
        })
        .collect()
}

/// `[id, [field, value, ...]]` pairs; entries whose fields are nil (deleted from the stream
/// while pending) come back with `None` fields so the caller can acknowledge them away.
pub(crate) fn entries(v: Value) -> Vec<(Arc<str>, Option<Fields>)> {
    raw_entries(v)
        .into_iter()
        .filter_map(|raw| Some((raw.id()?, raw.fields.map(fields))))
        .collect()
}

/// An XREAD / XREADGROUP reply for one stream: its entries (nil on timeout: none).
pub(crate) fn xread_entries(v: Value) -> Vec<Raw> {
    match v {
        Value::Null => Vec::new(),
        // RESP2: [[stream, [entries]]]; RESP3: {stream: [entries]}.
        Value::Array(streams) => {
            // One stream is read at a time: its entries' Vec is the reply's own (collected in
            // place, not grown entry by entry).
            let mut all = Vec::new();
            for stream in streams {
                let mut parts = stream.into_array().into_iter();
                parts.next();
                let entries = parts.next().map(raw_entries).unwrap_or_default();
                if all.is_empty() {
                    all = entries;
                } else {
                    all.extend(entries);
                }
            }
            all
        }
        Value::Map(map) => map.inner().into_values().flat_map(raw_entries).collect(),
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
    // The hot path (every message's id is looked up a few times): one pass over the digits.
    let mut parts = [0u64; 2];
    let mut part = 0;
    let mut digits = 0;
    for &b in id.as_bytes() {
        match b {
            b'0'..=b'9' if digits < 19 => {
                parts[part] = parts[part] * 10 + u64::from(b - b'0');
                digits += 1;
            }
            b'-' if part == 0 && digits > 0 => {
                part = 1;
                digits = 0;
            }
            _ => return parse_id_slowly(id),
        }
    }
    if part == 1 && digits == 0 {
        return parse_id_slowly(id);
    }
    (parts[0], parts[1])
}

/// [`parse_id`] for what is not `<digits>[-<digits>]` with at most 19 digits each.
fn parse_id_slowly(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}

pub(crate) fn s(v: &str) -> Value {
    Value::String(v.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_entry_ids() {
        assert_eq!(parse_id("1700000000000-5"), (1_700_000_000_000, 5));
        assert_eq!(parse_id("0-1"), (0, 1));
        assert_eq!(parse_id("42"), (42, 0));
        assert_eq!(
            parse_id("18446744073709551615-18446744073709551615"),
            (u64::MAX, u64::MAX)
        );
        for bad in [
            "",
            "-",
            "1-",
            "-1",
            "a-1",
            "1-b",
            "1-2-3",
            "99999999999999999999-0",
        ] {
            assert_eq!(parse_id(bad), parse_id_slowly(bad), "{bad:?}");
        }
    }
}
