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

// Parsed once at start: the size of the `Serve` variant costs nothing worth boxing for.
#[allow(clippy::large_enum_variant)]
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

    /// Brokers under maintenance at once across the fleet (window-driven maintenance
    /// waits for a free slot; RebootBroker does not).
    #[arg(long, env = "MOORING_MAINTENANCE_MAX_CONCURRENT", default_value_t = 10)]
    pub maintenance_max_concurrent: u32,

    /// Start with window-driven maintenance paused (as `PUT /v1/maintenance
    /// {"paused": true}` does; either one pauses).
    #[arg(long, env = "MOORING_MAINTENANCE_PAUSED")]
    pub maintenance_paused: bool,

    /// TEST ONLY: a file holding a number of seconds added to the clock that maintenance
    /// windows are read with, re-read at every use, so tests can move into a window.
    #[arg(long, env = "MOORING_CLOCK_OFFSET_FILE", hide = true)]
    pub clock_offset_file: Option<PathBuf>,

    /// Days the audit trail keeps an event; older ones are deleted by a periodic
    /// cleanup. 0 keeps events forever.
    #[arg(long, env = "MOORING_AUDIT_RETENTION_DAYS", default_value_t = 90)]
    pub audit_retention_days: u32,

    /// Requests a principal may make at once before being throttled (token bucket
    /// size); 0 disables rate limiting.
    #[arg(long, env = "MOORING_RATE_LIMIT_BURST", default_value_t = 100)]
    pub rate_limit_burst: u32,

    /// Requests per second refilled into each principal's bucket; 0 disables rate
    /// limiting.
    #[arg(long, env = "MOORING_RATE_LIMIT_PER_SECOND", default_value_t = 15.0)]
    pub rate_limit_per_second: f64,

    /// PEM certificate chain for the API: when set (with --tls-key) the API listener
    /// speaks HTTPS only, and local agents reach the control plane on a separate
    /// loopback plain-HTTP listener.
    #[arg(long, env = "MOORING_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key (PKCS#8, PKCS#1 or SEC1) matching --tls-cert.
    #[arg(long, env = "MOORING_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// How long, in milliseconds, a verified access key (its secret, user and policies)
    /// is reused without reading the store. IAM writes through this process take
    /// effect at once; this bounds how long another replica's writes take. 0 disables.
    #[arg(long, env = "MOORING_AUTH_CACHE_TTL_MS", default_value_t = 2000)]
    pub auth_cache_ttl_ms: u64,

    /// Login with a real AWS identity (off unless --aws-login-sts-endpoint is set).
    /// Boxed: it is large, and `Command` holds a `ServeConfig` by value.
    #[command(flatten)]
    pub aws_login: Box<AwsLoginConfig>,

    /// Replicated brokers: heartbeats, leases, failure detection.
    #[command(flatten)]
    pub failover: FailoverConfig,

    /// Milliseconds of the control-plane lease. Of several replicas on one database only
    /// the holder runs the reconcilers (provisioning, failover, maintenance); the others
    /// serve the API and take over once it expires. Shorter: a dead holder is replaced
    /// sooner (brokers that fail while no replica acts wait for it), at the cost of more
    /// database writes (one renewal per quarter lease) and of a slow database making a
    /// healthy holder step down. The holder stops acting after three quarters of it
    /// without a renewal.
    #[arg(long, env = "MOORING_CONTROL_PLANE_LEASE_MS", default_value_t = 2000)]
    pub control_plane_lease_ms: u64,

    /// The control-plane URL the local provider gives the agents it starts. Default: this
    /// replica's agent listener. With several replicas, an address that reaches any live
    /// one (a load balancer), so that agents keep heartbeating when a replica dies.
    #[arg(long, env = "MOORING_AGENT_CONTROL_PLANE_URL")]
    pub agent_control_plane_url: Option<String>,
}

