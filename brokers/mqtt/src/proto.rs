//! MQTT 3.1.1 and 5 behind one face.
//!
//! rumqttc has two parallel APIs (`rumqttc` for 3.1.1, `rumqttc::v5`) with the same shape but
//! different types. The connection logic (routing, ordered acks, resume, waiters) is the same
//! for both, so it talks to a [`Client`] and a [`Loop`] that hide the version, and sees
//! incoming traffic as version-free [`Ev`]ents. Headers exist only on v5: they map to the
//! content type, correlation data, response topic and user properties (see [`to_properties`]).

use brook_runtime::headers::{CONTENT_TYPE, CORRELATION_ID, REPLY_TO};
use brook_runtime::Headers;
use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::{
    Packet as Packet5, PubAckReason, PubCompReason, Publish as Publish5, PublishProperties,
    SubscribeReasonCode as SubCode5,
};
use rumqttc::v5::mqttbytes::QoS as QoS5;
use rumqttc::{Event, Outgoing, Packet, Publish, QoS, SubscribeReasonCode};

use crate::acks::AckTarget;
use crate::options::{Config, ProtocolVersion};

/// A PUBLISH received, version-free.
pub(crate) struct Incoming {
    pub topic: String,
    pub payload: Bytes,
    pub qos: QoS,
    pub pkid: u16,
    pub dup: bool,
    pub retain: bool,
    pub headers: Headers,
}

/// What the driver reacts to.
pub(crate) enum Ev {
    ConnAck {
        session_present: bool,
    },
    Publish(Incoming),
    /// PUBACK / PUBCOMP for one of our publishes (`Err`: the broker refused it, v5).
    Confirmed(u16, Result<(), String>),
    SubAck {
        pkid: u16,
        refused: bool,
    },
    SentPublish(u16),
    SentSubscribe(u16),
    /// A PUBACK / PUBREC of ours was written.
    SentAck(u16),
    SentPubComp,
    SentDisconnect,
    Other,
}

fn qos5(q: QoS) -> QoS5 {
    match q {
        QoS::AtMostOnce => QoS5::AtMostOnce,
        QoS::AtLeastOnce => QoS5::AtLeastOnce,
        QoS::ExactlyOnce => QoS5::ExactlyOnce,
    }
}

fn qos4(q: QoS5) -> QoS {
    match q {
        QoS5::AtMostOnce => QoS::AtMostOnce,
        QoS5::AtLeastOnce => QoS::AtLeastOnce,
        QoS5::ExactlyOnce => QoS::ExactlyOnce,
    }
}

/// The request side of a connection.
#[derive(Clone)]
pub(crate) enum Client {
    V4(rumqttc::AsyncClient),
    V5(rumqttc::v5::AsyncClient),
}

impl Client {
    fn ack4(target: AckTarget) -> Publish {
        let mut p = Publish::from_bytes("", target.qos, Bytes::new());
        p.pkid = target.pkid;
        p
    }

    fn ack5(target: AckTarget) -> Publish5 {
        let mut p = Publish5::new("", qos5(target.qos), Bytes::new(), None);
        p.pkid = target.pkid;
        p
    }

    /// Queues PUBACK/PUBREC without waiting; `false` if rumqttc's queue is full.
    pub fn try_ack(&self, target: AckTarget) -> bool {
        match self {
            Client::V4(c) => c.try_ack(&Self::ack4(target)).is_ok(),
            Client::V5(c) => c.try_ack(&Self::ack5(target)).is_ok(),
        }
    }

    pub async fn publish(
        &self,
        topic: String,
        qos: QoS,
        retain: bool,
        payload: Bytes,
        headers: &Headers,
    ) -> Result<(), String> {
        match self {
            Client::V4(c) => c
                .publish_bytes(topic, qos, retain, payload)
                .await
                .map_err(|e| e.to_string()),
            Client::V5(c) => match to_properties(headers) {
                Some(p) => c
                    .publish_bytes_with_properties(topic, qos5(qos), retain, payload, p)
                    .await
                    .map_err(|e| e.to_string()),
                None => c
                    .publish_bytes(topic, qos5(qos), retain, payload)
                    .await
                    .map_err(|e| e.to_string()),
            },
        }
    }

    pub fn try_subscribe(&self, filter: &str, qos: QoS) -> Result<(), String> {
        match self {
            Client::V4(c) => c.try_subscribe(filter, qos).map_err(|e| e.to_string()),
            Client::V5(c) => c
                .try_subscribe(filter, qos5(qos))
                .map_err(|e| e.to_string()),
        }
    }

