//! FastStream's wire envelope for Redis: how headers travel with a payload.
//!
//! Redis pub/sub messages, list elements and stream fields carry bytes and nothing else, so
//! FastStream wraps payload and headers into one byte string. brook writes and reads the same
//! format so that brook and FastStream services can talk to each other over Redis.
//!
//! **Binary format, version 1** (FastStream's default since 0.6), all integers big-endian:
//!
//! | offset | size | content |
//! |---|---|---|
//! | 0 | 8 | magic `89 42 49 4E 0D 0A 1A 0A` (`\x89BIN\r\n\x1a\n`) |
//! | 8 | 2 | version, `1` |
//! | 10 | 4 | `headers_start`: offset of the header count (always 18) |
//! | 14 | 4 | `data_start`: offset of the payload |
//! | 18 | 2 | number of headers |
//! | 20 | … | per header: `u16` length + name bytes, `u16` length + value bytes |
//! | `data_start` | rest | the payload |
//!
//! **Legacy JSON envelope** (FastStream before 0.6, still read by FastStream):
//! `{"data": "<payload as text>", "headers": {"name": "value", ...}}`. brook reads it (an object
//! with exactly the two keys `data`, a string, and `headers`, an object) but never writes it.
//!
//! Anything else is a raw payload with no headers, as FastStream treats it too.
//!
//! One deliberate difference: FastStream (0.7.8 and earlier) writes a header's *character* count
//! as its length (Python's `len(str)`) but the name's or value's UTF-8 bytes after it, which is
//! wrong for non-ASCII names or values (FastStream cannot read such a message back itself); brook
//! writes the UTF-8 byte length (identical for ASCII, which is what FastStream's own headers
//! use). On reading, brook recovers FastStream's headers too: the header block ends where the
//! payload starts (`data_start`, which FastStream computes from the real bytes), so brook reads
//! the lengths as byte counts if that makes every name and value valid UTF-8 and ends exactly at
//! `data_start`, else as character counts if *that* does, else (neither fits: neither brook nor
//! FastStream wrote it) as byte counts checked against the buffer, invalid UTF-8 replaced.

use brook_runtime::Headers;
use bytes::{BufMut, Bytes, BytesMut};

/// The first 8 bytes of a binary envelope.
pub const MAGIC: &[u8; 8] = b"\x89BIN\r\n\x1a\n";
/// The only version there is.
pub const VERSION: u16 = 1;
const HEADERS_START: usize = 18;

/// How published payloads are wrapped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Envelope {
    /// FastStream's binary envelope (payload + headers). The default: FastStream services read
    /// it, and so do brook services.
    #[default]
    Binary,
    /// The payload as is; headers are dropped. For consumers that expect plain payloads (other
    /// Redis clients); FastStream reads these too, without headers.
    Raw,
}

/// Why a binary envelope could not be built.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    /// A header name or value does not fit the format's 16-bit length.
    #[error("header `{0}` is longer than 65535 bytes, which FastStream's envelope cannot carry")]
    HeaderTooLong(String),
    /// More than 65535 headers.
    #[error("more than 65535 headers")]
    TooManyHeaders,
}

