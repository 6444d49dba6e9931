//! Connection options: where the broker is, who we are (client id, credentials) and what kind
//! of session we keep.
//!
//! The session matters more on MQTT than on other brokers: a message left unacknowledged when
//! the App stops (one waiting for its redelivery after a nack, an unsettled `Manual` message,
//! one not handled yet) comes back only when the broker resumes the client's *persistent*
//! session, i.e. on a connection with the same client id and `clean_session = false`. So the
//! builder makes that explicit ([`MqttBroker::client_id`], [`MqttBroker::persistent_session`]),
//! and subscribing with `NackOnError` on a clean session is refused rather than silently losing
//! a nacked message at a stop.
//!
//! [`MqttBroker::client_id`]: crate::MqttBroker::client_id
//! [`MqttBroker::persistent_session`]: crate::MqttBroker::persistent_session

use brook_runtime::url::{percent_decode, redact, UrlParts};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use brook_runtime::{BrokerError, BrokerKind};

/// The MQTT protocol version spoken to the broker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ProtocolVersion {
    /// MQTT 3.1.1 (the default): no headers on the wire.
    #[default]
    V311,
    /// MQTT 5: headers travel as the content type, correlation data, response topic and user
    /// properties; a persistent session is a session expiry interval.
    V5,
}

/// Settings of an [`MqttBroker`](crate::MqttBroker), parsed from a URL and adjusted with the
/// builder methods.
#[derive(Clone)]
pub(crate) struct Config {
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<String>,
    pub client_id: String,
    pub clean_session: bool,
    pub keep_alive: Duration,
    pub connect_timeout: Duration,
    pub publish_qos: u8,
    pub request_capacity: usize,
    pub inflight: u16,
    pub max_packet_size: usize,
    pub protocol: ProtocolVersion,
    /// MQTT 5 session expiry of a persistent session (seconds; u32::MAX: never).
    pub session_expiry_secs: u32,
    /// Connect over TLS (`mqtts://`).
    pub tls: bool,
    /// Extra trusted CA certificates (PEM), on top of the system's.
    pub ca_pem: Option<std::sync::Arc<Vec<u8>>>,
}

impl Config {
    /// Parses `mqtt://[user[:password]@]host[:port][?client_id=..&clean_session=..]`
    /// (`tcp://` is accepted too; no scheme means `mqtt://`).
    pub fn parse(url: &str) -> Result<Config, BrokerError> {
        let invalid = |message: String| BrokerError::Invalid {
            broker: BrokerKind::Mqtt,
            message,
        };
        #[allow(unused_mut)]
        let mut tls = false;
        // The query starts at the first `?` (an `@` may appear unencoded in it, e.g. in a
        // client id); before it, the user information ends at the last `@`, so an unencoded
        // `/`, `:` or `@` in a password is not taken for a path, a port or a host.
        let (before_query, query) = match url.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (url, None),
        };
        let parts = UrlParts::split(before_query);
        match parts.scheme {
            Some("mqtt" | "tcp") | None => {}
            #[cfg(feature = "tls")]
            Some("mqtts" | "ssl" | "tls") => tls = true,
            #[cfg(not(feature = "tls"))]
            Some("mqtts" | "ssl" | "tls") => {
                return Err(invalid(format!(
                    "TLS (`{}`) needs brook-mqtt's `tls` feature; use mqtt:// or enable it",
                    redact(url)
                )))
            }
            Some(scheme) => {
                return Err(invalid(format!(
                    "unsupported URL scheme `{scheme}` in `{}`: use mqtt://host:port",
                    redact(url)
                )))
            }
        }
        let hostport = parts.rest.trim_end_matches('/');
        let (username, password) = (parts.user(), parts.password());
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || p.parse::<u16>().is_ok() => {
                let port = p.parse::<u16>().map_err(|_| {
                    invalid(format!(
                        "invalid port `{}` in MQTT URL `{}`",
                        quote(url, p),
                        redact(url)
                    ))
                })?;
                (h.to_owned(), port)
            }
            _ => (hostport.to_owned(), if tls { 8883 } else { 1883 }),
        };
        if host.is_empty() {
            return Err(invalid(format!("no host in MQTT URL `{}`", redact(url))));
        }
        let mut config = Config {
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            port,
            username,
            password,
            client_id: generated_client_id(),
            clean_session: true,
            keep_alive: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            publish_qos: 1,
            request_capacity: 10_000,
            inflight: 100,
            max_packet_size: 10 * 1024 * 1024,
            protocol: ProtocolVersion::V311,
            session_expiry_secs: u32::MAX,
            tls,
            ca_pem: None,
        };
        for pair in query.into_iter().flat_map(|q| q.split('&')) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "client_id" => config.client_id = percent_decode(value),
                "clean_session" => {
                    config.clean_session = parse_bool(value).ok_or_else(|| {
                        invalid(format!(
                            "clean_session must be true or false, not `{}`",
                            quote(url, value)
                        ))
                    })?
                }
                "protocol" | "version" => {
                    config.protocol = match value {
                        "3.1.1" | "311" | "4" | "v3" => ProtocolVersion::V311,
                        "5" | "v5" => ProtocolVersion::V5,
                        other => {
                            return Err(invalid(format!(
                                "unknown MQTT protocol version `{}` (3.1.1 or 5)",
                                quote(url, other)
                            )))
                        }
                    }
                }
                "keep_alive_secs" => {
                    config.keep_alive = Duration::from_secs(value.parse().map_err(|_| {
                        invalid(format!(
                            "keep_alive_secs must be a number, not `{}`",
                            quote(url, value)
                        ))
                    })?)
                }
                "" => {}
                other => {
                    return Err(invalid(format!(
                        "unknown MQTT URL option `{}` (known: client_id, clean_session, keep_alive_secs, protocol)",
                        quote(url, other)
                    )))
                }
            }
        }
        Ok(config)
    }

    /// `host:port`, what errors name (never credentials).
    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MqttConfig")
            .field("address", &self.address())
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("client_id", &self.client_id)
            .field("clean_session", &self.clean_session)
            .field("keep_alive", &self.keep_alive)
            .field("protocol", &self.protocol)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

