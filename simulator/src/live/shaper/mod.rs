//! The live network model: every device's TCP connections go through
//! token buckets and a delay line.
//!
//! Each simulated device listens on its own loopback address
//! ([`device_ip`]: `127.<site+1>.<hi>.<lo>`; Linux routes all of 127/8
//! to `lo`), so an address says which site a device is in. Anything else
//! (the origin seeder on 127.0.0.1) is outside every site.
//!
//! Only device ends are wrapped (the origin is the broker's own node),
//! so each wrapper charges what its end sees:
//! - a write charges the device's upload bucket, plus its site's WAN
//!   uplink when the peer is in another site or is the origin;
//! - a read charges the device's download bucket, plus its site's WAN
//!   downlink for cross-site traffic, plus the origin's upload bucket when
//!   the peer is the origin (whose end is not wrapped). Cross-site bytes
//!   read are what [`NetModel::site_wan_in`] counts: the truth for
//!   "bytes over each site's WAN";
//! - read data is released after the one-way latency (LAN or WAN; twice
//!   WAN from the origin, whose end adds none, so every round trip is
//!   two one-way latencies).
//!
//! Devices reach each other over libp2p's in-process memory transport
//! (`/memory/N`; no file descriptors, so a thousand devices fit in one
//! process) and the origin over loopback TCP.
//!
//! A listener cannot tell a dialing device from its address, so:
//! - over TCP (the kernel picks 127.0.0.1 as source for every loopback
//!   dial) each dialer registers its 4-tuple in [`NetModel`] before it
//!   sends a byte, and the listener looks the peer up when its first
//!   bytes arrive;
//! - over memory (a dialer's own port is hidden in the channel) the
//!   dialer's wrapper sends its device index first, as 4 bytes no bucket
//!   is charged for, and the listener's wrapper takes them off the front.
//!   A dialer knows its listener from the port ([`NetModel::listening`]).

use std::collections::{HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::{AsyncRead, AsyncWrite};
use meshota_node::p2p::{ConnInfo, ConnectionShaper, ShapedIo, TokenBucket};

use crate::scenario::Scenario;

/// Most bytes one read or write moves before the buckets are charged:
/// bounds each connection's overshoot of a shared bucket.
const IO_STEP: usize = 32 * 1024;
/// Smallest read-side delay line (bytes held back for latency).
const MIN_QUEUE: usize = 256 * 1024;

thread_local! {
    /// One read buffer per worker thread. A fresh zeroed 32 KiB buffer
    /// for every read attempt, most of which find the socket empty, was
    /// 4 % of a slow-link run's CPU in `memset` alone.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0u8; IO_STEP]);
}

/// Where one end of a connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// Simulated device `index` (fleet-wide), in `site`.
    Device {
        /// Its site.
        site: u32,
        /// Its fleet-wide index.
        index: u32,
    },
    /// The origin, or anything outside the fleet.
    Outside,
}

/// The loopback address of device `index` of a fleet with `sites` sites
/// (device `d` is in site `d % sites`, the `d / sites`-th of its site).
pub fn device_ip(index: u32, sites: u32) -> Ipv4Addr {
    let site = index % sites;
    let n = index / sites + 1;
    // Sites beyond 253 would leave 127/8; scenarios are validated below that.
    Ipv4Addr::new(127, (site + 1) as u8, (n >> 8) as u8, (n & 0xff) as u8)
}

