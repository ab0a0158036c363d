//! Strict JSON object parsing for JOSE headers, JWT claim sets and JWK sets.
//!
//! `serde_json` silently keeps the *last* of several members with the same
//! name. Two parsers disagreeing about which duplicate wins is a classic
//! signature-confusion vector, so this module builds the [`Value`] tree itself
//! (through a [`DeserializeSeed`]) and rejects a repeated member name at every
//! depth. Names are compared after unescaping, so `"a"` and `"\u0061"` are the
//! same name.
//!
//! Other rules: the input must be UTF-8 without a byte-order mark, the top
//! level must be an object, nesting is bounded by [`MAX_JSON_DEPTH`] and
//! nothing but whitespace may follow the object. Size caps are the caller's
//! job (the callers know which cap applies).
//!
//! Requires serde_json WITHOUT the `arbitrary_precision` feature (with it,
//! numbers reach the visitor as magic maps); `parses_plain_object` fails
//! loudly if that feature ever gets unified into the build.

use std::cell::Cell;
use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// Maximum nesting depth of arrays and objects, the top-level object
/// counting as depth 1. Legitimate JOSE documents nest two or three levels.
pub const MAX_JSON_DEPTH: usize = 32;

/// Why a JSON document was rejected. Deliberately carries no input bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JsonError {
    /// The bytes are not valid UTF-8 (this includes UTF-16 input).
    #[error("JSON is not valid UTF-8")]
    InvalidUtf8,
    /// The document starts with a UTF-8 byte-order mark.
    #[error("JSON starts with a byte-order mark")]
    ByteOrderMark,
    /// The document is not well-formed JSON (or has trailing data).
    #[error("malformed JSON")]
    Syntax,
    /// The top-level value is not an object.
    #[error("top-level JSON value is not an object")]
    NotAnObject,
    /// An object contains the same member name twice.
    #[error("duplicate JSON member name")]
    DuplicateKey,
    /// Arrays/objects are nested deeper than [`MAX_JSON_DEPTH`].
    #[error("JSON nested too deeply")]
    TooDeep,
}

impl JsonError {
    /// A short stable code for audit logs and metrics.
    #[must_use]
    pub const fn reason(self) -> &'static str {
        match self {
            JsonError::InvalidUtf8 => "json_invalid_utf8",
            JsonError::ByteOrderMark => "json_bom",
            JsonError::Syntax => "json_syntax",
            JsonError::NotAnObject => "json_not_object",
            JsonError::DuplicateKey => "json_duplicate_key",
            JsonError::TooDeep => "json_too_deep",
        }
    }
}

/// Parses `bytes` as a single JSON object under the strict rules described in
/// the module documentation.
///
/// # Errors
/// A [`JsonError`] naming the first rule that was broken.
pub fn parse_object(bytes: &[u8]) -> Result<Map<String, Value>, JsonError> {
    let text = std::str::from_utf8(bytes).map_err(|_| JsonError::InvalidUtf8)?;
    if text.starts_with('\u{feff}') {
        return Err(JsonError::ByteOrderMark);
    }
    // Cheap early exit: do not build a large array just to throw it away.
    match text
        .trim_start_matches([' ', '\t', '\n', '\r'])
        .as_bytes()
        .first()
    {
        Some(b'{') => {}
        Some(_) => return Err(JsonError::NotAnObject),
        None => return Err(JsonError::Syntax),
    }
    let failure = Cell::new(None);
    let mut de = serde_json::Deserializer::from_str(text);
    let seed = StrictValue {
        failure: &failure,
        depth: 0,
    };
    let value = match seed.deserialize(&mut de) {
        Ok(v) => v,
        Err(_) => return Err(failure.get().unwrap_or(JsonError::Syntax)),
    };
    de.end().map_err(|_| JsonError::Syntax)?;
    match value {
        Value::Object(map) => Ok(map),
        _ => Err(JsonError::NotAnObject),
    }
}

/// Parses `bytes` as one JSON value of any type (array, object, scalar)
/// under the same strict rules as [`parse_object`]: UTF-8 without BOM, no
/// duplicate member names at any depth, bounded nesting, nothing after it.
///
/// # Errors
/// A [`JsonError`] naming the first rule that was broken.
pub fn parse_value(bytes: &[u8]) -> Result<Value, JsonError> {
    let text = std::str::from_utf8(bytes).map_err(|_| JsonError::InvalidUtf8)?;
    if text.starts_with('\u{feff}') {
        return Err(JsonError::ByteOrderMark);
    }
    let failure = Cell::new(None);
    let mut de = serde_json::Deserializer::from_str(text);
    // The top level counts as depth 1, as in parse_object.
    let seed = StrictValue {
        failure: &failure,
        depth: 0,
    };
    let value = match seed.deserialize(&mut de) {
        Ok(v) => v,
        Err(_) => return Err(failure.get().unwrap_or(JsonError::Syntax)),
    };
    de.end().map_err(|_| JsonError::Syntax)?;
    Ok(value)
}

/// Seed/visitor pair that builds a [`Value`] while enforcing the strict rules.
/// `failure` is a side channel so the precise reason survives serde's
/// string-typed error.
#[derive(Clone, Copy)]
struct StrictValue<'c> {
    failure: &'c Cell<Option<JsonError>>,
    depth: usize,
}

