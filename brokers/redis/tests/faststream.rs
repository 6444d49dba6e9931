//! Wire compatibility with FastStream: payloads it publishes (binary envelope, legacy JSON
//! envelope) reach brook handlers with their headers, and what brook publishes is laid out as
//! FastStream's `BinaryMessageFormatV1` parser expects. The FastStream bytes are built here by
//! hand from the format description, independently of brook's encoder.

mod common;

use brook_redis::RedisBroker;
use brook_runtime::{AckPolicy, Broker, Outgoing};
use bytes::Bytes;
use common::*;
use fred::types::Value;

/// What FastStream's `BinaryMessageFormatV1.encode` writes.
fn faststream_binary(headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut h = Vec::new();
    for (k, v) in headers {
        h.extend((k.len() as u16).to_be_bytes());
        h.extend(k.as_bytes());
        h.extend((v.len() as u16).to_be_bytes());
        h.extend(v.as_bytes());
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

/// What FastStream 0.7.8's `BinaryMessageFormatV1.encode` really writes for `str` headers:
/// `BinaryWriter.write_string` puts `len(data)`, the *character* count, before `data.encode()`,
/// the UTF-8 bytes; `data_start` is computed from the length of the header bytes written. For
/// ASCII this is [`faststream_binary`]; for "Zürich" the length says 6 where 7 bytes follow.
fn faststream_078_binary(headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
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

/// FastStream's parser, step by step: magic, version, offsets, headers, data.
fn faststream_parse(wire: &[u8]) -> (Vec<(String, String)>, Vec<u8>) {
    assert_eq!(&wire[..8], b"\x89BIN\r\n\x1a\n");
    assert_eq!(u16::from_be_bytes([wire[8], wire[9]]), 1);
    let headers_start = u32::from_be_bytes(wire[10..14].try_into().unwrap()) as usize;
    let data_start = u32::from_be_bytes(wire[14..18].try_into().unwrap()) as usize;
    let mut at = headers_start;
    let count = u16::from_be_bytes([wire[at], wire[at + 1]]);
    at += 2;
    let read = |at: &mut usize| {
        let len = u16::from_be_bytes([wire[*at], wire[*at + 1]]) as usize;
        let s = String::from_utf8(wire[*at + 2..*at + 2 + len].to_vec()).unwrap();
        *at += 2 + len;
        s
    };
    let headers = (0..count).map(|_| (read(&mut at), read(&mut at))).collect();
    (headers, wire[data_start..].to_vec())
}

const HEADERS: [(&str, &str); 4] = [
    ("correlation_id", "7c4f"),
    ("content-type", "application/json"),
    ("reply_to", "answers"),
    ("x-tenant", "acme"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faststream_stream_entries_reach_brook_with_headers() {
    let (stream, c) = (unique("fs-stream"), raw().await);
    let sub = subscription(vec![
        ("stream", stream.clone().into()),
        ("group", "g".into()),
        ("ack_policy", AckPolicy::Ack.into()),
    ]);
    let mut run = start(RedisBroker::new(URL), sub, WAIT, |_| Act::Ok).await;
    let wire = faststream_binary(&HEADERS, br#"{"id": 5}"#);
    call(
        &c,
        "XADD",
        vec![s(&stream), s("*"), s("__data__"), Value::Bytes(wire.into())],
    )
    .await;
    let seen = run.next().await;
    assert_eq!(seen.body, Bytes::from_static(br#"{"id": 5}"#));
    for (k, v) in HEADERS {
        assert_eq!(seen.headers.get(k), Some(v), "{k}");
    }
    run.stop().await;
}

/// FastStream 0.7.8 counts characters, not bytes, in its header lengths; brook still reads its
/// non-ASCII header values whole (the header block ends where the payload starts), wherever
/// they are among the headers, and the payload intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faststreams_non_ascii_header_values_reach_brook_whole() {
    let (stream, c) = (unique("fs-utf8"), raw().await);
    let sub = subscription(vec![
        ("stream", stream.clone().into()),
        ("group", "g".into()),
        ("ack_policy", AckPolicy::Ack.into()),
    ]);
    let mut run = start(RedisBroker::new(URL), sub, WAIT, |_| Act::Ok).await;
    let headers = [
        ("correlation_id", "7c4f"),
        ("x-tenant", "acme-é"),
        ("x-city", "Zürich"),
        ("content-type", "application/json"),
    ];
    let wire = faststream_078_binary(&headers, r#"{"city": "Zürich"}"#.as_bytes());
    call(
        &c,
        "XADD",
        vec![s(&stream), s("*"), s("__data__"), Value::Bytes(wire.into())],
    )
    .await;
    let seen = run.next().await;
    assert_eq!(seen.body, Bytes::from(r#"{"city": "Zürich"}"#));
    for (k, v) in headers {
        assert_eq!(seen.headers.get(k), Some(v), "{k}");
    }
    run.stop().await;

    // brook itself keeps writing byte counts: 7 for "Zürich".
    let broker = RedisBroker::new(URL);
    let list = unique("to-fs-utf8");
    broker
        .publish_message(
            Outgoing::new(format!("list:{list}"), Bytes::from_static(b"x"))
                .with_header("x-city", "Zürich"),
        )
        .await
        .unwrap();
    let ours = &lrange(&c, &list).await[0];
    let (parsed, _) = faststream_parse(ours);
    assert!(parsed.contains(&("x-city".to_owned(), "Zürich".to_owned())));
    let at = ours
        .windows(b"x-city".len())
        .position(|w| w == b"x-city")
        .unwrap()
        + b"x-city".len();
    assert_eq!(&ours[at..at + 2], &7u16.to_be_bytes());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faststream_list_elements_in_both_envelopes_reach_brook() {
    let (list, c) = (unique("fs-list"), raw().await);
    let mut run = start(
        RedisBroker::new(URL),
        subscription(vec![("list", list.clone().into())]),
        WAIT,
        |_| Act::Ok,
    )
    .await;
    let binary = faststream_binary(&HEADERS, b"binary");
    let legacy = br#"{"data": "legacy", "headers": {"correlation_id": "old-1", "content-type": "text/plain"}}"#;
    call(
        &c,
        "RPUSH",
        vec![
            s(&list),
            Value::Bytes(binary.into()),
            Value::Bytes(Bytes::from_static(legacy)),
        ],
    )
    .await;
    let first = run.next().await;
    assert_eq!(
        (first.body, first.headers.get("reply_to")),
        (Bytes::from_static(b"binary"), Some("answers"))
    );
    let second = run.next().await;
    assert_eq!(second.body, Bytes::from_static(b"legacy"));
    assert_eq!(second.headers.get("correlation_id"), Some("old-1"));
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faststream_channel_messages_reach_brook() {
    let (channel, c) = (unique("fs-channel"), raw().await);
    let mut run = start(
        RedisBroker::new(URL),
        subscription(vec![("channel", channel.clone().into())]),
        WAIT,
        |_| Act::Ok,
    )
    .await;
    call(
        &c,
        "PUBLISH",
        vec![
            s(&channel),
            Value::Bytes(faststream_binary(&HEADERS, b"hi").into()),
        ],
    )
    .await;
    let seen = run.next().await;
    assert_eq!(
        (seen.body, seen.headers.get("x-tenant")),
        (Bytes::from_static(b"hi"), Some("acme"))
    );
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_brook_publishes_is_what_faststream_parses() {
    let (stream, list, c) = (unique("to-fs"), unique("to-fs-list"), raw().await);
    let broker = RedisBroker::new(URL);
    let out = Outgoing::encode(&serde_json::json!({"id": 9}), format!("stream:{stream}"))
        .unwrap()
        .with_correlation_id("abc")
        .with_reply_to("answers");
    broker.publish_message(out.clone()).await.unwrap();
    let entry = &xrange(&c, &stream).await[0];
    let (headers, data) = faststream_parse(entry.field("__data__").unwrap());
    assert_eq!(data, br#"{"id":9}"#);
    assert_eq!(
        headers,
        [
            ("content-type", "application/json"),
            ("correlation_id", "abc"),
            ("reply_to", "answers")
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .to_vec()
    );
    // The same bytes FastStream would write for these headers in this order.
    assert_eq!(
        &entry.field("__data__").unwrap()[..],
        &faststream_binary(
            &[
                ("content-type", "application/json"),
                ("correlation_id", "abc"),
                ("reply_to", "answers")
            ],
            br#"{"id":9}"#
        )[..]
    );

    broker
        .publish(&"plain", &format!("list:{list}"))
        .await
        .unwrap();
    let (headers, data) = faststream_parse(&lrange(&c, &list).await[0]);
    assert_eq!(
        (headers[0].1.as_str(), data.as_slice()),
        ("text/plain", &b"plain"[..])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_envelope_publishes_the_payload_alone() {
    let (list, c) = (unique("raw-env"), raw().await);
    let broker = RedisBroker::new(URL).envelope(brook_redis::Envelope::Raw);
    broker
        .publish(&serde_json::json!({"a": 1}), &format!("list:{list}"))
        .await
        .unwrap();
    assert_eq!(
        lrange(&c, &list).await,
        vec![Bytes::from_static(br#"{"a":1}"#)]
    );
}
