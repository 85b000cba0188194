//! `meshota-node`: the device agent daemon.
//!
//! ```text
//! meshota-node --config /etc/meshota/node.toml            run the agent
//! meshota-node status --config /etc/meshota/node.toml --json
//! ```

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use meshota_node::agent::mqtt;
use meshota_node::config::Config;
use meshota_node::p2p::{load_or_create_identity, Node, P2pConfig, P2pFetcher};
use meshota_node::store::SledStore;

#[derive(Parser)]
#[command(name = "meshota-node", version, about = "meshota device agent")]
struct Cli {
    /// The device configuration (see node/examples/node.toml).
    #[arg(
        long,
        global = true,
        env = "MESHOTA_CONFIG",
        default_value = "/etc/meshota/node.toml"
    )]
    config: PathBuf,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the agent (the default).
    Run,
    /// Print the persisted update state and the real slot state.
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    let cfg =
        Config::load(&cli.config).with_context(|| format!("loading {}", cli.config.display()))?;
    match cli.cmd.unwrap_or(Cmd::Run) {
        Cmd::Status { json } => {
            let st = mqtt::local_status(&cfg)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&st)?);
            } else {
                let text = |v: &serde_json::Value| match v {
                    serde_json::Value::String(s) => s.clone(),
                    serde_json::Value::Null => "-".into(),
                    other => other.to_string(),
                };
                println!(
                    "device {}: {} (installed {}, slot {}, trust root v{})",
                    text(&st["device"]),
                    text(&st["state"]),
                    text(&st["installed_version"]),
                    text(&st["slot"]["active"]),
                    text(&st["trust"]["version"])
                );
            }
            Ok(())
        }
        Cmd::Run => {
            std::fs::create_dir_all(&cfg.data_dir)
                .with_context(|| format!("creating data dir {}", cfg.data_dir.display()))?;
            let store: Arc<SledStore> = Arc::new(
                SledStore::open(cfg.data_dir.join("store")).context("opening the chunk store")?,
            );
            let p2p = P2pConfig::from_device_config(&cfg)?;
            let identity = load_or_create_identity(&cfg.data_dir.join("p2p.key"))
                .map_err(anyhow::Error::msg)?;
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .context("starting the runtime")?;
            let node = rt
                .block_on(async { Node::spawn(p2p, store.clone(), identity) })
                .context("starting the peer-to-peer node")?;
            tracing::info!("peer id {}", node.peer_id());
            let fetcher = P2pFetcher::new(node.clone(), rt.handle().clone(), None);
            rt.block_on(mqtt::run(cfg, store, Box::new(fetcher)))?;
            rt.block_on(node.shutdown());
            Ok(())
        }
    }
}