impl StrictValue<'_> {
    fn fail<E: de::Error>(&self, reason: JsonError) -> E {
        self.failure.set(Some(reason));
        E::custom(reason)
    }

    fn child<E: de::Error>(&self) -> Result<Self, E> {
        let depth = self.depth.saturating_add(1);
        if depth > MAX_JSON_DEPTH {
            return Err(self.fail(JsonError::TooDeep));
        }
        Ok(StrictValue {
            failure: self.failure,
            depth,
        })
    }
}

impl<'de> DeserializeSeed<'de> for StrictValue<'_> {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StrictValue<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| self.fail(JsonError::Syntax))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let child = self.child()?;
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(child)? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let child = self.child()?;
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                return Err(self.fail(JsonError::DuplicateKey));
            }
            let value = map.next_value_seed(child)?;
            out.insert(key, value);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_object() {
        let m = parse_object(br#" {"a":1,"b":[true,null,"x",{"c":-2.5}]} "#).unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m["a"], Value::from(1));
        assert!(m["a"].is_u64());
        assert_eq!(m["b"][3]["c"], Value::from(-2.5));
    }

    #[test]
    fn parse_value_is_as_strict_for_any_top_level() {
        assert_eq!(parse_value(b" [1, {\"a\": 2}] ").unwrap()[1]["a"], 2);
        assert_eq!(parse_value(b"\"s\"").unwrap(), "s");
        assert_eq!(
            parse_value(br#"[{"a":1,"a":2}]"#),
            Err(JsonError::DuplicateKey)
        );
        assert_eq!(parse_value(b"[1] [2]"), Err(JsonError::Syntax));
        assert_eq!(parse_value(b"[1],\"x\":2"), Err(JsonError::Syntax));
        let deep = format!("{}{}", "[".repeat(40), "]".repeat(40));
        assert_eq!(parse_value(deep.as_bytes()), Err(JsonError::TooDeep));
    }

    #[test]
    fn rejects_duplicates_at_every_depth() {
        for doc in [
            &br#"{"a":1,"a":2}"#[..],
            br#"{"a":1,"\u0061":2}"#,
            br#"{"x":{"a":1,"a":1}}"#,
            br#"{"x":[{"k":{"a":1,"b":2,"a":3}}]}"#,
        ] {
            assert_eq!(parse_object(doc), Err(JsonError::DuplicateKey));
        }
    }

    #[test]
    fn rejects_non_objects() {
        for doc in [&b"[]"[..], b"1", b"\"s\"", b"null", b"true", b"[{}]"] {
            assert_eq!(parse_object(doc), Err(JsonError::NotAnObject));
        }
    }

    #[test]
    fn rejects_bad_encodings() {
        assert_eq!(
            parse_object(b"\xEF\xBB\xBF{}"),
            Err(JsonError::ByteOrderMark)
        );
        // UTF-16 LE/BE with BOM.
        assert_eq!(
            parse_object(b"\xFF\xFE{\x00}\x00"),
            Err(JsonError::InvalidUtf8)
        );
        assert_eq!(
            parse_object(b"\xFE\xFF\x00{\x00}"),
            Err(JsonError::InvalidUtf8)
        );
        assert_eq!(
            parse_object(b"{\"a\":\"\xC3\x28\"}"),
            Err(JsonError::InvalidUtf8)
        );
        // Overlong encoding of '/'.
        assert_eq!(
            parse_object(b"{\"a\":\"\xC0\xAF\"}"),
            Err(JsonError::InvalidUtf8)
        );
    }

    #[test]
    fn rejects_syntax_errors_and_trailing_data() {
        for doc in [
            &b""[..],
            b"   ",
            b"{",
            b"{}{}",
            b"{} x",
            b"{\"a\":1,}",
            b"{'a':1}",
            b"{\"a\":NaN}",
            b"{\"a\":\"\\ud800\"}",
            b"{\"a\":01}",
            b"{\"a\":1}\0",
        ] {
            assert_eq!(parse_object(doc), Err(JsonError::Syntax), "{doc:?}");
        }
        assert_eq!(parse_object(b"{} \n").map(|m| m.len()), Ok(0));
    }

    #[test]
    fn deep_nesting_is_rejected_without_overflow() {
        let mut doc = String::from("{\"a\":");
        doc.push_str(&"[".repeat(10_000));
        doc.push_str(&"]".repeat(10_000));
        doc.push('}');
        assert_eq!(parse_object(doc.as_bytes()), Err(JsonError::TooDeep));

        let mut doc = String::new();
        for _ in 0..10_000 {
            doc.push_str("{\"a\":");
        }
        doc.push('1');
        doc.push_str(&"}".repeat(10_000));
        assert_eq!(parse_object(doc.as_bytes()), Err(JsonError::TooDeep));
    }

    #[test]
    fn depth_limit_boundary() {
        // Top-level object is depth 1; MAX_JSON_DEPTH - 1 nested arrays fit.
        let inner = MAX_JSON_DEPTH - 1;
        let ok = format!("{{\"a\":{}{}}}", "[".repeat(inner), "]".repeat(inner));
        assert!(parse_object(ok.as_bytes()).is_ok());
        let too = format!(
            "{{\"a\":{}{}}}",
            "[".repeat(inner + 1),
            "]".repeat(inner + 1)
        );
        assert_eq!(parse_object(too.as_bytes()), Err(JsonError::TooDeep));
    }

    proptest::proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            let _ = parse_object(&bytes);
        }
    }
}
