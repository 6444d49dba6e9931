//! Message headers, with FastStream's names for the well-known ones.

use std::fmt;
use std::sync::Arc;

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
    entries: Option<Arc<Vec<(String, String)>>>,
}

impl Headers {
    /// No headers.
    pub const fn new() -> Self {
        Headers { entries: None }
    }

    /// The value of `name` (exact match), if present.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    /// Sets `name` to `value`, replacing an earlier value.
    pub fn insert(&mut self, name: impl Into<String>, value: impl Into<String>) {
        let name = name.into();
        let value = value.into();
        let entries = Arc::make_mut(self.entries.get_or_insert_with(Default::default));
        match entries.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = value,
            None => entries.push((name, value)),
        }
    }

    /// Removes `name`, returning its value.
    pub fn remove(&mut self, name: &str) -> Option<String> {
        let entries = Arc::make_mut(self.entries.as_mut()?);
        let at = entries.iter().position(|(n, _)| n == name)?;
        Some(entries.remove(at).1)
    }

    /// The headers in insertion order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries
            .iter()
            .flat_map(|e| e.iter())
            .map(|(n, v)| (n.as_str(), v.as_str()))
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

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Headers {
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
}