/// Wraps `body` and `headers` in the binary envelope.
///
/// ```
/// use brook_redis::envelope::{decode, encode};
/// use brook_runtime::Headers;
/// let headers: Headers = [("content-type", "application/json")].into_iter().collect();
/// let wire = encode(b"{\"id\":1}", &headers).unwrap();
/// let (body, back) = decode(&wire);
/// assert_eq!(&body[..], b"{\"id\":1}");
/// assert_eq!(back, headers);
/// ```
pub fn encode(body: &[u8], headers: &Headers) -> Result<Bytes, EnvelopeError> {
    let count = u16::try_from(headers.len()).map_err(|_| EnvelopeError::TooManyHeaders)?;
    let headers_len: usize = headers.iter().map(|(n, v)| 4 + n.len() + v.len()).sum();
    let data_start = HEADERS_START + 2 + headers_len;
    let mut out = BytesMut::with_capacity(data_start + body.len());
    out.put_slice(MAGIC);
    out.put_u16(VERSION);
    out.put_u32(HEADERS_START as u32);
    out.put_u32(u32::try_from(data_start).map_err(|_| EnvelopeError::TooManyHeaders)?);
    out.put_u16(count);
    for (name, value) in headers.iter() {
        for s in [name, value] {
            let len = u16::try_from(s.len())
                .map_err(|_| EnvelopeError::HeaderTooLong(name.to_owned()))?;
            out.put_u16(len);
            out.put_slice(s.as_bytes());
        }
    }
    out.put_slice(body);
    Ok(out.freeze())
}

/// Unwraps a payload: the binary envelope, the legacy JSON envelope, or a raw payload (returned
/// as is, with no headers). Never fails: what is not a well-formed envelope is a raw payload.
pub fn decode(wire: &Bytes) -> (Bytes, Headers) {
    if wire.starts_with(MAGIC) {
        if let Some(decoded) = decode_binary(wire) {
            return decoded;
        }
    } else if wire.first() == Some(&b'{') {
        if let Some(decoded) = decode_json(wire) {
            return decoded;
        }
    }
    (wire.clone(), Headers::new())
}

fn decode_binary(wire: &Bytes) -> Option<(Bytes, Headers)> {
    let u16_at = |at: usize| -> Option<u16> {
        Some(u16::from_be_bytes(wire.get(at..at + 2)?.try_into().ok()?))
    };
    let u32_at = |at: usize| -> Option<usize> {
        Some(u32::from_be_bytes(wire.get(at..at + 4)?.try_into().ok()?) as usize)
    };
    if u16_at(8)? != VERSION {
        return None;
    }
    let headers_start = u32_at(10)?;
    let data_start = u32_at(14)?;
    if data_start > wire.len() {
        return None;
    }
    let count = u16_at(headers_start)?;
    let first = headers_start + 2;
    let headers = read_headers(wire, first, count, data_start, Lengths::Bytes)
        .or_else(|| read_headers(wire, first, count, data_start, Lengths::Chars))
        .or_else(|| read_headers_lossy(wire, first, count))?;
    Some((wire.slice(data_start..), headers))
}

/// What a header's `u16` length counts.
#[derive(Clone, Copy)]
enum Lengths {
    /// UTF-8 bytes: brook, and FastStream for ASCII.
    Bytes,
    /// Characters: FastStream for non-ASCII names and values (its bytes follow in full).
    Chars,
}

/// The headers at `at`, read strictly: every name and value valid UTF-8 and the last one ending
/// exactly at `end` (the payload's offset).
fn read_headers(
    wire: &[u8],
    mut at: usize,
    count: u16,
    end: usize,
    lengths: Lengths,
) -> Option<Headers> {
    let block = wire.get(..end)?;
    let string = |at: &mut usize| -> Option<String> {
        let len = u16::from_be_bytes(block.get(*at..*at + 2)?.try_into().ok()?) as usize;
        let from = *at + 2;
        let size = match lengths {
            Lengths::Bytes => len,
            Lengths::Chars => utf8_size_of_chars(block.get(from..)?, len)?,
        };
        let text = std::str::from_utf8(block.get(from..from + size)?).ok()?;
        *at = from + size;
        Some(text.to_owned())
    };
    let mut headers = Headers::new();
    for _ in 0..count {
        let name = string(&mut at)?;
        let value = string(&mut at)?;
        headers.insert(name, value);
    }
    (at == end).then_some(headers)
}

