//! `mooring-bench-engine`: runs every scenario against `mooring-agent` and RabbitMQ in
//! one run, alternating between them, measuring each broker's CPU per message and memory
//! from /proc while `mooring-loadgen` drives the load and reports rates and latency.

pub mod brokers;
pub mod procstat;
pub mod scenarios;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use serde::Serialize;

use crate::report::Report;
use brokers::Broker;
use scenarios::{Kind, Scenario};

/// How often a broker's memory is sampled during a run.
const RSS_SAMPLE: Duration = Duration::from_millis(100);
/// Extra time a loadgen run gets beyond its own limit before it is killed.
const LOADGEN_GRACE: Duration = Duration::from_secs(60);
/// The give-up limit of each backlog phase (fill, drain).
const BACKLOG_LIMIT: Duration = Duration::from_secs(300);

/// Side-by-side benchmark of mooring-agent and RabbitMQ.
#[derive(Parser, Debug)]
#[command(name = "mooring-bench-engine")]
pub struct Args {
    /// The mooring-agent binary (default: next to this one).
    #[arg(long, env = "MOORING_AGENT_BIN")]
    pub agent_bin: Option<PathBuf>,
    /// The mooring-loadgen binary (default: next to this one).
    #[arg(long, env = "MOORING_LOADGEN_BIN")]
    pub loadgen_bin: Option<PathBuf>,
    /// Seconds each timed scenario runs against each broker.
    #[arg(long, env = "BENCH_DURATION", default_value_t = 10.0)]
    pub duration: f64,
    /// Scenarios to run, comma separated (S1,S2-16B,S2-4KiB,S3,S4,S6,S6-quorum,S7).
    #[arg(
        long,
        env = "BENCH_SCENARIOS",
        default_value = "S1,S2-16B,S2-4KiB,S3,S4,S6,S6-quorum,S7"
    )]
    pub scenarios: String,
    /// Messages in the S3 backlog.
    #[arg(long, env = "BENCH_BACKLOG", default_value_t = 1_000_000)]
    pub backlog: u64,
    /// Brokers to run, comma separated (mooring, rabbitmq).
    #[arg(long, env = "BENCH_BROKERS", default_value = "mooring,rabbitmq")]
    pub brokers: String,
    /// Use this running RabbitMQ instead of starting a private node (needs --rabbitmq-pid).
    #[arg(long, env = "BENCH_RABBITMQ_URI", requires = "rabbitmq_pid")]
    pub rabbitmq_uri: Option<String>,
    /// The beam.smp PID of the RabbitMQ given with --rabbitmq-uri, for its CPU and memory.
    #[arg(long, env = "BENCH_RABBITMQ_PID")]
    pub rabbitmq_pid: Option<u32>,
    /// Also write every measurement as JSON to this file.
    #[arg(long, env = "BENCH_JSON_OUT")]
    pub json_out: Option<PathBuf>,
}

/// One loadgen run against one broker, with the broker's side of it.
#[derive(Debug, Clone, Serialize)]
pub struct Measurement {
    pub scenario: String,
    pub broker: &'static str,
    /// The headline rate: deliveries per second (publishes for a fill phase).
    pub msgs_per_s: f64,
    pub load: Option<Report>,
    pub broker_cpu_s: f64,
    pub broker_cpu_us_per_msg: Option<f64>,
    pub rss_end_bytes: u64,
    pub rss_peak_bytes: u64,
    pub error: Option<String>,
}

fn sibling(name: &str) -> Result<PathBuf> {
    let me = std::env::current_exe().context("locating this binary")?;
    Ok(me.with_file_name(name))
}

/// Runs the loadgen with `flags` against `broker`, sampling the broker meanwhile.
async fn measure(
    loadgen: &PathBuf,
    broker: &Broker,
    scenario: &str,
    flags: &[String],
    limit: Duration,
    headline_is_publish: bool,
) -> Measurement {
    let mut m = Measurement {
        scenario: scenario.to_string(),
        broker: broker.name,
        msgs_per_s: 0.0,
        load: None,
        broker_cpu_s: 0.0,
        broker_cpu_us_per_msg: None,
        rss_end_bytes: 0,
        rss_peak_bytes: 0,
        error: None,
    };
    if let Err(e) = measure_into(&mut m, loadgen, broker, flags, limit, headline_is_publish).await {
        m.error = Some(format!("{e:#}"));
    }
    m
}

