//! Durations as users write them: LiteLLM's plain seconds (`30`, `0.5`) or strings with a unit
//! (`250ms`, `30s`, `2m`, `1h`, `1m30s`).

use serde::de::{self, Deserializer, Visitor};
use std::{fmt, time::Duration};

/// Parses `"250ms"`, `"1.5s"`, `"1m30s"` or a bare number of seconds (`"30"`).
pub fn parse(input: &str) -> Result<Duration, String> {
    let s = input.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    if let Ok(secs) = s.parse::<f64>() {
        return from_secs(secs);
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("`{input}` has a number without a unit (ms, s, m, h)"))?;
        if num_len == 0 {
            return Err(format!(
                "`{input}` is not a duration: expected a number of seconds or values like 250ms, 30s, 2m"
            ));
        }
        let value: f64 = rest[..num_len]
            .parse()
            .map_err(|_| format!("`{input}` has a malformed number"))?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            other => {
                return Err(format!(
                    "`{input}` has unknown unit `{other}` (use ms, s, m or h)"
                ));
            }
        };
        total += value * scale;
        rest = &rest[unit_len..];
    }
    from_secs(total)
}

/// No config duration needs more than this; the bound keeps deadline arithmetic far from
/// overflow.
pub const MAX: Duration = Duration::from_secs(7 * 24 * 3600);

fn from_secs(secs: f64) -> Result<Duration, String> {
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("{secs} is not a non-negative duration"));
    }
    let d = Duration::try_from_secs_f64(secs).map_err(|e| e.to_string())?;
    if d > MAX {
        return Err(format!("{secs}s is longer than the 7-day maximum"));
    }
    Ok(d)
}

/// Formats a duration the way the config accepts it, for `check-config` and logs.
pub fn display(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1e3;
    if d.is_zero() {
        "0s".into()
    } else if ms < 1.0 {
        format!("{}us", d.as_micros())
    } else if d.subsec_millis() != 0 || d.as_secs() == 0 {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}s", d.as_secs())
    }
}

/// serde adapter for `Option<Duration>` fields.
pub fn deserialize_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Option<Duration>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a duration: seconds as a number, or a string such as \"250ms\" or \"30s\"")
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(self)
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
            from_secs(v as f64).map(Some).map_err(E::custom)
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
            from_secs(v as f64).map(Some).map_err(E::custom)
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
            from_secs(v).map(Some).map_err(E::custom)
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            parse(v).map(Some).map_err(E::custom)
        }
    }
    d.deserialize_option(V)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_bare_seconds() {
        assert_eq!(parse("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse("30").unwrap(), Duration::from_secs(30));
        assert_eq!(parse("0.25").unwrap(), Duration::from_millis(250));
        assert_eq!(parse("500us").unwrap(), Duration::from_micros(500));
    }

    #[test]
    fn rejects_garbage_with_a_reason() {
        assert!(parse("").is_err());
        assert!(parse("-1").unwrap_err().contains("non-negative"));
        assert!(parse("10 parsecs").unwrap_err().contains("unit"));
        assert!(parse("ms").is_err());
        assert!(parse("1.2.3s").is_err());
        assert!(parse("5").is_ok());
        assert!(parse("5x").unwrap_err().contains("unknown unit `x`"));
        assert!(
            parse("99999999999999")
                .unwrap_err()
                .contains("7-day maximum")
        );
        assert!(parse("8d").is_err());
        assert!(parse("169h").unwrap_err().contains("maximum"));
    }

    #[test]
    fn displays_round_trip() {
        for s in ["250ms", "30s", "1500ms", "0s", "500us"] {
            assert_eq!(display(parse(s).unwrap()), s);
        }
    }
}
