//! The command line: one clap struct per command, every flag also read from the
//! environment.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "mooring",
    version,
    about = "A self-hosted Amazon MQ: the control plane"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the public API (and the agent API), and run the reconcilers.
    Serve(ServeConfig),
    /// Apply database migrations and exit.
    Migrate(DatabaseConfig),
    /// Print the OpenAPI document of the public API.
    Openapi,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProviderKind {
    /// Broker nodes are `mooring-agent` processes on this machine.
    Local,
}

#[derive(Debug, Clone, clap::Args)]
pub struct DatabaseConfig {
    /// Where state lives; `postgres://…` for Postgres. Default: a SQLite file in the data directory.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,

    /// Directory for the control plane's own files (SQLite database, local broker nodes).
    #[arg(long, env = "MOORING_DATA_DIR", default_value = "./.mooring")]
    pub data_dir: PathBuf,
}

impl DatabaseConfig {
    /// The database URL, defaulting to SQLite under the data directory.
    pub fn url(&self) -> String {
        self.database_url
            .clone()
            .unwrap_or_else(|| crate::store::Store::sqlite_url_in(&self.data_dir))
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct ServeConfig {
    /// Address of the HTTP API; port 0 picks a free port, written to `<data-dir>/listen`.
    #[arg(long, env = "MOORING_LISTEN", default_value = "127.0.0.1:7878")]
    pub listen: SocketAddr,

    #[command(flatten)]
    pub database: DatabaseConfig,

    /// Where broker nodes run.
    #[arg(long, env = "MOORING_PROVIDER", value_enum, default_value = "local")]
    pub provider: ProviderKind,

    /// The broker node binary for the local provider. Default: `mooring-agent` beside this executable.
    #[arg(long, env = "MOORING_AGENT_BINARY")]
    pub agent_binary: Option<PathBuf>,

    /// Region named in ARNs.
    #[arg(long, env = "MOORING_REGION", default_value = "us-east-1")]
    pub region: String,

    /// Partition named in ARNs.
    #[arg(long, env = "MOORING_PARTITION", default_value = "aws")]
    pub partition: String,

    /// Twelve-digit account id named in ARNs.
    #[arg(long, env = "MOORING_ACCOUNT_ID", default_value = "000000000000")]
    pub account_id: String,

    /// Log format.
    #[arg(long, env = "MOORING_LOG_FORMAT", value_enum, default_value = "human")]
    pub log_format: LogFormat,

    /// File holding the master key (64 hex characters) that seals stored secrets.
    /// Default: `<data-dir>/master.key`, generated with mode 0600 when absent.
    #[arg(long, env = "MOORING_MASTER_KEY_FILE")]
    pub master_key_file: Option<PathBuf>,
}

impl ServeConfig {
    /// A configuration for tests: loopback, ephemeral port, SQLite in `data_dir`.
    pub fn for_tests(data_dir: PathBuf, database_url: Option<String>) -> Self {
        ServeConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            database: DatabaseConfig {
                database_url,
                data_dir,
            },
            provider: ProviderKind::Local,
            agent_binary: None,
            region: "us-east-1".to_owned(),
            partition: "aws".to_owned(),
            account_id: "000000000000".to_owned(),
            log_format: LogFormat::Human,
            master_key_file: None,
        }
    }

    /// The agent binary to run brokers with.
    pub fn agent_binary(&self) -> PathBuf {
        if let Some(path) = &self.agent_binary {
            return path.clone();
        }
        let beside_us = std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(|dir| dir.join("mooring-agent")));
        beside_us.unwrap_or_else(|| PathBuf::from("mooring-agent"))
    }

    /// Refuses settings that would produce malformed ARNs.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.account_id.len() == 12 && self.account_id.bytes().all(|b| b.is_ascii_digit()),
            "--account-id must be 12 digits, got {:?}",
            self.account_id
        );
        let token_ok =
            |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        anyhow::ensure!(
            token_ok(&self.region),
            "--region {:?} is not a region name",
            self.region
        );
        anyhow::ensure!(
            token_ok(&self.partition),
            "--partition {:?} is not a partition name",
            self.partition
        );
        Ok(())
    }
}