/// How many bytes the first `chars` UTF-8 characters of `bytes` take (by their lead bytes; the
/// caller validates the slice).
fn utf8_size_of_chars(bytes: &[u8], chars: usize) -> Option<usize> {
    let mut size = 0;
    for _ in 0..chars {
        size += match *bytes.get(size)? {
            0x00..=0x7f => 1,
            0xc0..=0xdf => 2,
            0xe0..=0xef => 3,
            0xf0..=0xf7 => 4,
            _ => return None,
        };
    }
    (size <= bytes.len()).then_some(size)
}

/// The headers at `at` with the lengths taken as byte counts and checked against the buffer
/// only; invalid UTF-8 is replaced.
fn read_headers_lossy(wire: &[u8], mut at: usize, count: u16) -> Option<Headers> {
    let string = |at: &mut usize| -> Option<String> {
        let len = u16::from_be_bytes(wire.get(*at..*at + 2)?.try_into().ok()?) as usize;
        let bytes = wire.get(*at + 2..*at + 2 + len)?;
        *at += 2 + len;
        Some(String::from_utf8_lossy(bytes).into_owned())
    };
    let mut headers = Headers::new();
    for _ in 0..count {
        let name = string(&mut at)?;
        let value = string(&mut at)?;
        headers.insert(name, value);
    }
    Some(headers)
}

