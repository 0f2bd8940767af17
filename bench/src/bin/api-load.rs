//! `mooring-api-load`: drives the control plane's public API (a running `mooring serve`)
//! with concurrent keep-alive clients and reports, per operation, requests per second,
//! p50/p99 latency, and the CPU each request cost this process and the server.
//!
//! It runs in its own process so that the client's work never hides inside the server's
//! numbers, on one thread so that it takes at most one core from the server. The HTTP/1.1
//! client is a few lines over a TCP stream: the API answers small JSON bodies with a
//! `content-length`, and a full client would cost more CPU per request than the parsing
//! we need.
//!
//! Requests are signed with SigV4 (service `mq`) when credentials are given (the signer
//! is `mooring_bench::sigv4`, so this binary does not build the control plane), so the
//! server's verification is part of what is measured.
//!
//! Output: one line per operation, for `bench/run-api.sh` to read:
//! `result OP REQ_PER_S P50_MS P99_MS CLIENT_CPU_US_PER_REQ SERVER_CPU_US_PER_REQ
//! POSTGRES_CPU_US_PER_REQ` (`-` where a pid was not given).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::{Parser, ValueEnum};
use mooring_bench::cpu::process_cpu_time;
use mooring_bench::sigv4::Signer;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpStream;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Op {
    /// HTTP, middleware and one trivial query: the floor under every operation.
    Healthz,
    DescribeBroker,
    ListBrokers,
    CreateUser,
}

#[derive(Debug, Parser)]
struct Args {
    /// The control plane's API address.
    #[arg(long, env = "MOORING_API")]
    endpoint: SocketAddr,
    /// Concurrent clients, each with its own keep-alive connection.
    #[arg(long, default_value_t = 16)]
    clients: u64,
    /// How long each operation is driven, in seconds.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Brokers created before the measurement; DescribeBroker and CreateUser spread over them.
    #[arg(long, default_value_t = 100)]
    brokers: u64,
    /// Use the brokers that exist (the first `--brokers` ListBrokers returns) instead of
    /// creating them: for a second run against the same server.
    #[arg(long)]
    reuse_brokers: bool,
    /// Page size of ListBrokers.
    #[arg(long, default_value_t = 20)]
    page: u64,
    /// Operations to drive, in order.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "healthz,describe-broker,list-brokers,create-user"
    )]
    ops: Vec<Op>,
    /// A credentials file (`aws_access_key_id = …`, `aws_secret_access_key = …`); requests
    /// go unsigned when it is not given or does not exist.
    #[arg(long)]
    credentials: Option<PathBuf>,
    /// Region in the signing scope.
    #[arg(long, default_value = "us-east-1")]
    region: String,
    /// The server's pid, to report its CPU per request (from /proc).
    #[arg(long)]
    server_pid: Option<u32>,
    /// The Postgres postmaster's pid, to report the database's CPU per request (the
    /// postmaster and its children, the backends serving the requests among them).
    #[arg(long)]
    postgres_pid: Option<u32>,
    /// Print the CPU seconds of the process tree under this pid so far, and exit (the
    /// bench script brackets pgbench with it).
    #[arg(long, conflicts_with = "postgres_pid")]
    print_tree_cpu: Option<u32>,
}

#[derive(Debug, Clone)]
struct Credentials {
    access_key_id: String,
    secret_access_key: String,
}

/// Reads `key = value` lines (the AWS shared-credentials shape; sections and comments are
/// ignored, the first key of each name wins).
fn read_credentials(path: &PathBuf) -> anyhow::Result<Credentials> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {path:?}"))?;
    let find = |name: &str| {
        text.lines().find_map(|line| {
            let (k, v) = line.split_once(['=', ':'])?;
            (k.trim() == name).then(|| v.trim().to_owned())
        })
    };
    Ok(Credentials {
        access_key_id: find("aws_access_key_id").context("no aws_access_key_id")?,
        secret_access_key: find("aws_secret_access_key").context("no aws_secret_access_key")?,
    })
}

