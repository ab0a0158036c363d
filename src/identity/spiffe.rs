//! Strict SPIFFE ID parsing (SPIFFE-ID specification §2).
//!
//! Accepted form: `spiffe://<trust-domain><path>` where
//!
//! * the scheme is exactly `spiffe://` (lower case);
//! * the trust domain is non-empty, at most [`MAX_TRUST_DOMAIN_LEN`] bytes,
//!   and only `[a-z0-9.-_]` (so no upper case, port, or userinfo);
//! * the path is required and not `/`; it is a sequence of `/segment` where
//!   every segment is non-empty, only `[A-Za-z0-9.-_]`, and not `.` or `..`
//!   (so no percent-encoding, query, fragment or trailing `/`);
//! * the whole ID is ASCII and at most [`MAX_SPIFFE_ID_LEN`] bytes.
//!
//! Nothing is normalised: an ID either is already canonical or is rejected.

use std::fmt;
use std::str::FromStr;

/// Maximum length of a SPIFFE ID in bytes.
pub const MAX_SPIFFE_ID_LEN: usize = 2048;

/// Maximum length of a trust domain name in bytes.
pub const MAX_TRUST_DOMAIN_LEN: usize = 255;

/// The only accepted scheme prefix.
pub const SPIFFE_SCHEME: &str = "spiffe://";

/// Why a SPIFFE ID was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    /// Longer than [`MAX_SPIFFE_ID_LEN`].
    #[error("SPIFFE ID longer than {MAX_SPIFFE_ID_LEN} bytes")]
    TooLong,
    /// Contains a non-ASCII character.
    #[error("SPIFFE ID contains a non-ASCII character")]
    NonAscii,
    /// Does not start with `spiffe://`.
    #[error("SPIFFE ID scheme must be 'spiffe://'")]
    BadScheme,
    /// The trust domain is empty.
    #[error("SPIFFE ID trust domain is empty")]
    EmptyTrustDomain,
    /// The trust domain is longer than [`MAX_TRUST_DOMAIN_LEN`].
    #[error("SPIFFE ID trust domain longer than {MAX_TRUST_DOMAIN_LEN} bytes")]
    TrustDomainTooLong,
    /// The trust domain contains a character outside `[a-z0-9.-_]`.
    #[error("SPIFFE ID trust domain contains an invalid character")]
    BadTrustDomainChar,
    /// There is no path, or the path is `/`.
    #[error("SPIFFE ID has no path")]
    MissingPath,
    /// A path segment is empty (`//` or a trailing `/`).
    #[error("SPIFFE ID path has an empty segment")]
    EmptySegment,
    /// A path segment is `.` or `..`.
    #[error("SPIFFE ID path has a '.' or '..' segment")]
    DotSegment,
    /// A path segment contains a character outside `[A-Za-z0-9.-_]`.
    #[error("SPIFFE ID path contains an invalid character")]
    BadPathChar,
}

impl SpiffeIdError {
    /// Stable machine-readable code for logs.
    pub fn reason(&self) -> &'static str {
        match self {
            SpiffeIdError::TooLong => "spiffe_id_too_long",
            SpiffeIdError::NonAscii => "spiffe_id_non_ascii",
            SpiffeIdError::BadScheme => "spiffe_id_bad_scheme",
            SpiffeIdError::EmptyTrustDomain => "spiffe_id_empty_trust_domain",
            SpiffeIdError::TrustDomainTooLong => "spiffe_id_trust_domain_too_long",
            SpiffeIdError::BadTrustDomainChar => "spiffe_id_bad_trust_domain_char",
            SpiffeIdError::MissingPath => "spiffe_id_missing_path",
            SpiffeIdError::EmptySegment => "spiffe_id_empty_segment",
            SpiffeIdError::DotSegment => "spiffe_id_dot_segment",
            SpiffeIdError::BadPathChar => "spiffe_id_bad_path_char",
        }
    }
}

