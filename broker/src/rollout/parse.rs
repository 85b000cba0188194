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
    fn parses_thresholds_with_or_without_a_percent_sign() {
        assert_eq!(parse_percent("95").unwrap(), 95);
        assert_eq!(parse_percent("5%").unwrap(), 5);
        assert!(parse_percent("95.5").is_err());
    }
}
