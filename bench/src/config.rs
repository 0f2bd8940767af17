//! Command-line flags of `mooring-loadgen` (PerfTest's names where PerfTest has one) and
//! their validation into a `Plan` the rest of the load generator runs.

use std::time::Duration;

use amq_protocol::types::{AMQPValue, FieldTable};
use amq_protocol::uri::{AMQPScheme, AMQPUri};
use anyhow::{bail, Context, Result};
use clap::Parser;

/// Every message body starts with a wall-clock timestamp (8 bytes) and the producer's
/// sequence number (8 bytes).
pub const MIN_BODY: usize = 16;
/// A count-based run that sets no --duration still stops after this long.
const DEFAULT_COUNT_TIMEOUT: Duration = Duration::from_secs(300);

/// AMQP 0-9-1 load generator: publishes and consumes through a broker and reports rates,
/// end-to-end latency and its own CPU per message.
#[derive(Parser, Debug, Clone)]
#[command(name = "mooring-loadgen", version)]
pub struct Args {
    /// Broker to load: amqp://user:pass@host:port/vhost (vhost percent-encoded, %2f = "/").
    #[arg(
        long,
        env = "LOADGEN_URI",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    pub uri: String,
    /// Publishing connections (one channel each).
    #[arg(long, short = 'x', default_value_t = 1)]
    pub producers: usize,
    /// Consuming connections per queue (one channel each).
    #[arg(long, short = 'y', default_value_t = 1)]
    pub consumers: usize,
    /// Message body size in bytes (at least 16: timestamp and sequence number).
    #[arg(long, short = 's', default_value_t = 16)]
    pub size: usize,
    /// Publisher confirm window: unconfirmed messages allowed per producer; 0 = no confirms.
    #[arg(long, short = 'c', default_value_t = 0)]
    pub confirm: u64,
    /// basic.qos prefetch count per consumer; 0 = unlimited.
    #[arg(long, short = 'q', default_value_t = 0)]
    pub prefetch: u16,
    /// Acknowledge every N messages with multiple=true (1 = each message).
    #[arg(long, short = 'n', default_value_t = 1)]
    pub multi_ack: u64,
    /// Consume with no-ack (automatic acknowledgement).
    #[arg(long, short = 'a')]
    pub autoack: bool,
    /// Publish with delivery-mode 2 (persistent).
    #[arg(long)]
    pub persistent: bool,
    /// Queue name; with --fanout-queues, the prefix of the queue names (NAME-0, NAME-1, ...).
    #[arg(long, short = 'u', default_value = "mooring-bench")]
    pub queue: String,
    /// Queue arguments, comma separated: x-queue-type=quorum,x-max-length=1000.
    #[arg(long, default_value = "")]
    pub queue_args: String,
    /// Declare the queues (and exchange) durable.
    #[arg(long)]
    pub durable: bool,
    /// Publish to this exchange (direct, or fanout with --fanout-queues) instead of the default one.
    #[arg(long, short = 'e')]
    pub exchange: Option<String>,
    /// Declare N queues bound to a fanout exchange, each with --consumers consumers.
    #[arg(long, default_value_t = 0)]
    pub fanout_queues: usize,
    /// Run for this many seconds; with --pmessages/--cmessages, the limit after which the
    /// run counts as incomplete (default 300 then).
    #[arg(long, short = 'z')]
    pub duration: Option<f64>,
    /// Each producer publishes exactly N messages, then stops.
    #[arg(long, short = 'C')]
    pub pmessages: Option<u64>,
    /// Stop consuming once N messages were received, counted over all consumers
    /// (default with --pmessages: every message published, times the fanout).
    #[arg(long, short = 'D')]
    pub cmessages: Option<u64>,
    /// Consume what the queues hold when the run starts, then stop.
    #[arg(long)]
    pub drain: bool,
    /// Publishing rate limit per producer, messages per second.
    #[arg(long, short = 'r')]
    pub rate: Option<u64>,
    /// Delete the queues and exchange before declaring them.
    #[arg(long)]
    pub fresh: bool,
    /// Delete the queues and exchange when the run ends.
    #[arg(long)]
    pub cleanup: bool,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Runtime threads (default: one per core, at most one per connection; 1 = everything
    /// on one thread, which costs the least CPU when the load is light).
    #[arg(long)]
    pub threads: Option<usize>,
}

/// Where and as whom to connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
    pub vhost: String,
}

