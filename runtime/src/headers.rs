//! Message headers, with FastStream's names for the well-known ones.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use smallvec::SmallVec;

/// `content-type` (FastStream's name; brokers with a native field map it there).
pub const CONTENT_TYPE: &str = "content-type";
/// `correlation_id` (FastStream's name).
pub const CORRELATION_ID: &str = "correlation_id";
/// `reply_to` (FastStream's name).
pub const REPLY_TO: &str = "reply_to";
/// `message_id` (FastStream's name).
pub const MESSAGE_ID: &str = "message_id";

/// Header names and values, in order. Cloning is cheap (shared until modified), and an empty set
/// allocates nothing, so messages without headers cost nothing here.
///
/// ```
/// use brook_runtime::Headers;
/// let mut h = Headers::new();
/// h.insert("content-type", "application/json");
/// h.insert("x-tenant", "acme");
/// assert_eq!(h.get("x-tenant"), Some("acme"));
/// assert_eq!(h.len(), 2);
/// ```
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Headers {
    entries: Option<Arc<Entries>>,
}

/// Consumers build headers for every delivery, so a set of up to two (the usual content type
/// and correlation id) lives in the one allocation of its `Arc`, and the well-known names and
/// content types are not copied at all ([`known`]).
type Entries = SmallVec<[(Text, Text); 2]>;
type Text = Cow<'static, str>;

/// The names and values that arrive on most deliveries, kept as `&'static str`.
const KNOWN: &[&str] = &[
    CONTENT_TYPE,
    CORRELATION_ID,
    REPLY_TO,
    MESSAGE_ID,
    "traceparent",
    "tracestate",
    "baggage",
    "application/json",
    "text/plain",
    "application/octet-stream",
    "application/msgpack",
];

fn known(s: &str) -> Option<&'static str> {
    KNOWN.iter().copied().find(|k| *k == s)
}

fn text(s: impl AsRef<str> + Into<String>) -> Text {
    match known(s.as_ref()) {
        Some(k) => Cow::Borrowed(k),
        None => Cow::Owned(s.into()),
    }
}

impl Headers {
    /// No headers.
    pub const fn new() -> Self {
        Headers { entries: None }
    }

    /// The value of `name` (exact match), if present.
    pub fn get(&self, name: &str) -> Option<&str> {
        // Asked of every delivery (content type, reply_to), most often with no headers at all.
        let entries = self.entries.as_deref()?;
        entries
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_ref())
    }

    /// Sets `name` to `value`, replacing an earlier value.
    pub fn insert(
        &mut self,
        name: impl AsRef<str> + Into<String>,
        value: impl AsRef<str> + Into<String>,
    ) {
        let entries = Arc::make_mut(self.entries.get_or_insert_with(Default::default));
        match entries.iter_mut().find(|(n, _)| n == name.as_ref()) {
            Some(slot) => slot.1 = text(value),
            None => entries.push((text(name), text(value))),
        }
    }

    /// Removes `name`, returning its value.
    pub fn remove(&mut self, name: &str) -> Option<String> {
        let entries = Arc::make_mut(self.entries.as_mut()?);
        let at = entries.iter().position(|(n, _)| n == name)?;
        Some(entries.remove(at).1.into_owned())
    }

    /// The headers in insertion order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries
            .iter()
            .flat_map(|e| e.iter())
            .map(|(n, v)| (n.as_ref(), v.as_ref()))
    }

    /// How many headers there are.
    pub fn len(&self) -> usize {
        self.entries.as_ref().map_or(0, |e| e.len())
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl fmt::Debug for Headers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<K, V> FromIterator<(K, V)> for Headers
where
    K: AsRef<str> + Into<String>,
    V: AsRef<str> + Into<String>,
{
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut h = Headers::new();
        for (k, v) in iter {
            h.insert(k, v);
        }
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_replaces_and_keeps_order() {
        let mut h: Headers = [("a", "1"), ("b", "2")].into_iter().collect();
        h.insert("a", "3");
        assert_eq!(h.iter().collect::<Vec<_>>(), vec![("a", "3"), ("b", "2")]);
        assert_eq!(h.remove("a").as_deref(), Some("3"));
        assert_eq!(h.len(), 1);
    }

    #[test]
    fn clones_are_independent() {
        let mut a = Headers::new();
        a.insert("k", "v");
        let mut b = a.clone();
        b.insert("k", "w");
        assert_eq!(a.get("k"), Some("v"));
        assert_eq!(b.get("k"), Some("w"));
    }

    #[test]
    fn known_names_and_values_are_not_copied() {
        let mut h = Headers::new();
        h.insert(String::from(CONTENT_TYPE), String::from("application/json"));
        h.insert("x-tenant", "acme");
        let entries = h.entries.as_deref().expect("two headers");
        assert!(matches!(entries[0], (Cow::Borrowed(_), Cow::Borrowed(_))));
        assert!(matches!(entries[1], (Cow::Owned(_), Cow::Owned(_))));
        assert!(
            !entries.spilled(),
            "two headers fit in the Arc's own allocation"
        );
        assert_eq!(h.get(CONTENT_TYPE), Some("application/json"));
    }
}