/// Which device (if any) an address belongs to.
pub fn endpoint_of(ip: Ipv4Addr, sites: u32, devices: u32) -> Endpoint {
    let [a, b, c, d] = ip.octets();
    if a != 127 || b == 0 {
        return Endpoint::Outside;
    }
    let site = u32::from(b) - 1;
    let n = (u32::from(c) << 8) | u32::from(d);
    if site >= sites || n == 0 {
        return Endpoint::Outside;
    }
    let index = (n - 1) * sites + site;
    if index >= devices {
        return Endpoint::Outside;
    }
    Endpoint::Device { site, index }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Buckets and tables stay consistent across a panic (single updates).
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A shared bucket, or none when unlimited.
#[derive(Debug)]
struct Bucket(Option<Mutex<TokenBucket>>);

impl Bucket {
    fn new(bps: u64, now: Instant) -> Self {
        Self((bps > 0).then(|| Mutex::new(TokenBucket::new(bps, now))))
    }
    fn ready_at(&self, now: Instant) -> Option<Instant> {
        self.0.as_ref().and_then(|b| lock(b).ready_at(now))
    }
    fn charge(&self, bytes: usize, now: Instant) {
        if let Some(b) = &self.0 {
            lock(b).reserve(bytes as u64, now);
        }
    }
}

/// The whole fleet's network: buckets, counters and the dial table.
#[derive(Debug)]
pub struct NetModel {
    sites: u32,
    devices: u32,
    lan: Duration,
    wan: Duration,
    down_bps: u64,
    dev_up: Vec<Bucket>,
    dev_down: Vec<Bucket>,
    site_up: Vec<Bucket>,
    site_down: Vec<Bucket>,
    origin_up: Bucket,
    site_wan_in: Vec<AtomicU64>,
    site_wan_out: Vec<AtomicU64>,
    dev_wan_in: Vec<AtomicU64>,
    dev_up_bytes: Vec<AtomicU64>,
    dev_origin_in: Vec<AtomicU64>,
    dev_far_conns: Vec<AtomicU64>,
    dev_origin_conns: Vec<AtomicU64>,
    from_origin: AtomicU64,
    /// Dialing device of each live connection, by (dialer end, listener end).
    dials: Mutex<HashMap<(SocketAddr, SocketAddr), u32>>,
    /// Device listening on each `/memory/N` port.
    memory_ports: Mutex<HashMap<u64, u32>>,
}

impl NetModel {
    /// The network of scenario `s`.
    pub fn new(s: &Scenario) -> Arc<Self> {
        let now = Instant::now();
        let n = s.devices as usize;
        let sites = s.sites as usize;
        Arc::new(Self {
            sites: s.sites,
            devices: s.devices,
            lan: Duration::from_millis(s.lan_latency_ms),
            wan: Duration::from_millis(s.wan_latency_ms),
            down_bps: s.device_down_bps,
            dev_up: (0..n).map(|_| Bucket::new(s.device_up_bps, now)).collect(),
            dev_down: (0..n)
                .map(|_| Bucket::new(s.device_down_bps, now))
                .collect(),
            site_up: (0..sites)
                .map(|_| Bucket::new(s.site_wan_bps, now))
                .collect(),
            site_down: (0..sites)
                .map(|_| Bucket::new(s.site_wan_bps, now))
                .collect(),
            origin_up: Bucket::new(s.origin_up_bps, now),
            site_wan_in: (0..sites).map(|_| AtomicU64::new(0)).collect(),
            site_wan_out: (0..sites).map(|_| AtomicU64::new(0)).collect(),
            dev_wan_in: (0..n).map(|_| AtomicU64::new(0)).collect(),
            dev_up_bytes: (0..n).map(|_| AtomicU64::new(0)).collect(),
            dev_origin_in: (0..n).map(|_| AtomicU64::new(0)).collect(),
            dev_far_conns: (0..n).map(|_| AtomicU64::new(0)).collect(),
            dev_origin_conns: (0..n).map(|_| AtomicU64::new(0)).collect(),
            from_origin: AtomicU64::new(0),
            dials: Mutex::new(HashMap::new()),
            memory_ports: Mutex::new(HashMap::new()),
        })
    }

    /// The shaper for device `index`'s node.
    pub fn shaper(self: &Arc<Self>, index: u32) -> Arc<dyn ConnectionShaper> {
        Arc::new(DeviceShaper {
            net: self.clone(),
            index,
            site: index % self.sites,
        })
    }

    /// Bytes that entered each site over its WAN downlink (wire bytes,
    /// protocol overhead included).
    pub fn site_wan_in(&self) -> Vec<u64> {
        load_all(&self.site_wan_in)
    }

    /// Bytes that left each site over its WAN uplink.
    pub fn site_wan_out(&self) -> Vec<u64> {
        load_all(&self.site_wan_out)
    }

    /// Wire bytes each device read over its site's WAN link: with the
    /// bytes it kept from other sites and the origin, this tells waste
    /// (late answers, duplicates, control traffic) from imports.
    pub fn device_wan_in(&self) -> Vec<u64> {
        load_all(&self.dev_wan_in)
    }

    /// Wire bytes each device wrote on its uplink: everything, where a
    /// node's counters see only the chunk answers it flushed.
    pub fn device_up_bytes(&self) -> Vec<u64> {
        load_all(&self.dev_up_bytes)
    }

    /// Wire bytes each device read from the origin (chunks, `Have`
    /// answers and the DHT, whose lone server the origin is).
    pub fn device_origin_in(&self) -> Vec<u64> {
        load_all(&self.dev_origin_in)
    }

    /// Connections each device had with devices of other sites (either
    /// end dialling): what being found by far devices costs its WAN.
    pub fn device_far_conns(&self) -> Vec<u64> {
        load_all(&self.dev_far_conns)
    }

    /// Connections each device had with the origin: each costs a
    /// handshake and identify over its site's WAN.
    pub fn device_origin_conns(&self) -> Vec<u64> {
        load_all(&self.dev_origin_conns)
    }

    fn count_conn(&self, index: usize, site: u32, peer: Endpoint) {
        let counter = match peer {
            Endpoint::Device { site: s, .. } if s != site => &self.dev_far_conns,
            Endpoint::Outside => &self.dev_origin_conns,
            Endpoint::Device { .. } => return,
        };
        if let Some(c) = counter.get(index) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Wire bytes devices read from outside the fleet (the origin).
    pub fn from_origin(&self) -> u64 {
        self.from_origin.load(Ordering::Relaxed)
    }

    fn endpoint(&self, ip: std::net::IpAddr) -> Endpoint {
        match ip {
            std::net::IpAddr::V4(v4) => endpoint_of(v4, self.sites, self.devices),
            std::net::IpAddr::V6(_) => Endpoint::Outside,
        }
    }

    fn dialer_of(&self, key: &(SocketAddr, SocketAddr)) -> Option<u32> {
        lock(&self.dials).get(key).copied()
    }

    /// Records that device `index` listens on `/memory/{port}`, so the
    /// devices that dial it know where it is.
    pub fn listening(&self, port: u64, index: u32) {
        lock(&self.memory_ports).insert(port, index);
    }

    fn device(&self, index: u32) -> Endpoint {
        if index < self.devices {
            Endpoint::Device {
                site: index % self.sites,
                index,
            }
        } else {
            Endpoint::Outside
        }
    }
}

/// How a connection end learns its peer.
#[derive(Debug)]
enum Lookup {
    /// Known from the start (dialers), or found already.
    Done,
    /// A TCP listener: in the dial table under (dialer end, listener end).
    Tcp((SocketAddr, SocketAddr)),
    /// A memory listener: from the dialer's 4-byte index, `got` so far.
    Hello([u8; 4], usize),
}

/// One device's [`ConnectionShaper`].
#[derive(Debug)]
struct DeviceShaper {
    net: Arc<NetModel>,
    index: u32,
    site: u32,
}

impl ConnectionShaper for DeviceShaper {
    fn shape(&self, io: Box<dyn ShapedIo>, info: ConnInfo) -> Box<dyn ShapedIo> {
        let (peer, lookup, registered, hello) = match info {
            ConnInfo::Tcp {
                local,
                remote,
                dialer: true,
            } => {
                let key = (local, remote);
                lock(&self.net.dials).insert(key, self.index);
                let peer = self.net.endpoint(remote.ip());
                (Some(peer), Lookup::Done, Some(key), None)
            }
            ConnInfo::Tcp {
                local,
                remote,
                dialer: false,
            } => (None, Lookup::Tcp((remote, local)), None, None),
            ConnInfo::Memory {
                listener_port,
                dialer: true,
            } => {
                let listener = lock(&self.net.memory_ports).get(&listener_port).copied();
                let peer = listener.map_or(Endpoint::Outside, |i| self.net.device(i));
                (Some(peer), Lookup::Done, None, Some(0))
            }
            ConnInfo::Memory { dialer: false, .. } => (None, Lookup::Hello([0; 4], 0), None, None),
        };
        if let Some(p) = peer {
            self.net.count_conn(self.index as usize, self.site, p);
        }
        Box::new(Shaped {
            inner: io,
            net: self.net.clone(),
            index: self.index as usize,
            site: self.site,
            peer,
            lookup,
            registered,
            hello_sent: hello,
            queue: VecDeque::new(),
            queued: 0,
            eof: false,
            read_sleep: None,
            write_sleep: None,
        })
    }
}

fn load_all(v: &[AtomicU64]) -> Vec<u64> {
    v.iter().map(|a| a.load(Ordering::Relaxed)).collect()
}

/// Read data waiting out its latency.
struct Held {
    due: Instant,
    data: Vec<u8>,
    pos: usize,
}

/// A shaped connection end.
struct Shaped {
    inner: Box<dyn ShapedIo>,
    net: Arc<NetModel>,
    index: usize,
    site: u32,
    /// The other end, once known (listeners learn it from the dial table).
    peer: Option<Endpoint>,
    /// How a listener learns its peer.
    lookup: Lookup,
    /// A memory dialer: bytes of its index sent so far (`None`: no hello).
    hello_sent: Option<usize>,
    /// The dial-table entry this end registered, removed on drop.
    registered: Option<(SocketAddr, SocketAddr)>,
    queue: VecDeque<Held>,
    queued: usize,
    eof: bool,
    read_sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    write_sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Drop for Shaped {
    fn drop(&mut self) {
        if let Some(key) = self.registered.take() {
            lock(&self.net.dials).remove(&key);
        }
    }
}

impl Shaped {
    /// The peer; until a listener has read its first bytes an unknown
    /// peer counts as outside (the dialer registers before it writes).
    fn peer(&mut self, final_answer: bool) -> Endpoint {
        if let Some(p) = self.peer {
            return p;
        }
        let found = match &self.lookup {
            Lookup::Tcp(key) => self.net.dialer_of(key),
            // Not final until the hello is in, whatever the caller says.
            Lookup::Hello(..) => return Endpoint::Outside,
            Lookup::Done => None,
        };
        match found {
            Some(index) => {
                let p = self.net.device(index);
                self.peer = Some(p);
                self.net.count_conn(self.index, self.site, p);
                p
            }
            None => {
                if final_answer {
                    self.peer = Some(Endpoint::Outside);
                    self.net
                        .count_conn(self.index, self.site, Endpoint::Outside);
                }
                Endpoint::Outside
            }
        }
    }

    /// Takes a memory dialer's hello off the front of `buf`; returns how
    /// many bytes it took.
    fn take_hello(&mut self, buf: &[u8]) -> usize {
        let Lookup::Hello(mut hello, got) = self.lookup else {
            return 0;
        };
        let k = (4 - got).min(buf.len());
        hello[got..got + k].copy_from_slice(&buf[..k]);
        if got + k == 4 {
            let p = self.net.device(u32::from_le_bytes(hello));
            self.peer = Some(p);
            self.net.count_conn(self.index, self.site, p);
            self.lookup = Lookup::Done;
        } else {
            self.lookup = Lookup::Hello(hello, got + k);
        }
        k
    }

    fn cross(&self, peer: Endpoint) -> bool {
        match peer {
            Endpoint::Device { site, .. } => site != self.site,
            Endpoint::Outside => true,
        }
    }

    fn latency(&self, peer: Endpoint) -> Duration {
        match peer {
            Endpoint::Device { site, .. } if site == self.site => self.net.lan,
            Endpoint::Device { .. } => self.net.wan,
            Endpoint::Outside => self.net.wan * 2,
        }
    }

    /// When every bucket a read would charge has tokens again.
    fn read_ready_at(&mut self, now: Instant) -> Option<Instant> {
        let peer = self.peer(false);
        let net = &self.net;
        let site = self.site as usize;
        let mut at = net.dev_down[self.index].ready_at(now);
        if self.cross(peer) {
            at = at.max(net.site_down[site].ready_at(now));
        }
        if peer == Endpoint::Outside {
            at = at.max(net.origin_up.ready_at(now));
        }
        at
    }

    fn charge_read(&mut self, n: usize, now: Instant) -> Endpoint {
        let peer = self.peer(true);
        let net = &self.net;
        let site = self.site as usize;
        net.dev_down[self.index].charge(n, now);
        if self.cross(peer) {
            net.site_down[site].charge(n, now);
            net.site_wan_in[site].fetch_add(n as u64, Ordering::Relaxed);
            if let Some(d) = net.dev_wan_in.get(self.index) {
                d.fetch_add(n as u64, Ordering::Relaxed);
            }
        }
        if peer == Endpoint::Outside {
            net.origin_up.charge(n, now);
            net.from_origin.fetch_add(n as u64, Ordering::Relaxed);
            if let Some(d) = net.dev_origin_in.get(self.index) {
                d.fetch_add(n as u64, Ordering::Relaxed);
            }
        }
        peer
    }

    fn write_ready_at(&mut self, now: Instant) -> Option<Instant> {
        let peer = self.peer(false);
        let mut at = self.net.dev_up[self.index].ready_at(now);
        if self.cross(peer) {
            at = at.max(self.net.site_up[self.site as usize].ready_at(now));
        }
        at
    }

    fn charge_write(&mut self, n: usize, now: Instant) {
        let peer = self.peer(false);
        self.net.dev_up[self.index].charge(n, now);
        self.net.dev_up_bytes[self.index].fetch_add(n as u64, Ordering::Relaxed);
        if self.cross(peer) {
            let site = self.site as usize;
            self.net.site_up[site].charge(n, now);
            self.net.site_wan_out[site].fetch_add(n as u64, Ordering::Relaxed);
        }
    }

    /// Enough held-back bytes to keep the link busy over its latency.
    fn queue_cap(&self) -> usize {
        let lat = self.net.wan * 2;
        let bdp = (self.net.down_bps as f64 * lat.as_secs_f64() * 1.5) as usize;
        bdp.max(MIN_QUEUE)
    }

    /// Pulls bytes from the socket into the delay line until the socket
    /// has none, the line is full or the buckets are empty. `Some(at)`:
    /// the buckets are empty until `at`. Bounded: every round adds bytes
    /// toward the line's cap or charges the buckets toward empty.
    fn fill(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<Option<Instant>>> {
        loop {
            if self.eof || self.queued >= self.queue_cap() {
                return Poll::Ready(Ok(None));
            }
            if let Some(at) = self.read_ready_at(Instant::now()) {
                return Poll::Ready(Ok(Some(at)));
            }
            let mut read_into = |buf: &mut [u8]| match Pin::new(&mut self.inner).poll_read(cx, buf)
            {
                Poll::Ready(Ok(n)) => {
                    let hello = self.take_hello(&buf[..n]);
                    // A copy of what was read, not the read buffer: the
                    // memory transport hands over one small frame per
                    // read, and thousands of them held for their latency
                    // in 32 KiB buffers took gigabytes.
                    Poll::Ready(Ok((n, buf[hello..n].to_vec())))
                }
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            };
            // The inner stream never reads another shaped end, so the
            // scratch buffer is free; a fresh one if it ever is not.
            let read = SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
                Ok(mut buf) => read_into(&mut buf[..]),
                Err(_) => read_into(&mut vec![0u8; IO_STEP]),
            });
            match read {
                Poll::Ready(Ok((0, _))) => {
                    self.eof = true;
                    return Poll::Ready(Ok(None));
                }
                Poll::Ready(Ok((_, data))) => {
                    if data.is_empty() {
                        continue;
                    }
                    let n = data.len();
                    let now = Instant::now();
                    let peer = self.charge_read(n, now);
                    self.queued += n;
                    self.queue.push_back(Held {
                        due: now + self.latency(peer),
                        data,
                        pos: 0,
                    });
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// Arms `sleep` for `at` and polls it: `true` when it has already fired.
fn sleep_until(
    slot: &mut Option<Pin<Box<tokio::time::Sleep>>>,
    at: Instant,
    cx: &mut Context<'_>,
) -> bool {
    let deadline = tokio::time::Instant::from_std(at);
    let sleep = slot.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
    sleep.as_mut().reset(deadline);
    sleep.as_mut().poll(cx).is_ready()
}

use std::future::Future;

impl AsyncRead for Shaped {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        // A handful of rounds: each either makes progress or arms a waker.
        for _ in 0..8 {
            let blocked_until = match this.fill(cx) {
                Poll::Ready(Ok(at)) => at,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => None,
            };
            let now = Instant::now();
            if let Some(head) = this.queue.front_mut() {
                if head.due <= now {
                    let n = out.len().min(head.data.len() - head.pos);
                    out[..n].copy_from_slice(&head.data[head.pos..head.pos + n]);
                    head.pos += n;
                    this.queued -= n;
                    if head.pos == head.data.len() {
                        this.queue.pop_front();
                    }
                    return Poll::Ready(Ok(n));
                }
            } else if this.eof {
                return Poll::Ready(Ok(0));
            }
            let head_due = this.queue.front().map(|h| h.due);
            let wake = match (head_due, blocked_until) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            match wake {
                // Fired already: go round again.
                Some(at) if sleep_until(&mut this.read_sleep, at, cx) => continue,
                // Woken by the timer, or by the socket (fill's Pending).
                _ => return Poll::Pending,
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl AsyncWrite for Shaped {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        // A memory dialer's index goes first, so the listener knows it.
        while let Some(sent) = this.hello_sent.filter(|&k| k < 4) {
            let hello = (this.index as u32).to_le_bytes();
            match Pin::new(&mut this.inner).poll_write(cx, &hello[sent..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Ok(0)),
                Poll::Ready(Ok(k)) => this.hello_sent = Some(sent + k),
                other => return other,
            }
        }
        for _ in 0..8 {
            match this.write_ready_at(Instant::now()) {
                Some(at) if sleep_until(&mut this.write_sleep, at, cx) => continue,
                Some(_) => return Poll::Pending,
                None => break,
            }
        }
        let n = buf.len().min(IO_STEP);
        match Pin::new(&mut this.inner).poll_write(cx, &buf[..n]) {
            Poll::Ready(Ok(k)) => {
                this.charge_write(k, Instant::now());
                Poll::Ready(Ok(k))
            }
            other => other,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_close(cx)
    }
}

#[cfg(test)]
mod tests;
