//! Periodic work that no client request triggers: expiring messages at queue heads (TTL),
//! deleting queues unused for their `x-expires`.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::broker::queue::Queue;
use super::broker::vhost::VHost;
use super::broker::Broker;

/// How often TTLs are checked: a message is dead-lettered at most this late.
pub const TICK: Duration = Duration::from_millis(20);

pub async fn run(broker: Arc<Broker>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        pass(&broker);
    }
}

pub fn pass(broker: &Broker) {
    let now = broker.now_ms();
    let vhosts: Vec<Arc<VHost>> = broker.vhosts.read().values().cloned().collect();
    for vh in vhosts {
        let queues: Vec<Arc<Queue>> = vh.queues.read().values().cloned().collect();
        for q in queues {
            let ttl = q.has_ttl.load(std::sync::atomic::Ordering::Relaxed);
            if !ttl && q.args.expires_ms.is_none() {
                continue;
            }
            if q.is_expired(now) {
                tracing::debug!(queue = %q.name, "queue expired (x-expires)");
                broker.remove_queue(&vh, &q);
                continue;
            }
            let dead = q.expire(now);
            broker.handle_dead(&q, dead);
        }
    }
}
