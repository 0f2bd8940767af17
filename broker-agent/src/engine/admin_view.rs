//! The engine as the admin HTTP server sees it: snapshots of counters, queues, connections.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use amq_protocol::types::{AMQPValue, FieldTable};

use super::admin::{AdminView, ConnectionInfo, Overview, QueueInfo, StorageStats};
use super::broker::args::QueueType;
use super::broker::stats::Stats;
use super::broker::Broker;

pub struct BrokerView(pub Arc<Broker>);

impl AdminView for BrokerView {
    fn overview(&self) -> Overview {
        let b = &self.0;
        let s = &b.stats;
        let mut consumers = 0;
        for vh in b.vhosts.read().values() {
            for q in vh.queues.read().values() {
                consumers += q.counts().consumers;
            }
        }
        let mut alarms = Vec::new();
        if b.memory_alarm.load(Ordering::Relaxed) {
            alarms.push("memory".to_owned());
        }
        if b.disk_alarm.load(Ordering::Relaxed) {
            alarms.push("disk".to_owned());
        }
        Overview {
            connections: Stats::get(&s.connections),
            channels: Stats::get(&s.channels),
            queues: Stats::get(&s.queues),
            consumers,
            messages_ready: Stats::get(&s.ready),
            messages_unacknowledged: Stats::get(&s.unacked),
            message_bytes: Stats::get(&s.message_bytes),
            published_total: s.published.load(Ordering::Relaxed),
            delivered_total: s.delivered.load(Ordering::Relaxed),
            acked_total: s.acked.load(Ordering::Relaxed),
            confirmed_total: s.confirmed.load(Ordering::Relaxed),
            returned_total: s.returned.load(Ordering::Relaxed),
            alarms,
        }
    }

    fn queues(&self) -> Vec<QueueInfo> {
        let mut out = Vec::new();
        for vh in self.0.vhosts.read().values() {
            for q in vh.queues.read().values() {
                let c = q.counts();
                let mut info = QueueInfo::new(vh.name.to_string(), q.name.to_string()).with_counts(
                    c.ready,
                    c.unacked,
                    c.consumers,
                );
                info.durable = q.durable;
                info.auto_delete = q.auto_delete;
                info.exclusive = q.exclusive_owner.is_some();
                info.arguments = table_json(&q.arguments);
                info.queue_type = match q.args.queue_type {
                    QueueType::Classic => "classic".into(),
                    QueueType::Quorum => "quorum".into(),
                };
                info.message_bytes_ready = c.ready_bytes;
                info.owner_pid_details = q.exclusive_owner.and_then(|id| {
                    self.0
                        .conns
                        .lock()
                        .get(&id)
                        .map(|h| format!("{} -> {}", h.peer, h.local))
                });
                out.push(info);
            }
        }
        out.sort_by(|a, b| (&a.vhost, &a.name).cmp(&(&b.vhost, &b.name)));
        out
    }

    fn connections(&self) -> Vec<ConnectionInfo> {
        let alarmed = self.0.alarmed();
        let mut out: Vec<ConnectionInfo> = self
            .0
            .conns
            .lock()
            .values()
            .map(|h| {
                let mut c = ConnectionInfo::new(h.peer, h.local);
                c.vhost = h.vhost.clone();
                c.user = h.user.clone();
                c.channels = u64::from(h.channels.load(Ordering::Relaxed));
                c.state = if alarmed { "blocked" } else { "running" }.into();
                c.ssl = h.tls;
                c.connected_at = h.connected_at_unix_ms;
                c.timeout = u64::from(h.heartbeat_secs);
                c.frame_max = u64::from(h.frame_max);
                c.channel_max = u64::from(h.channel_max);
                c.auth_mechanism = h.auth_mechanism.clone();
                c.client_properties = table_json(&h.client_properties);
                c
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    fn storage_stats(&self) -> StorageStats {
        self.0.storage.stats()
    }
}

/// Declared arguments as JSON values (numbers, strings, booleans; others as debug text).
fn table_json(t: &FieldTable) -> serde_json::Map<String, serde_json::Value> {
    t.inner()
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), value_json(v)))
        .collect()
}

fn value_json(v: &AMQPValue) -> serde_json::Value {
    use super::broker::args::{as_bool, as_int, as_str};
    if let Some(i) = as_int(v) {
        return i.into();
    }
    if let Some(s) = as_str(v) {
        return s.into();
    }
    if let Some(b) = as_bool(v) {
        return b.into();
    }
    match v {
        AMQPValue::FieldTable(t) => serde_json::Value::Object(table_json(t)),
        AMQPValue::FieldArray(a) => a.as_slice().iter().map(value_json).collect(),
        other => format!("{other:?}").into(),
    }
}
