//! `meshota`: the operator CLI. Parses arguments and calls into
//! `meshota_broker`; all logic lives in the library.
//!
//! Exit codes: 0 success, 1 the command failed (the message says why and
//! usually how to fix it), 2 bad usage (from clap), 3 a bundle failed
//! verification.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use meshota_broker::bundle_tool::{check, create, inspect, BundleToolError};
use meshota_broker::cli::keys::{self, KeysError, RoleSpec};
use meshota_broker::cli::rotate;
use meshota_broker::cli::{unix_now, Hint};
use meshota_broker::client::ClientError;
use meshota_broker::operator::{DevicesCmd, FleetCmd, ReleaseCmd, RolloutCmd};
use meshota_protocol::{InstallKind, Role};

/// meshota: over-the-air updates for embedded Linux fleets.
#[derive(Parser)]
#[command(name = "meshota", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// New command groups (release, devices, rollout …) are added here as one
// variant each, with their own `Subcommand` enum and `run`.
#[derive(Subcommand)]
enum Command {
    /// Create and manage signing keys and the trust root.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Build, inspect, verify and extract signed bundle files.
    #[command(subcommand)]
    Bundle(BundleCommand),
    /// Publish and list releases on a broker deployment.
    #[command(subcommand)]
    Release(ReleaseCmd),
    /// List devices and accept pending ones.
    #[command(subcommand)]
    Devices(DevicesCmd),
    /// Fleet summary.
    #[command(subcommand)]
    Fleet(FleetCmd),
    /// Staged rollouts: create, watch, pause, resume, abort, roll back.
    #[command(subcommand)]
    Rollout(RolloutCmd),
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Generate root, release and rollout keys and a self-signed trust.cbor.
    ///
    /// Writes DIR/root.key, DIR/release.key, DIR/rollout.key (mode 0600;
    /// extra keys are root-2.key, root-3.key …) and DIR/trust.cbor, the
    /// trust root devices ship with. Keep the root and release keys
    /// offline.
    Init(KeysInit),
    /// Make the next trust root: replace some roles' keys, or only renew
    /// the expiry, and extend the chain devices rotate along.
    ///
    /// The new DIR/trust.cbor is signed by the current root keys (and the
    /// new ones when --replace root), and DIR/trust-chain.cbor lists every
    /// root since the first. Give the chain to meshota-broker
    /// (--trust-chain) with the new trust.cbor (--trust) and, after
    /// --replace rollout, the new --rollout-key: devices verify the chain
    /// from the root they shipped with and switch over the air. Replaced
    /// keys are kept as NAME.vN; destroy them once `meshota devices list`
    /// shows the new trust version everywhere.
    Rotate(KeysRotate),
}

