//! Memory and disk alarms: while either is raised, publishing connections are blocked
//! (connection.blocked is sent to clients that support it and their sockets are not read).
//!
//! "Memory" is the engine's own accounting of message bodies held by queues, compared with
//! `memory_high_watermark_bytes`; "disk" is the free space of the data directory's file
//! system (from `df`), compared with `disk_free_limit_bytes`.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::broker::stats::Stats;
use super::broker::Broker;

pub const MEMORY_CHECK_INTERVAL: Duration = Duration::from_millis(100);
pub const DISK_CHECK_INTERVAL: Duration = Duration::from_secs(5);

/// Pure decision: whether the memory alarm is on, with 10% hysteresis below the watermark.
pub fn memory_alarm(current: bool, used: u64, watermark: u64) -> bool {
    if current {
        used > watermark / 10 * 9
    } else {
        used > watermark
    }
}

pub async fn run(broker: Arc<Broker>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(MEMORY_CHECK_INTERVAL);
    let disk_every =
        (DISK_CHECK_INTERVAL.as_millis() / MEMORY_CHECK_INTERVAL.as_millis()).max(1) as u64;
    let mut n: u64 = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        let mut changed = false;
        let used = Stats::get(&broker.stats.message_bytes);
        let was = broker.memory_alarm.load(Ordering::Relaxed);
        let now = memory_alarm(was, used, broker.config.memory_high_watermark_bytes);
        if now != was {
            broker.memory_alarm.store(now, Ordering::Relaxed);
            tracing::warn!(
                used,
                watermark = broker.config.memory_high_watermark_bytes,
                alarm = now,
                "memory alarm"
            );
            changed = true;
        }
        if n.is_multiple_of(disk_every) && broker.config.disk_free_limit_bytes > 0 {
            let dir = broker.config.data_dir.clone();
            if let Ok(Some(free)) = tokio::task::spawn_blocking(move || free_bytes(&dir)).await {
                let was = broker.disk_alarm.load(Ordering::Relaxed);
                let now = free < broker.config.disk_free_limit_bytes;
                if now != was {
                    broker.disk_alarm.store(now, Ordering::Relaxed);
                    tracing::warn!(
                        free,
                        limit = broker.config.disk_free_limit_bytes,
                        alarm = now,
                        "disk alarm"
                    );
                    changed = true;
                }
            }
        }
        n += 1;
        if changed {
            broker.notify_alarm_change();
        }
    }
}

/// Free bytes of the file system holding `dir` (`df` keeps this crate free of unsafe code).
fn free_bytes(dir: &Path) -> Option<u64> {
    let out = std::process::Command::new("df")
        .args(["-P", "-B1"])
        .arg(dir)
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    text.lines().nth(1)?.split_whitespace().nth(3)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hysteresis() {
        assert!(!memory_alarm(false, 100, 100));
        assert!(memory_alarm(false, 101, 100));
        assert!(memory_alarm(true, 95, 100));
        assert!(!memory_alarm(true, 90, 100));
    }

    #[test]
    fn df_reports_something() {
        assert!(free_bytes(Path::new("/")).is_some_and(|b| b > 0));
    }
}
