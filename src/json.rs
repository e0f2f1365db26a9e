//! Compact JSON written by hand on the ingest path: the very bytes `serde_json` writes for a
//! string or a `serde_json::Value`, faster. serde_json tests each byte of a string against a
//! table before it copies it; here eight bytes are tested at once, and a clean run is copied
//! whole. Serialising each event for the log went through ~81 such strings per request, and
//! that loop alone was 7.6 % of the gateway's instructions (bench/README.md, fourteenth
//! session). The tests hold the output to serde_json's, byte for byte.
//!
//! A leaf: it imports nothing of the crate.

use std::fmt::Write as _;

use serde_json::Value;

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// Whether JSON needs `b` escaped inside a string (what serde_json escapes: control
/// characters, the quote and the backslash; nothing else).
fn needs_escape(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

/// Whether none of the eight bytes of `w` needs escaping. Each test is exact as a whole
/// (a byte below 0x20, a byte equal to `"` or `\`), though not per byte: a hit is looked at
/// byte by byte.
fn clean(w: u64) -> bool {
    let below_space = w.wrapping_sub(ONES * 0x20) & !w;
    let quote = w ^ (ONES * u64::from(b'"'));
    let quote = quote.wrapping_sub(ONES) & !quote;
    let backslash = w ^ (ONES * u64::from(b'\\'));
    let backslash = backslash.wrapping_sub(ONES) & !backslash;
    (below_space | quote | backslash) & HIGHS == 0
}

/// The index of the first byte at or after `from` that needs escaping.
fn next_escape(bytes: &[u8], mut from: usize) -> Option<usize> {
    while let Some(chunk) = bytes.get(from..from + 8) {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        if !clean(u64::from_le_bytes(word)) {
            if let Some(at) = chunk.iter().position(|&b| needs_escape(b)) {
                return Some(from + at);
            }
        }
        from += 8;
    }
    bytes
        .get(from..)?
        .iter()
        .position(|&b| needs_escape(b))
        .map(|at| from + at)
}

/// Appends `s` as a JSON string.
pub fn string(out: &mut String, s: &str) {
    out.reserve(s.len() + 2);
    out.push('"');
    let bytes = s.as_bytes();
    let mut start = 0;
    while let Some(at) = next_escape(bytes, start) {
        // `at` is an ASCII byte, so both cuts fall between characters.
        out.push_str(&s[start..at]);
        match bytes[at] {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            0x08 => out.push_str("\\b"),
            0x0c => out.push_str("\\f"),
            b => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.push_str("\\u00");
                out.push(char::from(HEX[usize::from(b >> 4)]));
                out.push(char::from(HEX[usize::from(b & 0xf)]));
            }
        }
        start = at + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

/// Appends a number as serde_json writes it (integers in full, floats in their shortest
/// round-trip form; a `Number` is never infinite or NaN).
pub fn number(out: &mut String, n: &serde_json::Number) {
    let _ = write!(out, "{n}");
}

/// Appends `f` as serde_json writes an `f64`: `null` when it is not finite.
pub fn float(out: &mut String, f: f64) {
    match serde_json::Number::from_f64(f) {
        Some(n) => number(out, &n),
        None => out.push_str("null"),
    }
}

/// Appends an object's entries, `{` to `}`, in the map's order.
pub fn object(out: &mut String, map: &serde_json::Map<String, Value>) {
    out.push('{');
    for (i, (k, v)) in map.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        string(out, k);
        out.push(':');
        value(out, v);
    }
    out.push('}');
}

/// Appends `v`.
pub fn value(out: &mut String, v: &Value) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Number(n) => number(out, n),
        Value::String(s) => string(out, s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                value(out, item);
            }
            out.push(']');
        }
        Value::Object(map) => object(out, map),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn as_string(s: &str) -> String {
        let mut out = String::new();
        string(&mut out, s);
        out
    }

    #[test]
    fn every_ascii_byte_and_some_others_escape_as_serde_json_does() {
        for b in 0u8..0x80 {
            let one = char::from(b).to_string();
            // Alone, and inside runs long enough to take the eight-byte path at each offset.
            for s in [
                one.clone(),
                format!("abcdefg{one}hijklmnop"),
                format!("{one}0123456789abcdef{one}"),
                one.repeat(17),
            ] {
                assert_eq!(
                    as_string(&s),
                    serde_json::to_string(&s).expect("json"),
                    "{b:#x}"
                );
            }
        }
        for s in [
            "",
            "é",
            "日本語テキスト\n",
            "\u{7f}\u{80}\u{2028}",
            "😀\"😀\\😀",
        ] {
            assert_eq!(as_string(s), serde_json::to_string(s).expect("json"));
        }
    }

    #[test]
    fn values_are_written_as_serde_json_writes_them() {
        let v = json!({
            "z": null, "a": [true, false, 0, -1, u64::MAX, i64::MIN, 1.5, 1e300, -0.0, 0.1],
            "nested": {"x": {"y": ["\u{1}", {}], "e": []}}, "é\"": "tab\there",
        });
        let mut out = String::new();
        value(&mut out, &v);
        assert_eq!(out, serde_json::to_string(&v).expect("json"));
        for f in [0.0, 2.5e-308, f64::MAX, f64::NAN, f64::INFINITY] {
            let mut out = String::new();
            float(&mut out, f);
            assert_eq!(out, serde_json::to_string(&f).expect("json"));
        }
    }

    proptest! {
        #[test]
        fn any_string_is_written_as_serde_json_writes_it(s in "\\PC*|[\\x00-\\x7f]{0,40}") {
            prop_assert_eq!(as_string(&s), serde_json::to_string(&s).expect("json"));
        }
    }
}