fn parse_bool(value: &str) -> Option<bool> {
    match value {
        "true" | "1" | "yes" => Some(true),
        "false" | "0" | "no" => Some(false),
        _ => None,
    }
}

/// A client id unique to this process and call, for brokers that were not given one.
pub(crate) fn generated_client_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "brook-{}-{nanos}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// `fragment` (a piece of the URL an error wants to quote) unless it could be part of the user
/// info, in which case a placeholder: the parser may have misread a password as a port, an
/// option or a value.
fn quote(url: &str, fragment: &str) -> String {
    match UrlParts::split(url).userinfo {
        Some(userinfo) if !fragment.is_empty() && userinfo.contains(fragment) => {
            "<redacted>".to_owned()
        }
        _ => fragment.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_credentials_port_and_options() {
        let c = Config::parse(
            "mqtt://user:p%40ss@broker.local:1884?client_id=svc-1&clean_session=false",
        )
        .unwrap();
        assert_eq!(c.address(), "broker.local:1884");
        assert_eq!(c.username.as_deref(), Some("user"));
        assert_eq!(c.password.as_deref(), Some("p@ss"));
        assert_eq!(c.client_id, "svc-1");
        assert!(!c.clean_session);
        let debug = format!("{c:?}");
        assert!(
            !debug.contains("p@ss") && !debug.contains("p%40ss"),
            "{debug}"
        );
    }

    #[test]
    fn defaults_and_bare_host() {
        let c = Config::parse("127.0.0.1").unwrap();
        assert_eq!(c.address(), "127.0.0.1:1883");
        assert!(c.clean_session);
        assert!(c.client_id.starts_with("brook-"));
    }

    /// Passwords with characters a URL should have percent-encoded confuse the parser; the
    /// error (and its Debug) must still not show them.
    #[test]
    fn unencoded_special_characters_in_the_password_never_leak() {
        for (url, secret) in [
            ("mqtt://u:zq?xw@h:1883", "zq?xw"),
            ("mqtt://u:zq/xw@h:1883", "zq/xw"),
            ("mqtt://u:zq#xw@h", "zq#xw"),
            ("mqtt://u:zq?keep_alive_secs=xw@h", "zq?keep_alive_secs=xw"),
            ("mqtt://u:zq?protocol=xw@h", "zq?protocol=xw"),
            ("mqtt://u:9zq@h:bad", "9zq"),
        ] {
            let e = Config::parse(url)
                .err()
                .map(|e| (e.to_string(), format!("{e:?}")));
            if let Some((text, debug)) = e {
                for part in ["zq", "xw"].into_iter().filter(|p| secret.contains(p)) {
                    assert!(!text.contains(part), "{url}: {text}");
                    assert!(!debug.contains(part), "{url}: {debug}");
                }
            }
            let r = redact(url);
            assert!(!r.contains(secret), "{url}: {r}");
        }
    }

    #[test]
    fn an_at_sign_in_the_query_is_not_user_information() {
        let c = Config::parse("mqtt://u:p/w@broker:1884?client_id=dev@site").unwrap();
        assert_eq!((c.host.as_str(), c.port), ("broker", 1884));
        assert_eq!(c.client_id, "dev@site");
        assert_eq!(c.username.as_deref(), Some("u"));
        assert_eq!(c.password.as_deref(), Some("p/w"));
    }

    #[test]
    fn errors_never_show_the_password() {
        let e = Config::parse("mqtt://u:secret@h:notaport")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("secret"), "{e}");
        assert!(e.contains("mqtt://h:notaport"), "{e}");
        #[cfg(not(feature = "tls"))]
        assert!(Config::parse("mqtts://u:secret@h")
            .unwrap_err()
            .to_string()
            .contains("TLS"));
        #[cfg(feature = "tls")]
        assert_eq!(
            Config::parse("mqtts://u:secret@h").unwrap().address(),
            "h:8883"
        );
    }
}