/// One keep-alive HTTP/1.1 connection.
struct Conn {
    stream: BufReader<TcpStream>,
    host: String,
    region: String,
    credentials: Option<Credentials>,
    head: Vec<u8>,
}

struct Response {
    status: u16,
    body: Vec<u8>,
}

impl Conn {
    async fn open(args: &Args, credentials: Option<Credentials>) -> anyhow::Result<Self> {
        let tcp = TcpStream::connect(args.endpoint)
            .await
            .with_context(|| format!("connecting to {}", args.endpoint))?;
        tcp.set_nodelay(true)?;
        Ok(Conn {
            stream: BufReader::new(tcp),
            host: args.endpoint.to_string(),
            region: args.region.clone(),
            credentials,
            head: Vec::with_capacity(1024),
        })
    }

    async fn call(&mut self, method: &str, target: &str, body: &[u8]) -> anyhow::Result<Response> {
        use std::io::Write as _;
        self.head.clear();
        write!(
            self.head,
            "{method} {target} HTTP/1.1\r\nhost: {}\r\ncontent-length: {}\r\n",
            self.host,
            body.len()
        )?;
        if !body.is_empty() {
            self.head
                .extend_from_slice(b"content-type: application/json\r\n");
        }
        if let Some(c) = &self.credentials {
            let (path, query) = target.split_once('?').unwrap_or((target, ""));
            let signer = Signer {
                access_key_id: &c.access_key_id,
                secret_access_key: &c.secret_access_key,
                region: &self.region,
                service: "mq",
            };
            let signed = signer.sign(
                method,
                path,
                query,
                &[("host", &self.host)],
                body,
                chrono::Utc::now(),
            );
            for (name, value) in signed {
                write!(self.head, "{name}: {value}\r\n")?;
            }
        }
        self.head.extend_from_slice(b"\r\n");
        self.head.extend_from_slice(body);
        self.stream.get_mut().write_all(&self.head).await?;

        let mut line = String::new();
        self.stream.read_line(&mut line).await?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("bad status line {line:?}"))?;
        let mut length = 0usize;
        loop {
            line.clear();
            if self.stream.read_line(&mut line).await? == 0 {
                bail!("connection closed inside the response head");
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            let Some((name, value)) = header.split_once(':') else {
                continue;
            };
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().context("content-length")?;
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                bail!("chunked responses are not expected from the API");
            }
        }
        let mut body = vec![0; length];
        self.stream.read_exact(&mut body).await?;
        Ok(Response { status, body })
    }
}

struct Outcome {
    requests: u64,
    elapsed: Duration,
    p50: Duration,
    p99: Duration,
    client_cpu: Duration,
    server_cpu: Option<f64>,
    postgres_cpu: Option<f64>,
}

/// User plus system CPU seconds of process `pid` so far (/proc counts in 1/100 s).
fn proc_cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After "(comm)", utime and stime are the 12th and 13th fields.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

/// CPU seconds of `root` and its live children, plus what its reaped children used (a
/// Postgres backend that ended is counted in the postmaster's cutime/cstime).
fn tree_cpu_seconds(root: u32) -> Option<f64> {
    let fields_of = |pid: &str| -> Option<Vec<String>> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let rest = &stat[stat.rfind(')')? + 1..];
        Some(rest.split_whitespace().map(str::to_owned).collect())
    };
    // After "(comm)": ppid is the 2nd field, utime..cstime the 12th to 15th.
    let ticks = |f: &[String], range: std::ops::Range<usize>| -> u64 {
        f[range].iter().filter_map(|v| v.parse::<u64>().ok()).sum()
    };
    let root_fields = fields_of(&root.to_string())?;
    let mut total = ticks(&root_fields, 11..15);
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        if let Some(f) = fields_of(pid) {
            if f.len() > 14 && f[1] == root.to_string() {
                total += ticks(&f, 11..13);
            }
        }
    }
    Some(total as f64 / 100.0)
}

