//! Byte-exact glob patterns used by policies.
//!
//! Syntax:
//!
//! * any character other than `*` matches itself, byte for byte (`?`, `[`
//!   and `\` are ordinary characters);
//! * `*` matches a run of **at least one** character other than `/` and `:`
//!   (so `*@example.com` does not match `@example.com`);
//! * `**` matches any run (possibly empty) of any characters;
//! * three or more consecutive `*` are rejected, as is the empty pattern.
//!
//! A pattern is anchored at both ends and **never** matches the empty value,
//! so `*` does not match `""`. There is no case folding, no Unicode
//! normalisation and no trimming.
//!
//! Matching runs a set-of-positions automaton over the value (one pass per
//! pattern token), so its cost is `O(tokens × value length × literal length)`
//! in the worst case and never exponential.

use std::fmt;

/// Maximum length of a pattern in bytes.
pub const MAX_PATTERN_LEN: usize = 1024;

/// Maximum length of a value that [`Pattern::matches`] will consider; longer
/// values never match.
pub const MAX_MATCH_VALUE_LEN: usize = 64 * 1024;

/// Why a pattern was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    /// The pattern is the empty string.
    #[error("pattern is empty")]
    Empty,
    /// The pattern is longer than [`MAX_PATTERN_LEN`].
    #[error("pattern is longer than {MAX_PATTERN_LEN} bytes")]
    TooLong,
    /// The pattern contains three or more consecutive `*`.
    #[error("pattern contains three or more consecutive '*' at byte {0}")]
    TooManyStars(usize),
}

/// One element of a compiled pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    /// Literal text, matched byte for byte.
    Literal(String),
    /// `*`: any run of characters other than `/` and `:`.
    Star,
    /// `**`: any run of characters.
    DoubleStar,
}

/// A compiled glob pattern (see the module documentation for the syntax).
#[derive(Clone, PartialEq, Eq)]
pub struct Pattern {
    source: String,
    tokens: Vec<Token>,
}

/// Whether `b` is a byte that a single `*` refuses to cross.
fn is_segment_separator(b: u8) -> bool {
    b == b'/' || b == b':'
}

impl Pattern {
    /// Parses and validates a pattern.
    pub fn parse(source: &str) -> Result<Pattern, PatternError> {
        if source.is_empty() {
            return Err(PatternError::Empty);
        }
        if source.len() > MAX_PATTERN_LEN {
            return Err(PatternError::TooLong);
        }
        let mut tokens = Vec::new();
        let mut literal = String::new();
        let mut chars = source.char_indices().peekable();
        while let Some((at, c)) = chars.next() {
            if c != '*' {
                literal.push(c);
                continue;
            }
            let mut stars = 1usize;
            while chars.next_if(|&(_, c)| c == '*').is_some() {
                stars += 1;
            }
            if !literal.is_empty() {
                tokens.push(Token::Literal(std::mem::take(&mut literal)));
            }
            match stars {
                1 => tokens.push(Token::Star),
                2 => tokens.push(Token::DoubleStar),
                _ => return Err(PatternError::TooManyStars(at)),
            }
        }
        if !literal.is_empty() {
            tokens.push(Token::Literal(literal));
        }
        Ok(Pattern {
            source: source.to_owned(),
            tokens,
        })
    }

    /// The pattern text as written in the configuration.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether the pattern has no wildcard at all (matches exactly one value).
    pub fn is_literal(&self) -> bool {
        self.tokens.iter().all(|t| matches!(t, Token::Literal(_)))
    }

    /// Whether the pattern contains `**`.
    pub fn has_double_star(&self) -> bool {
        self.tokens.iter().any(|t| matches!(t, Token::DoubleStar))
    }

    /// Whether the pattern is exactly `*` or `**` (matches almost anything).
    pub fn is_match_all(&self) -> bool {
        matches!(self.tokens.as_slice(), [Token::Star] | [Token::DoubleStar])
    }

    /// Whether `value` matches the whole pattern. The empty value never matches.
    pub fn matches(&self, value: &str) -> bool {
        if value.is_empty() || value.len() > MAX_MATCH_VALUE_LEN {
            return false;
        }
        if self.is_literal() {
            return self.source == value;
        }
        let bytes = value.as_bytes();
        let n = bytes.len();
        // reach[i] == true: the tokens processed so far can consume exactly
        // bytes[..i].
        let mut reach = vec![false; n + 1];
        let mut next = vec![false; n + 1];
        if let Some(first) = reach.first_mut() {
            *first = true;
        }
        for token in &self.tokens {
            next.iter_mut().for_each(|r| *r = false);
            match token {
                Token::Literal(lit) => {
                    let lit = lit.as_bytes();
                    for (i, &ok) in reach.iter().enumerate() {
                        if !ok {
                            continue;
                        }
                        let end = i.saturating_add(lit.len());
                        if bytes.get(i..end) == Some(lit) {
                            if let Some(slot) = next.get_mut(end) {
                                *slot = true;
                            }
                        }
                    }
                }
                Token::DoubleStar => {
                    let mut any = false;
                    for (r, slot) in reach.iter().zip(next.iter_mut()) {
                        any |= *r;
                        *slot = any;
                    }
                }
                Token::Star => {
                    // At least one byte: next[j] = (reach[j-1] || next[j-1])
                    // && bytes[j-1] is not a separator; next[0] stays false.
                    let mut carry = false;
                    for ((r, b), slot) in reach.iter().zip(bytes).zip(next.iter_mut().skip(1)) {
                        carry = (carry || *r) && !is_segment_separator(*b);
                        *slot = carry;
                    }
                }
            }
            std::mem::swap(&mut reach, &mut next);
            if !reach.iter().any(|&r| r) {
                return false;
            }
        }
        reach.last().copied().unwrap_or(false)
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pattern({:?})", self.source)
    }
}