async fn measure_into(
    m: &mut Measurement,
    loadgen: &PathBuf,
    broker: &Broker,
    flags: &[String],
    limit: Duration,
    headline_is_publish: bool,
) -> Result<()> {
    let cpu_before = procstat::cpu_time(broker.pid)?;
    let child = tokio::process::Command::new(loadgen)
        .args(flags)
        .args(["--uri", &broker.uri, "--json"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", loadgen.display()))?;
    let mut peak = 0u64;
    let output = {
        let wait = child.wait_with_output();
        tokio::pin!(wait);
        let deadline = tokio::time::sleep(limit + LOADGEN_GRACE);
        tokio::pin!(deadline);
        let mut tick = tokio::time::interval(RSS_SAMPLE);
        loop {
            tokio::select! {
                out = &mut wait => break out.context("waiting for the loadgen")?,
                _ = &mut deadline => bail!("the loadgen did not finish within {:?}", limit + LOADGEN_GRACE),
                _ = tick.tick() => peak = peak.max(procstat::rss_bytes(broker.pid).unwrap_or(0)),
            }
        }
    };
    let cpu = procstat::cpu_time(broker.pid)?.saturating_sub(cpu_before);
    m.rss_end_bytes = procstat::rss_bytes(broker.pid)?;
    m.rss_peak_bytes = peak.max(m.rss_end_bytes);
    m.broker_cpu_s = cpu.as_secs_f64();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let report: Report = serde_json::from_str(stdout.trim()).with_context(|| {
        format!(
            "loadgen gave no report (exit {}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )
    })?;
    m.msgs_per_s = if headline_is_publish {
        report.publish_rate
    } else {
        report.consume_rate
    };
    let moved = if headline_is_publish || report.consumed == 0 {
        report.published
    } else {
        report.consumed
    };
    m.broker_cpu_us_per_msg = (moved > 0).then(|| cpu.as_secs_f64() * 1e6 / moved as f64);
    let errors = report.errors.join("; ");
    let complete = report.complete;
    m.load = Some(report);
    if !complete || !output.status.success() {
        bail!("run incomplete: {errors}");
    }
    Ok(())
}

fn print(m: &Measurement) {
    let mb = |b: u64| b as f64 / (1024.0 * 1024.0);
    let opt = |v: Option<f64>, prec: usize| v.map_or("-".to_string(), |v| format!("{v:.prec$}"));
    let load = m.load.clone().unwrap_or_default();
    println!(
        "{:<8} {:<8} {:>9.0} msg/s (pub {:>9.0}/s)  p50 {:>8} us  p99 {:>8} us  broker CPU {:>6} us/msg  loadgen CPU {:>5} us/msg  RSS {:>7.1} MB (peak {:.1}){}",
        m.scenario,
        m.broker,
        m.msgs_per_s,
        load.publish_rate,
        opt(load.latency_p50_us, 0),
        opt(load.latency_p99_us, 0),
        opt(m.broker_cpu_us_per_msg, 2),
        opt(load.cpu_us_per_msg, 2),
        mb(m.rss_end_bytes),
        mb(m.rss_peak_bytes),
        m.error.as_ref().map_or(String::new(), |e| format!("  ERROR: {e}")),
    );
}

/// The brokers of this run, in the order of the first scenario; a broker that failed to
/// start is reported and its measurements come out as errors.
fn start_brokers(args: &Args) -> Vec<(&'static str, Result<Broker>)> {
    let mut out = Vec::new();
    for name in args.brokers.split(',').map(str::trim) {
        match name {
            "mooring" => {
                let agent = args
                    .agent_bin
                    .clone()
                    .map_or_else(|| sibling("mooring-agent"), Ok);
                eprintln!("starting mooring-agent standalone ...");
                out.push(("mooring", agent.and_then(|a| brokers::start_mooring(&a))));
            }
            "rabbitmq" => {
                let b = match (&args.rabbitmq_uri, args.rabbitmq_pid) {
                    (Some(uri), Some(pid)) => Broker::external("rabbitmq", uri.clone(), pid),
                    _ => {
                        eprintln!("starting a private RabbitMQ node ...");
                        brokers::start_rabbitmq()
                    }
                };
                out.push(("rabbitmq", b));
            }
            other => out.push(("?", Err(anyhow::anyhow!("unknown broker {other:?}")))),
        }
    }
    out
}

/// The measurements a scenario would have given, each carrying `error`.
fn failed(s: &Scenario, broker: &'static str, error: String) -> Vec<Measurement> {
    let names = match s.kind {
        Kind::Timed(_) => vec![s.name.to_string()],
        Kind::Backlog { .. } => vec![format!("{}-fill", s.name), format!("{}-drain", s.name)],
    };
    names
        .into_iter()
        .map(|name| failed_one(name, broker, error.clone()))
        .collect()
}

fn failed_one(scenario: String, broker: &'static str, error: String) -> Measurement {
    Measurement {
        scenario,
        broker,
        msgs_per_s: 0.0,
        load: None,
        broker_cpu_s: 0.0,
        broker_cpu_us_per_msg: None,
        rss_end_bytes: 0,
        rss_peak_bytes: 0,
        error: Some(error),
    }
}

/// Runs one scenario on one broker; a backlog gives two measurements (fill, drain).
async fn run_scenario(
    s: &Scenario,
    broker: &Broker,
    loadgen: &PathBuf,
    duration: f64,
) -> Vec<Measurement> {
    let queue = format!("bench-{}", s.name.to_lowercase());
    let common = |mut f: Vec<String>| {
        f.extend(["--queue".to_string(), queue.clone()]);
        f
    };
    match &s.kind {
        Kind::Timed(flags) => {
            let mut f = common(flags.clone());
            f.extend([
                "--duration".into(),
                duration.to_string(),
                "--fresh".into(),
                "--cleanup".into(),
            ]);
            let limit = Duration::from_secs_f64(duration);
            vec![measure(loadgen, broker, s.name, &f, limit, false).await]
        }
        Kind::Backlog { messages } => {
            let limit = [
                "--duration".to_string(),
                BACKLOG_LIMIT.as_secs().to_string(),
            ];
            let mut fill = common(scenarios::backlog_fill(*messages));
            fill.extend(limit.clone());
            fill.push("--fresh".into());
            let fill_name = format!("{}-fill", s.name);
            let filled = measure(loadgen, broker, &fill_name, &fill, BACKLOG_LIMIT, true).await;
            print(&filled);
            let mut drain = common(scenarios::backlog_drain());
            drain.extend(limit);
            drain.push("--cleanup".into());
            let drained = measure(
                loadgen,
                broker,
                &format!("{}-drain", s.name),
                &drain,
                BACKLOG_LIMIT,
                false,
            )
            .await;
            vec![filled, drained]
        }
    }
}

/// Runs the benchmark; Ok(true) when every measurement succeeded.
pub async fn run(args: Args) -> Result<bool> {
    let loadgen = args
        .loadgen_bin
        .clone()
        .map_or_else(|| sibling("mooring-loadgen"), Ok)?;
    if !loadgen.exists() {
        bail!(
            "no loadgen at {} (build with cargo build --release --bins)",
            loadgen.display()
        );
    }
    let wanted: Vec<&str> = args.scenarios.split(',').map(str::trim).collect();
    let selected: Vec<Scenario> = scenarios::all(args.backlog)
        .into_iter()
        .filter(|s| wanted.contains(&s.name))
        .collect();
    if selected.is_empty() {
        bail!("no known scenario in {:?}", args.scenarios);
    }
    let brokers = start_brokers(&args);
    for (name, b) in &brokers {
        match b {
            Ok(b) => eprintln!("{name}: {} (pid {})", b.uri, b.pid),
            Err(e) => eprintln!("{name}: not available: {e:#}"),
        }
    }
    println!(
        "machine: {} cores, {}; {} s per timed scenario per broker; backlog {} messages",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model(),
        args.duration,
        args.backlog
    );
    let mut results: Vec<Measurement> = Vec::new();
    for (i, s) in selected.iter().enumerate() {
        // Other work on the machine skews both brokers: show how busy it was.
        println!(
            "--- {}: {} (load average {})",
            s.name,
            s.about,
            load_average()
        );
        // Alternate which broker goes first so neither always runs on a warmer machine.
        let order: Vec<usize> = if i % 2 == 0 {
            (0..brokers.len()).collect()
        } else {
            (0..brokers.len()).rev().collect()
        };
        for idx in order {
            let (name, broker) = &brokers[idx];
            let ms = match broker {
                Ok(b) if procstat::is_alive(b.pid) => {
                    run_scenario(s, b, &loadgen, args.duration).await
                }
                Ok(b) => failed(s, name, format!("broker exited:\n{}", b.log_tail())),
                Err(e) => failed(s, name, format!("not started: {e:#}")),
            };
            if let Some(last) = ms.last() {
                print(last);
            }
            results.extend(ms);
        }
    }
    if let Some(path) = &args.json_out {
        let json = serde_json::to_string_pretty(&results).context("encoding results")?;
        std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))?;
    }
    println!();
    let mut names: Vec<&str> = Vec::new();
    for m in &results {
        if !names.contains(&m.scenario.as_str()) {
            names.push(&m.scenario);
        }
    }
    for name in names {
        let rate = |broker: &str| {
            results
                .iter()
                .find(|m| m.scenario == name && m.broker == broker)
                .map_or(0.0, |m| m.msgs_per_s)
        };
        println!("{}", summary_line(name, rate("mooring"), rate("rabbitmq")));
    }
    Ok(results.iter().all(|m| m.error.is_none()))
}

/// The last lines of the output, one per scenario; a broker that failed counts 0 msg/s.
pub fn summary_line(scenario: &str, mooring: f64, rabbitmq: f64) -> String {
    let ratio = if rabbitmq > 0.0 {
        mooring / rabbitmq
    } else {
        0.0
    };
    format!("scenario {scenario} mooring {mooring:.0} rabbitmq {rabbitmq:.0} ratio {ratio:.2}")
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".to_string())
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_line_format() {
        assert_eq!(
            summary_line("S1", 600_000.4, 150_000.0),
            "scenario S1 mooring 600000 rabbitmq 150000 ratio 4.00"
        );
        assert_eq!(
            summary_line("S7", 1000.0, 0.0),
            "scenario S7 mooring 1000 rabbitmq 0 ratio 0.00"
        );
    }
}
