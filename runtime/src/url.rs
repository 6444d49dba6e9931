//! URL pieces every broker crate needs alike. Broker URLs carry credentials
//! (`scheme://user:password@host...`), and getting them out must never leave a password where an
//! error message or a log could show it: one implementation, tested once.

/// A broker URL split at its user information, without parsing anything else.
///
/// The user information is everything between `scheme://` and the **last** `@`. A password
/// written without percent-encoding may hold `/`, `?`, `#`, `:` or `@`; a URL parser would take
/// part of it for a path, query, fragment or port and could then print it in an error. Looking
/// for the last `@` first keeps every such password inside the user information.
///
/// ```
/// use brook_runtime::url::UrlParts;
/// let u = UrlParts::split("amqp://app:pa/ss@w0rd@rabbit:5672/%2f");
/// assert_eq!(u.scheme, Some("amqp"));
/// assert_eq!(u.user().as_deref(), Some("app"));
/// assert_eq!(u.password().as_deref(), Some("pa/ss@w0rd"));
/// assert_eq!(u.rest, "rabbit:5672/%2f");
/// assert_eq!(u.redacted(), "amqp://rabbit:5672/%2f");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UrlParts<'a> {
    /// Before `://`, if the URL has one.
    pub scheme: Option<&'a str>,
    /// Between `://` and the last `@`, still percent-encoded.
    pub userinfo: Option<&'a str>,
    /// After the user information: host, port, path, query.
    pub rest: &'a str,
}

