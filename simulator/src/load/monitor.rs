//! The monitor: one extra client that subscribes to every device's status
//! and events before the devices start, and times each status of this run
//! from the send time its publisher stamped into it.
//!
//! Statuses of other runs (a broker keeps the last one per device,
//! retained) carry another run tag and are not counted.
//!
//! The monitor runs on its own thread and runtime ([`spawn`]): sharing
//! the devices' runtime, it would wait its turn behind thousands of
//! device tasks and measure its own queueing instead of the broker's.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use meshota_protocol::topics::filters;
use meshota_protocol::{codec, DeviceId, ReportBody, SignedReport, Topic};
use rumqttc::{AsyncClient, Event as MqttEvent, EventLoop, Packet, QoS};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use super::{LoadError, Shared};

/// Most latency samples kept (a 5,000-device, 1 s, 10-minute run fits).
const MAX_SAMPLES: usize = 4_000_000;

/// Connects and subscribes; returns once the broker acknowledged both
/// subscriptions, so no message of the run is missed.
///
/// # Errors
/// [`LoadError::Monitor`] when the broker refuses or does not answer.
pub async fn connect(shared: &Shared) -> Result<(AsyncClient, EventLoop), LoadError> {
    let id = DeviceId::new(format!("{}-monitor", shared.prefix))?;
    let key = super::device::device_key(shared.seed, u32::MAX);
    let opts = super::device::options(shared, &id, &key, true)?;
    // A deep queue: the monitor takes every message of the fleet.
    let (client, mut el) = AsyncClient::new(opts, 1024);
    let fail = |why: String| LoadError::Monitor(format!("{}:{}: {why}", shared.host, shared.port));
    for f in [
        filters::all_status(&shared.fleet),
        filters::all_events(&shared.fleet),
    ] {
        client
            .subscribe(f, QoS::AtLeastOnce)
            .await
            .map_err(|e| fail(e.to_string()))?;
    }
    let acked = tokio::time::timeout(shared.connect_timeout, async {
        let mut subacks = 0;
        loop {
            match el.poll().await {
                Ok(MqttEvent::Incoming(Packet::SubAck(_))) => {
                    subacks += 1;
                    if subacks == 2 {
                        return Ok(());
                    }
                }
                Ok(_) => {}
                Err(e) => return Err(fail(e.to_string())),
            }
        }
    })
    .await;
    match acked {
        Ok(r) => r.map(|()| (client, el)),
        Err(_) => Err(fail("no answer in time".into())),
    }
}

/// The monitor running on its own thread: its latencies arrive on the
/// receiver once `stop` turns true.
pub type Running = oneshot::Receiver<Vec<u32>>;

/// Starts the monitor on its own thread and current-thread runtime and
/// returns once it is subscribed.
///
/// # Errors
/// [`LoadError::Monitor`] when it cannot connect or subscribe, or the
/// thread or runtime cannot start.
pub async fn spawn(shared: Arc<Shared>, stop: watch::Receiver<bool>) -> Result<Running, LoadError> {
    let (ready_tx, ready_rx) = oneshot::channel();
    let (done_tx, done_rx) = oneshot::channel();
    std::thread::Builder::new()
        .name("load-monitor".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(LoadError::Runtime(e)));
                    return;
                }
            };
            rt.block_on(async move {
                match connect(&shared).await {
                    Ok(conn) => {
                        let _ = ready_tx.send(Ok(()));
                        let _ = done_tx.send(run(shared, conn, stop).await);
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            });
        })
        .map_err(LoadError::Runtime)?;
    match ready_rx.await {
        Ok(Ok(())) => Ok(done_rx),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(LoadError::Monitor("the monitor thread ended".into())),
    }
}

/// Receives until `stop` turns true; returns the delivery latencies in
/// microseconds. `_client` is held because rumqttc ends the event loop
/// once every client handle is gone.
pub async fn run(
    shared: Arc<Shared>,
    (_client, mut el): (AsyncClient, EventLoop),
    mut stop: watch::Receiver<bool>,
) -> Vec<u32> {
    let tag = format!("load:{}:", shared.run);
    let mut lat = Vec::new();
    loop {
        tokio::select! {
            r = stop.changed() => {
                if r.is_err() || *stop.borrow() {
                    return lat;
                }
            }
            ev = el.poll() => match ev {
                Ok(MqttEvent::Incoming(Packet::Publish(p))) => {
                    let now = shared.start.elapsed().as_micros();
                    match Topic::parse(&p.topic) {
                        Ok(Topic::Status { .. }) => {
                            if let Some(sent) = sent_micros(&p.payload, &tag) {
                                shared.stats.status_delivered.fetch_add(1, Ordering::Relaxed);
                                if lat.len() < MAX_SAMPLES {
                                    let us = now.saturating_sub(sent);
                                    lat.push(u32::try_from(us).unwrap_or(u32::MAX));
                                }
                            }
                        }
                        Ok(Topic::Events { .. }) => {
                            shared.stats.events_delivered.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => {}
                    }
                }
                Ok(_) => {}
                Err(_) => {
                    shared.stats.monitor_errors.fetch_add(1, Ordering::Relaxed);
                    // rumqttc reconnects on the next poll; pause so a
                    // broker that is down is not hammered.
                    tokio::time::sleep_until(Instant::now() + std::time::Duration::from_millis(200)).await;
                }
            }
        }
    }
}

/// The send time stamped into a status of this run, if it is one.
fn sent_micros(payload: &[u8], tag: &str) -> Option<u128> {
    let report = codec::decode::<SignedReport>(payload)
        .ok()?
        .claimed()
        .ok()?;
    let ReportBody::Status(s) = report.body else {
        return None;
    };
    s.tags
        .iter()
        .find_map(|t| t.strip_prefix(tag).and_then(|v| v.parse().ok()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::device::{device_key, Reporter};

    #[test]
    fn only_statuses_of_this_run_yield_a_send_time() {
        let mut rep = Reporter::new(
            DeviceId::new("d").unwrap(),
            device_key(1, 1),
            &meshota_protocol::FleetId::new("f").unwrap(),
            meshota_protocol::SiteId::new("s").unwrap(),
        );
        let mut mk = |tag: &str| rep.status(tag.to_string()).unwrap();
        assert_eq!(sent_micros(&mk("load:7:1234"), "load:7:"), Some(1234));
        assert_eq!(sent_micros(&mk("load:6:1234"), "load:7:"), None);
        assert_eq!(sent_micros(b"not cbor", "load:7:"), None);
    }
}
