//! Durations as written in the config: `250ms`, `90s`, `5m`, `1h`, `1d`, or
//! sums such as `1h30m`.

use std::time::Duration;

/// Longest duration the parser accepts (a year), so arithmetic never overflows.
pub const MAX_DURATION: Duration = Duration::from_secs(366 * 24 * 3600);

/// Why a duration does not parse (each names the text as written).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// Nothing but white space.
    #[error("empty duration; write e.g. 90s, 5m or 1h")]
    Empty,
    /// Written out in words (`10 minutes`): `hint` is the short form.
    #[error("`{input}`: write {hint}")]
    SpelledOut {
        /// The text.
        input: String,
        /// How to write it (`10m`).
        hint: String,
    },
    /// A part does not start with (at most 12) digits.
    #[error("`{0}` is not a duration like 90s, 5m or 1h")]
    NotADuration(String),
    /// The digits are not a number.
    #[error("`{0}` is not a duration")]
    BadNumber(String),
    /// A number without a unit.
    #[error("`{0}` needs a unit: ms, s, m, h or d")]
    NoUnit(String),
    /// A unit that is none of ms, s, m, h, d.
    #[error("`{unit}` in `{input}` is not a unit: use ms, s, m, h or d")]
    UnknownUnit {
        /// The unit as written.
        unit: String,
        /// The text.
        input: String,
    },
    /// Longer than [`MAX_DURATION`].
    #[error("`{0}` is longer than a year")]
    TooLong(String),
}

/// Parses a duration such as `90s`, `5m`, `1h30m` or `250ms`.
///
/// ```
/// use tessera::config::parse_duration;
/// assert_eq!(parse_duration("1h30m").unwrap().as_secs(), 5400);
/// assert!(parse_duration("5").is_err());
/// ```
pub fn parse_duration(s: &str) -> Result<Duration, DurationError> {
    let t = s.trim();
    let input = || s.to_string();
    if t.is_empty() {
        return Err(DurationError::Empty);
    }
    if let Some(hint) = spelled_out(t) {
        return Err(DurationError::SpelledOut {
            input: input(),
            hint,
        });
    }
    let mut total_ms: u128 = 0;
    let bytes = t.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        if i == start || i - start > 12 {
            return Err(DurationError::NotADuration(input()));
        }
        let n: u128 = t[start..i]
            .parse()
            .map_err(|_| DurationError::BadNumber(input()))?;
        let ustart = i;
        while i < bytes.len() && bytes[i].is_ascii_alphabetic() {
            i += 1;
        }
        let mult: u128 = match &t[ustart..i] {
            "ms" => 1,
            "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "" => return Err(DurationError::NoUnit(input())),
            u => {
                return Err(DurationError::UnknownUnit {
                    unit: u.to_string(),
                    input: input(),
                })
            }
        };
        total_ms = total_ms.saturating_add(n.saturating_mul(mult));
    }
    if total_ms > MAX_DURATION.as_millis() {
        return Err(DurationError::TooLong(input()));
    }
    Ok(Duration::from_millis(total_ms as u64))
}

/// `10 minutes`, `30 sec`, `2 hours` → `10m`, `30s`, `2h`: a duration
/// written out in words (or with a space), as people do.
fn spelled_out(t: &str) -> Option<String> {
    let digits = t.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 || digits > 12 {
        return None;
    }
    let word = t[digits..].trim().to_ascii_lowercase();
    let unit = match word.as_str() {
        "ms" | "s" | "m" | "h" | "d" if t[digits..].starts_with(' ') => word.as_str(),
        "msec" | "msecs" | "millisecond" | "milliseconds" => "ms",
        "sec" | "secs" | "second" | "seconds" => "s",
        "min" | "mins" | "minute" | "minutes" => "m",
        "hr" | "hrs" | "hour" | "hours" => "h",
        "day" | "days" => "d",
        _ => return None,
    };
    Some(format!("{}{unit}", &t[..digits]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_get_a_hint() {
        assert_eq!(
            parse_duration("10 minutes").unwrap_err().to_string(),
            "`10 minutes`: write 10m"
        );
        assert_eq!(
            parse_duration("30sec").unwrap_err().to_string(),
            "`30sec`: write 30s"
        );
        assert_eq!(
            parse_duration("2 h").unwrap_err().to_string(),
            "`2 h`: write 2h"
        );
        assert_eq!(
            parse_duration("1 day").unwrap_err().to_string(),
            "`1 day`: write 1d"
        );
        assert!(parse_duration("10x")
            .unwrap_err()
            .to_string()
            .contains("not a unit"));
    }

    #[test]
    fn units_and_sums() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("1d").unwrap(), Duration::from_secs(86400));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "",
            "5",
            "m",
            "5x",
            "-5s",
            "5 s",
            "1.5h",
            "99999999999999s",
            "400d",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad} should be rejected");
        }
    }
}
