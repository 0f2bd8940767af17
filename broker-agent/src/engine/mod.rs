//! The embedded queue engine: an AMQP 0-9-1 server wire-compatible with RabbitMQ clients.
//!
//! [`Engine::start`] opens storage, recovers durable state, binds the listeners and starts the
//! background tasks; the rest of the agent drives it through the few methods on [`Engine`].
//!
//! Layout: `amqp/` speaks the protocol (frames, handshake, connections, channels), `broker/`
//! holds the shared state (vhosts, exchanges, queues, routing, dead-lettering), `storage/`
//! keeps definitions and queue logs on disk, `admin/` serves HTTP.
//!
//! Durability, per queue type (what a publisher confirm promises):
//! - classic durable queue, persistent message (delivery_mode 2): the confirm is sent once the
//!   record has been written to the kernel (one write per queue per read batch), so it
//!   survives `kill -9`; the sync thread fsyncs every `sync_interval` (200 ms), so a power
//!   loss may lose the last interval. A failed fsync makes later confirms nacks.
//! - `x-queue-type: quorum` (durable only): the confirm waits for an fdatasync covering the
//!   record (shared by every publish waiting at that moment), so it survives power loss.
//! - transient messages, and any message in a non-durable queue: gone after a restart. Their
//!   bodies may be paged to a spill log beyond the memory budget; spill logs are deleted at
//!   start.
//! - acks are written with the same batching and flushed before channel.close-ok and
//!   connection.close-ok; a crash can redeliver what was acked in the last moment
//!   (at-least-once). The redelivered flag is not persisted.
//! - declarations of durable exchanges, queues and bindings, and users, are in the
//!   definitions snapshot, replaced atomically and fsync'd before the declare-ok.
//! - per-message and queue TTLs are stored as absolute expiry times with persistent messages
//!   and keep running while the broker is down.

pub mod admin;
mod admin_view;
pub mod alarms;
pub mod amqp;
pub mod broker;
pub mod config;
pub mod definitions;
pub mod housekeeping;
pub mod storage;
pub mod tls;
pub mod users;

use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use config::{EngineAddrs, EngineConfig, Limits, TlsFiles};
pub use users::{hash_password, verify_password, UserDef};

use broker::Broker;

/// A running engine. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    broker: Arc<Broker>,
    addrs: EngineAddrs,
    shutdown: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Engine {
    /// Opens storage, recovers durable state, binds the listeners, starts serving, and writes
    /// `<data_dir>/ports.json` (its presence means "ready").
    pub async fn start(config: EngineConfig) -> anyhow::Result<Engine> {
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("creating {}", config.data_dir.display()))?;
        let tls = match &config.tls {
            Some(files) => Some(tls::acceptor(files)?),
            None => None,
        };
        let amqp = TcpListener::bind(config.amqp_listen)
            .await
            .with_context(|| format!("binding amqp listener {}", config.amqp_listen))?;
        let amqps = match (config.amqps_listen, &tls) {
            (Some(addr), Some(_)) => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding amqps listener {addr}"))?,
            ),
            (Some(_), None) => anyhow::bail!("an amqps listener needs a TLS certificate and key"),
            _ => None,
        };
        let admin = match config.admin_listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding admin listener {addr}"))?,
            ),
            None => None,
        };
        let addrs = EngineAddrs {
            amqp: amqp.local_addr()?,
            amqps: amqps.as_ref().map(|l| l.local_addr()).transpose()?,
            admin: admin.as_ref().map(|l| l.local_addr()).transpose()?,
        };
        let data_dir = config.data_dir.clone();
        let broker = tokio::task::spawn_blocking(move || Broker::open(config))
            .await
            .context("engine start-up task")??;

        let (shutdown, rx) = watch::channel(false);
        let mut tasks = vec![
            tokio::spawn(amqp::server::accept_loop(
                amqp,
                broker.clone(),
                None,
                rx.clone(),
            )),
            tokio::spawn(alarms::run(broker.clone(), rx.clone())),
            tokio::spawn(housekeeping::run(broker.clone(), rx.clone())),
        ];
        if let Some(l) = amqps {
            tasks.push(tokio::spawn(amqp::server::accept_loop(
                l,
                broker.clone(),
                tls,
                rx.clone(),
            )));
        }
        if let Some(l) = admin {
            let view: Arc<dyn admin::AdminView> = Arc::new(admin_view::BrokerView(broker.clone()));
            let mut rx = rx.clone();
            tasks.push(tokio::spawn(async move {
                let stop = async move {
                    let _ = rx.changed().await;
                };
                if let Err(e) = admin::serve(l, view, stop).await {
                    tracing::error!(error = %e, "admin server failed");
                }
            }));
        }
        tracing::info!(amqp = %addrs.amqp, amqps = ?addrs.amqps, admin = ?addrs.admin, "engine listening");
        write_ports(&data_dir, &addrs).context("writing ports.json")?;
        Ok(Engine {
            inner: Arc::new(Inner {
                broker,
                addrs,
                shutdown,
                tasks: Mutex::new(tasks),
            }),
        })
    }

    pub fn local_addrs(&self) -> EngineAddrs {
        self.inner.addrs
    }

    /// Replaces the whole user set (persisted). Connections of removed users, or whose
    /// password changed, are closed with 320 CONNECTION_FORCED.
    pub fn set_users(&self, users: Vec<UserDef>) -> anyhow::Result<()> {
        self.inner.broker.set_users(users)
    }

    /// New limits, applied to connections and queues created from now on.
    pub fn set_limits(&self, limits: Limits) {
        *self.inner.broker.limits.write() = limits;
    }

    /// The shared broker state (for the agent's status reports and tests).
    pub fn broker(&self) -> &Arc<Broker> {
        &self.inner.broker
    }

    /// Stops accepting, closes every connection with 320 CONNECTION_FORCED, flushes queue logs.
    pub async fn shutdown(&self) {
        let _ = self.inner.shutdown.send(true);
        let tasks: Vec<JoinHandle<()>> = std::mem::take(&mut *self.inner.tasks.lock());
        for t in tasks {
            let _ = t.await;
        }
        // Connections end on the same signal; wait (bounded) until they have cleaned up.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        while !self.inner.broker.conns.lock().is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        for vh in self.inner.broker.vhosts.read().values() {
            for q in vh.queues.read().values() {
                if let Err(e) = q.flush() {
                    tracing::warn!(queue = %q.name, error = %e, "final flush failed");
                }
            }
        }
    }
}

/// `{"amqp":"127.0.0.1:NNN","admin":...,"amqps":...}`, written to a temp file then renamed.
fn write_ports(dir: &Path, addrs: &EngineAddrs) -> anyhow::Result<()> {
    // Absent listeners are left out rather than written as null.
    let mut json = serde_json::Map::new();
    json.insert("amqp".into(), addrs.amqp.to_string().into());
    if let Some(a) = addrs.admin {
        json.insert("admin".into(), a.to_string().into());
    }
    if let Some(a) = addrs.amqps {
        json.insert("amqps".into(), a.to_string().into());
    }
    let tmp = dir.join("ports.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec(&serde_json::Value::Object(json))?)?;
    std::fs::rename(&tmp, dir.join("ports.json"))?;
    Ok(())
}
