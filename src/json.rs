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

/// Whether `text` is, byte for byte, what serde_json writes for the value it parses to, so
/// that a stored event can copy a request body instead of writing its parsed tree again
/// (bench/README.md, eighteenth session). Conservative: `false` for anything it is not sure
/// of, which only costs the slower way. What serde_json would write differently, and so
/// answers `false`: whitespace between tokens; an escape other than the ones serde_json
/// writes (`\/`, a `\u` of a character it writes as itself or with a short escape, upper-case
/// hex); a number that does not print back as it was read (an exponent, trailing zeros
/// after the point, `-0`, more than 15 significant digits, an integer past 64 bits, a
/// fraction below 10⁻⁵); a key twice in one object (the parsed object keeps one). Invalid
/// JSON answers `false` too, but this is not a validator: call it on text a parser accepted.
pub fn is_canonical(text: &[u8]) -> bool {
    let mut s = Canonical {
        b: text,
        at: 0,
        keys: [&[]; MAX_KEYS],
        open: 0,
    };
    s.value(0) && s.at == text.len()
}

/// serde_json's own nesting limit: deeper text never parsed.
const MAX_DEPTH: usize = 128;

/// Keys of the objects being read (an object and the ones it is inside) compared for
/// duplicates; past this many the answer is `false`.
const MAX_KEYS: usize = 64;

/// The bytes that end a run of a string's plain bytes: the quote, the backslash, and the
/// control characters (invalid in a string).
static STRING_STOP: [bool; 256] = {
    let mut t = [false; 256];
    let mut c = 0;
    while c < 0x20 {
        t[c] = true;
        c += 1;
    }
    t[b'"' as usize] = true;
    t[b'\\' as usize] = true;
    t
};

struct Canonical<'a> {
    b: &'a [u8],
    at: usize,
    /// The keys of the objects being read, innermost last: `keys[..open]` (each object
    /// goes back to where its keys began when it ends). On the stack: no allocation.
    keys: [&'a [u8]; MAX_KEYS],
    open: usize,
}

