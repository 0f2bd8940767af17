//! `mooring-agent`: one broker node. `standalone` runs the engine alone (development, tests,
//! benchmarks); `run` serves a node managed by the control plane.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use mooring_broker_agent::engine::{
    hash_password, Engine, EngineConfig, Limits, TlsFiles, UserDef,
};

#[derive(Debug, Parser)]
#[command(name = "mooring-agent", version, about = "A Mooring broker node")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the engine without a control plane.
    Standalone(StandaloneArgs),
    /// Serve one broker node for a control plane (`mooring serve` starts these).
    Run(mooring_broker_agent::agent::RunArgs),
}

#[derive(Debug, clap::Args)]
struct StandaloneArgs {
    /// Data directory: definitions, queue logs, ports.json.
    #[arg(long, env = "MOORING_DATA_DIR")]
    data_dir: PathBuf,
    /// AMQP listener (port 0 picks a free port; see ports.json).
    #[arg(long, env = "MOORING_AMQP_LISTEN", default_value = "127.0.0.1:5673")]
    amqp_listen: SocketAddr,
    /// Admin HTTP listener (healthz, metrics, listings).
    #[arg(long, env = "MOORING_ADMIN_LISTEN", default_value = "127.0.0.1:15673")]
    admin_listen: SocketAddr,
    /// A user NAME:PASSWORD with full permissions on vhost "/"; repeatable. Without any,
    /// guest:guest may log in from loopback only.
    #[arg(long = "user", env = "MOORING_USERS", value_delimiter = ',')]
    users: Vec<String>,
    /// amqps listener; needs --tls-cert and --tls-key.
    #[arg(long, env = "MOORING_AMQPS_LISTEN")]
    amqps_listen: Option<SocketAddr>,
    /// PEM certificate chain for amqps.
    #[arg(long, env = "MOORING_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for amqps.
    #[arg(long, env = "MOORING_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// Heartbeat proposed to clients, in seconds (0 disables).
    #[arg(long, env = "MOORING_HEARTBEAT_SECS", default_value_t = 60)]
    heartbeat_secs: u64,
    /// Largest frame in bytes.
    #[arg(long, env = "MOORING_FRAME_MAX", default_value_t = 131_072)]
    frame_max: u32,
    /// Highest channel number per connection.
    #[arg(long, env = "MOORING_CHANNEL_MAX", default_value_t = 2047)]
    channel_max: u16,
    /// Most client connections at once (unlimited if absent).
    #[arg(long, env = "MOORING_MAX_CONNECTIONS")]
    max_connections: Option<u32>,
    /// Most queues (unlimited if absent).
    #[arg(long, env = "MOORING_MAX_QUEUES")]
    max_queues: Option<u32>,
    /// Largest message body in bytes.
    #[arg(long, env = "MOORING_MAX_MESSAGE_BYTES", default_value_t = 128 * 1024 * 1024)]
    max_message_bytes: u64,
    /// Publishers are blocked when queued message bodies exceed this many bytes.
    #[arg(long, env = "MOORING_MEMORY_HIGH_WATERMARK_BYTES", default_value_t = 1024 * 1024 * 1024)]
    memory_high_watermark_bytes: u64,
    /// Publishers are blocked when the data directory's disk has less free space (bytes).
    #[arg(long, env = "MOORING_DISK_FREE_LIMIT_BYTES", default_value_t = 50 * 1024 * 1024)]
    disk_free_limit_bytes: u64,
    /// Message bodies held in memory beyond this many bytes are paged out to disk (queue logs)
    /// and read back on delivery; bounds memory for large backlogs.
    #[arg(long, env = "MOORING_BODY_MEMORY_BUDGET_BYTES", default_value_t = 64 * 1024 * 1024)]
    body_memory_budget_bytes: u64,
    /// Period of the background fsync of classic durable queues, in milliseconds.
    #[arg(long, env = "MOORING_SYNC_INTERVAL_MS", default_value_t = 200)]
    sync_interval_ms: u64,
}

fn parse_users(specs: &[String]) -> anyhow::Result<(Vec<UserDef>, Vec<String>)> {
    if specs.is_empty() {
        let guest = UserDef {
            name: "guest".into(),
            password_hash: hash_password("guest"),
            tags: vec!["administrator".into()],
            vhosts: vec!["/".into()],
        };
        return Ok((vec![guest], vec!["guest".into()]));
    }
    let users = specs
        .iter()
        .map(|s| {
            let (name, password) = s
                .split_once(':')
                .with_context(|| format!("--user {s:?}: expected NAME:PASSWORD"))?;
            anyhow::ensure!(!name.is_empty(), "--user {s:?}: empty name");
            Ok(UserDef {
                name: name.into(),
                password_hash: hash_password(password),
                tags: vec!["administrator".into()],
                vhosts: vec!["/".into()],
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok((users, Vec::new()))
}

async fn standalone(a: StandaloneArgs) -> anyhow::Result<()> {
    let (users, loopback_users) = parse_users(&a.users)?;
    let mut config = EngineConfig::new(&a.data_dir, a.amqp_listen);
    config.admin_listen = Some(a.admin_listen);
    config.amqps_listen = a.amqps_listen;
    config.tls = match (a.tls_cert, a.tls_key) {
        (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
        (None, None) => None,
        _ => anyhow::bail!("--tls-cert and --tls-key go together"),
    };
    config.initial_users = users;
    config.force_users = true;
    config.loopback_users = loopback_users;
    config.heartbeat = Duration::from_secs(a.heartbeat_secs);
    config.limits = Limits {
        max_connections: a.max_connections,
        max_channels_per_connection: a.channel_max,
        max_queues: a.max_queues,
        max_message_bytes: a.max_message_bytes,
        frame_max: a.frame_max,
    };
    config.memory_high_watermark_bytes = a.memory_high_watermark_bytes;
    config.disk_free_limit_bytes = a.disk_free_limit_bytes;
    config.sync_interval = Duration::from_millis(a.sync_interval_ms);
    config.body_memory_budget_bytes = a.body_memory_budget_bytes;
    let engine = Engine::start(config).await?;
    shutdown_signal().await?;
    tracing::info!("shutting down");
    engine.shutdown().await;
    Ok(())
}

async fn shutdown_signal() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("waiting for SIGINT")?,
        _ = term.recv() => {}
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    // `--version` prints the version the agent reports to the control plane (which asks the
    // binary it would start, to find nodes running an older agent).
    let version: &'static str = mooring_broker_agent::agent::reported_version().leak();
    let matches = <Cli as clap::CommandFactory>::command()
        .version(version)
        .get_matches();
    let cli =
        <Cli as clap::FromArgMatches>::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    match cli.command {
        Command::Standalone(a) => standalone(a).await,
        Command::Run(a) => mooring_broker_agent::agent::run(a).await,
    }
}