    pub async fn disconnect(&self) -> Result<(), String> {
        match self {
            Client::V4(c) => c.disconnect().await.map_err(|e| e.to_string()),
            Client::V5(c) => c.disconnect().await.map_err(|e| e.to_string()),
        }
    }
}

/// The event loop of a connection.
pub(crate) enum Loop {
    V4(Box<rumqttc::EventLoop>),
    /// v5's event loop hides whether it has a network connection, so it is tracked here.
    V5(Box<rumqttc::v5::EventLoop>, bool),
}

impl Loop {
    pub fn is_connected(&self) -> bool {
        match self {
            Loop::V4(el) => el.network.is_some(),
            Loop::V5(_, connected) => *connected,
        }
    }

    /// Our publishes awaiting acks, or received packets not yet handed out.
    pub fn busy(&self) -> bool {
        match self {
            Loop::V4(el) => el.state.inflight() > 0 || !el.state.events.is_empty(),
            Loop::V5(el, _) => el.state.inflight() > 0 || !el.state.events.is_empty(),
        }
    }

    /// Events rumqttc read and buffered but has not returned from `poll()` yet. After a
    /// reconnect, the ones left from the lost connection come right after the CONNACK.
    pub fn buffered_events(&self) -> usize {
        match self {
            Loop::V4(el) => el.state.events.len(),
            Loop::V5(el, _) => el.state.events.len(),
        }
    }

    /// Drops the network connection (no DISCONNECT); unacked publishes are kept for resending.
    pub fn clean(&mut self) {
        match self {
            Loop::V4(el) => el.clean(),
            Loop::V5(el, connected) => {
                el.clean();
                *connected = false;
            }
        }
    }

    /// Whether [`Loop::write_acks`] can write to the socket (MQTT 3.1.1 only: rumqttc's v5
    /// event loop keeps its socket private).
    pub fn writes_acks(&self) -> bool {
        matches!(self, Loop::V4(_))
    }

    /// Writes PUBACKs/PUBRECs straight to the socket, with one flush for all of them, within
    /// `timeout`. They go through rumqttc's session state as if taken from its request queue
    /// (which also reports each as sent); only the per-request flush is saved. An error (also
    /// when not connected) means the connection is no longer usable for acks.
    pub async fn write_acks(
        &mut self,
        acks: impl IntoIterator<Item = AckTarget>,
        timeout: std::time::Duration,
    ) -> Result<(), String> {
        match self {
            Loop::V4(el) => {
                let el = &mut **el;
                let Some(network) = el.network.as_mut() else {
                    return Err("not connected".into());
                };
                let state = &mut el.state;
                let write = async {
                    for a in acks {
                        let request = match a.qos {
                            QoS::ExactlyOnce => {
                                rumqttc::Request::PubRec(rumqttc::PubRec::new(a.pkid))
                            }
                            _ => rumqttc::Request::PubAck(rumqttc::PubAck::new(a.pkid)),
                        };
                        if let Some(packet) = state
                            .handle_outgoing_packet(request)
                            .map_err(|e| e.to_string())?
                        {
                            // Buffered; `feed` only writes once the buffer is full.
                            network.write(packet).await.map_err(|e| e.to_string())?;
                        }
                    }
                    network.flush().await.map_err(|e| e.to_string())
                };
                tokio::time::timeout(timeout, write)
                    .await
                    .map_err(|_| format!("writing acknowledgements took over {timeout:?}"))?
            }
            // rumqttc's v5 event loop does not expose its socket; see `writes_acks`.
            Loop::V5(..) => Err("an MQTT 5 connection queues its acks through rumqttc".into()),
        }
    }

    pub async fn poll(&mut self) -> Result<Ev, String> {
        match self {
            Loop::V4(el) => match el.poll().await {
                Ok(event) => Ok(ev4(event)),
                Err(rumqttc::ConnectionError::ConnectionRefused(code)) => {
                    Err(format!("the broker refused the connection ({code:?})"))
                }
                Err(e) => Err(e.to_string()),
            },
            Loop::V5(el, connected) => match el.poll().await {
                Ok(event) => {
                    let ev = ev5(event);
                    if matches!(ev, Ev::ConnAck { .. }) {
                        *connected = true;
                    }
                    Ok(ev)
                }
                Err(e) => {
                    *connected = false;
                    Err(match e {
                        rumqttc::v5::ConnectionError::ConnectionRefused(code) => {
                            format!("the broker refused the connection ({code:?})")
                        }
                        e => e.to_string(),
                    })
                }
            },
        }
    }
}

