//! Shared pieces of the operator commands.

pub mod atomic;
pub mod keys;
pub mod rotate;

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch, the `now` every protocol check takes.
///
/// A clock before 1970 reads as 0, which makes every expiry check fail
/// loudly rather than panic.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Seconds in a day, for the `--expires-days` flags.
pub const DAY_SECS: u64 = 24 * 60 * 60;

/// Errors that know how the operator can fix them.
pub trait Hint {
    /// A one-line suggestion, when there is a sensible one.
    fn hint(&self) -> Option<String>;
}