#[derive(Args)]
struct KeysRotate {
    /// The key directory `keys init` made (it needs the current root keys).
    #[arg(long)]
    dir: PathBuf,
    /// Roles whose keys are replaced: root, release, rollout (repeat or
    /// comma-separate). Without it only the version and expiry change.
    #[arg(long, value_delimiter = ',')]
    replace: Vec<String>,
    /// Days until the new trust root expires.
    #[arg(long, default_value_t = 365)]
    expires_days: u64,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct KeysInit {
    /// Directory to write the keys and trust.cbor into (created if missing).
    #[arg(long)]
    dir: PathBuf,
    /// Days until the trust root expires.
    #[arg(long, default_value_t = 365)]
    expires_days: u64,
    /// Number of root keys.
    #[arg(long, default_value_t = 1)]
    root_keys: u32,
    /// Root signatures needed to accept a trust root.
    #[arg(long, default_value_t = 1)]
    root_threshold: u32,
    /// Number of release keys.
    #[arg(long, default_value_t = 1)]
    release_keys: u32,
    /// Release signatures needed to accept a release.
    #[arg(long, default_value_t = 1)]
    release_threshold: u32,
    /// Number of rollout keys.
    #[arg(long, default_value_t = 1)]
    rollout_keys: u32,
    /// Rollout signatures needed to accept a gate or command.
    #[arg(long, default_value_t = 1)]
    rollout_threshold: u32,
    /// Replace existing keys in DIR (the old keys are lost).
    #[arg(long)]
    force: bool,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum BundleCommand {
    /// Build a signed bundle from a payload file.
    ///
    /// Chunks the payload (FastCDC + BLAKE3), compresses chunks with zstd
    /// on every core, and signs the release with every release*.key in
    /// --keys. Memory use does not grow with the payload size.
    Create(BundleCreate),
    /// Show what a bundle contains (header only; signatures not checked).
    Inspect(BundleInspect),
    /// Check a bundle's signatures, manifest and every chunk.
    ///
    /// Exits 0 when everything checks out, 3 when the bundle is bad, and
    /// 1 when it could not be checked (e.g. unreadable trust file).
    Verify(BundleVerify),
    /// Write a bundle's payload to a file, verifying every chunk.
    ///
    /// The output appears only once everything verified.
    Extract(BundleExtract),
}

#[derive(Args)]
struct BundleCreate {
    /// The payload file (image, archive or file to install).
    payload: PathBuf,
    /// Product or image name.
    #[arg(long)]
    name: String,
    /// Semantic version of the payload, e.g. 1.4.0.
    #[arg(long)]
    version: String,
    /// Device class that may install it, e.g. rpi4.
    #[arg(long)]
    compatible: String,
    /// Key directory from `meshota keys init` (uses every release*.key).
    #[arg(long)]
    keys: PathBuf,
    /// Bundle file to write.
    #[arg(long)]
    out: PathBuf,
    /// Release channel.
    #[arg(long, default_value = "stable")]
    channel: String,
    /// How devices install the payload: image, archive or file.
    #[arg(long, default_value = "image")]
    kind: InstallKind,
    /// Release sequence number [default: current unix time in seconds].
    #[arg(long)]
    sequence: Option<u64>,
    /// Days until devices refuse the release.
    #[arg(long, default_value_t = 365)]
    expires_days: u64,
    /// Metadata entry key=value (repeatable).
    #[arg(long = "meta", value_name = "KEY=VALUE")]
    meta: Vec<String>,
    /// Compression threads [default: all cores].
    #[arg(long)]
    threads: Option<usize>,
    /// Average chunk size in KiB [default: 64]. Smaller chunks make deltas
    /// cheaper and manifests larger; 32 suits root filesystem images (see
    /// BENCHMARKS.md).
    #[arg(long, value_name = "KIB")]
    chunk_avg_kib: Option<u32>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct BundleInspect {
    /// The bundle file.
    file: PathBuf,
    /// Print JSON (fields: name, version, compatible, channel, release_id,
    /// manifest_id, payload_size, sequence, expires_at, kind, chunker,
    /// chunks …).
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct BundleVerify {
    /// The bundle file.
    file: PathBuf,
    /// Trust root to check signatures against (trust.cbor from `keys init`).
    #[arg(long)]
    trust: PathBuf,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct BundleExtract {
    /// The bundle file.
    file: PathBuf,
    /// Where to write the payload.
    #[arg(long)]
    out: PathBuf,
    /// Also check signatures against this trust root (recommended).
    #[arg(long)]
    trust: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", describe(&e));
            let hint = e
                .downcast_ref::<BundleToolError>()
                .and_then(Hint::hint)
                .or_else(|| e.downcast_ref::<KeysError>().and_then(Hint::hint))
                .or_else(|| e.downcast_ref::<ClientError>().and_then(Hint::hint));
            if let Some(hint) = hint {
                eprintln!("hint: {hint}");
            }
            let bad_bundle = e
                .downcast_ref::<BundleToolError>()
                .is_some_and(check::is_bad_bundle);
            ExitCode::from(if bad_bundle { 3 } else { 1 })
        }
    }
}

/// The error and its causes on one line. Many library errors already
/// quote their cause in their own message, so a cause is added only when
/// it says something new.
fn describe(e: &anyhow::Error) -> String {
    let mut msg = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !msg.contains(&cause) {
            msg.push_str(": ");
            msg.push_str(&cause);
        }
    }
    msg
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Keys(KeysCommand::Init(a)) => keys_init(a),
        Command::Keys(KeysCommand::Rotate(a)) => keys_rotate(a),
        Command::Bundle(BundleCommand::Create(a)) => bundle_create(a),
        Command::Bundle(BundleCommand::Inspect(a)) => bundle_inspect(a),
        Command::Bundle(BundleCommand::Verify(a)) => bundle_verify(a),
        Command::Bundle(BundleCommand::Extract(a)) => bundle_extract(a),
        Command::Release(c) => {
            print!("{}", c.run()?);
            Ok(())
        }
        Command::Devices(c) => {
            print!("{}", c.run()?);
            Ok(())
        }
        Command::Fleet(c) => {
            print!("{}", c.run()?);
            Ok(())
        }
        Command::Rollout(c) => {
            print!("{}", c.run()?);
            Ok(())
        }
    }
}

fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!(
        "{}",
        serde_json::to_string_pretty(value).context("encoding JSON output")?
    );
    Ok(())
}

