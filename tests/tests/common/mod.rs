//! The harness of the end-to-end suite: the shipped binaries as separate
//! processes on loopback, on ephemeral ports, in a temporary directory.
//!
//! - [`Lab::new`] runs `meshota keys init` and `meshota bundle create` of a
//!   seeded pseudo-random payload;
//! - [`Lab::start_broker`] starts `meshota-broker --auto-accept` and reads
//!   its addresses from the `meshota-broker listening …` line;
//! - [`Lab::add_node`] starts a `meshota-node` with the `dir` backend, its
//!   own data and slot directories, and libp2p on 127.0.0.1 port 0;
//! - [`Lab::meshota`] runs the operator CLI against the broker.
//!
//! Every process is a [`Proc`], killed (SIGKILL) and reaped on drop, so a
//! failing test leaves nothing running; every wait is bounded.
//!
//! The binaries are found next to the test executable (`target/<profile>`),
//! or in `MESHOTA_BIN_DIR`. `cargo test --workspace` builds them; alone,
//! run `cargo build -p meshota-broker -p meshota-node --bins` first.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    missing_docs,
    dead_code
)]

mod netns;
// Only the partition test uses it; `common` is compiled into every test.
#[allow(unused_imports)]
pub use netns::NetNs;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Upper bound of any single wait for the system to get somewhere. Generous:
/// CI machines are slow and shared; only a hang should hit it.
pub const WAIT: Duration = Duration::from_secs(90);
/// Upper bound of one CLI invocation.
pub const CLI_WAIT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(100);

/// The directory holding `meshota`, `meshota-broker` and `meshota-node`.
pub fn bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("MESHOTA_BIN_DIR") {
        return PathBuf::from(d);
    }
    // target/<profile>/deps/<test-exe>
    let exe = std::env::current_exe().unwrap();
    exe.parent().and_then(Path::parent).unwrap().to_path_buf()
}

/// The path of a shipped binary, or a panic that says how to build it.
pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.is_file(),
        "{} is missing: run `cargo build -p meshota-broker -p meshota-node --bins` \
         (or set MESHOTA_BIN_DIR)",
        p.display()
    );
    p
}

/// Polls `f` until it returns `Some`, for at most `limit`.
pub fn eventually<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < limit, "timed out after {limit:?}: {what}");
        std::thread::sleep(POLL);
    }
}

/// A finished command.
#[derive(Debug)]
pub struct Output {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}\nstderr: {}", self.stdout, self.stderr))
    }
    /// Panics with both streams unless the command succeeded.
    pub fn success(self) -> Self {
        assert!(
            self.ok,
            "command failed\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self
    }
}

/// Runs `cmd` to completion within `limit` (killed and a panic after).
pub fn run(mut cmd: Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    // Drain both pipes on threads so a chatty child cannot block on a full pipe.
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        ok: status.success(),
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

/// A running process, killed with SIGKILL and reaped when dropped. Its
/// stdout and stderr go to `<log>.out` and `<log>.err`.
pub struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
    /// Where this run's output starts (a restart appends to the same log).
    out_from: usize,
}

