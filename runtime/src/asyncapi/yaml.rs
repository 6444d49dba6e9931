//! A JSON value written as block-style YAML: strings always double-quoted (JSON's string
//! escapes are YAML's), keys plain where YAML reads them back unchanged. Small on purpose: a
//! document is written, never parsed, here.

use serde_json::Value;

/// `value` as YAML, ending with a newline.
pub(crate) fn to_yaml(value: &Value) -> String {
    let mut out = String::new();
    match value {
        Value::Object(map) if !map.is_empty() => write_map(&mut out, map, 0),
        Value::Array(items) if !items.is_empty() => write_seq(&mut out, items, 0),
        scalar => {
            out.push_str(&inline(scalar));
            out.push('\n');
        }
    }
    out
}

fn write_map(out: &mut String, map: &serde_json::Map<String, Value>, indent: usize) {
    for (key, value) in map {
        push_indent(out, indent);
        out.push_str(&key_text(key));
        out.push(':');
        write_value(out, value, indent);
    }
}

fn write_seq(out: &mut String, items: &[Value], indent: usize) {
    for item in items {
        push_indent(out, indent);
        out.push('-');
        match item {
            // `- key: value` with the other keys aligned under the first.
            Value::Object(map) if !map.is_empty() => {
                let mut first = true;
                for (key, value) in map {
                    if first {
                        out.push(' ');
                        first = false;
                    } else {
                        push_indent(out, indent + 2);
                    }
                    out.push_str(&key_text(key));
                    out.push(':');
                    write_value(out, value, indent + 2);
                }
            }
            other => write_value(out, other, indent),
        }
    }
}

/// After `key:` or `-`: a scalar on the same line, a collection on the next lines.
fn write_value(out: &mut String, value: &Value, indent: usize) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            out.push('\n');
            write_map(out, map, indent + 2);
        }
        Value::Array(items) if !items.is_empty() => {
            out.push('\n');
            write_seq(out, items, indent + 2);
        }
        scalar => {
            out.push(' ');
            out.push_str(&inline(scalar));
            out.push('\n');
        }
    }
}

fn inline(value: &Value) -> String {
    match value {
        Value::Object(_) => "{}".into(),
        Value::Array(_) => "[]".into(),
        // JSON's text for null, booleans and numbers is YAML's; a JSON string is a YAML
        // double-quoted scalar once the characters YAML may not hold raw (DEL, C1 controls,
        // U+FFFE/U+FFFF) or reads as line breaks (NEL, U+2028, U+2029) are escaped too.
        Value::String(text) => yaml_string(text),
        other => other.to_string(),
    }
}

fn yaml_string(text: &str) -> String {
    let json = Value::String(text.to_owned()).to_string();
    if !json.chars().any(needs_escape) {
        return json;
    }
    json.chars()
        .map(|c| {
            if needs_escape(c) {
                format!("\\u{:04x}", u32::from(c))
            } else {
                c.to_string()
            }
        })
        .collect()
}

fn needs_escape(c: char) -> bool {
    matches!(
        c,
        '\u{7f}'..='\u{9f}' | '\u{2028}' | '\u{2029}' | '\u{fffe}' | '\u{ffff}'
    )
}

fn key_text(key: &str) -> String {
    let plain = key
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == '$')
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '$'))
        && !matches!(
            key.to_ascii_lowercase().as_str(),
            "true" | "false" | "null" | "yes" | "no" | "on" | "off" | "y" | "n"
        );
    if plain {
        key.to_owned()
    } else {
        yaml_string(key)
    }
}

fn push_indent(out: &mut String, indent: usize) {
    out.extend(std::iter::repeat_n(' ', indent));
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nested_maps_sequences_and_scalars() {
        let doc = json!({
            "asyncapi": "3.0.0",
            "n": 3,
            "empty": {},
            "none": null,
            "list": [{"$ref": "#/a", "x": [1, "two"]}, "plain", []],
            "weird key: #": "line\nbreak \"quoted\"",
            "yes": true
        });
        let yaml = to_yaml(&doc);
        assert_eq!(
            yaml,
            r##"asyncapi: "3.0.0"
empty: {}
list:
  - $ref: "#/a"
    x:
      - 1
      - "two"
  - "plain"
  - []
"n": 3
none: null
"weird key: #": "line\nbreak \"quoted\""
"yes": true
"##
        );
    }

    #[test]
    fn characters_yaml_may_not_hold_raw_are_escaped() {
        let yaml = to_yaml(&json!({ "a": "del\u{7f} nel\u{85} ls\u{2028} ok é" }));
        assert_eq!(yaml, "a: \"del\\u007f nel\\u0085 ls\\u2028 ok é\"\n");
    }
}