/// How a run ends.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Stop {
    /// Run for the whole duration; counts are rates over it.
    Duration(Duration),
    /// Run until the counts are reached; the duration is the give-up limit.
    Counts { limit: Duration },
}

/// A validated run.
#[derive(Debug, Clone)]
pub struct Plan {
    pub target: Target,
    pub producers: usize,
    /// Consumers per queue.
    pub consumers: usize,
    pub size: usize,
    pub confirm: u64,
    pub prefetch: u16,
    pub multi_ack: u64,
    pub autoack: bool,
    pub persistent: bool,
    pub queues: Vec<String>,
    pub queue_args: FieldTable,
    pub durable: bool,
    /// (name, kind) of the exchange to declare; None publishes to the default exchange.
    pub exchange: Option<(String, &'static str)>,
    pub stop: Stop,
    pub pmessages: Option<u64>,
    /// Total messages all consumers must receive; None with Stop::Duration.
    pub cmessages: Option<u64>,
    pub drain: bool,
    pub rate: Option<u64>,
    pub fresh: bool,
    pub cleanup: bool,
}

pub fn parse_uri(uri: &str) -> Result<Target> {
    let parsed: AMQPUri = uri
        .parse()
        .map_err(|e: String| anyhow::anyhow!(e))
        .with_context(|| format!("invalid --uri {uri:?}"))?;
    if parsed.scheme != AMQPScheme::AMQP {
        bail!("only amqp:// is supported, not TLS: {uri:?}");
    }
    Ok(Target {
        host: parsed.authority.host,
        port: parsed.authority.port,
        user: parsed.authority.userinfo.username,
        password: parsed.authority.userinfo.password,
        vhost: parsed.vhost,
    })
}

/// Parses `k=v,k2=v2`: integers become signed 64-bit, true/false booleans, the rest strings,
/// the types RabbitMQ expects for its x- arguments.
pub fn parse_queue_args(spec: &str) -> Result<FieldTable> {
    let mut table = FieldTable::default();
    for pair in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = pair
            .split_once('=')
            .with_context(|| format!("queue argument {pair:?} is not key=value"))?;
        let value = if let Ok(n) = value.parse::<i64>() {
            AMQPValue::LongLongInt(n)
        } else if let Ok(b) = value.parse::<bool>() {
            AMQPValue::Boolean(b)
        } else {
            AMQPValue::LongString(value.into())
        };
        table.insert(key.trim().into(), value);
    }
    Ok(table)
}

