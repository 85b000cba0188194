//! Maintenance windows: daily UTC intervals in which disruptive steps
//! (writing a slot, switching to it) may start. Pure computation on `now`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

const DAY: u64 = 86_400;

/// One daily window, `HH:MM-HH:MM` in UTC; it may wrap past midnight
/// (`22:00-02:00`). Start is inclusive, end exclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Window {
    start: u32,
    end: u32,
}

impl Window {
    /// Whether `now` (seconds since the epoch) falls inside the window.
    pub fn contains(&self, now: u64) -> bool {
        let t = (now % DAY) as u32;
        if self.start <= self.end {
            self.start <= t && t < self.end
        } else {
            t >= self.start || t < self.end
        }
    }

    /// The next time at or after `now` when the window opens.
    pub fn next_open(&self, now: u64) -> u64 {
        let day_start = now - now % DAY;
        let today = day_start + u64::from(self.start);
        if today >= now {
            today
        } else {
            today + DAY
        }
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hm = |s: u32| (s / 3600, s % 3600 / 60);
        let (a, b) = (hm(self.start), hm(self.end));
        write!(f, "{:02}:{:02}-{:02}:{:02}", a.0, a.1, b.0, b.1)
    }
}

fn parse_hm(s: &str) -> Option<u32> {
    let (h, m) = s.trim().split_once(':')?;
    let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    // 24:00 is allowed as an end of day.
    if m >= 60 || h > 24 || (h == 24 && m != 0) {
        return None;
    }
    Some(h * 3600 + m * 60)
}

impl FromStr for Window {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("invalid window {s:?}: expected HH:MM-HH:MM in UTC, like 02:00-04:00");
        let (a, b) = s.split_once('-').ok_or_else(bad)?;
        let (start, end) = (parse_hm(a).ok_or_else(bad)?, parse_hm(b).ok_or_else(bad)?);
        if start == end || start == DAY as u32 {
            return Err(format!("empty window {s:?}: start and end must differ"));
        }
        Ok(Self {
            start,
            end: end % DAY as u32,
        })
    }
}

impl TryFrom<String> for Window {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<Window> for String {
    fn from(w: Window) -> String {
        w.to_string()
    }
}

/// A set of daily windows; empty means "always".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Windows(pub Vec<Window>);

impl Windows {
    /// Whether a disruptive step may start at `now`.
    pub fn open(&self, now: u64) -> bool {
        self.0.is_empty() || self.0.iter().any(|w| w.contains(now))
    }

    /// When the next window opens, if `now` is outside all of them.
    pub fn next_open(&self, now: u64) -> Option<u64> {
        if self.open(now) {
            return None;
        }
        self.0.iter().map(|w| w.next_open(now)).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_contains_its_start_but_not_its_end() {
        let w: Window = "02:00-04:00".parse().unwrap();
        assert!(!w.contains(DAY * 10 + 2 * 3600 - 1));
        assert!(w.contains(DAY * 10 + 2 * 3600));
        assert!(!w.contains(DAY * 10 + 4 * 3600));
        assert_eq!(w.next_open(DAY * 10 + 5 * 3600), DAY * 11 + 2 * 3600);
        assert_eq!(w.to_string(), "02:00-04:00");
    }

    #[test]
    fn a_window_may_wrap_past_midnight() {
        let w: Window = "22:30-01:00".parse().unwrap();
        assert!(w.contains(DAY + 23 * 3600));
        assert!(w.contains(DAY + 1800));
        assert!(!w.contains(DAY + 3600));
    }

    #[test]
    fn malformed_windows_say_what_is_expected() {
        for bad in [
            "",
            "2-4",
            "02:00",
            "25:00-01:00",
            "02:60-03:00",
            "03:00-03:00",
        ] {
            let e = bad.parse::<Window>().unwrap_err();
            assert!(e.contains("window"), "{e}");
        }
        assert!("00:00-24:00".parse::<Window>().is_ok());
    }

    #[test]
    fn no_windows_means_always_open() {
        assert!(Windows::default().open(12345));
        assert_eq!(Windows::default().next_open(12345), None);
    }
}