impl<'a> Canonical<'a> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.at).copied()
    }

    fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn literal(&mut self, word: &[u8]) -> bool {
        if self.b[self.at..].starts_with(word) {
            self.at += word.len();
            true
        } else {
            false
        }
    }

    fn value(&mut self, depth: usize) -> bool {
        match self.peek() {
            Some(b'{') => depth < MAX_DEPTH && self.object(depth + 1),
            Some(b'[') => depth < MAX_DEPTH && self.array(depth + 1),
            Some(b'"') => self.string().is_some(),
            Some(b't') => self.literal(b"true"),
            Some(b'f') => self.literal(b"false"),
            Some(b'n') => self.literal(b"null"),
            Some(b'-' | b'0'..=b'9') => self.number(),
            _ => false,
        }
    }

    fn object(&mut self, depth: usize) -> bool {
        self.at += 1;
        if self.eat(b'}') {
            return true;
        }
        let first = self.open;
        loop {
            let Some(key) = self.string() else {
                return false;
            };
            // Escapes are canonical here, so equal keys are equal bytes.
            if self.open == MAX_KEYS || self.keys[first..self.open].contains(&key) {
                return false;
            }
            self.keys[self.open] = key;
            self.open += 1;
            if !self.eat(b':') || !self.value(depth) {
                return false;
            }
            if self.eat(b'}') {
                self.open = first;
                return true;
            }
            if !self.eat(b',') {
                return false;
            }
        }
    }

    fn array(&mut self, depth: usize) -> bool {
        self.at += 1;
        if self.eat(b']') {
            return true;
        }
        loop {
            if !self.value(depth) {
                return false;
            }
            if self.eat(b']') {
                return true;
            }
            if !self.eat(b',') {
                return false;
            }
        }
    }

    /// A string whose escapes are the ones serde_json writes; its bytes between the quotes.
    fn string(&mut self) -> Option<&'a [u8]> {
        if !self.eat(b'"') {
            return None;
        }
        let b = self.b;
        let start = self.at;
        let mut at = start;
        loop {
            // Byte by byte: a payload's strings are short, and a wider test's set-up cost
            // more than it saved (bench/README.md, eighteenth session). A raw control
            // character is invalid JSON.
            while let Some(&c) = b.get(at) {
                if STRING_STOP[usize::from(c)] {
                    break;
                }
                at += 1;
            }
            match *b.get(at)? {
                b'"' => {
                    self.at = at + 1;
                    return Some(&b[start..at]);
                }
                b'\\' => {
                    at += match b.get(at + 1)? {
                        b'"' | b'\\' | b'n' | b'r' | b't' | b'b' | b'f' => 2,
                        b'u' => {
                            // serde_json writes `\u00xx`, lower-case, for the control
                            // characters without a short escape; any other character as
                            // itself.
                            let hex = b.get(at + 2..at + 6)?;
                            let low = |c: u8| matches!(c, b'0'..=b'9' | b'a'..=b'f');
                            if hex[0] != b'0'
                                || hex[1] != b'0'
                                || !matches!(hex[2], b'0' | b'1')
                                || !low(hex[3])
                            {
                                return None;
                            }
                            if hex[2] == b'0' && matches!(hex[3], b'8' | b'9' | b'a' | b'c' | b'd')
                            {
                                return None;
                            }
                            6
                        }
                        _ => return None,
                    };
                }
                _ => return None,
            }
        }
    }

    /// A number that serde_json parses exactly and writes back as the same text.
    fn number(&mut self) -> bool {
        let negative = self.eat(b'-');
        let int_start = self.at;
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.at += 1;
        }
        let int = &self.b[int_start..self.at];
        if int.is_empty() || (int.len() > 1 && int[0] == b'0') {
            return false;
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            return false;
        }
        if !self.eat(b'.') {
            // An integer: a u64, or an i64 when negative; `-0` is read as a float.
            let mut n: u64 = 0;
            for &d in int {
                match n
                    .checked_mul(10)
                    .and_then(|n| n.checked_add(u64::from(d - b'0')))
                {
                    Some(v) => n = v,
                    None => return false,
                }
            }
            return !negative || (n != 0 && n <= 1 << 63);
        }
        let frac_start = self.at;
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.at += 1;
        }
        let frac = &self.b[frac_start..self.at];
        if frac.is_empty() || matches!(self.peek(), Some(b'e' | b'E')) {
            return false;
        }
        // A float prints in its shortest form that reads back the same: with at most 15
        // significant digits (every such decimal reads back exactly, and serde_json reads
        // it exactly: the digits fit 53 bits and the power of ten is exact) and no trailing
        // zero after the point, that is the text itself, unless it is small enough to print
        // with an exponent (below 10⁻⁵) or an integer printed with `.0`.
        if frac == b"0" {
            let trailing = int.iter().rev().take_while(|&&d| d == b'0').count();
            return int == b"0" || (int.len() - trailing <= 15 && int.len() <= 16);
        }
        if frac.last() == Some(&b'0') {
            return false;
        }
        if int == b"0" {
            let zeros = frac.iter().take_while(|&&d| d == b'0').count();
            zeros <= 4 && frac.len() - zeros <= 15
        } else {
            int.len() + frac.len() <= 15
        }
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

    /// What serde_json writes for `text` parsed (`None` when it does not parse).
    fn rewritten(text: &str) -> Option<String> {
        let v: Value = serde_json::from_str(text).ok()?;
        Some(serde_json::to_string(&v).expect("json"))
    }

    /// The check's one promise: a text it calls canonical is what serde_json writes back.
    fn assert_sound(text: &str) {
        if is_canonical(text.as_bytes()) {
            assert_eq!(rewritten(text).as_deref(), Some(text), "called canonical");
        }
    }

    #[test]
    fn canonical_texts_are_the_ones_serde_json_writes_back_unchanged() {
        let yes = [
            r#"{}"#,
            r#"{"a":1,"b":[true,false,null],"c":{"d":"e"},"f":[]}"#,
            r#"{"s":"tab\there \"q\" \\ \n\r\b\f \u0000\u001f\u000b é 😀"}"#,
            r#"[0,-1,18446744073709551615,-9223372036854775808,0.94,1.0,100.0,-0.0,0.0]"#,
            r#"[0.00001,0.5,123456789012345,12345678901234.5,1000000000000000.0,-2.25]"#,
            r#"{"sessionId":"x","context":{"locale":"en-US"},"entities":[{"name":"a"}]}"#,
        ];
        for text in yes {
            assert!(is_canonical(text.as_bytes()), "{text}");
            assert_sound(text);
        }
        // Each of these parses, and serde_json writes it back otherwise.
        let no = [
            r#"{"a": 1}"#,
            " {}",
            "{}\n",
            r#"{"a":"\/"}"#,
            r#"{"a":"\u0041"}"#,
            r#"{"a":"\u000A"}"#,
            r#"{"a":"\u000a"}"#,
            r#"{"a":"\u0009"}"#,
            r#"{"a":"\u00e9"}"#,
            r#"{"a":"\ud83d\ude00"}"#,
            r#"{"a":1,"a":2}"#,
            r#"{"o":{"k":1,"j":2,"k":3}}"#,
            "[-0]",
            "[1e3]",
            "[1E3]",
            "[1.5e0]",
            "[1.50]",
            "[1.00]",
            "[0.000001]",
            "[18446744073709551616]",
            "[-9223372036854775809]",
            "[10000000000000000.0]",
        ];
        for text in no {
            assert!(!is_canonical(text.as_bytes()), "{text}");
            assert_ne!(
                rewritten(text).as_deref(),
                Some(text),
                "{text} is written back as is"
            );
        }
        // Too deep, too wide or too precise to be sure of cheaply: refused, though serde_json
        // would agree. (64 keys in all of the objects open at once.)
        for text in ["[1234567890123456.5]", "[0.1234567890123456]"] {
            assert!(!is_canonical(text.as_bytes()), "{text}");
            assert_eq!(rewritten(text).as_deref(), Some(text));
        }
        let wide: Vec<String> = (0..65).map(|i| format!("\"k{i}\":{i}")).collect();
        assert!(!is_canonical(format!("{{{}}}", wide.join(",")).as_bytes()));
        assert!(is_canonical(
            format!("{{{}}}", wide[..64].join(",")).as_bytes()
        ));
        let nested = format!("{{\"o\":{{{}}}}}", wide[..63].join(","));
        assert!(is_canonical(nested.as_bytes()));
        // A key of the object outside is not a duplicate; one of the same object is.
        assert!(is_canonical(nested.replace("\"k1\"", "\"o\"").as_bytes()));
        assert!(!is_canonical(nested.replace("\"k2\"", "\"k1\"").as_bytes()));
        assert!(!is_canonical(
            format!("{}1{}", "[".repeat(129), "]".repeat(129)).as_bytes()
        ));
        assert!(is_canonical(
            format!("{}1{}", "[".repeat(100), "]".repeat(100)).as_bytes()
        ));
        // Not JSON at all.
        for text in [
            "",
            "{",
            r#"{"a"}"#,
            r#"{"a":}"#,
            "[1,]",
            r#""\x""#,
            "tru",
            "{}{}",
            "\"a\u{1}\"",
        ] {
            assert!(!is_canonical(text.as_bytes()), "{text:?}");
        }
    }

    #[test]
    fn numbers_called_canonical_are_written_back_unchanged() {
        let mut rng = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let digits = |n: u64, len: u64| -> String {
            (0..len)
                .map(|i| char::from(b'0' + ((n >> (i * 3)) % 10) as u8))
                .collect()
        };
        let mut called = 0;
        for _ in 0..20_000 {
            let (a, b, c) = (next(), next(), next());
            let int = match a % 4 {
                0 => "0".to_string(),
                _ => format!("{}{}", 1 + a % 9, digits(b, (a >> 8) % 18)),
            };
            let sign = if c % 3 == 0 { "-" } else { "" };
            let text = match c % 5 {
                0 => format!("[{sign}{int}]"),
                1 => format!("[{sign}{int}.0]"),
                _ => format!("[{sign}{int}.{}]", digits(c >> 4, 1 + (c >> 60) % 17)),
            };
            if is_canonical(text.as_bytes()) {
                called += 1;
            }
            assert_sound(&text);
        }
        assert!(called > 5_000, "only {called} called canonical");
        // serde_json's own output for floats, when called canonical.
        for _ in 0..20_000 {
            let f = f64::from_bits(next());
            if let Ok(text) = serde_json::to_string(&[f]) {
                assert_sound(&text);
            }
        }
    }

    proptest! {
        #[test]
        fn any_string_is_written_as_serde_json_writes_it(s in "\\PC*|[\\x00-\\x7f]{0,40}") {
            prop_assert_eq!(as_string(&s), serde_json::to_string(&s).expect("json"));
        }

        #[test]
        fn serde_json_output_is_canonical_and_any_text_called_so_reads_back(
            s in "\\PC*|[\\x00-\\x7f]{0,40}",
            n in any::<i64>(),
            spaced in any::<bool>(),
            escaped in any::<bool>(),
        ) {
            let v = json!({"s": s.clone(), "n": n, "list": [s, {"k": n, "": null}], "t": true});
            let compact = serde_json::to_string(&v).expect("json");
            prop_assert!(is_canonical(compact.as_bytes()), "{}", compact);
            let mut text = if spaced { serde_json::to_string_pretty(&v).expect("json") } else { compact };
            if escaped {
                // A character as a `\u` escape, which serde_json writes as itself.
                if let Some(at) = text.find(|c: char| c.is_ascii_alphanumeric()) {
                    let c = text.as_bytes()[at];
                    text.replace_range(at..=at, &format!("\\u{:04x}", c));
                }
            }
            if is_canonical(text.as_bytes()) {
                prop_assert_eq!(rewritten(&text), Some(text));
            }
        }
    }
}
