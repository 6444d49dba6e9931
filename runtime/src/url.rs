//! URL pieces every broker crate needs alike. Broker URLs carry credentials
//! (`scheme://user:password@host...`), and getting them out must never leave a password where an
//! error message or a log could show it: one implementation, tested once.

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
    use super::percent_decode;

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