fn decode_json(wire: &Bytes) -> Option<(Bytes, Headers)> {
    let serde_json::Value::Object(map) = serde_json::from_slice::<serde_json::Value>(wire).ok()?
    else {
        return None;
    };
    if map.len() != 2 {
        return None;
    }
    let data = map.get("data")?.as_str()?;
    let mut headers = Headers::new();
    for (name, value) in map.get("headers")?.as_object()? {
        // FastStream's headers are strings; anything else is kept as its JSON text.
        let value = match value {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        headers.insert(name.clone(), value);
    }
    Some((Bytes::copy_from_slice(data.as_bytes()), headers))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes as FastStream's `BinaryMessageFormatV1.encode` lays them out, built by hand from
    /// the format description (not with our encoder).
    fn faststream_bytes(headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
        let mut h = Vec::new();
        for (k, v) in headers {
            h.extend((k.len() as u16).to_be_bytes());
            h.extend(k.as_bytes());
            h.extend((v.len() as u16).to_be_bytes());
            h.extend(v.as_bytes());
        }
        let mut out = Vec::new();
        out.extend(b"\x89BIN\x0d\x0a\x1a\x0a");
        out.extend(1u16.to_be_bytes());
        let headers_start: u32 = 10 + 8;
        let data_start: u32 = 2 + headers_start + h.len() as u32;
        out.extend(headers_start.to_be_bytes());
        out.extend(data_start.to_be_bytes());
        out.extend((headers.len() as u16).to_be_bytes());
        out.extend(h);
        out.extend(body);
        out
    }

    #[test]
    fn reads_and_writes_faststream_binary_envelopes_byte_for_byte() {
        let pairs = [
            ("correlation_id", "2f1c0a"),
            ("content-type", "application/json"),
            ("reply_to", "replies"),
            ("x-tenant", "acme"),
        ];
        let body = br#"{"id":1,"amount":9.5}"#;
        let theirs = Bytes::from(faststream_bytes(&pairs, body));
        let (got, headers) = decode(&theirs);
        assert_eq!(&got[..], body);
        assert_eq!(headers.iter().collect::<Vec<_>>(), pairs.to_vec());

        let ours = encode(body, &pairs.iter().copied().collect()).unwrap();
        assert_eq!(ours, theirs, "brook writes exactly what FastStream writes");
    }

    /// Bytes exactly as FastStream 0.7.8's `BinaryMessageFormatV1.encode` writes them for
    /// `str` headers: `write_string` puts `len(data)` (characters) before `data.encode()`
    /// (bytes), while `data_start` comes from the length of the written header bytes.
    pub(crate) fn faststream_078_bytes(headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
        let mut h = Vec::new();
        for (k, v) in headers {
            for s in [k, v] {
                h.extend((s.chars().count() as u16).to_be_bytes());
                h.extend(s.as_bytes());
            }
        }
        let mut out = b"\x89BIN\r\n\x1a\n".to_vec();
        out.extend(1u16.to_be_bytes());
        out.extend(18u32.to_be_bytes());
        out.extend((20 + h.len() as u32).to_be_bytes());
        out.extend((headers.len() as u16).to_be_bytes());
        out.extend(h);
        out.extend(body);
        out
    }

    #[test]
    fn faststreams_character_counted_non_ascii_headers_are_read_whole() {
        let pairs = [
            ("x-tenant", "acme-é"),
            ("x-city", "Zürich"),
            ("correlation_id", "c-1"),
            ("x-ünïcode-name", "日本語 ok"),
            ("x-emoji", "🦀🦀"),
        ];
        let wire = Bytes::from(faststream_078_bytes(&pairs, b"{\"id\":1}"));
        let (body, headers) = decode(&wire);
        assert_eq!(&body[..], b"{\"id\":1}");
        assert_eq!(headers.iter().collect::<Vec<_>>(), pairs.to_vec());
        // The last header alone (the payload right after it) is recovered as well.
        let wire = Bytes::from(faststream_078_bytes(&[("x-tenant", "acme-é")], b"x"));
        assert_eq!(decode(&wire).1.get("x-tenant"), Some("acme-é"));
    }

    #[test]
    fn brook_keeps_writing_byte_lengths() {
        let headers: Headers = [("x-city", "Zürich")].into_iter().collect();
        let ours = encode(b"", &headers).unwrap();
        // count, then u16 6 "x-city", then u16 7 (bytes, not FastStream's 6 characters).
        assert_eq!(&ours[18..20], &1u16.to_be_bytes());
        assert_eq!(&ours[28..30], &7u16.to_be_bytes());
        assert_eq!(&ours[30..], "Zürich".as_bytes());
        assert_eq!(decode(&ours).1, headers);
        assert_ne!(
            &ours[..],
            &faststream_078_bytes(&[("x-city", "Zürich")], b"")[..]
        );
    }

    #[test]
    fn empty_headers_and_empty_body() {
        let theirs = Bytes::from(faststream_bytes(&[], b""));
        assert_eq!(theirs.len(), 20);
        assert_eq!(encode(b"", &Headers::new()).unwrap(), theirs);
        let (body, headers) = decode(&theirs);
        assert!(body.is_empty() && headers.is_empty());
    }

    #[test]
    fn legacy_json_envelope_is_read() {
        let wire = Bytes::from_static(
            br#"{"data": "{\"id\": 1}", "headers": {"correlation_id": "abc", "content-type": "application/json"}}"#,
        );
        let (body, headers) = decode(&wire);
        assert_eq!(&body[..], br#"{"id": 1}"#);
        assert_eq!(headers.get("correlation_id"), Some("abc"));
        assert_eq!(headers.get("content-type"), Some("application/json"));
    }

    #[test]
    fn raw_payloads_pass_through() {
        for raw in [
            &b"plain text"[..],
            br#"{"id": 1}"#,
            br#"{"data": "x", "other": 1}"#,
            br#"{"data": 5, "headers": {}}"#,
            b"\x89BIN\r\n\x1a\n\x00\x02garbage",
            b"\x89BIN\r\n\x1a\n\x00\x01\x00\x00\x00\x12\xff\xff\xff\xff",
            b"",
        ] {
            let wire = Bytes::copy_from_slice(raw);
            let (body, headers) = decode(&wire);
            assert_eq!(body, wire);
            assert!(headers.is_empty());
        }
    }

    #[test]
    fn truncated_headers_fall_back_to_raw() {
        let mut wire = faststream_bytes(&[("content-type", "text/plain")], b"hi");
        wire.truncate(25);
        let wire = Bytes::from(wire);
        assert_eq!(decode(&wire).0, wire);
    }
}