impl std::str::FromStr for Pattern {
    type Err = PatternError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Pattern::parse(s)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn m(pattern: &str, value: &str) -> bool {
        Pattern::parse(pattern).unwrap().matches(value)
    }

    #[test]
    fn parse_errors() {
        assert_eq!(Pattern::parse(""), Err(PatternError::Empty));
        assert_eq!(Pattern::parse("***"), Err(PatternError::TooManyStars(0)));
        assert_eq!(Pattern::parse("a/****"), Err(PatternError::TooManyStars(2)));
        assert_eq!(
            Pattern::parse(&"a".repeat(MAX_PATTERN_LEN + 1)),
            Err(PatternError::TooLong)
        );
        assert!(Pattern::parse(&"a".repeat(MAX_PATTERN_LEN)).is_ok());
        assert!(Pattern::parse("*/**").is_ok());
        assert!(Pattern::parse("**/*").is_ok());
    }

    #[test]
    fn semantics_table() {
        let table: &[(&str, &str, bool)] = &[
            // exact text
            ("abc", "abc", true),
            ("abc", "abcd", false),
            ("abc", "ab", false),
            ("abc", "xabc", false),
            // single star stays within a segment
            ("*", "abc", true),
            ("*", "a/b", false),
            ("*", "a:b", false),
            ("*", "/", false),
            ("*", ":", false),
            ("a*", "a", false),
            ("a*", "abc", true),
            ("a*", "a/c", false),
            ("*c", "abc", true),
            ("a*c", "ac", false),
            ("a*c", "abc", true),
            // a star never matches an empty run (issue 23)
            ("*@example.com", "@example.com", false),
            ("*@example.com", "a@example.com", true),
            ("user:*", "user:", false),
            ("*a", "a", false),
            ("a*c", "a/c", false),
            ("a*c", "a:c", false),
            ("a/*", "a/b", true),
            ("a/*", "a/b/c", false),
            ("a/*/c", "a/b/c", true),
            ("a/*/c", "a//c", false),
            // double star crosses everything
            ("**", "a/b:c", true),
            ("**", "/", true),
            ("a/**", "a/b/c:d", true),
            ("a/**", "a/", true),
            ("a/**", "a", false),
            ("**/c", "a/b/c", true),
            ("a**c", "a/b:c", true),
            ("*/**", "a/b/c", true),
            ("*/**", "a:b/c", false),
            // literal metacharacters of other glob dialects
            ("a?c", "a?c", true),
            ("a?c", "abc", false),
            ("[ab]", "[ab]", true),
            ("[ab]", "a", false),
            ("a\\*", "a\\xyz", true),
            ("a\\*", "a*", false),
            ("a.c", "abc", false),
            // empty value never matches
            ("*", "", false),
            ("**", "", false),
            // unicode is literal
            ("é*", "éa", true),
            ("*é", "aé", true),
            ("a*b", "a\u{202E}b", true),
        ];
        for &(p, v, want) in table {
            assert_eq!(m(p, v), want, "pattern {p:?} value {v:?}");
        }
    }

    #[test]
    fn github_subjects() {
        let p = "repo:org/repo:ref:refs/heads/main";
        assert!(m(p, "repo:org/repo:ref:refs/heads/main"));
        assert!(!m(p, "repo:org/repo:ref:refs/heads/main2"));
        assert!(!m(p, "repo:org/repo:pull_request"));
        // `*` does not cross ':' so this only covers the repository name...
        assert!(m("repo:org/repo*", "repo:org/repo-evil"));
        // ...and never the rest of the subject.
        assert!(!m(
            "repo:org/repo*",
            "repo:org/repo-evil:ref:refs/heads/main"
        ));
        assert!(!m("repo:org/repo*", "repo:org/repo:ref:refs/heads/main"));
        assert!(!m("repo:org/*", "repo:org/repo:pull_request"));
        assert!(m("repo:org/*:pull_request", "repo:org/repo:pull_request"));
        assert!(!m(
            "repo:org/*:ref:refs/heads/main",
            "repo:org/a/b:ref:refs/heads/main"
        ));
        assert!(m("repo:org/**", "repo:org/repo:pull_request"));
        // case sensitivity
        assert!(!m(
            "repo:org/repo:ref:refs/heads/main",
            "repo:OrG/Repo:ref:refs/heads/main"
        ));
        assert!(!m("repo:OrG/Repo", "repo:org/repo"));
        assert!(m("repo:OrG/Repo", "repo:OrG/Repo"));
    }

