//! Parsing the `meshota rollout create` flags.

use meshota_protocol::{Group, IdError};

/// Why a flag value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// A percent that is not an integer in `0..=100`.
    #[error("{0:?} is not a percent (an integer 0..=100, optionally followed by %)")]
    Percent(String),
    /// A duration that is not a number followed by s, m, h or d.
    #[error("{0:?} is not a duration (a whole number, optionally followed by s, m, h or d)")]
    Duration(String),
    /// A duration too long to count in seconds.
    #[error("duration {0:?} is too long")]
    DurationOverflow(String),
    /// A list with an empty item (`1,,10`).
    #[error("{0:?} has an empty item")]
    EmptyItem(String),
    /// A group name unsafe in a topic.
    #[error(transparent)]
    Group(#[from] IdError),
    /// A time that is none of the accepted forms.
    #[error("{0:?} is not a time: expected `now`, `+10m`, seconds since the epoch, or RFC 3339 such as 2026-11-22T06:00:00Z")]
    Time(String),
}

/// Parses `95` or `95%`.
///
/// # Errors
/// [`ParseError::Percent`].
pub fn parse_percent(s: &str) -> Result<u8, ParseError> {
    let t = s.trim();
    let t = t.strip_suffix('%').unwrap_or(t);
    match t.parse::<u8>() {
        Ok(p) if p <= 100 => Ok(p),
        _ => Err(ParseError::Percent(s.to_owned())),
    }
}

/// Parses `--waves 1,10,50,100` into cumulative percents. Order and range
/// are checked by [`super::RolloutSpec::validate`], so the error names the
/// rule rather than the syntax.
///
/// # Errors
/// [`ParseError`] for an empty item or a non-percent.
pub fn parse_waves(s: &str) -> Result<Vec<u8>, ParseError> {
    split(s)?.into_iter().map(parse_percent).collect()
}

/// Parses `--groups canary,lab`.
///
/// # Errors
/// [`ParseError`] for an empty item or a name unsafe in a topic.
pub fn parse_groups(s: &str) -> Result<Vec<Group>, ParseError> {
    Ok(split(s)?
        .into_iter()
        .map(Group::new)
        .collect::<Result<_, _>>()?)
}

fn split(s: &str) -> Result<Vec<&str>, ParseError> {
    s.split(',')
        .map(str::trim)
        .map(|i| {
            if i.is_empty() {
                Err(ParseError::EmptyItem(s.to_owned()))
            } else {
                Ok(i)
            }
        })
        .collect()
}

/// Parses `--soak 10m` into seconds: a whole number with an optional unit
/// `s`, `m`, `h` or `d` (seconds if none).
///
/// # Errors
/// [`ParseError::Duration`] or [`ParseError::DurationOverflow`].
pub fn parse_duration(s: &str) -> Result<u64, ParseError> {
    let t = s.trim();
    let split_at = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split_at);
    let factor = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 60 * 60,
        "d" => 24 * 60 * 60,
        _ => return Err(ParseError::Duration(s.to_owned())),
    };
    let n: u64 = num.parse().map_err(|e: std::num::ParseIntError| {
        if matches!(e.kind(), std::num::IntErrorKind::PosOverflow) {
            ParseError::DurationOverflow(s.to_owned())
        } else {
            ParseError::Duration(s.to_owned())
        }
    })?;
    n.checked_mul(factor)
        .ok_or_else(|| ParseError::DurationOverflow(s.to_owned()))
}

/// Parses `--not-before TIME` into seconds since the epoch: `now`, a
/// delay from now (`+10m`, any [`parse_duration`] form), seconds since the
/// epoch, or an RFC 3339 time with `Z` or a `±HH:MM` offset
/// (`2026-11-22T06:00:00Z`, no fractional seconds).
///
/// # Errors
/// [`ParseError::Time`], or a duration error for `+…`.
pub fn parse_time(s: &str, now: u64) -> Result<u64, ParseError> {
    let t = s.trim();
    if t == "now" {
        return Ok(now);
    }
    if let Some(d) = t.strip_prefix('+') {
        return now
            .checked_add(parse_duration(d)?)
            .ok_or_else(|| ParseError::DurationOverflow(s.to_owned()));
    }
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        return t.parse().map_err(|_| ParseError::Time(s.to_owned()));
    }
    rfc3339(t).ok_or_else(|| ParseError::Time(s.to_owned()))
}