fn outgoing(o: Outgoing) -> Ev {
    match o {
        Outgoing::Publish(pkid) => Ev::SentPublish(pkid),
        Outgoing::Subscribe(pkid) => Ev::SentSubscribe(pkid),
        Outgoing::PubAck(pkid) | Outgoing::PubRec(pkid) => Ev::SentAck(pkid),
        Outgoing::PubComp(_) => Ev::SentPubComp,
        Outgoing::Disconnect => Ev::SentDisconnect,
        _ => Ev::Other,
    }
}

fn ev4(event: Event) -> Ev {
    match event {
        Event::Incoming(Packet::Publish(p)) => Ev::Publish(Incoming {
            topic: p.topic,
            payload: p.payload,
            qos: p.qos,
            pkid: p.pkid,
            dup: p.dup,
            retain: p.retain,
            headers: Headers::new(),
        }),
        Event::Incoming(Packet::ConnAck(a)) => Ev::ConnAck {
            session_present: a.session_present,
        },
        Event::Incoming(Packet::PubAck(a)) => Ev::Confirmed(a.pkid, Ok(())),
        Event::Incoming(Packet::PubComp(c)) => Ev::Confirmed(c.pkid, Ok(())),
        Event::Incoming(Packet::SubAck(a)) => Ev::SubAck {
            pkid: a.pkid,
            refused: a
                .return_codes
                .iter()
                .any(|c| matches!(c, SubscribeReasonCode::Failure)),
        },
        Event::Outgoing(o) => outgoing(o),
        Event::Incoming(_) => Ev::Other,
    }
}

fn ev5(event: rumqttc::v5::Event) -> Ev {
    use rumqttc::v5::Event as E;
    match event {
        E::Incoming(Packet5::Publish(p)) => Ev::Publish(Incoming {
            topic: String::from_utf8_lossy(&p.topic).into_owned(),
            headers: from_properties(p.properties.as_ref()),
            payload: p.payload,
            qos: qos4(p.qos),
            pkid: p.pkid,
            dup: p.dup,
            retain: p.retain,
        }),
        E::Incoming(Packet5::ConnAck(a)) => Ev::ConnAck {
            session_present: a.session_present,
        },
        E::Incoming(Packet5::PubAck(a)) => Ev::Confirmed(
            a.pkid,
            match a.reason {
                PubAckReason::Success | PubAckReason::NoMatchingSubscribers => Ok(()),
                other => Err(format!("the broker refused the publish ({other:?})")),
            },
        ),
        E::Incoming(Packet5::PubComp(c)) => Ev::Confirmed(
            c.pkid,
            match c.reason {
                PubCompReason::Success => Ok(()),
                other => Err(format!(
                    "the broker did not complete the publish ({other:?})"
                )),
            },
        ),
        E::Incoming(Packet5::SubAck(a)) => Ev::SubAck {
            pkid: a.pkid,
            refused: a
                .return_codes
                .iter()
                .any(|c| !matches!(c, SubCode5::Success(_))),
        },
        E::Outgoing(o) => outgoing(o),
        E::Incoming(_) => Ev::Other,
    }
}

/// brook headers as MQTT 5 publish properties: `content-type` → content type,
/// `correlation_id` → correlation data, `reply_to` → response topic, the rest → user
/// properties (in order).
pub(crate) fn to_properties(headers: &Headers) -> Option<PublishProperties> {
    if headers.is_empty() {
        return None;
    }
    let mut p = PublishProperties::default();
    for (name, value) in headers.iter() {
        match name {
            CONTENT_TYPE => p.content_type = Some(value.to_owned()),
            CORRELATION_ID => p.correlation_data = Some(Bytes::copy_from_slice(value.as_bytes())),
            REPLY_TO => p.response_topic = Some(value.to_owned()),
            _ => p.user_properties.push((name.to_owned(), value.to_owned())),
        }
    }
    Some(p)
}

/// The reverse of [`to_properties`] (correlation data that is not UTF-8 is converted lossily).
pub(crate) fn from_properties(p: Option<&PublishProperties>) -> Headers {
    let Some(p) = p else {
        return Headers::new();
    };
    let mut h = Headers::new();
    if let Some(ct) = &p.content_type {
        h.insert(CONTENT_TYPE, ct.clone());
    }
    if let Some(cd) = &p.correlation_data {
        h.insert(CORRELATION_ID, String::from_utf8_lossy(cd).into_owned());
    }
    if let Some(rt) = &p.response_topic {
        h.insert(REPLY_TO, rt.clone());
    }
    for (k, v) in &p.user_properties {
        h.insert(k.clone(), v.clone());
    }
    h
}