impl ServeConfig {
    /// A configuration for tests: loopback, ephemeral port, SQLite in `data_dir`, no
    /// rate limit.
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
            maintenance_max_concurrent: 10,
            maintenance_paused: false,
            clock_offset_file: None,
            audit_retention_days: 90,
            // Off: in-process tests send bursts far above a person's rate; the rate
            // limit tests turn it on.
            rate_limit_burst: 0,
            rate_limit_per_second: 0.0,
            tls_cert: None,
            tls_key: None,
            auth_cache_ttl_ms: 2000,
            aws_login: Box::default(),
            failover: FailoverConfig::default(),
            control_plane_lease_ms: 2000,
            agent_control_plane_url: None,
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
        anyhow::ensure!(
            self.rate_limit_per_second.is_finite() && self.rate_limit_per_second >= 0.0,
            "--rate-limit-per-second must be a non-negative number, got {}",
            self.rate_limit_per_second
        );
        crate::app::aws_login::AwsLogin::from_config(&self.aws_login)
            .map_err(anyhow::Error::msg)?;
        self.failover.validate()?;
        anyhow::ensure!(
            self.control_plane_lease_ms >= 200,
            "--control-plane-lease-ms must be at least 200"
        );
        Ok(())
    }
}

/// Logging in with a real AWS identity: a client signs `sts:GetCallerIdentity` with
/// its AWS credentials and Mooring trades the proof for temporary Mooring
/// credentials (see `app::aws_login`). Off by default.
#[derive(Clone, clap::Args)]
pub struct AwsLoginConfig {
    /// Turns AWS login on: the STS endpoint login requests must be signed for and are
    /// forwarded to (e.g. `https://sts.us-east-1.amazonaws.com/`). Nothing else is ever
    /// forwarded.
    #[arg(long, env = "MOORING_AWS_LOGIN_STS_ENDPOINT")]
    pub aws_login_sts_endpoint: Option<String>,

    /// The value the signed `X-Mooring-Server-ID` header of a login must carry;
    /// required with --aws-login-sts-endpoint. It binds a signed request to this
    /// server, so one signed for another service cannot be replayed here.
    #[arg(long, env = "MOORING_AWS_LOGIN_SERVER_ID")]
    pub aws_login_server_id: Option<String>,

    /// The region logins sign for (their credential scope) and IAM is called in.
    #[arg(long, env = "MOORING_AWS_LOGIN_REGION", default_value = "us-east-1")]
    pub aws_login_region: String,

    /// IAM endpoint to import the policies of mapped AWS principals from (e.g.
    /// `https://iam.amazonaws.com/`). Without it, mappings cannot import policies.
    #[arg(long, env = "MOORING_AWS_LOGIN_IAM_ENDPOINT")]
    pub aws_login_iam_endpoint: Option<String>,

    /// Access key id Mooring reads IAM policies with (needs iam:Get* and iam:List*).
    #[arg(long, env = "MOORING_AWS_LOGIN_IAM_ACCESS_KEY_ID")]
    pub aws_login_iam_access_key_id: Option<String>,

    /// Its secret; prefer the environment (a command line is visible to other users).
    #[arg(
        long,
        env = "MOORING_AWS_LOGIN_IAM_SECRET_ACCESS_KEY",
        hide_env_values = true
    )]
    pub aws_login_iam_secret_access_key: Option<String>,

    /// Its session token, when the IAM credentials are temporary.
    #[arg(
        long,
        env = "MOORING_AWS_LOGIN_IAM_SESSION_TOKEN",
        hide_env_values = true
    )]
    pub aws_login_iam_session_token: Option<String>,

    /// How long one call to STS (and each IAM call) may take, in seconds.
    #[arg(long, env = "MOORING_AWS_LOGIN_TIMEOUT_SECS", default_value_t = 10)]
    pub aws_login_timeout_secs: u64,
}