fn rfc3339(t: &str) -> Option<u64> {
    let b = t.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = t.get(r)?;
        if part.bytes().all(|c| c.is_ascii_digit()) {
            part.parse().ok()
        } else {
            None
        }
    };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    // Bytes, not `str` slices: a multi-byte character must not panic.
    let offset = match t.get(19..)?.as_bytes() {
        b"Z" | b"z" => 0,
        [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
            let (oh, om) = (num(20..22)?, num(23..25)?);
            if oh > 23 || om > 59 {
                return None;
            }
            let off = oh * 3600 + om * 60;
            if *sign == b'+' {
                off
            } else {
                -off
            }
        }
        _ => return None,
    };
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let days_in = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    let month_days = *days_in.get(usize::try_from(mo).ok()?.checked_sub(1)?)?;
    if d < 1 || d > month_days || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    // Days from 1970-01-01 to the civil date (H. Hinnant's algorithm).
    let yy = if mo <= 2 { y - 1 } else { y };
    let era = yy.div_euclid(400);
    let yoe = yy - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + mi * 60 + sec - offset;
    u64::try_from(secs).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_waves_as_cumulative_percents() {
        assert_eq!(parse_waves("1,10,50,100").unwrap(), vec![1, 10, 50, 100]);
        assert_eq!(parse_waves(" 5%, 100 ").unwrap(), vec![5, 100]);
    }

    #[test]
    fn refuses_waves_with_empty_items_or_non_percents() {
        assert!(matches!(parse_waves(""), Err(ParseError::EmptyItem(_))));
        assert!(matches!(
            parse_waves("1,,10"),
            Err(ParseError::EmptyItem(_))
        ));
        assert!(matches!(parse_waves("1,x"), Err(ParseError::Percent(_))));
        assert!(matches!(parse_waves("101"), Err(ParseError::Percent(_))));
        assert!(matches!(parse_waves("-1"), Err(ParseError::Percent(_))));
    }

    #[test]
    fn parses_durations_in_seconds_minutes_hours_and_days() {
        assert_eq!(parse_duration("90").unwrap(), 90);
        assert_eq!(parse_duration("90s").unwrap(), 90);
        assert_eq!(parse_duration("10m").unwrap(), 600);
        assert_eq!(parse_duration("2h").unwrap(), 7200);
        assert_eq!(parse_duration("1d").unwrap(), 86_400);
        assert_eq!(parse_duration("0s").unwrap(), 0);
    }

    #[test]
    fn refuses_malformed_and_overflowing_durations() {
        for bad in ["", "m", "10x", "1.5h", "-1s", "10 m", "1h30m"] {
            assert!(
                matches!(parse_duration(bad), Err(ParseError::Duration(_))),
                "{bad:?}"
            );
        }
        assert!(matches!(
            parse_duration("99999999999999999999d"),
            Err(ParseError::DurationOverflow(_))
        ));
        assert!(matches!(
            parse_duration("999999999999999999d"),
            Err(ParseError::DurationOverflow(_))
        ));
    }

    #[test]
    fn parses_groups_and_refuses_unsafe_names() {
        let g = parse_groups("canary,lab").unwrap();
        assert_eq!(g.len(), 2);
        assert_eq!(g[1].as_str(), "lab");
        assert!(matches!(parse_groups("a/b"), Err(ParseError::Group(_))));
        assert!(matches!(parse_groups("a,"), Err(ParseError::EmptyItem(_))));
    }

    #[test]
    fn parses_not_before_as_now_a_delay_epoch_seconds_or_rfc3339() {
        let now = 1_795_320_000;
        assert_eq!(parse_time("now", now).unwrap(), now);
        assert_eq!(parse_time("+10m", now).unwrap(), now + 600);
        assert_eq!(parse_time("1800000000", now).unwrap(), 1_800_000_000);
        assert_eq!(
            parse_time("2026-11-22T06:00:00Z", now).unwrap(),
            1_795_327_200
        );
        assert_eq!(
            parse_time("2026-11-22T07:30:00+03:00", now).unwrap(),
            1_795_321_800
        );
        assert_eq!(
            parse_time("2024-02-29T23:59:59Z", now).unwrap(),
            1_709_251_199
        );
        assert_eq!(parse_time("1970-01-01T00:00:00Z", now).unwrap(), 0);
    }

    #[test]
    fn refuses_times_that_do_not_exist_or_are_not_times() {
        for bad in [
            "",
            "tomorrow",
            "2025-02-29T00:00:00Z",
            "2026-13-01T00:00:00Z",
            "2026-11-22T24:00:00Z",
            "2026-11-22T06:00:00",
            "2026-11-22T06:00:00+3:00",
            "1969-12-31T23:59:59Z",
            "2026-11-22T06:00:00.5Z",
            "2026-11-22T06:00:00\u{e9}1234",
            "2026-11-22T06:00:0\u{e9}+01:00",
        ] {
            assert!(parse_time(bad, 0).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn parses_thresholds_with_or_without_a_percent_sign() {
        assert_eq!(parse_percent("95").unwrap(), 95);
        assert_eq!(parse_percent("5%").unwrap(), 5);
        assert!(parse_percent("95.5").is_err());
    }
}