/// A validated SPIFFE ID with a non-root path.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SpiffeId {
    /// The full ID, exactly as parsed.
    id: String,
    /// Byte offset where the path starts (end of the trust domain).
    path_start: usize,
}

fn is_trust_domain_char(b: u8) -> bool {
    matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-' | b'_')
}

fn is_path_char(b: u8) -> bool {
    matches!(b, b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'.' | b'-' | b'_')
}

impl SpiffeId {
    /// Parses a SPIFFE ID (same as [`FromStr`]).
    pub fn parse(s: &str) -> Result<SpiffeId, SpiffeIdError> {
        if s.len() > MAX_SPIFFE_ID_LEN {
            return Err(SpiffeIdError::TooLong);
        }
        if !s.is_ascii() {
            return Err(SpiffeIdError::NonAscii);
        }
        let rest = s
            .strip_prefix(SPIFFE_SCHEME)
            .ok_or(SpiffeIdError::BadScheme)?;
        let (trust_domain, path) = match rest.find('/') {
            Some(at) => rest
                .split_at_checked(at)
                .ok_or(SpiffeIdError::MissingPath)?,
            None => (rest, ""),
        };
        if trust_domain.is_empty() {
            return Err(SpiffeIdError::EmptyTrustDomain);
        }
        if trust_domain.len() > MAX_TRUST_DOMAIN_LEN {
            return Err(SpiffeIdError::TrustDomainTooLong);
        }
        if !trust_domain.bytes().all(is_trust_domain_char) {
            return Err(SpiffeIdError::BadTrustDomainChar);
        }
        if path.is_empty() || path == "/" {
            return Err(SpiffeIdError::MissingPath);
        }
        // `path` starts with '/', so the first split element is empty.
        for segment in path.split('/').skip(1) {
            if segment.is_empty() {
                return Err(SpiffeIdError::EmptySegment);
            }
            if segment == "." || segment == ".." {
                return Err(SpiffeIdError::DotSegment);
            }
            if !segment.bytes().all(is_path_char) {
                return Err(SpiffeIdError::BadPathChar);
            }
        }
        Ok(SpiffeId {
            id: s.to_owned(),
            path_start: SPIFFE_SCHEME.len().saturating_add(trust_domain.len()),
        })
    }

    /// The trust domain, e.g. `example.org`.
    pub fn trust_domain(&self) -> &str {
        self.id
            .get(SPIFFE_SCHEME.len()..self.path_start)
            .unwrap_or_default()
    }

    /// The path, starting with `/`, e.g. `/agent/demo`.
    pub fn path(&self) -> &str {
        self.id.get(self.path_start..).unwrap_or_default()
    }

    /// The whole ID.
    pub fn as_str(&self) -> &str {
        &self.id
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SpiffeId::parse(s)
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id)
    }
}

impl AsRef<str> for SpiffeId {
    fn as_ref(&self) -> &str {
        &self.id
    }
}

impl serde::Serialize for SpiffeId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.id)
    }
}