/// The TLS transport for `config` (rustls with ring: the system's root certificates plus
/// `config.ca_pem`).
#[cfg(feature = "tls")]
fn tls_transport(config: &Config) -> Result<rumqttc::Transport, String> {
    use std::sync::Arc;
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        let _ = roots.add(cert);
    }
    if let Some(pem) = &config.ca_pem {
        let mut reader = &pem[..];
        let mut added = 0;
        for cert in rustls_pemfile::certs(&mut reader) {
            let cert = cert.map_err(|e| format!("invalid CA certificate PEM: {e}"))?;
            roots
                .add(cert)
                .map_err(|e| format!("invalid CA certificate: {e}"))?;
            added += 1;
        }
        if added == 0 {
            return Err("the CA PEM holds no certificate".into());
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(rumqttc::Transport::tls_with_config(
        rumqttc::TlsConfiguration::Rustls(Arc::new(tls)),
    ))
}

#[cfg(not(feature = "tls"))]
fn tls_transport(_: &Config) -> Result<rumqttc::Transport, String> {
    Err("TLS needs brook-mqtt's `tls` feature".into())
}

/// Builds the client and event loop for `config`'s protocol version.
///
/// With `TCP_NODELAY`: brook already batches what it writes (acks, one flush per batch), and
/// under Nagle's algorithm a small packet written while the previous one is unacknowledged
/// waits for the broker's delayed ACK (40 ms on Linux): a PUBACK, or the DISCONNECT that ends
/// every shutdown.
pub(crate) fn build(config: &Config) -> Result<(Client, Loop), String> {
    let timeout_secs = config.connect_timeout.as_secs().max(1);
    let transport = if config.tls {
        Some(tls_transport(config)?)
    } else {
        None
    };
    match config.protocol {
        ProtocolVersion::V311 => {
            let mut o = rumqttc::MqttOptions::new(
                config.client_id.clone(),
                config.host.clone(),
                config.port,
            );
            o.set_keep_alive(config.keep_alive)
                .set_clean_session(config.clean_session)
                .set_manual_acks(true)
                .set_inflight(config.inflight)
                .set_request_channel_capacity(config.request_capacity)
                .set_max_packet_size(config.max_packet_size, config.max_packet_size);
            if let Some(user) = &config.username {
                o.set_credentials(user.clone(), config.password.clone().unwrap_or_default());
            }
            if let Some(t) = transport {
                o.set_transport(t);
            }
            let (client, mut el) = rumqttc::AsyncClient::new(o, config.request_capacity);
            el.network_options.set_connection_timeout(timeout_secs);
            el.network_options.set_tcp_nodelay(true);
            Ok((Client::V4(client), Loop::V4(Box::new(el))))
        }
        ProtocolVersion::V5 => {
            let mut o = rumqttc::v5::MqttOptions::new(
                config.client_id.clone(),
                config.host.clone(),
                config.port,
            );
            o.set_keep_alive(config.keep_alive)
                .set_clean_start(config.clean_session)
                .set_manual_acks(true)
                .set_outgoing_inflight_upper_limit(config.inflight)
                .set_request_channel_capacity(config.request_capacity)
                .set_max_packet_size(Some(config.max_packet_size as u32))
                .set_connection_timeout(timeout_secs);
            if !config.clean_session {
                // Persistent: the broker keeps the session (and unacked messages) this long
                // after the connection ends.
                o.set_session_expiry_interval(Some(config.session_expiry_secs));
            }
            if let Some(user) = &config.username {
                o.set_credentials(user.clone(), config.password.clone().unwrap_or_default());
            }
            if let Some(t) = transport {
                o.set_transport(t);
            }
            let mut network = o.network_options();
            network.set_tcp_nodelay(true);
            o.set_network_options(network);
            let (client, el) = rumqttc::v5::AsyncClient::new(o, config.request_capacity);
            Ok((Client::V5(client), Loop::V5(Box::new(el), false)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_through_v5_properties() {
        let h: Headers = [
            ("content-type", "application/json"),
            ("correlation_id", "c-1"),
            ("reply_to", "replies/a"),
            ("x-tenant", "acme"),
        ]
        .into_iter()
        .collect();
        let p = to_properties(&h).unwrap();
        assert_eq!(p.content_type.as_deref(), Some("application/json"));
        assert_eq!(p.correlation_data.as_deref(), Some(&b"c-1"[..]));
        assert_eq!(p.response_topic.as_deref(), Some("replies/a"));
        assert_eq!(p.user_properties, vec![("x-tenant".into(), "acme".into())]);
        assert_eq!(from_properties(Some(&p)), h);
        assert!(to_properties(&Headers::new()).is_none());
    }
}