    #[test]
    fn lookalikes_never_match() {
        let p = "repo:org/repo:ref:refs/heads/main";
        let lookalikes = [
            "repo\u{FF1A}org/repo:ref:refs/heads/main", // full-width colon
            "repo:org/r\u{0435}po:ref:refs/heads/main", // Cyrillic е
            "repo:org/repo:ref:refs/heads/main ",       // trailing space
            " repo:org/repo:ref:refs/heads/main",       // leading space
            "repo:org/repo:ref:refs/heads/main\0",      // NUL
            "repo:org/repo\0:ref:refs/heads/main",
            "repo:org/repo:ref:refs/heads/main\u{202E}", // RTL override
            "\u{202E}repo:org/repo:ref:refs/heads/main",
            "repo:org/repo:ref:refs/heads/main\n",
        ];
        for v in lookalikes {
            assert!(!m(p, v), "{v:?}");
        }
        // full-width colon is not a separator for `*`, but it is not ':' either
        assert!(!m("repo:org/*", "repo:org/x\u{FF1A}y:z"));
        assert!(m("repo:org/*", "repo:org/x\u{FF1A}y"));
    }

    #[test]
    fn value_with_star_is_literal() {
        assert!(m("a*", "a*"));
        assert!(m("a\\*", "a\\*"));
        assert!(!m("abc", "a*"));
        assert!(!m("a?c", "a*c"));
    }

    #[test]
    fn pathological_is_fast() {
        let p = Pattern::parse("*a*a*a*a*a*a*a*b").unwrap();
        let value = "a".repeat(10_000);
        let start = std::time::Instant::now();
        assert!(!p.matches(&value));
        let p2 = Pattern::parse("**a**a**a**a**a**a**a**b").unwrap();
        assert!(!p2.matches(&value));
        let mut ok = value.clone();
        ok.push('b');
        assert!(p.matches(&ok));
        assert!(p2.matches(&ok));
        assert!(start.elapsed() < std::time::Duration::from_secs(2));
    }

    #[test]
    fn too_long_value_never_matches() {
        let p = Pattern::parse("**").unwrap();
        assert!(p.matches(&"a".repeat(MAX_MATCH_VALUE_LEN)));
        assert!(!p.matches(&"a".repeat(MAX_MATCH_VALUE_LEN + 1)));
    }

    #[test]
    fn classification() {
        let p = Pattern::parse("abc").unwrap();
        assert!(p.is_literal() && !p.has_double_star() && !p.is_match_all());
        assert!(Pattern::parse("*").unwrap().is_match_all());
        assert!(Pattern::parse("**").unwrap().is_match_all());
        assert!(!Pattern::parse("a*").unwrap().is_match_all());
        assert!(Pattern::parse("a/**").unwrap().has_double_star());
        assert_eq!(Pattern::parse("a/**").unwrap().to_string(), "a/**");
    }

    /// Simple exponential reference matcher used to cross-check the automaton.
    fn reference(p: &[u8], v: &[u8]) -> bool {
        if p.starts_with(b"**") {
            return (0..=v.len()).any(|i| reference(&p[2..], &v[i..]));
        }
        if p.starts_with(b"*") {
            let stop = v
                .iter()
                .position(|&b| is_segment_separator(b))
                .unwrap_or(v.len());
            return (1..=stop).any(|i| reference(&p[1..], &v[i..]));
        }
        match (p.first(), v.first()) {
            (None, None) => true,
            (Some(a), Some(b)) if a == b => reference(&p[1..], &v[1..]),
            _ => false,
        }
    }

    proptest! {
        #[test]
        fn literal_matches_exactly_itself(s in "[^*]{1,40}", other in ".{0,40}") {
            let p = Pattern::parse(&s).unwrap();
            prop_assert!(p.is_literal());
            prop_assert!(p.matches(&s));
            prop_assert_eq!(p.matches(&other), other == s);
        }

        #[test]
        fn star_matches_segment(s in "\\PC{0,40}") {
            let p = Pattern::parse("*").unwrap();
            let want = !s.is_empty() && !s.contains('/') && !s.contains(':');
            prop_assert_eq!(p.matches(&s), want);
        }

        #[test]
        fn double_star_matches_anything_non_empty(s in "\\PC{0,40}") {
            let p = Pattern::parse("**").unwrap();
            prop_assert_eq!(p.matches(&s), !s.is_empty());
        }

        #[test]
        fn agrees_with_reference(p in "[ab/:*]{1,8}", v in "[ab/:]{0,10}") {
            if let Ok(pat) = Pattern::parse(&p) {
                let want = !v.is_empty() && reference(p.as_bytes(), v.as_bytes());
                prop_assert_eq!(pat.matches(&v), want, "pattern {:?} value {:?}", p, v);
            } else {
                prop_assert!(p.contains("***"));
            }
        }
    }
}
