//! Running external programs (hooks, health checks, `rauc`) with a
//! deadline, so a hung script can never wedge the agent.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Output kept per stream: enough for a diagnosis, bounded for telemetry.
const MAX_OUTPUT: usize = 4096;

/// How often a running child is polled for exit. Only paces the wait for
/// an external process; no test synchronises on it.
const POLL: Duration = Duration::from_millis(20);

/// Why an external program did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    /// It could not be started.
    #[error("cannot run {program}: {source} (check the path and that it is executable)")]
    Spawn {
        /// The program.
        program: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// It ran past its deadline and was killed.
    #[error("{program} did not finish within {timeout:?} and was killed")]
    Timeout {
        /// The program.
        program: PathBuf,
        /// The deadline.
        timeout: Duration,
    },
    /// It exited unsuccessfully.
    #[error("{program} exited with {status}: {output}")]
    Failed {
        /// The program.
        program: PathBuf,
        /// Exit status, as text.
        status: String,
        /// Its stderr (or stdout when stderr is empty), truncated.
        output: String,
    },
}

fn drain(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        // Keep reading past the cap so the child never blocks on a full pipe.
        while let Ok(n) = r.read(&mut chunk) {
            if n == 0 {
                break;
            }
            let room = MAX_OUTPUT.saturating_sub(buf.len());
            buf.extend_from_slice(&chunk[..n.min(room)]);
        }
        String::from_utf8_lossy(&buf).trim().to_string()
    })
}

fn wait_deadline(
    child: &mut Child,
    timeout: Duration,
) -> std::io::Result<Option<std::process::ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(st) = child.try_wait()? {
            return Ok(Some(st));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(POLL);
    }
}

/// Runs `cmd` to completion within `timeout`; kills it past the deadline.
///
/// # Returns
/// Its stdout (truncated) on success.
///
/// # Errors
/// [`ProcError`].
pub fn run(mut cmd: Command, timeout: Duration) -> Result<String, ProcError> {
    let program = PathBuf::from(cmd.get_program());
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| ProcError::Spawn {
            program: program.clone(),
            source,
        })?;
    let out = child.stdout.take().map(drain);
    let err = child.stderr.take().map(drain);
    let status = wait_deadline(&mut child, timeout).map_err(|source| ProcError::Spawn {
        program: program.clone(),
        source,
    })?;
    let Some(status) = status else {
        // Best effort: the child may have exited between the check and the kill.
        let _ = child.kill();
        let _ = child.wait();
        return Err(ProcError::Timeout { program, timeout });
    };
    let stdout = out.and_then(|h| h.join().ok()).unwrap_or_default();
    let stderr = err.and_then(|h| h.join().ok()).unwrap_or_default();
    if status.success() {
        Ok(stdout)
    } else {
        Err(ProcError::Failed {
            program,
            status: status.to_string(),
            output: if stderr.is_empty() { stdout } else { stderr },
        })
    }
}
