//! `/metrics` in the Prometheus text format.
//!
//! Counters kept in memory (`telemetry_messages`, origin bytes) restart
//! from zero with the process, which Prometheus' `rate()` handles; report
//! counters come from the registry and survive restarts. The telemetry
//! message rate is `meshota_telemetry_messages_per_second` (last minute),
//! or `rate(meshota_telemetry_messages_total[1m])` on the Prometheus side.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use super::api::summarize;
use super::{blocking, ApiError, AppState};
use crate::ingest::{Rejection, ACCEPTED, REJECTED_PREFIX};
use crate::registry::RegistryError;

fn esc(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

pub(super) async fn metrics(State(s): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let reg = s.registry.clone();
    let (devices, counters, releases) = blocking(move || {
        let read = || {
            let d = reg.devices()?;
            let c: BTreeMap<String, u64> = reg.counters()?.into_iter().collect();
            let r = reg.releases()?.len() as u64;
            Ok::<_, RegistryError>((d, c, r))
        };
        read().map_err(ApiError::internal)
    })
    .await?;
    let fleet = summarize(&devices, releases);
    let mut out = String::new();
    let mut line = |s: String| {
        out.push_str(&s);
        out.push('\n');
    };
    line("# HELP meshota_devices Devices by admission.".into());
    line("# TYPE meshota_devices gauge".into());
    line(format!(
        "meshota_devices{{admission=\"accepted\"}} {}",
        fleet.accepted
    ));
    line(format!(
        "meshota_devices{{admission=\"pending\"}} {}",
        fleet.pending
    ));
    line("# HELP meshota_devices_online Devices whose last status said online.".into());
    line("# TYPE meshota_devices_online gauge".into());
    line(format!("meshota_devices_online {}", fleet.online));
    for (name, label, help, counts) in [
        ("by_state", "state", "update state", &fleet.by_state),
        (
            "by_version",
            "version",
            "installed version",
            &fleet.by_version,
        ),
        (
            "by_trust_version",
            "trust",
            "trust-root version",
            &fleet.by_trust_version,
        ),
    ] {
        line(format!(
            "# HELP meshota_devices_{name} Accepted devices by {help}."
        ));
        line(format!("# TYPE meshota_devices_{name} gauge"));
        for (k, v) in counts {
            line(format!(
                "meshota_devices_{name}{{{label}=\"{}\"}} {v}",
                esc(k)
            ));
        }
    }
    line("# HELP meshota_releases Releases published on this origin.".into());
    line("# TYPE meshota_releases gauge".into());
    line(format!("meshota_releases {releases}"));
    line("# HELP meshota_reports_accepted_total Device reports accepted.".into());
    line("# TYPE meshota_reports_accepted_total counter".into());
    line(format!(
        "meshota_reports_accepted_total {}",
        counters.get(ACCEPTED).copied().unwrap_or(0)
    ));
    line("# HELP meshota_reports_rejected_total Device reports rejected, by reason.".into());
    line("# TYPE meshota_reports_rejected_total counter".into());
    for r in Rejection::ALL {
        let n = counters
            .get(&format!("{REJECTED_PREFIX}{}", r.as_str()))
            .copied()
            .unwrap_or(0);
        line(format!(
            "meshota_reports_rejected_total{{reason=\"{}\"}} {n}",
            r.as_str()
        ));
    }
    line("# HELP meshota_telemetry_messages_total Telemetry messages received since start.".into());
    line("# TYPE meshota_telemetry_messages_total counter".into());
    line(format!(
        "meshota_telemetry_messages_total {}",
        s.control.telemetry_messages.load(Ordering::Relaxed)
    ));
    line("# HELP meshota_telemetry_messages_per_second Telemetry messages per second over the last minute.".into());
    line("# TYPE meshota_telemetry_messages_per_second gauge".into());
    line(format!(
        "meshota_telemetry_messages_per_second {:.3}",
        s.control.message_rate(crate::now())
    ));
    line("# HELP meshota_announcements_reasserted_total Retained announcements re-published after an overwrite.".into());
    line("# TYPE meshota_announcements_reasserted_total counter".into());
    line(format!(
        "meshota_announcements_reasserted_total {}",
        s.control.reasserted.load(Ordering::Relaxed)
    ));
    line("# HELP meshota_origin_bytes_total Bytes served by the origin, by transport.".into());
    line("# TYPE meshota_origin_bytes_total counter".into());
    line(format!(
        "meshota_origin_bytes_total{{transport=\"http\"}} {}",
        s.stats.origin_http_bytes.load(Ordering::Relaxed)
    ));
    line(format!(
        "meshota_origin_bytes_total{{transport=\"p2p\"}} {}",
        s.stats.origin_p2p_bytes.load(Ordering::Relaxed)
    ));
    let rollouts = s.rollouts.list(crate::now());
    line("# HELP meshota_rollouts Rollouts by state.".into());
    line("# TYPE meshota_rollouts gauge".into());
    for (state, n) in s.rollouts.states() {
        line(format!("meshota_rollouts{{state=\"{state}\"}} {n}"));
    }
    line(
        "# HELP meshota_rollout_halted Whether a rollout halted on its own (error threshold)."
            .into(),
    );
    line("# TYPE meshota_rollout_halted gauge".into());
    line("# HELP meshota_rollout_wave_devices Devices of a live rollout's wave, by phase.".into());
    line("# TYPE meshota_rollout_wave_devices gauge".into());
    line("# HELP meshota_rollout_bytes Download bytes of a rollout, by source.".into());
    line("# TYPE meshota_rollout_bytes gauge".into());
    for v in rollouts.iter().filter(|v| !v.retired) {
        let st = &v.status;
        let id = st.rollout.short();
        line(format!(
            "meshota_rollout_halted{{rollout=\"{id}\"}} {}",
            u8::from(st.state == crate::rollout::RolloutState::Halted)
        ));
        for w in &st.waves {
            let c = &w.counts;
            for (phase, n) in [
                ("targeted", c.targeted),
                ("pending", c.pending),
                ("downloading", c.downloading),
                ("installing", c.installing),
                ("awaiting-health", c.awaiting_health),
                ("succeeded", c.succeeded),
                ("failed", c.failed),
                ("rolled-back", c.rolled_back),
                ("not-reporting", c.not_reporting),
            ] {
                line(format!(
                    "meshota_rollout_wave_devices{{rollout=\"{id}\",wave=\"{}\",phase=\"{phase}\"}} {n}",
                    w.index
                ));
            }
        }
        for (source, n) in [
            ("peers", st.bytes_from_peers),
            ("origin", st.bytes_from_origin),
        ] {
            line(format!(
                "meshota_rollout_bytes{{rollout=\"{id}\",source=\"{source}\"}} {n}"
            ));
        }
    }
    line(
        "# HELP meshota_mqtt_connected Whether the control plane is connected to the broker."
            .into(),
    );
    line("# TYPE meshota_mqtt_connected gauge".into());
    line(format!(
        "meshota_mqtt_connected {}",
        u8::from(s.control.connected.load(Ordering::Relaxed))
    ));
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    ))
}