impl<'de> serde::Deserialize<'de> for SpiffeId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        SpiffeId::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_valid() {
        let id: SpiffeId = "spiffe://example.org/agent/demo".parse().unwrap();
        assert_eq!(id.trust_domain(), "example.org");
        assert_eq!(id.path(), "/agent/demo");
        assert_eq!(id.as_str(), "spiffe://example.org/agent/demo");
        assert_eq!(id.to_string(), "spiffe://example.org/agent/demo");
        for ok in [
            "spiffe://td/a",
            "spiffe://a-b_c.0/A.b-C_9",
            "spiffe://td/...",
            "spiffe://td/.a/a./a..b",
            "spiffe://td/ns/prod/sa/web",
        ] {
            let id = SpiffeId::parse(ok).unwrap();
            assert_eq!(id.to_string(), ok);
            assert_eq!(SpiffeId::parse(id.as_str()).unwrap(), id);
        }
    }

    #[test]
    fn rejects_invalid() {
        use SpiffeIdError::*;
        let long = format!("spiffe://td/{}", "a".repeat(MAX_SPIFFE_ID_LEN));
        let long_td = format!("spiffe://{}/a", "a".repeat(MAX_TRUST_DOMAIN_LEN + 1));
        let cases: Vec<(&str, SpiffeIdError)> = vec![
            ("spiffe://td", MissingPath),
            ("spiffe://td/", MissingPath),
            ("spiffe://td/a/../admin", DotSegment),
            ("spiffe://td/./a", DotSegment),
            ("spiffe://td/a/.", DotSegment),
            ("spiffe://td/a%2Fb", BadPathChar),
            ("spiffe://TD/a", BadTrustDomainChar),
            ("spiffe://u@td/a", BadTrustDomainChar),
            ("spiffe://td:443/a", BadTrustDomainChar),
            ("spiffe://td/a?q", BadPathChar),
            ("spiffe://td/a#f", BadPathChar),
            ("spiffe://td?q/a", BadTrustDomainChar),
            ("spiffe://td/é", NonAscii),
            ("spiffe://tdé/a", NonAscii),
            (long.as_str(), TooLong),
            (long_td.as_str(), TrustDomainTooLong),
            ("SPIFFE://td/a", BadScheme),
            ("Spiffe://td/a", BadScheme),
            ("spiffe:/td/a", BadScheme),
            ("https://td/a", BadScheme),
            ("", BadScheme),
            ("spiffe://", EmptyTrustDomain),
            ("spiffe:///a", EmptyTrustDomain),
            ("spiffe://td//a", EmptySegment),
            ("spiffe://td/a/", EmptySegment),
            ("spiffe://td/a//b", EmptySegment),
            ("spiffe://td/a b", BadPathChar),
            ("spiffe://td/a\0", BadPathChar),
            ("spiffe://td/a\\b", BadPathChar),
            ("spiffe://t d/a", BadTrustDomainChar),
            (" spiffe://td/a", BadScheme),
            ("spiffe://td/a\n", BadPathChar),
        ];
        for (input, want) in cases {
            assert_eq!(SpiffeId::parse(input), Err(want), "{input:?}");
            assert!(!want.reason().is_empty());
        }
        // exactly at the limit is fine
        let prefix = "spiffe://td/";
        let max = format!("{prefix}{}", "a".repeat(MAX_SPIFFE_ID_LEN - prefix.len()));
        assert!(SpiffeId::parse(&max).is_ok());
    }

    #[test]
    fn serde_roundtrip() {
        let id = SpiffeId::parse("spiffe://example.org/a").unwrap();
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, "\"spiffe://example.org/a\"");
        assert_eq!(serde_json::from_str::<SpiffeId>(&json).unwrap(), id);
        assert!(serde_json::from_str::<SpiffeId>("\"spiffe://td/\"").is_err());
    }

    proptest! {
        #[test]
        fn never_panics_and_roundtrips(s in "\\PC{0,64}") {
            if let Ok(id) = SpiffeId::parse(&s) {
                prop_assert_eq!(id.as_str(), s.as_str());
                prop_assert_eq!(format!("spiffe://{}{}", id.trust_domain(), id.path()), s);
            }
        }

        #[test]
        fn valid_ids_roundtrip(
            td in "[a-z0-9._-]{1,20}",
            segs in proptest::collection::vec("[A-Za-z0-9._-]{1,8}", 1..5),
        ) {
            let s = format!("spiffe://{td}/{}", segs.join("/"));
            let dots = segs.iter().any(|x| x == "." || x == "..");
            match SpiffeId::parse(&s) {
                Ok(id) => {
                    prop_assert!(!dots);
                    prop_assert_eq!(id.trust_domain(), td.as_str());
                    prop_assert_eq!(id.to_string(), s);
                }
                Err(e) => {
                    prop_assert!(dots);
                    prop_assert_eq!(e, SpiffeIdError::DotSegment);
                }
            }
        }
    }
}
