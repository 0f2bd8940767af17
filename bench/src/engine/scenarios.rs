//! The side-by-side scenarios of the engine issue, as mooring-loadgen flags.

/// One benchmark scenario.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: &'static str,
    pub about: &'static str,
    pub kind: Kind,
}

#[derive(Debug, Clone)]
pub enum Kind {
    /// A timed run with these loadgen flags (the runner adds --duration, --uri, --queue).
    Timed(Vec<String>),
    /// Fill a backlog of this many messages, measure memory at full backlog, then drain.
    Backlog { messages: u64 },
}

fn flags(s: &str) -> Vec<String> {
    s.split_whitespace().map(str::to_string).collect()
}

/// Persistent into a durable queue with confirms and multi-acks, PerfTest's usual
/// "reliable" setup, shared by S2 and S7.
const RELIABLE: &str = "--persistent --durable --confirm 100 --prefetch 200 --multi-ack 100";

pub fn all(backlog: u64) -> Vec<Scenario> {
    vec![
        Scenario {
            name: "S1",
            about: "1 producer, 1 consumer, transient 16 B, autoack",
            kind: Kind::Timed(flags("--producers 1 --consumers 1 --size 16 --autoack")),
        },
        Scenario {
            name: "S2-16B",
            about: "1/1 persistent 16 B, durable queue, confirm 100, prefetch 200, multi-ack 100",
            kind: Kind::Timed(flags(&format!("--size 16 {RELIABLE}"))),
        },
        Scenario {
            name: "S2-4KiB",
            about: "1/1 persistent 4 KiB, durable queue, confirm 100, prefetch 200, multi-ack 100",
            kind: Kind::Timed(flags(&format!("--size 4096 {RELIABLE}"))),
        },
        Scenario {
            name: "S3",
            about: "backlog of persistent 1 KiB messages in a durable queue, then drain",
            kind: Kind::Backlog { messages: backlog },
        },
        Scenario {
            name: "S4",
            about: "fanout to 10 queues, one consumer each, transient 16 B, autoack (deliveries/s)",
            kind: Kind::Timed(flags(
                "--fanout-queues 10 --consumers 1 --size 16 --autoack",
            )),
        },
        Scenario {
            name: "S6",
            about: "confirm window 1 (latency), persistent 16 B, durable queue",
            kind: Kind::Timed(flags(
                "--size 16 --persistent --durable --confirm 1 --prefetch 200 --multi-ack 1",
            )),
        },
        Scenario {
            name: "S6-quorum",
            about: "confirm window 1 on a quorum queue: both brokers fsync before each confirm",
            kind: Kind::Timed(flags(
                "--size 16 --persistent --durable --confirm 1 --prefetch 200 --multi-ack 1 \
                 --queue-args x-queue-type=quorum",
            )),
        },
        Scenario {
            name: "S7",
            about: "quorum queue, persistent 16 B, confirm 100, prefetch 200, multi-ack 100",
            kind: Kind::Timed(flags(&format!(
                "--size 16 {RELIABLE} --queue-args x-queue-type=quorum"
            ))),
        },
    ]
}

/// Flags of the backlog's fill phase: confirms so that the backlog is complete (every
/// message accepted) when the phase ends and memory is measured.
pub fn backlog_fill(messages: u64) -> Vec<String> {
    flags(&format!(
        "--producers 1 --consumers 0 --pmessages {messages} --size 1024 --persistent --durable --confirm 1000"
    ))
}

pub fn backlog_drain() -> Vec<String> {
    flags("--producers 0 --consumers 1 --drain --durable --prefetch 200 --multi-ack 100")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Args;
    use clap::Parser;

    /// Every scenario's flags must be accepted by mooring-loadgen itself.
    #[test]
    fn every_scenario_is_a_valid_loadgen_run() {
        let parse = |mut v: Vec<String>| {
            v.insert(0, "mooring-loadgen".into());
            Args::try_parse_from(v)
                .expect("flags parse")
                .plan()
                .expect("valid plan")
        };
        for s in all(1000) {
            match s.kind {
                Kind::Timed(mut f) => {
                    f.extend(flags("--duration 1"));
                    parse(f);
                }
                Kind::Backlog { messages } => {
                    let fill = parse(backlog_fill(messages));
                    assert_eq!(fill.pmessages, Some(1000));
                    assert!(parse(backlog_drain()).drain);
                }
            }
        }
        let names: Vec<_> = all(1).iter().map(|s| s.name).collect();
        assert_eq!(
            names,
            [
                "S1",
                "S2-16B",
                "S2-4KiB",
                "S3",
                "S4",
                "S6",
                "S6-quorum",
                "S7"
            ]
        );
    }
}