impl<'a> UrlParts<'a> {
    /// Splits `url` (surrounding whitespace ignored).
    pub fn split(url: &'a str) -> UrlParts<'a> {
        let url = url.trim();
        let (scheme, after) = match url.split_once("://") {
            Some((scheme, after)) => (Some(scheme), after),
            None => (None, url),
        };
        // The user information ends at the last `@` before the query, so that an `@` in a
        // query value (`?sentinelPassword=p@ss`) never ends it. A password may hold unencoded
        // `/`, `?` and `#`, so a `?` starts the query only after a `/` and when a `key=value`
        // follows it before any `@`.
        let authority_end = after
            .match_indices('?')
            .map(|(i, _)| i)
            .find(|&i| {
                after[..i].contains('/')
                    && after[i..]
                        .split('@')
                        .next()
                        .is_some_and(|q| q.contains('='))
            })
            .unwrap_or(after.len());
        let (userinfo, rest) = match after[..authority_end].rfind('@') {
            Some(at) => (Some(&after[..at]), &after[at + 1..]),
            None => (None, after),
        };
        UrlParts {
            scheme,
            userinfo,
            rest,
        }
    }

    /// The user name, percent-decoded (a lone token, `nats://token@host`, is a user name).
    pub fn user(&self) -> Option<String> {
        let userinfo = self.userinfo?;
        let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
        Some(percent_decode(user))
    }

    /// The password (after the first `:` of the user information), percent-decoded.
    pub fn password(&self) -> Option<String> {
        let (_, password) = self.userinfo?.split_once(':')?;
        Some(percent_decode(password))
    }

    /// The URL as logs and errors may show it: no user information, and no query or fragment
    /// (options such as a Redis sentinel password travel there).
    pub fn redacted(&self) -> String {
        let rest = self.rest.split(['?', '#']).next().unwrap_or("");
        match self.scheme {
            Some(scheme) => format!("{scheme}://{rest}"),
            None => rest.to_owned(),
        }
    }
}

/// `url` without credentials, for logs, errors and `Debug` ([`UrlParts::redacted`]).
///
/// One URL: a comma is not a separator here (it may be part of a password or a query value).
/// A server list is redacted server by server by whoever knows it is one.
///
/// ```
/// use brook_runtime::url::redact;
/// assert_eq!(redact("redis://u:s3,cret@h:6379/0?sentinelPassword=a,b"), "redis://h:6379/0");
/// ```
pub fn redact(url: &str) -> String {
    UrlParts::split(url).redacted()
}

/// Undoes URL percent-encoding (`p%40ss` → `p@ss`), as used in user names and passwords.
/// An invalid escape (`%zz`, a trailing `%`) is kept as written; bytes that do not form UTF-8
/// are replaced.
///
/// ```
/// use brook_runtime::url::percent_decode;
/// assert_eq!(percent_decode("p%40ss%2Fw0rd"), "p@ss/w0rd");
/// assert_eq!(percent_decode("100%"), "100%");
/// ```
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let hex = |b: u8| (b as char).to_digit(16);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(high), Some(low)) => {
                out.push((high * 16 + low) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::{percent_decode, redact, UrlParts};

    /// Passwords with every character a URL parser would split at, unencoded.
    const AWKWARD: [&str; 7] = [
        "pa/ss", "pa?ss", "pa#ss", "p@ss", "p/a@s?s#", "p:ss", "9999",
    ];

    #[test]
    fn the_user_information_ends_at_the_last_at_sign() {
        for password in AWKWARD {
            for url in [
                format!("redis://app:{password}@host:1/2"),
                format!("mqtt://app:{password}@host"),
                format!("app:{password}@host:4222"),
            ] {
                let parts = UrlParts::split(&url);
                assert_eq!(parts.user().as_deref(), Some("app"), "{url}");
                assert_eq!(parts.password().as_deref(), Some(password), "{url}");
                let shown = redact(&url);
                assert!(
                    !shown.contains("ss") && !shown.contains("9999"),
                    "{url} -> {shown}"
                );
                assert!(!shown.contains("app"), "{url} -> {shown}");
                assert!(shown.contains("host"), "{url} -> {shown}");
            }
        }
    }

    #[test]
    fn splits_and_redacts() {
        let p = UrlParts::split(" kafka://svc%40corp:p%3Aw@h1:9092,h2:9092 ");
        assert_eq!(p.scheme, Some("kafka"));
        assert_eq!(p.user().as_deref(), Some("svc@corp"));
        assert_eq!(p.password().as_deref(), Some("p:w"));
        assert_eq!(p.rest, "h1:9092,h2:9092");
        let token = UrlParts::split("nats://s3cr3t@h:4222");
        assert_eq!(token.user().as_deref(), Some("s3cr3t"));
        assert_eq!(token.password(), None);
        let none = UrlParts::split("redis://h:6379/0");
        assert_eq!(
            (none.userinfo, none.user(), none.password()),
            (None, None, None)
        );
        assert_eq!(
            redact("redis://:pw@h:1/2?sentinelPassword=x#y"),
            "redis://h:1/2"
        );
        assert_eq!(redact("amqp://u:p@h"), "amqp://h");
        assert_eq!(redact("h:1"), "h:1");
        assert_eq!(redact("redis://u:pa,ss@h:6379"), "redis://h:6379");
        assert_eq!(redact("redis://h/0?sentinelPassword=a,b"), "redis://h/0");
        // An `@` in the query is not the end of user information.
        let query = UrlParts::split("redis-sentinel://h:26379/0?sentinelPassword=p@ss");
        assert_eq!(
            (query.userinfo, query.rest),
            (None, "h:26379/0?sentinelPassword=p@ss")
        );
        let both = UrlParts::split("redis://u:p/w@h:1/0?x=a@b");
        assert_eq!(both.password().as_deref(), Some("p/w"));
        assert_eq!(both.rest, "h:1/0?x=a@b");
    }

    #[test]
    fn decodes_escapes_and_keeps_invalid_ones() {
        assert_eq!(percent_decode("a%3Ab%40c%2f"), "a:b@c/");
        assert_eq!(percent_decode("%"), "%");
        assert_eq!(percent_decode("%4"), "%4");
        assert_eq!(percent_decode("%zz%41"), "%zzA");
        assert_eq!(percent_decode("plain"), "plain");
        assert_eq!(percent_decode("%C3%A9"), "é");
    }
}
