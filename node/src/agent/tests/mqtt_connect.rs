//! The daemon's connect is never abandoned half-way: a report produced
//! while the broker has not yet answered CONNECT must not make the daemon
//! drop that connection and dial again (the broker then saw every first
//! login twice, and published the aborted session's last will).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use super::mqtt_e2e::{device_config, preloaded, spawn_daemon};
use super::*;
use crate::store::MemStore;

/// Reads one MQTT packet: its first byte and its body.
fn packet(s: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let mut b = [0u8; 1];
    s.read_exact(&mut b).ok()?;
    let (mut len, mut shift) = (0usize, 0);
    loop {
        let mut l = [0u8; 1];
        s.read_exact(&mut l).ok()?;
        len |= usize::from(l[0] & 0x7f) << shift;
        shift += 7;
        if l[0] & 0x80 == 0 || shift > 21 {
            break;
        }
    }
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).ok()?;
    Some((b[0], body))
}

/// A broker that takes its time over CONNACK (long enough for the agent's
/// first status to be produced meanwhile), acknowledges what follows, and
/// sends the number of connections accepted so far when the first
/// PUBLISH arrives.
fn slow_broker(listener: TcpListener, first_publish: mpsc::Sender<usize>) {
    let accepted = Arc::new(AtomicUsize::new(0));
    for conn in listener.incoming().take(20) {
        let Ok(mut s) = conn else { return };
        let n = accepted.fetch_add(1, Ordering::SeqCst) + 1;
        let tx = first_publish.clone();
        std::thread::spawn(move || {
            let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
            let Some((0x10, _)) = packet(&mut s) else {
                return;
            };
            std::thread::sleep(Duration::from_millis(500));
            if s.write_all(&[0x20, 0x02, 0x00, 0x00]).is_err() {
                return;
            }
            while let Some((kind, body)) = packet(&mut s) {
                match kind >> 4 {
                    3 => {
                        let _ = tx.send(n);
                        // QoS 1: the packet id follows the topic.
                        let tl = usize::from(body[0]) << 8 | usize::from(body[1]);
                        let id = &body[2 + tl..4 + tl];
                        let _ = s.write_all(&[0x40, 0x02, id[0], id[1]]);
                    }
                    8 => {
                        let _ = s.write_all(&[0x90, 0x03, body[0], body[1], 0x01]);
                    }
                    12 => {
                        let _ = s.write_all(&[0xd0, 0x00]);
                    }
                    _ => {}
                }
            }
        });
    }
}

#[test]
fn a_report_produced_while_connecting_does_not_abort_the_connection() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || slow_broker(listener, tx));
    let tmp = tempfile::tempdir().unwrap();
    let w = world();
    let (cfg, _) = device_config(tmp.path(), port, &w);
    let (stop, daemon) = spawn_daemon(cfg, MemStore::new(), preloaded());
    let connections = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the device published its status");
    assert_eq!(connections, 1, "the first connection was abandoned");
    let _ = stop.send(());
    daemon.join().unwrap().unwrap();
}