impl Default for AwsLoginConfig {
    /// Off, with the flags' defaults.
    fn default() -> Self {
        AwsLoginConfig {
            aws_login_sts_endpoint: None,
            aws_login_server_id: None,
            aws_login_region: "us-east-1".to_owned(),
            aws_login_iam_endpoint: None,
            aws_login_iam_access_key_id: None,
            aws_login_iam_secret_access_key: None,
            aws_login_iam_session_token: None,
            aws_login_timeout_secs: 10,
        }
    }
}

impl std::fmt::Debug for AwsLoginConfig {
    /// Never prints the IAM secret or token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsLoginConfig")
            .field("aws_login_sts_endpoint", &self.aws_login_sts_endpoint)
            .field("aws_login_server_id", &self.aws_login_server_id)
            .field("aws_login_region", &self.aws_login_region)
            .field("aws_login_iam_endpoint", &self.aws_login_iam_endpoint)
            .field(
                "aws_login_iam_access_key_id",
                &self.aws_login_iam_access_key_id,
            )
            .finish_non_exhaustive()
    }
}

/// Timing of replicated brokers (issue 5). The defaults fail over in under 3 s: a leader
/// is missed after `heartbeat_timeout_ms`, and promotion waits until its lease, renewed
/// every heartbeat, has run out plus `lease_drift_margin_ms`.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct FailoverConfig {
    /// Milliseconds between heartbeats of a replicated broker's agents.
    #[arg(long, env = "MOORING_REPLICATED_HEARTBEAT_MS", default_value_t = 200)]
    pub replicated_heartbeat_ms: u64,

    /// Milliseconds without a heartbeat after which a replicated node counts as gone.
    #[arg(long, env = "MOORING_HEARTBEAT_TIMEOUT_MS", default_value_t = 600)]
    pub heartbeat_timeout_ms: u64,

    /// Milliseconds of lease granted to a leader with each heartbeat (counted by the agent
    /// from the heartbeat's sending).
    #[arg(long, env = "MOORING_LEASE_MS", default_value_t = 1500)]
    pub lease_ms: u64,

    /// Milliseconds added to a lease's expiry before a follower is promoted: how far the
    /// leader's clock may lag the control plane's over one lease.
    #[arg(long, env = "MOORING_LEASE_DRIFT_MARGIN_MS", default_value_t = 200)]
    pub lease_drift_margin_ms: u64,

    /// Milliseconds between passes of the failover loop.
    #[arg(long, env = "MOORING_FAILOVER_INTERVAL_MS", default_value_t = 100)]
    pub failover_interval_ms: u64,

    /// Milliseconds a switchover waits for the target to catch up with the released
    /// leader's last position before promoting it anyway (confirmed publishes are on every
    /// in-sync follower already; this spares clients resending the unconfirmed tail).
    #[arg(long, env = "MOORING_SWITCHOVER_CATCH_UP_MS", default_value_t = 2000)]
    pub switchover_catch_up_ms: u64,
}

impl Default for FailoverConfig {
    fn default() -> Self {
        FailoverConfig {
            replicated_heartbeat_ms: 200,
            heartbeat_timeout_ms: 600,
            lease_ms: 1500,
            lease_drift_margin_ms: 200,
            failover_interval_ms: 100,
            switchover_catch_up_ms: 2000,
        }
    }
}

impl FailoverConfig {
    /// Refuses timings under which a lease could outlive its detection unsafely or a
    /// leader could never renew.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.replicated_heartbeat_ms > 0 && self.replicated_heartbeat_ms < self.lease_ms,
            "--replicated-heartbeat-ms must be positive and below --lease-ms"
        );
        anyhow::ensure!(
            self.heartbeat_timeout_ms > self.replicated_heartbeat_ms,
            "--heartbeat-timeout-ms must exceed --replicated-heartbeat-ms"
        );
        anyhow::ensure!(
            self.failover_interval_ms > 0,
            "--failover-interval-ms must be positive"
        );
        Ok(())
    }
}
