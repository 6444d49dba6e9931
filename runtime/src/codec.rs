//! Payload codecs, chosen by `content-type`.
//!
//! | content-type | decodes into `T: Deserialize` as | published for |
//! |---|---|---|
//! | none, `application/json`, `*/*+json` | JSON | any other `Serialize` value |
//! | `text/*` | a string (`String`, or a type that deserializes from one) | `&str` / `String` (`text/plain`) |
//! | `application/octet-stream` | bytes (`bytes::Bytes`, `serde_bytes`) | byte slices (no content-type, as FastStream) |
//! | anything else | an error naming the content-type | — |
//!
//! These match FastStream's encoder, so brook and FastStream services read each other's
//! messages.

use bytes::Bytes;
use serde::de::value::{BytesDeserializer, StrDeserializer};
use serde::de::DeserializeOwned;
use serde::ser::{self, Impossible, Serialize};
use std::fmt;

use crate::error::ExtractError;

/// `application/json`.
pub const JSON: &str = "application/json";
/// `text/plain`.
pub const TEXT: &str = "text/plain";
/// `application/octet-stream`.
pub const OCTET_STREAM: &str = "application/octet-stream";

/// The codec a content type selects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Codec {
    /// JSON (also the default when no content type is given).
    Json,
    /// UTF-8 text.
    Text,
    /// Raw bytes.
    Bytes,
}

impl Codec {
    /// The codec for a `content-type` header value (parameters like `; charset=utf-8` ignored;
    /// none, or an empty one as FastStream sends for bytes, means JSON first).
    pub fn for_content_type(content_type: Option<&str>) -> Result<Codec, ExtractError> {
        let Some(full) = content_type.filter(|ct| !ct.trim().is_empty()) else {
            return Ok(Codec::Json);
        };
        let essence = full.split(';').next().unwrap_or("").trim();
        if essence.eq_ignore_ascii_case(JSON) || essence.ends_with("+json") {
            Ok(Codec::Json)
        } else if essence.len() > 5 && essence[..5].eq_ignore_ascii_case("text/") {
            Ok(Codec::Text)
        } else if essence.eq_ignore_ascii_case(OCTET_STREAM) {
            Ok(Codec::Bytes)
        } else {
            Err(ExtractError::UnsupportedContentType(full.to_owned()))
        }
    }
}

/// Decodes `body` (with the given content type) into `T`.
pub fn decode<T: DeserializeOwned>(
    body: &[u8],
    content_type: Option<&str>,
) -> Result<T, ExtractError> {
    let err = |source: Box<dyn std::error::Error + Send + Sync>| ExtractError::Decode {
        type_name: std::any::type_name::<T>(),
        content_type: content_type.unwrap_or("no content-type").to_owned(),
        source,
    };
    match Codec::for_content_type(content_type)? {
        Codec::Json => serde_json::from_slice(body).map_err(|e| err(e.into())),
        Codec::Text => {
            let text = std::str::from_utf8(body)?;
            T::deserialize(StrDeserializer::<serde::de::value::Error>::new(text))
                .map_err(|e| err(e.into()))
        }
        Codec::Bytes => T::deserialize(BytesDeserializer::<serde::de::value::Error>::new(body))
            .map_err(|e| err(e.into())),
    }
}

/// Encodes `value` for publishing: strings as `text/plain`, byte strings raw with no content
/// type, everything else as JSON. Returns the payload and its content type.
pub fn encode<T: Serialize + ?Sized>(
    value: &T,
) -> Result<(Bytes, Option<&'static str>), serde_json::Error> {
    match value.serialize(RawProbe) {
        Ok(Raw::Text(text)) => Ok((Bytes::from(text), Some(TEXT))),
        Ok(Raw::Bytes(bytes)) => Ok((Bytes::from(bytes), None)),
        Err(NotRaw) => Ok((Bytes::from(serde_json::to_vec(value)?), Some(JSON))),
    }
}

/// A serializer that accepts only a top-level string or byte string: how `encode` tells text
/// and bytes from structured values without specialization. It gives up at the first call of
/// any other kind, so probing a struct costs one call.
struct RawProbe;

enum Raw {
    Text(String),
    Bytes(Vec<u8>),
}

