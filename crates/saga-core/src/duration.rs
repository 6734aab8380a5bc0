//! Human durations as written in saga definitions: `500ms`, `10s`, `2m`, `1h`, `1m30s`.

use std::fmt;
use std::time::Duration;

/// Why a duration string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unparsable duration `{input}`: {why} (write e.g. `500ms`, `10s`, `2m`, `1h`, `1m30s`)")]
pub struct DurationError {
    /// The text as written.
    pub input: String,
    /// What is wrong with it.
    pub why: &'static str,
}

/// Parses `500ms`, `10s`, `2m`, `1h`, `1m30s` (units: ms, s, m, h; integers only).
pub fn parse_duration(input: &str) -> Result<Duration, DurationError> {
    let err = |why| DurationError {
        input: input.to_string(),
        why,
    };
    let s = input.trim();
    if s.is_empty() {
        return Err(err("empty"));
    }
    let mut total: u128 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(err("expected a number"));
        }
        let value: u128 = rest[..digits]
            .parse()
            .map_err(|_| err("number too large"))?;
        rest = &rest[digits..];
        if rest.starts_with('.') {
            return Err(err(
                "fractions are not supported; use a smaller unit (1500ms)",
            ));
        }
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit_ms: u128 = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "" => return Err(err("missing unit")),
            _ => return Err(err("unknown unit")),
        };
        rest = &rest[unit_len..];
        total = total
            .checked_add(value.checked_mul(unit_ms).ok_or_else(|| err("too large"))?)
            .ok_or_else(|| err("too large"))?;
    }
    if total > u128::from(u64::MAX) {
        return Err(err("too large"));
    }
    Ok(Duration::from_millis(total as u64))
}

/// Formats a duration the way definitions write it (`1m30s`, `500ms`).
pub fn format_duration(d: Duration) -> String {
    DisplayDuration(d).to_string()
}

/// Display adapter for [`format_duration`].
#[derive(Debug, Clone, Copy)]
pub struct DisplayDuration(pub Duration);

impl fmt::Display for DisplayDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ms = self.0.as_millis();
        if ms == 0 {
            return f.write_str("0s");
        }
        for (unit, size) in [("h", 3_600_000u128), ("m", 60_000), ("s", 1_000), ("ms", 1)] {
            if ms >= size {
                write!(f, "{}{unit}", ms / size)?;
                ms %= size;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_units_definitions_use() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration(" 5s ").unwrap(), Duration::from_secs(5));
    }

    #[test]
    fn refuses_what_it_cannot_read_and_says_why() {
        for (bad, why) in [
            ("", "empty"),
            ("10", "missing unit"),
            ("10 s", "missing unit"),
            ("ten seconds", "expected a number"),
            ("5d", "unknown unit"),
            ("-5s", "expected a number"),
            (
                "1.5s",
                "fractions are not supported; use a smaller unit (1500ms)",
            ),
        ] {
            let e = parse_duration(bad).unwrap_err();
            assert_eq!(e.why, why, "{bad}");
            assert!(e.to_string().contains(bad), "{e}");
        }
    }

    #[test]
    fn formats_round_trip() {
        for s in ["500ms", "10s", "2m", "1h", "1m30s", "1h2m3s4ms"] {
            assert_eq!(format_duration(parse_duration(s).unwrap()), s);
        }
    }
}
