//! Dates and TimeSpans as Octopus writes them: ISO-8601 with offset and milliseconds, and .NET's
//! `[d.]hh:mm:ss[.fffffff]`.

use chrono::{DateTime, Utc};
use std::time::Duration;

pub type Timestamp = DateTime<Utc>;

pub fn now() -> Timestamp {
    Utc::now()
}

/// `2024-01-01T00:00:00.000+00:00`
pub fn format_date(t: &Timestamp) -> String {
    // chrono's RFC 3339 writer, not a strftime pattern parsed on every call: every log line is
    // stamped with this on the hot path.
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, false)
}

pub fn parse_date(text: &str) -> Option<Timestamp> {
    DateTime::parse_from_rfc3339(text.trim())
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// Serde helpers for dates in the contract's format.
pub mod date_format {
    use super::*;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &Timestamp, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_date(t))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Timestamp, D::Error> {
        let text = String::deserialize(d)?;
        parse_date(&text)
            .ok_or_else(|| serde::de::Error::custom(format!("not an ISO-8601 date: {text}")))
    }

    pub mod option {
        use super::*;

        pub fn serialize<S: Serializer>(t: &Option<Timestamp>, s: S) -> Result<S::Ok, S::Error> {
            match t {
                Some(t) => s.serialize_str(&format_date(t)),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Timestamp>, D::Error> {
            match Option::<String>::deserialize(d)? {
                None => Ok(None),
                Some(text) if text.trim().is_empty() => Ok(None),
                Some(text) => parse_date(&text).map(Some).ok_or_else(|| {
                    serde::de::Error::custom(format!("not an ISO-8601 date: {text}"))
                }),
            }
        }
    }
}

/// `01:00:00`, `1.00:00:00`, `00:00:00.5000000`
pub fn format_timespan(d: Duration) -> String {
    let total = d.as_secs();
    let (days, rem) = (total / 86_400, total % 86_400);
    let (h, m, s) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    let ticks = d.subsec_nanos() / 100;
    let mut out = if days > 0 {
        format!("{days}.{h:02}:{m:02}:{s:02}")
    } else {
        format!("{h:02}:{m:02}:{s:02}")
    };
    if ticks > 0 {
        out.push_str(&format!(".{ticks:07}"));
    }
    out
}

/// Parses .NET's TimeSpan text. Also accepts a plain number of seconds, which people write by hand.
pub fn parse_timespan(text: &str) -> Option<Duration> {
    let text = text.trim();
    if let Ok(secs) = text.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let (negative, text) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    if negative {
        return None;
    }
    let parts: Vec<&str> = text.split(':').collect();
    if parts.len() != 3 {
        return None;
    }
    let (days, hours) = match parts[0].split_once('.') {
        Some((d, h)) => (d.parse::<u64>().ok()?, h.parse::<u64>().ok()?),
        None => (0, parts[0].parse::<u64>().ok()?),
    };
    let minutes = parts[1].parse::<u64>().ok()?;
    let (seconds, fraction) = match parts[2].split_once('.') {
        Some((s, f)) => (s.parse::<u64>().ok()?, f),
        None => (parts[2].parse::<u64>().ok()?, ""),
    };
    if hours > 23 || minutes > 59 || seconds > 59 || fraction.len() > 7 || days > 10_675_199 {
        return None;
    }
    if !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let nanos = if fraction.is_empty() {
        0
    } else {
        format!("{fraction:0<9}").parse::<u32>().ok()?
    };
    Some(Duration::new(
        days * 86_400 + hours * 3600 + minutes * 60 + seconds,
        nanos,
    ))
}

/// A short human duration, as Octopus shows it in `Duration`: "1 second", "3 minutes", "2 hours".
pub fn human_duration(d: chrono::Duration) -> String {
    let secs = d.num_seconds().max(0);
    let (n, unit) = if secs < 60 {
        (secs, "second")
    } else if secs < 3600 {
        (secs / 60, "minute")
    } else if secs < 86_400 {
        (secs / 3600, "hour")
    } else {
        (secs / 86_400, "day")
    };
    if n == 1 {
        format!("1 {unit}")
    } else {
        format!("{n} {unit}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_keep_their_format() {
        let t = parse_date("2024-01-02T03:04:05.006+00:00").unwrap();
        assert_eq!(format_date(&t), "2024-01-02T03:04:05.006+00:00");
        let whole = parse_date("2024-01-02T03:04:05Z").unwrap();
        assert_eq!(format_date(&whole), "2024-01-02T03:04:05.000+00:00");
    }

    #[test]
    fn timespans_round_trip() {
        assert_eq!(format_timespan(Duration::from_secs(3600)), "01:00:00");
        assert_eq!(format_timespan(Duration::from_secs(86_400)), "1.00:00:00");
        assert_eq!(
            format_timespan(Duration::from_millis(500)),
            "00:00:00.5000000"
        );
        for text in ["01:00:00", "1.00:00:00", "00:02:30", "00:00:00.5000000"] {
            assert_eq!(format_timespan(parse_timespan(text).unwrap()), text);
        }
        assert_eq!(parse_timespan("90"), Some(Duration::from_secs(90)));
        assert_eq!(parse_timespan("25:00:00"), None);
        assert_eq!(parse_timespan("abc"), None);
        assert_eq!(parse_timespan("-01:00:00"), None);
    }

    #[test]
    fn dates_have_milliseconds_and_an_offset() {
        let t = parse_date("2024-01-01T00:00:00Z").unwrap();
        assert_eq!(format_date(&t), "2024-01-01T00:00:00.000+00:00");
    }
}