#[derive(Debug)]
struct NotRaw;

impl fmt::Display for NotRaw {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("not a string or byte string")
    }
}

impl std::error::Error for NotRaw {}

impl ser::Error for NotRaw {
    fn custom<M: fmt::Display>(_: M) -> Self {
        NotRaw
    }
}

macro_rules! not_raw {
    ($($method:ident($($arg:ty),*);)*) => {
        $(fn $method(self, $(_: $arg),*) -> Result<Raw, NotRaw> { Err(NotRaw) })*
    };
}

impl ser::Serializer for RawProbe {
    type Ok = Raw;
    type Error = NotRaw;
    type SerializeSeq = Impossible<Raw, NotRaw>;
    type SerializeTuple = Impossible<Raw, NotRaw>;
    type SerializeTupleStruct = Impossible<Raw, NotRaw>;
    type SerializeTupleVariant = Impossible<Raw, NotRaw>;
    type SerializeMap = Impossible<Raw, NotRaw>;
    type SerializeStruct = Impossible<Raw, NotRaw>;
    type SerializeStructVariant = Impossible<Raw, NotRaw>;

    fn serialize_str(self, v: &str) -> Result<Raw, NotRaw> {
        Ok(Raw::Text(v.to_owned()))
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<Raw, NotRaw> {
        Ok(Raw::Bytes(v.to_vec()))
    }
    not_raw! {
        serialize_bool(bool); serialize_i8(i8); serialize_i16(i16); serialize_i32(i32);
        serialize_i64(i64); serialize_u8(u8); serialize_u16(u16); serialize_u32(u32);
        serialize_u64(u64); serialize_f32(f32); serialize_f64(f64); serialize_char(char);
        serialize_none(); serialize_unit(); serialize_unit_struct(&'static str);
        serialize_unit_variant(&'static str, u32, &'static str);
    }
    fn serialize_some<T: Serialize + ?Sized>(self, _: &T) -> Result<Raw, NotRaw> {
        Err(NotRaw)
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: &T,
    ) -> Result<Raw, NotRaw> {
        Err(NotRaw)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<Raw, NotRaw> {
        Err(NotRaw)
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, NotRaw> {
        Err(NotRaw)
    }
    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, NotRaw> {
        Err(NotRaw)
    }
    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleStruct, NotRaw> {
        Err(NotRaw)
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, NotRaw> {
        Err(NotRaw)
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, NotRaw> {
        Err(NotRaw)
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Self::SerializeStruct, NotRaw> {
        Err(NotRaw)
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, NotRaw> {
        Err(NotRaw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    struct Order {
        id: u64,
    }

    #[test]
    fn encode_picks_the_content_type_fastream_would() {
        assert_eq!(
            encode("hi").unwrap(),
            (Bytes::from_static(b"hi"), Some(TEXT))
        );
        assert_eq!(
            encode(&Order { id: 7 }).unwrap(),
            (Bytes::from_static(br#"{"id":7}"#), Some(JSON))
        );
        assert_eq!(encode(&5u8).unwrap().1, Some(JSON));
    }

    #[test]
    fn decode_follows_the_content_type() {
        assert_eq!(
            decode::<Order>(br#"{"id":1}"#, None).unwrap(),
            Order { id: 1 }
        );
        assert_eq!(
            decode::<Order>(br#"{"id":1}"#, Some("application/json; charset=utf-8")).unwrap(),
            Order { id: 1 }
        );
        // FastStream's `content-type: ""` (bytes on Kafka and NATS) is no content type: JSON.
        assert_eq!(
            decode::<Order>(br#"{"id":1}"#, Some("")).unwrap(),
            Order { id: 1 }
        );
        assert_eq!(
            decode::<String>(b"plain", Some("text/plain")).unwrap(),
            "plain"
        );
        let e = decode::<Order>(b"plain", Some("text/plain"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("text/plain") && e.contains("Order"), "{e}");
        let e = decode::<Order>(br#"{"id":"x"}"#, Some(JSON))
            .unwrap_err()
            .to_string();
        assert!(e.contains("invalid type"), "{e}");
        let e = decode::<Order>(b"<x/>", Some("application/xml"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("unsupported content-type `application/xml`"),
            "{e}"
        );
    }
}
