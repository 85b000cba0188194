//! The durable offline queue and the report counter.
//!
//! Every signed report is written to `<data_dir>/outbox/` before it is
//! published and removed once the broker acknowledged it (QoS 1), so
//! telemetry survives broker outages and agent restarts. Only the newest
//! status is kept (it is retained; older ones are noise). The queue is
//! bounded: past [`MAX_QUEUED`] the oldest events are dropped, so a device
//! offline for months cannot fill its disk.
//!
//! The report counter must rise across restarts without a write per
//! report: blocks of [`COUNTER_BLOCK`] are reserved on disk, and a restart
//! continues after the reserved block (skipped numbers are harmless; the
//! control plane only needs them strictly increasing).

use std::path::{Path, PathBuf};

use crate::install::{write_atomic, InstallError};

/// Reports kept while offline.
pub const MAX_QUEUED: usize = 10_000;

/// Counter values reserved per disk write.
pub const COUNTER_BLOCK: u64 = 1_000;

/// What a queued report is, which decides its topic and retain flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum QueuedKind {
    /// A status (retained).
    Status,
    /// An event.
    Event,
}

impl QueuedKind {
    fn ext(self) -> &'static str {
        match self {
            QueuedKind::Status => "status",
            QueuedKind::Event => "event",
        }
    }
}

/// A queued report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queued {
    /// Queue position (the report counter).
    pub seq: u64,
    /// Status or event.
    pub kind: QueuedKind,
    /// The encoded `SignedReport`.
    pub bytes: Vec<u8>,
}

/// The on-disk queue.
#[derive(Debug, Clone)]
pub struct Outbox {
    dir: PathBuf,
}

fn parse_name(name: &str) -> Option<(u64, QueuedKind)> {
    let (seq, ext) = name.split_once('.')?;
    let kind = match ext {
        "status" => QueuedKind::Status,
        "event" => QueuedKind::Event,
        _ => return None,
    };
    Some((seq.parse().ok()?, kind))
}

impl Outbox {
    /// Opens (creating) the queue in `dir`.
    ///
    /// # Errors
    /// [`InstallError::Io`].
    pub fn open(dir: &Path) -> Result<Self, InstallError> {
        std::fs::create_dir_all(dir).map_err(|e| InstallError::io("create dir", dir, e))?;
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    fn path(&self, seq: u64, kind: QueuedKind) -> PathBuf {
        self.dir.join(format!("{seq:020}.{}", kind.ext()))
    }

    fn entries(&self) -> Result<Vec<(u64, QueuedKind)>, InstallError> {
        let rd =
            std::fs::read_dir(&self.dir).map_err(|e| InstallError::io("read dir", &self.dir, e))?;
        let mut out: Vec<_> = rd
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str().and_then(parse_name))
            .collect();
        out.sort_unstable();
        Ok(out)
    }

    /// Queues a report durably.
    ///
    /// # Errors
    /// [`InstallError::Io`].
    pub fn push(&self, seq: u64, kind: QueuedKind, bytes: &[u8]) -> Result<(), InstallError> {
        write_atomic(&self.path(seq, kind), bytes)?;
        let entries = self.entries()?;
        if kind == QueuedKind::Status {
            for (s, k) in &entries {
                if *k == QueuedKind::Status && *s < seq {
                    self.remove(*s, *k);
                }
            }
        }
        let events: Vec<_> = entries
            .iter()
            .filter(|(_, k)| *k == QueuedKind::Event)
            .collect();
        if events.len() > MAX_QUEUED {
            for (s, k) in &events[..events.len() - MAX_QUEUED] {
                self.remove(*s, *k);
            }
        }
        Ok(())
    }

    /// Everything queued, oldest first.
    ///
    /// # Errors
    /// [`InstallError::Io`].
    pub fn pending(&self) -> Result<Vec<Queued>, InstallError> {
        let mut out = Vec::new();
        for (seq, kind) in self.entries()? {
            let p = self.path(seq, kind);
            match std::fs::read(&p) {
                Ok(bytes) => out.push(Queued { seq, kind, bytes }),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(InstallError::io("read", p, e)),
            }
        }
        Ok(out)
    }