impl Args {
    pub fn plan(&self) -> Result<Plan> {
        let target = parse_uri(&self.uri)?;
        if self.size < MIN_BODY {
            bail!("--size must be at least {MIN_BODY} (timestamp and sequence number)");
        }
        if self.multi_ack == 0 {
            bail!("--multi-ack must be at least 1");
        }
        if self.prefetch > 0 && !self.autoack && self.multi_ack > u64::from(self.prefetch) {
            // The consumer would wait for more messages than the broker may send unacked.
            bail!("--multi-ack larger than --prefetch would stall the consumer");
        }
        if self.drain && self.producers > 0 {
            bail!("--drain consumes an existing backlog: use --producers 0");
        }
        if self.rate == Some(0) {
            bail!("--rate must be positive");
        }
        let queues: Vec<String> = if self.fanout_queues > 0 {
            (0..self.fanout_queues)
                .map(|i| format!("{}-{i}", self.queue))
                .collect()
        } else {
            vec![self.queue.clone()]
        };
        let exchange = match (&self.exchange, self.fanout_queues) {
            (Some(name), 0) => Some((name.clone(), "direct")),
            (Some(name), _) => Some((name.clone(), "fanout")),
            (None, 0) => None,
            (None, _) => Some((format!("{}-fanout", self.queue), "fanout")),
        };
        let counted = self.pmessages.is_some() || self.cmessages.is_some() || self.drain;
        let stop = match (self.duration, counted) {
            (Some(secs), _) if !(secs > 0.0 && secs.is_finite()) => {
                bail!("--duration must be a positive number of seconds")
            }
            (Some(secs), false) => Stop::Duration(Duration::from_secs_f64(secs)),
            (Some(secs), true) => Stop::Counts {
                limit: Duration::from_secs_f64(secs),
            },
            (None, false) => bail!("give --duration, --pmessages, --cmessages or --drain"),
            (None, true) => Stop::Counts {
                limit: DEFAULT_COUNT_TIMEOUT,
            },
        };
        let consumers_total = self.consumers * queues.len();
        let cmessages = match (self.cmessages, self.pmessages) {
            (Some(n), _) => Some(n),
            // every consumer-side copy of every published message
            (None, Some(p)) if consumers_total > 0 => {
                Some(p * self.producers as u64 * queues.len() as u64)
            }
            _ => None,
        };
        if cmessages.is_some() && consumers_total == 0 {
            bail!("--cmessages needs at least one consumer");
        }
        if matches!(stop, Stop::Counts { .. }) && self.pmessages.is_none() && self.producers > 0 {
            bail!("a count-based run needs --pmessages when producers publish");
        }
        Ok(Plan {
            target,
            producers: self.producers,
            consumers: self.consumers,
            size: self.size,
            confirm: self.confirm,
            prefetch: self.prefetch,
            multi_ack: self.multi_ack,
            autoack: self.autoack,
            persistent: self.persistent,
            queues,
            queue_args: parse_queue_args(&self.queue_args)?,
            durable: self.durable,
            exchange,
            stop,
            pmessages: self.pmessages,
            cmessages,
            drain: self.drain,
            rate: self.rate,
            fresh: self.fresh,
            cleanup: self.cleanup,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Args {
        Args::try_parse_from(std::iter::once("mooring-loadgen").chain(extra.iter().copied()))
            .expect("flags parse")
    }

    #[test]
    fn uri_with_user_port_and_vhost() {
        let t = parse_uri("amqp://bob:s%40cret@127.0.0.1:5673/prod").expect("valid");
        assert_eq!(
            t,
            Target {
                host: "127.0.0.1".into(),
                port: 5673,
                user: "bob".into(),
                password: "s@cret".into(),
                vhost: "prod".into(),
            }
        );
    }

    #[test]
    fn uri_defaults_and_root_vhost() {
        let t = parse_uri("amqp://localhost").expect("valid");
        assert_eq!(
            (t.port, t.user.as_str(), t.vhost.as_str()),
            (5672, "guest", "/")
        );
        let t = parse_uri("amqp://u:p@127.0.0.1:1/%2f").expect("valid");
        assert_eq!(t.vhost, "/");
    }

    #[test]
    fn uri_rejects_garbage_and_tls() {
        assert!(parse_uri("not a uri").is_err());
        assert!(parse_uri("amqps://localhost").is_err());
    }

    #[test]
    fn queue_args_types() {
        let t = parse_queue_args(
            "x-queue-type=quorum, x-max-length=1000,x-single-active-consumer=true",
        )
        .expect("valid");
        let m = t.inner();
        assert_eq!(
            m.get("x-queue-type"),
            Some(&AMQPValue::LongString("quorum".into()))
        );
        assert_eq!(m.get("x-max-length"), Some(&AMQPValue::LongLongInt(1000)));
        assert_eq!(
            m.get("x-single-active-consumer"),
            Some(&AMQPValue::Boolean(true))
        );
        assert!(parse_queue_args("")
            .expect("empty is fine")
            .inner()
            .is_empty());
        assert!(parse_queue_args("novalue").is_err());
    }

    #[test]
    fn smoke_counts_default_from_pmessages() {
        let p = args(&["--pmessages", "1000", "--fanout-queues", "3"])
            .plan()
            .expect("valid");
        assert_eq!(p.cmessages, Some(3000));
        assert_eq!(
            p.queues,
            vec!["mooring-bench-0", "mooring-bench-1", "mooring-bench-2"]
        );
        assert_eq!(p.exchange, Some(("mooring-bench-fanout".into(), "fanout")));
        assert!(matches!(p.stop, Stop::Counts { .. }));
    }

    #[test]
    fn invalid_combinations_are_refused() {
        assert!(args(&[]).plan().is_err(), "no stop condition");
        assert!(args(&["--duration", "1", "--size", "8"]).plan().is_err());
        assert!(
            args(&["--duration", "1", "--prefetch", "10", "--multi-ack", "20"])
                .plan()
                .is_err()
        );
        assert!(args(&["--drain"]).plan().is_err(), "drain with producers");
        assert!(
            args(&["--cmessages", "5"]).plan().is_err(),
            "producers without pmessages"
        );
        assert!(args(&["--duration", "0"]).plan().is_err());
        assert!(args(&["--duration", "2"]).plan().is_ok());
    }
}