/// A progress bar on stderr when it is a terminal, else a hidden one, so
/// logs and pipes never see control characters.
fn progress(what: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(0);
    if let Ok(style) = ProgressStyle::with_template(
        "{msg} [{bar:30}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} eta {eta}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_string());
    bar
}

fn keys_init(a: KeysInit) -> anyhow::Result<()> {
    let spec = |keys, threshold| RoleSpec { keys, threshold };
    let report = keys::init(&keys::InitOptions {
        dir: a.dir,
        root: spec(a.root_keys, a.root_threshold),
        release: spec(a.release_keys, a.release_threshold),
        rollout: spec(a.rollout_keys, a.rollout_threshold),
        expires_days: a.expires_days,
        force: a.force,
        now: unix_now(),
    })?;
    if a.json {
        return print_json(&report);
    }
    for k in &report.keys {
        println!("{:<8} {}  {}", k.role, k.id, k.path.display());
    }
    println!("trust    {}", report.trust_file.display());
    Ok(())
}

fn keys_rotate(a: KeysRotate) -> anyhow::Result<()> {
    let replace = a
        .replace
        .iter()
        .map(|r| match r.trim() {
            "root" => Ok(Role::Root),
            "release" => Ok(Role::Release),
            "rollout" => Ok(Role::Rollout),
            other => Err(anyhow::anyhow!(
                "--replace {other:?}: expected root, release or rollout"
            )),
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let report = rotate::rotate(&rotate::RotateOptions {
        dir: a.dir,
        replace,
        expires_days: a.expires_days,
        now: unix_now(),
    })?;
    if a.json {
        return print_json(&report);
    }
    println!(
        "trust root v{} -> v{} (expires at {})",
        report.from_version, report.to_version, report.expires_at
    );
    for k in &report.keys {
        println!("{:<8} {}  {}", k.role, k.id, k.path.display());
    }
    for p in &report.retired {
        println!(
            "retired  {}  (destroy once every device reports the new trust version)",
            p.display()
        );
    }
    println!("trust    {}", report.trust_file.display());
    println!(
        "chain    {}  ({} roots; give it to meshota-broker --trust-chain)",
        report.chain_file.display(),
        report.chain_len
    );
    Ok(())
}

fn bundle_create(a: BundleCreate) -> anyhow::Result<()> {
    let opts = create::CreateOptions {
        payload: a.payload,
        out: a.out,
        keys_dir: a.keys,
        name: a.name,
        version: a.version,
        compatible: a.compatible,
        channel: a.channel,
        kind: a.kind,
        sequence: a.sequence,
        expires_days: a.expires_days,
        meta: a.meta,
        threads: a.threads,
        chunk_avg_kib: a.chunk_avg_kib,
        now: unix_now(),
    };
    let report = create::create(&opts, &progress("building"))?;
    if a.json {
        return print_json(&report);
    }
    println!("bundle   {}", report.path.display());
    println!("release  {}", report.release_id);
    println!("manifest {}", report.manifest_id);
    println!(
        "payload  {} bytes in {} chunks; bundle {} bytes",
        report.payload_size, report.chunks, report.bundle_size
    );
    Ok(())
}

fn bundle_inspect(a: BundleInspect) -> anyhow::Result<()> {
    let summary = inspect::inspect(&a.file)?;
    if a.json {
        return print_json(&summary);
    }
    println!("{}", summary.human());
    Ok(())
}

fn bundle_verify(a: BundleVerify) -> anyhow::Result<()> {
    let now = unix_now();
    let trust = keys::load_trust(&a.trust, now)?;
    let report = check::verify(&a.file, &trust, now, &progress("verifying"))?;
    if a.json {
        return print_json(&report);
    }
    println!(
        "OK {}: release {} verified, {} chunks, {} bytes",
        report.path.display(),
        report.release_id,
        report.chunks,
        report.payload_size
    );
    Ok(())
}

fn bundle_extract(a: BundleExtract) -> anyhow::Result<()> {
    let now = unix_now();
    let trust = a
        .trust
        .as_deref()
        .map(|t| keys::load_trust(t, now))
        .transpose()?;
    if trust.is_none() {
        eprintln!(
            "warning: no --trust given: chunks and payload hash are checked, signatures are not"
        );
    }
    let report = check::extract(
        &a.file,
        &a.out,
        trust.as_ref(),
        now,
        &progress("extracting"),
    )?;
    println!(
        "wrote {} ({} bytes) from release {}",
        a.out.display(),
        report.payload_size,
        report.release_id
    );
    Ok(())
}
