//! Renders the Prometheus text exposition format (version 0.0.4) by hand: a few dozen lines
//! do not justify a metrics crate, and the engine already keeps its own atomics.

use std::fmt::Write;

use super::view::{Overview, QueueInfo, StorageStats};

pub(super) const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Alarms reported as a 0/1 gauge each, present even when clear so that alerts can match them.
const ALARM_RESOURCES: [&str; 2] = ["memory", "disk"];

pub(super) fn render(overview: &Overview, storage: &StorageStats, queues: &[QueueInfo]) -> String {
    let mut out = String::with_capacity(4096 + queues.len() * 300);
    let o = overview;
    let node_metrics: [(&str, &str, &str, u64); 16] = [
        (
            "connections",
            "gauge",
            "Open client connections.",
            o.connections,
        ),
        (
            "channels",
            "gauge",
            "Open channels on all connections.",
            o.channels,
        ),
        ("queues", "gauge", "Declared queues.", o.queues),
        (
            "consumers",
            "gauge",
            "Consumers on all queues.",
            o.consumers,
        ),
        (
            "messages_ready",
            "gauge",
            "Messages ready for delivery, all queues.",
            o.messages_ready,
        ),
        (
            "messages_unacknowledged",
            "gauge",
            "Messages delivered and not yet acknowledged, all queues.",
            o.messages_unacknowledged,
        ),
        (
            "message_bytes",
            "gauge",
            "Body bytes of messages held by queues.",
            o.message_bytes,
        ),
        (
            "messages_published_total",
            "counter",
            "Messages published by clients.",
            o.published_total,
        ),
        (
            "messages_delivered_total",
            "counter",
            "Messages delivered to consumers or basic.get.",
            o.delivered_total,
        ),
        (
            "messages_acked_total",
            "counter",
            "Messages acknowledged by consumers.",
            o.acked_total,
        ),
        (
            "messages_confirmed_total",
            "counter",
            "Publishes confirmed to publishers.",
            o.confirmed_total,
        ),
        (
            "messages_returned_total",
            "counter",
            "Mandatory messages returned as unroutable.",
            o.returned_total,
        ),
        (
            "storage_bytes_on_disk",
            "gauge",
            "Bytes of queue log files on disk.",
            storage.bytes_on_disk,
        ),
        (
            "storage_fsyncs_total",
            "counter",
            "fsync and fdatasync calls made by storage.",
            storage.fsyncs_total,
        ),
        (
            "storage_segments",
            "gauge",
            "Queue log segment files on disk.",
            storage.segments,
        ),
        (
            "alarms",
            "gauge",
            "Resource alarms currently raised.",
            o.alarms.len() as u64,
        ),
    ];
    for (name, kind, help, value) in node_metrics {
        header(&mut out, name, kind, help);
        let _ = writeln!(out, "mooring_{name} {value}");
    }

    header(
        &mut out,
        "alarm",
        "gauge",
        "1 while the resource alarm is raised (publishers blocked).",
    );
    for resource in ALARM_RESOURCES {
        let raised = o.alarms.iter().any(|a| a == resource);
        let _ = writeln!(
            out,
            "mooring_alarm{{resource=\"{resource}\"}} {}",
            u8::from(raised)
        );
    }

    let queue_metrics: [(&str, &str, QueueValue); 3] = [
        (
            "queue_messages_ready",
            "Messages ready for delivery in the queue.",
            |q| q.messages_ready,
        ),
        (
            "queue_messages_unacknowledged",
            "Messages delivered and not yet acknowledged.",
            |q| q.messages_unacknowledged,
        ),
        ("queue_consumers", "Consumers on the queue.", |q| {
            q.consumers
        }),
    ];
    for (name, help, value) in queue_metrics {
        header(&mut out, name, "gauge", help);
        for q in queues {
            let _ = writeln!(
                out,
                "mooring_{name}{{vhost=\"{}\",queue=\"{}\"}} {}",
                escape_label(&q.vhost),
                escape_label(&q.name),
                value(q)
            );
        }
    }
    out
}

/// Picks one per-queue sample value.
type QueueValue = fn(&QueueInfo) -> u64;

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP mooring_{name} {help}");
    let _ = writeln!(out, "# TYPE mooring_{name} {kind}");
}

/// Label values may hold anything a queue name holds; the format escapes exactly these three.
fn escape_label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_escaped() {
        assert_eq!(escape_label(r#"a\b"c"#), r#"a\\b\"c"#);
        assert_eq!(escape_label("x\ny"), "x\\ny");
        assert_eq!(escape_label("plain.q"), "plain.q");
    }

    #[test]
    fn every_sample_has_help_and_type_and_parses() {
        let overview = Overview {
            alarms: vec!["disk".into()],
            published_total: 5,
            ..Overview::default()
        };
        let queues = vec![QueueInfo::new("/", "q\"1").with_counts(3, 1, 2)];
        let text = render(
            &overview,
            &StorageStats {
                bytes_on_disk: 10,
                fsyncs_total: 2,
                segments: 1,
            },
            &queues,
        );
        let mut typed = std::collections::HashSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE has name and kind");
                assert!(kind == "gauge" || kind == "counter");
                assert!(typed.insert(name.to_string()), "{name} typed twice");
                continue;
            }
            if line.starts_with("# HELP ") {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').expect("sample has a value");
            value.parse::<f64>().expect("value is a number");
            let name = series.split('{').next().expect("name");
            assert!(name.starts_with("mooring_"), "{name}");
            assert!(typed.contains(name), "{name} sampled before its TYPE line");
            assert!(!name.ends_with("_total") || text.contains(&format!("# TYPE {name} counter")));
        }
        assert!(text.contains("mooring_messages_published_total 5\n"));
        assert!(text.contains("mooring_alarm{resource=\"disk\"} 1\n"));
        assert!(text.contains("mooring_alarm{resource=\"memory\"} 0\n"));
        assert!(text.contains("mooring_queue_messages_ready{vhost=\"/\",queue=\"q\\\"1\"} 3\n"));
        assert!(text.contains("mooring_storage_fsyncs_total 2\n"));
    }
}