impl Proc {
    pub fn spawn(name: &str, mut cmd: Command, log: PathBuf) -> Self {
        let file = |ext: &str| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log.with_extension(ext))
                .unwrap()
        };
        let out_from = std::fs::metadata(log.with_extension("out")).map_or(0, |m| m.len() as usize);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file("out"))
            .stderr(file("err"))
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {name}: {e}"));
        Self {
            name: name.to_string(),
            child,
            log,
            out_from,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, then reap.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// This run's stdout so far.
    pub fn stdout(&self) -> String {
        let all = std::fs::read(self.log.with_extension("out")).unwrap_or_default();
        String::from_utf8_lossy(all.get(self.out_from..).unwrap_or_default()).into_owned()
    }

    /// The last lines of stderr, for failure messages.
    pub fn stderr_tail(&self, lines: usize) -> String {
        let all = std::fs::read_to_string(self.log.with_extension("err")).unwrap_or_default();
        let v: Vec<&str> = all.lines().collect();
        v[v.len().saturating_sub(lines)..].join("\n")
    }

    /// Waits for a stdout line starting with `prefix`.
    pub fn wait_line(&mut self, prefix: &str, limit: Duration) -> String {
        let start = Instant::now();
        loop {
            let text = self.stdout();
            if let Some(l) = text.lines().find(|l| l.starts_with(prefix)) {
                return l.to_string();
            }
            if !self.running() || start.elapsed() > limit {
                panic!(
                    "{} printed no {prefix:?} line within {limit:?}\n{}",
                    self.name,
                    self.stderr_tail(40)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// SplitMix64: payloads and kill points, reproducible from a seed.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// `len` seeded pseudo-random bytes: incompressible, so every chunk is
/// real transfer work.
pub fn payload(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng(seed);
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        out.extend_from_slice(&rng.next().to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The broker deployment as a process.
pub struct Broker {
    pub proc: Proc,
    pub http: SocketAddr,
    pub mqtt: SocketAddr,
    pub data: PathBuf,
    pub token: String,
}

impl Broker {
    pub fn url(&self) -> String {
        format!("http://{}", self.http)
    }
}

/// One device: its files, and its process while it runs.
pub struct Node {
    pub id: String,
    pub config: PathBuf,
    pub data: PathBuf,
    pub slots: PathBuf,
    pub proc: Option<Proc>,
    /// The network namespace it runs in, if not this one.
    pub netns: Option<String>,
}

impl Node {
    /// The active slot's payload, if any (`<slots>/current/payload`, see
    /// `node/src/install/dir.rs`).
    pub fn active_payload(&self) -> Option<Vec<u8>> {
        std::fs::read(self.slots.join("current").join("payload")).ok()
    }

    /// The active slot's release record (`<release id>\n<version>\n`).
    pub fn active_release(&self) -> Option<String> {
        std::fs::read_to_string(self.slots.join("current").join("release")).ok()
    }

    /// Where its output goes (`.out`, `.err`), appended across restarts.
    pub fn log(&self) -> PathBuf {
        self.data.parent().unwrap().join("node-log")
    }

    /// Every chunk id it logged as fetched and stored, across all its runs,
    /// in order (see `meshota::chunk_stored` in `node/src/p2p/fetch`).
    pub fn chunks_stored(&self) -> Vec<String> {
        let text = std::fs::read_to_string(self.log().with_extension("out")).unwrap_or_default();
        text.lines()
            .filter(|l| l.contains("meshota::chunk_stored"))
            .filter_map(|l| {
                l.split_whitespace()
                    .find_map(|w| strip_ansi(w).strip_prefix("chunk=").map(String::from))
            })
            .collect()
    }

    /// `meshota-node status --json`: the persisted state, without the broker.
    pub fn status(&self) -> Value {
        let mut cmd = Command::new(bin("meshota-node"));
        cmd.arg("status")
            .arg("--config")
            .arg(&self.config)
            .arg("--json");
        run(cmd, CLI_WAIT).success().json()
    }
}

/// Keys, a bundle, a broker and nodes in one temporary directory.
pub struct Lab {
    pub dir: tempfile::TempDir,
    pub keys: PathBuf,
    pub payload: Vec<u8>,
    pub bundle: PathBuf,
    pub broker: Option<Broker>,
    pub nodes: Vec<Node>,
    /// `[p2p] max_download_bps` of nodes configured from now on (0: no cap).
    pub download_bps: u64,
    /// A `/bin/sh -c` health check for nodes configured from now on (its
    /// `$1` is the active slot); none by default.
    pub health_script: Option<String>,
    /// The address the broker listens on (MQTT, HTTP, libp2p).
    pub listen_ip: String,
    /// The network namespace nodes configured from now on run in.
    pub node_netns: Option<String>,
    /// The address nodes configured from now on listen on for libp2p.
    pub node_listen: String,
}

/// Device class every lab bundle and node uses.
pub const COMPATIBLE: &str = "e2e-board";
/// Fleet name (the broker's default).
pub const FLEET: &str = "default";

impl Lab {
    /// Keys and a signed bundle of `len` seeded random bytes, version 1.0.0.
    pub fn new(len: usize, seed: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys");
        let lab = Self {
            keys,
            payload: payload(len, seed),
            bundle: dir.path().join("release-1.0.0.mota"),
            dir,
            broker: None,
            nodes: Vec::new(),
            download_bps: 0,
            health_script: None,
            listen_ip: "127.0.0.1".into(),
            node_netns: None,
            node_listen: "127.0.0.1".into(),
        };
        lab.cli(&["keys", "init", "--dir", &lab.keys.display().to_string()])
            .success();
        let input = lab.path("payload.bin");
        std::fs::write(&input, &lab.payload).unwrap();
        let bundle = lab.bundle.clone();
        lab.create_bundle(&input, "1.0.0", 1, &bundle);
        lab
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Runs `meshota ARGS` (no server settings).
    pub fn cli(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(bin("meshota"));
        cmd.args(args)
            .env_remove("MESHOTA_SERVER")
            .env_remove("MESHOTA_TOKEN")
            .env_remove("MESHOTA_CA_CERT");
        run(cmd, CLI_WAIT)
    }

    /// `meshota bundle create` of `payload` as `version`; devices refuse a
    /// release whose `sequence` is not above the last they accepted.
    pub fn create_bundle(&self, payload: &Path, version: &str, sequence: u64, out: &Path) {
        let (p, k, o, seq) = (
            payload.display().to_string(),
            self.keys.display().to_string(),
            out.display().to_string(),
            sequence.to_string(),
        );
        self.cli(&[
            "bundle",
            "create",
            &p,
            "--name",
            "e2e-image",
            "--version",
            version,
            "--compatible",
            COMPATIBLE,
            "--keys",
            &k,
            "--out",
            &o,
            "--chunk-avg-kib",
            "16",
            "--threads",
            "1",
            "--sequence",
            &seq,
        ])
        .success();
    }

    pub fn broker(&self) -> &Broker {
        self.broker.as_ref().expect("the broker is running")
    }

    /// Runs `meshota ARGS` against the broker (server and token by env).
    pub fn meshota(&self, args: &[&str]) -> Output {
        let b = self.broker();
        let mut cmd = Command::new(bin("meshota"));
        cmd.args(args)
            .env("MESHOTA_SERVER", b.url())
            .env("MESHOTA_TOKEN", &b.token)
            .env_remove("MESHOTA_CA_CERT");
        run(cmd, CLI_WAIT)
    }

    /// `meshota release publish` of the lab's bundle; returns the release id.
    pub fn publish(&self) -> String {
        self.publish_file(&self.bundle)
    }

    /// `meshota release publish BUNDLE`; returns the release id.
    pub fn publish_file(&self, bundle: &Path) -> String {
        let out = self
            .meshota(&[
                "release",
                "publish",
                &bundle.display().to_string(),
                "--json",
            ])
            .success()
            .json();
        out["id"].as_str().unwrap().to_string()
    }

    /// `meshota rollout create --waves 20,100 --soak 0s`; returns its id.
    pub fn create_rollout(&self, release: &str) -> String {
        self.create_rollout_in(release, "20,100")
    }

    /// `meshota rollout create --waves WAVES --soak 0s`; returns its id.
    pub fn create_rollout_in(&self, release: &str, waves: &str) -> String {
        self.create_rollout_with(release, &["--waves", waves, "--soak", "0s"])
    }

    /// `meshota rollout create --release RELEASE ARGS…`; returns its id.
    pub fn create_rollout_with(&self, release: &str, args: &[&str]) -> String {
        let mut all = vec!["rollout", "create", "--release", release];
        all.extend_from_slice(args);
        let out = self.meshota(&all).success();
        let id = out.stdout.trim().to_string();
        assert!(
            !id.is_empty() && !id.contains(char::is_whitespace),
            "{id:?}"
        );
        id
    }

    /// Starts `meshota-broker` on ephemeral ports, or on the ports of the
    /// previous run after [`Lab::kill_broker`] (devices keep their
    /// configured broker address).
    pub fn start_broker(&mut self) {
        assert!(self.broker.is_none(), "the broker already runs");
        let data = self.path("broker");
        let ports = self.path("broker.ports");
        let (mqtt, http, p2p) = match std::fs::read_to_string(&ports) {
            Ok(s) => {
                let v: Vec<&str> = s.split_whitespace().collect();
                (v[0].to_string(), v[1].to_string(), v[2].to_string())
            }
            Err(_) => (
                format!("{}:0", self.listen_ip),
                format!("{}:0", self.listen_ip),
                format!("/ip4/{}/tcp/0", self.listen_ip),
            ),
        };
        let mut cmd = Command::new(bin("meshota-broker"));
        cmd.arg("--data-dir")
            .arg(&data)
            .arg("--trust")
            .arg(self.keys.join("trust.cbor"))
            .arg("--rollout-key")
            .arg(self.keys.join("rollout.key"))
            .args(["--mqtt-listen", &mqtt, "--http-listen", &http])
            .args(["--p2p-listen", &p2p])
            .arg("--auto-accept")
            .env("RUST_LOG", "info");
        let mut proc = Proc::spawn("meshota-broker", cmd, self.path("broker-log"));
        let line = proc.wait_line("meshota-broker listening ", WAIT);
        let field = |name: &str| -> String {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{name}=")))
                .unwrap_or_else(|| panic!("no {name}= in {line:?}"))
                .to_string()
        };
        let (mqtt, http): (SocketAddr, SocketAddr) = (
            field("mqtt").parse().unwrap(),
            field("http").parse().unwrap(),
        );
        if !ports.exists() {
            let p2p = self.seeder_addr(&proc);
            std::fs::write(&ports, format!("{mqtt} {http} {p2p}")).unwrap();
        }
        let token = std::fs::read_to_string(data.join("operator-token"))
            .unwrap()
            .trim()
            .to_string();
        self.broker = Some(Broker {
            proc,
            http,
            mqtt,
            data,
            token,
        });
    }

    /// The seeder's first TCP multiaddr on `listen_ip`, from the broker's log
    /// (port 0 on the first start; the same port is asked for on restart).
    fn seeder_addr(&self, proc: &Proc) -> String {
        let found = eventually("the seeder's listen address in the log", WAIT, || {
            let err = std::fs::read_to_string(self.path("broker-log.err")).unwrap_or_default();
            let out = proc.stdout();
            out.lines()
                .chain(err.lines())
                .flat_map(|l| l.split(|c: char| c.is_whitespace() || "[],\"".contains(c)))
                .find(|w| {
                    w.starts_with(&format!("/ip4/{}/tcp/", self.listen_ip))
                        && !w.ends_with("/tcp/0")
                })
                .map(|w| w.split("/p2p/").next().unwrap_or(w).to_string())
        });
        found
    }

    /// SIGKILLs the broker; [`Lab::start_broker`] brings it back on the
    /// same data directory and ports.
    pub fn kill_broker(&mut self) {
        if let Some(b) = self.broker.take() {
            b.proc.kill9();
        }
    }

    /// Writes the config of node `id` (sites alternate between two).
    pub fn node_config(&self, id: &str, site: &str) -> Node {
        let root = self.path(id);
        let (data, slots) = (root.join("data"), root.join("slots"));
        std::fs::create_dir_all(&slots).unwrap();
        let config = root.join("node.toml");
        let text = format!(
            r#"data_dir = "{data}"
[device]
id = "{id}"
fleet = "{FLEET}"
site = "{site}"
compatible = "{COMPATIBLE}"
[mqtt]
url = "mqtt://{mqtt}"
[trust]
root = "{trust}"
[p2p]
listen = ["/ip4/{listen}/tcp/0"]
mdns = false
max_download_bps = {bps}
[install]
backend = "dir"
[install.dir]
root = "{slots}"
# Retries in seconds on a loaded CI machine (production: 10 s doubling).
[fetch]
retry_min_secs = 1
retry_max_secs = 4
"#,
            data = data.display(),
            mqtt = self.broker().mqtt,
            trust = self.keys.join("trust.cbor").display(),
            slots = slots.display(),
            bps = self.download_bps,
            listen = self.node_listen,
        );
        let health = self.health_script.as_ref().map_or(String::new(), |script| {
            format!(
                "[health]\ncommand = \"/bin/sh\"\nargs = [\"-c\", {script:?}, \"sh\"]\ntimeout_secs = 30\n"
            )
        });
        std::fs::write(&config, text + &health).unwrap();
        Node {
            id: id.to_string(),
            config,
            data,
            slots,
            proc: None,
            netns: self.node_netns.clone(),
        }
    }

    /// Starts (or restarts) node `i`'s process.
    pub fn start_node(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        assert!(n.proc.is_none(), "{} already runs", n.id);
        let mut cmd = match &n.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(bin("meshota-node"));
                c
            }
            None => Command::new(bin("meshota-node")),
        };
        cmd.arg("--config")
            .arg(&n.config)
            // `meshota::chunk_stored` logs each chunk fetched and stored.
            .env("RUST_LOG", "info,libp2p=warn,meshota::chunk_stored=debug");
        let log = n.log();
        n.proc = Some(Proc::spawn(&n.id, cmd, log));
    }

    /// Configures and starts a node; returns its index.
    pub fn add_node(&mut self, id: &str) -> usize {
        let site = if self.nodes.len().is_multiple_of(2) {
            "site-a"
        } else {
            "site-b"
        };
        let n = self.node_config(id, site);
        self.nodes.push(n);
        let i = self.nodes.len() - 1;
        self.start_node(i);
        i
    }

    /// SIGKILLs node `i`.
    pub fn kill_node(&mut self, i: usize) {
        if let Some(p) = self.nodes[i].proc.take() {
            p.kill9();
        }
    }

    /// `meshota devices list --json`.
    pub fn devices(&self) -> Vec<Value> {
        match self
            .meshota(&["devices", "list", "--json"])
            .success()
            .json()
        {
            Value::Array(v) => v,
            other => panic!("devices list is not an array: {other}"),
        }
    }

    /// One device from `devices list --json`.
    pub fn device(&self, id: &str) -> Option<Value> {
        self.devices().into_iter().find(|d| d["id"] == id)
    }

    /// `GET /v1/devices/{id}`: the record and its event history.
    pub fn device_detail(&self, id: &str) -> Value {
        let b = self.broker();
        let (code, body) = http_get(b.http, &format!("/v1/devices/{id}"), Some(&b.token));
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    /// Waits until every listed device is online and reports a state.
    pub fn wait_online(&self, ids: &[&str]) {
        eventually("every device online with a status", WAIT, || {
            let devs = self.devices();
            ids.iter()
                .all(|id| {
                    devs.iter()
                        .any(|d| d["id"] == *id && d["online"] == true && !d["state"].is_null())
                })
                .then_some(())
        });
    }
}

/// `w` without ANSI colour sequences (tracing colours its fields).
pub fn strip_ansi(w: &str) -> String {
    let mut out = String::new();
    let mut chars = w.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // Skip to the end of the CSI sequence.
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A minimal HTTP/1.1 GET on loopback: status and body.
pub fn http_get(addr: SocketAddr, path: &str, token: Option<&str>) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(CLI_WAIT)).unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let code = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (code, body.to_string())
}