    /// Forgets an acknowledged report. Best effort: a report left behind
    /// is only sent again, and the control plane drops the duplicate.
    pub fn remove(&self, seq: u64, kind: QueuedKind) {
        let _ = std::fs::remove_file(self.path(seq, kind));
    }
}

/// The per-device report counter.
#[derive(Debug)]
pub struct ReportCounter {
    path: PathBuf,
    next: u64,
    reserved: u64,
}

impl ReportCounter {
    /// Opens the counter stored at `path`, continuing after the last
    /// reserved block.
    ///
    /// # Errors
    /// [`InstallError`] for an unreadable file.
    pub fn open(path: &Path) -> Result<Self, InstallError> {
        let start = match std::fs::read_to_string(path) {
            Ok(t) => t.trim().parse::<u64>().map_err(|e| {
                InstallError::State(format!(
                    "{}: not a counter ({e}); delete it to reset",
                    path.display()
                ))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(InstallError::io("read", path, e)),
        };
        Ok(Self {
            path: path.to_path_buf(),
            next: start + 1,
            reserved: start,
        })
    }

    /// Reserves a value `window` above the next one, for a last will that
    /// must outrank every report of this session; a restart continues
    /// above it.
    ///
    /// # Errors
    /// [`InstallError`] when the reservation cannot be written.
    pub fn reserve_will(&mut self, window: u64) -> Result<u64, InstallError> {
        let will = self.next.saturating_add(window);
        if will > self.reserved {
            write_atomic(&self.path, will.to_string().as_bytes())?;
            self.reserved = will;
        }
        Ok(will)
    }

    /// Moves the counter above `value` (a will the broker may have
    /// published), so later reports outrank it.
    pub fn skip_past(&mut self, value: u64) {
        if self.next <= value {
            self.next = value + 1;
        }
    }

    /// The next counter value; never repeats, even across restarts.
    ///
    /// # Errors
    /// [`InstallError`] when a new block cannot be reserved.
    pub fn take(&mut self) -> Result<u64, InstallError> {
        if self.next > self.reserved {
            let reserved = self.next + COUNTER_BLOCK - 1;
            write_atomic(&self.path, reserved.to_string().as_bytes())?;
            self.reserved = reserved;
        }
        let n = self.next;
        self.next += 1;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_counter_never_repeats_across_restarts() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("counter");
        let mut c = ReportCounter::open(&p).unwrap();
        let a: Vec<u64> = (0..5).map(|_| c.take().unwrap()).collect();
        assert_eq!(a, vec![1, 2, 3, 4, 5]);
        drop(c);
        let mut c = ReportCounter::open(&p).unwrap();
        assert!(c.take().unwrap() > 5);
        let will = c.reserve_will(100).unwrap();
        let during = c.take().unwrap();
        assert!(during < will);
        drop(c);
        assert!(ReportCounter::open(&p).unwrap().take().unwrap() > will);
        let mut c = ReportCounter::open(&p).unwrap();
        c.skip_past(u64::from(u32::MAX));
        assert!(c.take().unwrap() > u64::from(u32::MAX));
    }

    #[test]
    fn the_outbox_keeps_events_in_order_and_only_the_newest_status() {
        let tmp = tempfile::tempdir().unwrap();
        let o = Outbox::open(tmp.path()).unwrap();
        o.push(1, QueuedKind::Status, b"s1").unwrap();
        o.push(2, QueuedKind::Event, b"e2").unwrap();
        o.push(3, QueuedKind::Status, b"s3").unwrap();
        o.push(4, QueuedKind::Event, b"e4").unwrap();
        let p = Outbox::open(tmp.path()).unwrap().pending().unwrap();
        let seqs: Vec<u64> = p.iter().map(|q| q.seq).collect();
        assert_eq!(seqs, vec![2, 3, 4]);
        o.remove(2, QueuedKind::Event);
        assert_eq!(o.pending().unwrap()[0].bytes, b"s3");
    }
}
