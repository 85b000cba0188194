//! The driver task: rounds of the planners, then signing and publishing
//! what they decided.

use std::sync::Arc;
use std::time::Duration;

use meshota_protocol::topics::Topic;
use meshota_protocol::{codec, Announcement, Command, CommandAction, SecretKey, Signed};
use tokio::sync::mpsc::UnboundedReceiver;

use super::driver::{Inner, Work};
use super::Rollouts;
use crate::mqtt::control::{AcceptedReport, ControlHandle};
use crate::registry::Registry;

/// Lifetime of a signed rollback command: long enough for a device that
/// is briefly offline to get it from its persistent session, short enough
/// that a captured command cannot be replayed next month.
const COMMAND_LIFETIME_SECS: u64 = 24 * 60 * 60;

/// Longest sleep between rounds, so a stepped wall clock is noticed.
const MAX_SLEEP: Duration = Duration::from_secs(30);

/// Reports handled per round at most, so a telemetry storm cannot starve
/// gate re-signing.
const REPORTS_PER_ROUND: usize = 10_000;

/// Unsigned hints every announcement carries: where devices find the
/// origin. Everything fetched from there is verified against signatures.
#[derive(Debug, Clone, Default)]
pub struct Hints {
    /// libp2p multiaddrs (with `/p2p/<peer id>`) of the origin seeder.
    pub bootstrap: Vec<String>,
    /// Base URL of the HTTP origin.
    pub http_origin: Option<String>,
}

/// Drives the rollouts until the task is aborted.
///
/// # Errors
/// A description of a registry failure or a stopped MQTT client, which
/// the supervisor treats as fatal.
pub async fn run(
    rollouts: Rollouts,
    control: ControlHandle,
    registry: Arc<Registry>,
    key: Arc<SecretKey>,
    hints: Hints,
    mut reports: UnboundedReceiver<AcceptedReport>,
) -> Result<(), String> {
    loop {
        let now = crate::now();
        let (work, next) = {
            let mut inner = rollouts.lock();
            let mut n = 0;
            while n < REPORTS_PER_ROUND {
                let Ok(r) = reports.try_recv() else { break };
                inner.handle_report(&r.device, &r.body, r.counter, now);
                n += 1;
            }
            inner.round(now).map_err(|e| e.to_string())?
        };
        let fleet = rollouts.lock().fleet().clone();
        for w in work {
            perform(w, &control, &registry, &key, &hints, &fleet, now).await?;
        }
        let sleep = match next {
            Some(t) if t > now => Duration::from_secs(t - now).min(MAX_SLEEP),
            // Due already: the planner moves its timeout past `now` when
            // woken, so this only spins if the clock stands still; a short
            // pause keeps that from burning a core.
            Some(_) => Duration::from_millis(50),
            None => MAX_SLEEP,
        };
        tokio::select! {
            _ = tokio::time::sleep(sleep) => {}
            _ = rollouts.wake.notified() => {}
            r = reports.recv() => match r {
                Some(r) => rollouts.lock().handle_report(&r.device, &r.body, r.counter, crate::now()),
                None => return Err("the control plane's report feed closed".into()),
            },
        }
    }
}

async fn perform(
    work: Work,
    control: &ControlHandle,
    registry: &Arc<Registry>,
    key: &SecretKey,
    hints: &Hints,
    fleet: &meshota_protocol::FleetId,
    now: u64,
) -> Result<(), String> {
    match work {
        Work::Gate {
            topic,
            release,
            gate,
        } => {
            let Some(release) = Inner::decode_release(&release) else {
                return Err("a stored signed release does not decode".into());
            };
            let sequence = gate.sequence;
            let gate = Signed::sign(&gate, &[key]).map_err(|e| e.to_string())?;
            let ann = Announcement {
                release,
                gate,
                bootstrap: hints.bootstrap.clone(),
                http_origin: hints.http_origin.clone(),
            };
            let bytes = codec::encode(&ann).map_err(|e| e.to_string())?;
            control
                .announce(&topic, bytes)
                .await
                .map_err(|e| e.to_string())?;
            tracing::info!(%topic, sequence, "published rollout gate");
        }
        Work::Rollback { release, devices } => {
            for device in devices {
                let reg = registry.clone();
                let sequence = tokio::task::spawn_blocking(move || {
                    reg.advance("command.sequence", now.saturating_mul(1000))
                })
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
                let cmd = Command {
                    fleet: fleet.clone(),
                    target: Some(device.clone()),
                    action: CommandAction::Rollback { to: None },
                    sequence,
                    expires_at: now.saturating_add(COMMAND_LIFETIME_SECS),
                };
                let signed = Signed::sign(&cmd, &[key]).map_err(|e| e.to_string())?;
                let bytes = codec::encode(&signed).map_err(|e| e.to_string())?;
                let topic = Topic::Cmd {
                    fleet: fleet.clone(),
                    device: device.clone(),
                };
                control
                    .command(&topic, bytes)
                    .await
                    .map_err(|e| e.to_string())?;
                tracing::info!(%device, %release, "sent rollback command");
            }
        }
    }
    Ok(())
}