/// The request `op` sends as the client's `n`-th.
fn request_for(op: Op, n: u64, client: u64, ids: &[String], page: u64) -> (&'static str, String) {
    // Each client walks the brokers in its own pseudo-random order, as independent clients
    // would (walking them all in the same order, the clients would move in step, all
    // writing the same broker at once).
    let spread = (n ^ client.rotate_left(32)).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 16;
    let broker = &ids[(spread as usize) % ids.len()];
    match op {
        Op::Healthz => ("GET", "/healthz".to_owned()),
        Op::DescribeBroker => ("GET", format!("/v1/brokers/{broker}")),
        Op::ListBrokers => ("GET", format!("/v1/brokers?maxResults={page}")),
        // The process id keeps runs against the same brokers from creating the same users.
        Op::CreateUser => (
            "POST",
            format!(
                "/v1/brokers/{broker}/users/u{}-{client}-{n}",
                std::process::id()
            ),
        ),
    }
}

async fn drive(
    args: &Args,
    op: Op,
    ids: Arc<Vec<String>>,
    credentials: Option<Credentials>,
) -> anyhow::Result<Outcome> {
    let mut conns = Vec::new();
    for _ in 0..args.clients {
        conns.push(Conn::open(args, credentials.clone()).await?);
    }
    let duration = Duration::from_secs(args.seconds);
    let counter = Arc::new(AtomicU64::new(0));
    let (cpu0, server0, postgres0) = (
        process_cpu_time(),
        args.server_pid.and_then(proc_cpu_seconds),
        args.postgres_pid.and_then(tree_cpu_seconds),
    );
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (client, mut conn) in (0u64..).zip(conns) {
        let (ids, counter, page) = (ids.clone(), counter.clone(), args.page);
        tasks.push(tokio::spawn(async move {
            let body = br#"{"password":"load-password-1"}"#;
            let mut latencies = Vec::with_capacity(1 << 14);
            while started.elapsed() < duration {
                let n = counter.fetch_add(1, Ordering::Relaxed);
                let (method, target) = request_for(op, n, client, &ids, page);
                let body: &[u8] = if op == Op::CreateUser { body } else { b"" };
                let t = Instant::now();
                let resp = conn.call(method, &target, body).await?;
                if resp.status != 200 {
                    bail!(
                        "{method} {target}: {} {}",
                        resp.status,
                        String::from_utf8_lossy(&resp.body)
                    );
                }
                latencies.push(t.elapsed());
            }
            Ok(latencies)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.context("client task")??);
    }
    let elapsed = started.elapsed();
    let client_cpu = process_cpu_time().saturating_sub(cpu0);
    let server_cpu = match (server0, args.server_pid.and_then(proc_cpu_seconds)) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    let postgres_cpu = match (postgres0, args.postgres_pid.and_then(tree_cpu_seconds)) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    if all.is_empty() {
        bail!("{op:?}: no request completed");
    }
    all.sort_unstable();
    let at = |q: f64| all[((all.len() as f64 * q) as usize).min(all.len() - 1)];
    Ok(Outcome {
        requests: all.len() as u64,
        elapsed,
        p50: at(0.5),
        p99: at(0.99),
        client_cpu,
        server_cpu,
        postgres_cpu,
    })
}

/// The ids of up to `--brokers` existing brokers, by ListBrokers.
async fn list_brokers(
    args: &Args,
    credentials: Option<Credentials>,
) -> anyhow::Result<Vec<String>> {
    let mut conn = Conn::open(args, credentials).await?;
    let mut ids = Vec::new();
    let mut token: Option<String> = None;
    while (ids.len() as u64) < args.brokers {
        let target = match &token {
            Some(t) => format!("/v1/brokers?maxResults=100&nextToken={t}"),
            None => "/v1/brokers?maxResults=100".to_owned(),
        };
        let resp = conn.call("GET", &target, b"").await?;
        if resp.status != 200 {
            bail!(
                "ListBrokers: {} {}",
                resp.status,
                String::from_utf8_lossy(&resp.body)
            );
        }
        let page: serde_json::Value = serde_json::from_slice(&resp.body)?;
        for b in page["brokerSummaries"].as_array().into_iter().flatten() {
            if let Some(id) = b["brokerId"].as_str() {
                ids.push(id.to_owned());
            }
        }
        match page["nextToken"].as_str() {
            Some(t) => token = Some(t.to_owned()),
            None => break,
        }
    }
    ids.truncate(usize::try_from(args.brokers).unwrap_or(usize::MAX));
    if ids.is_empty() {
        bail!("--reuse-brokers: the server has no brokers");
    }
    Ok(ids)
}

/// Creates the brokers the measured operations use; returns their ids.
async fn create_brokers(
    args: &Args,
    credentials: Option<Credentials>,
) -> anyhow::Result<Vec<String>> {
    let mut conn = Conn::open(args, credentials).await?;
    let mut ids = Vec::new();
    for i in 0..args.brokers {
        let body = serde_json::json!({
            // pgbench selects the same rows by these names.
            "brokerName": format!("load-{i}"),
            "deploymentMode": "SINGLE_INSTANCE",
            "engineType": "RABBITMQ",
            "hostInstanceType": "mq.m5.large",
            "publiclyAccessible": false,
            "users": [{"username": "admin", "password": "correct-horse-1"}],
        });
        let resp = conn
            .call("POST", "/v1/brokers", body.to_string().as_bytes())
            .await?;
        if resp.status != 200 {
            bail!(
                "CreateBroker: {} {}",
                resp.status,
                String::from_utf8_lossy(&resp.body)
            );
        }
        let reply: serde_json::Value = serde_json::from_slice(&resp.body)?;
        let id = reply["brokerId"]
            .as_str()
            .context("CreateBroker answered no brokerId")?;
        ids.push(id.to_owned());
    }
    Ok(ids)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(pid) = args.print_tree_cpu {
        println!("{:.2}", tree_cpu_seconds(pid).context("no such process")?);
        return Ok(());
    }
    let credentials = match &args.credentials {
        Some(path) if path.exists() => Some(read_credentials(path)?),
        _ => None,
    };
    // One thread: the load generator must not take more than a core from the server.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("runtime")?;
    rt.block_on(async {
        let ids = if args.reuse_brokers {
            list_brokers(&args, credentials.clone()).await?
        } else {
            create_brokers(&args, credentials.clone()).await?
        };
        let ids = Arc::new(ids);
        eprintln!(
            "api-load: {} brokers {}, {} clients, {} s per operation, {}",
            ids.len(),
            if args.reuse_brokers {
                "found"
            } else {
                "created"
            },
            args.clients,
            args.seconds,
            if credentials.is_some() {
                "SigV4-signed"
            } else {
                "unsigned"
            }
        );
        for &op in &args.ops {
            let o = drive(&args, op, ids.clone(), credentials.clone()).await?;
            let per_req_us = |s: f64| s * 1e6 / o.requests as f64;
            println!(
                "result {} {:.0} {:.2} {:.2} {:.1} {} {}",
                op.to_possible_value()
                    .map_or_else(|| format!("{op:?}"), |v| v.get_name().to_owned()),
                o.requests as f64 / o.elapsed.as_secs_f64(),
                o.p50.as_secs_f64() * 1e3,
                o.p99.as_secs_f64() * 1e3,
                per_req_us(o.client_cpu.as_secs_f64()),
                o.server_cpu
                    .map_or_else(|| "-".to_owned(), |s| format!("{:.1}", per_req_us(s))),
                o.postgres_cpu
                    .map_or_else(|| "-".to_owned(), |s| format!("{:.1}", per_req_us(s))),
            );
        }
        Ok(())
    })
}
