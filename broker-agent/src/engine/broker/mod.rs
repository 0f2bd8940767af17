//! The broker's shared state: vhosts with their exchanges and queues, users, counters, the
//! registry of connections, and the storage behind durable definitions and queue logs.
//! Connection tasks operate on it directly (no actor hop per message).

pub mod args;
pub mod consumer;
pub mod deadletter;
pub mod exchange;
pub mod headers;
pub mod message;
pub mod ops;
pub mod queue;
pub mod routing;
pub mod stats;
pub mod topic;
pub mod vhost;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use parking_lot::{Mutex, RwLock};
use tokio::sync::mpsc;

use self::consumer::ConnLink;
use self::exchange::{Dest, Exchange, ExchangeKind};
use self::queue::Queue;
use self::stats::Stats;
use self::vhost::VHost;
use super::amqp::error::AmqpError;
use super::config::{EngineConfig, Limits};
use super::definitions::{BindingDef, Definitions, ExchangeDef, QueueDef, DEFINITIONS_VERSION};
use super::storage::{Durability, QueueKey, Storage};
use super::users::{UserDef, UserStore};

/// Messages to a connection task from outside it.
#[derive(Debug)]
pub enum ConnControl {
    /// Close the connection with this error (e.g. 320 when its user was deleted).
    ForceClose(AmqpError),
    /// An alarm was raised or cleared: send connection.blocked / unblocked.
    AlarmChanged,
}

/// A live client connection, as the rest of the engine sees it.
pub struct ConnHandle {
    pub id: u64,
    pub user: String,
    pub vhost: String,
    pub peer: SocketAddr,
    /// Our end of the connection.
    pub local: SocketAddr,
    pub tls: bool,
    pub frame_max: u32,
    pub channel_max: u16,
    pub heartbeat_secs: u16,
    /// Milliseconds since the Unix epoch.
    pub connected_at_unix_ms: u64,
    /// The password hash the user logged in with; a change closes the connection.
    pub password_hash: String,
    pub link: Arc<ConnLink>,
    pub control: mpsc::UnboundedSender<ConnControl>,
    /// Open channels.
    pub channels: AtomicU32,
    pub client_properties: amq_protocol::types::FieldTable,
    pub auth_mechanism: String,
}

pub struct Broker {
    pub vhosts: RwLock<HashMap<String, Arc<VHost>>>,
    pub users: RwLock<UserStore>,
    pub loopback_users: Vec<String>,
    pub storage: Storage,
    pub stats: Arc<Stats>,
    pub limits: RwLock<Limits>,
    pub config: EngineConfig,
    pub conns: Mutex<HashMap<u64, Arc<ConnHandle>>>,
    epoch: Instant,
    next_conn_id: AtomicU64,
    /// Serialises definition snapshots so that a later one is never overwritten by an earlier.
    defs_lock: Mutex<()>,
    pub memory_alarm: AtomicBool,
    pub disk_alarm: AtomicBool,
}

/// How long an engine start waits for an engine of this process that is shutting down to
/// let go of the data directory (its last tasks drop their handles a moment after
/// `shutdown` returns). Another process holding it fails the start after this long too.
const STORAGE_RELEASE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

fn open_storage(sc: super::storage::StorageConfig) -> std::io::Result<Storage> {
    let deadline = Instant::now() + STORAGE_RELEASE_WAIT;
    loop {
        match Storage::open(sc.clone()) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

impl Broker {
    /// Opens storage, loads the definitions snapshot and recovers every durable queue.
    pub fn open(config: EngineConfig) -> anyhow::Result<Arc<Broker>> {
        let mut sc = super::storage::StorageConfig::new(&config.data_dir);
        sc.sync_interval = config.sync_interval;
        sc.tap = config.replication_tap.clone();
        let storage = open_storage(sc).context("opening storage")?;
        let defs = match storage.load_definitions().context("loading definitions")? {
            Some(bytes) => Some(Definitions::decode(&bytes).context("decoding definitions")?),
            None => None,
        };
        let users = match &defs {
            Some(d) if !config.force_users => d.users.clone(),
            _ => config.initial_users.clone(),
        };
        let broker = Arc::new(Broker {
            vhosts: RwLock::new(HashMap::new()),
            users: RwLock::new(UserStore::new(users)),
            loopback_users: config.loopback_users.clone(),
            storage,
            stats: Arc::new(Stats::default()),
            limits: RwLock::new(config.limits.clone()),
            config,
            conns: Mutex::new(HashMap::new()),
            epoch: Instant::now(),
            next_conn_id: AtomicU64::new(1),
            defs_lock: Mutex::new(()),
            memory_alarm: AtomicBool::new(false),
            disk_alarm: AtomicBool::new(false),
        });
        broker.stats.body_budget.store(
            i64::try_from(broker.config.body_memory_budget_bytes).unwrap_or(i64::MAX),
            Ordering::Relaxed,
        );
        broker.ensure_vhosts(defs.as_ref().map(|d| d.vhosts.as_slice()).unwrap_or(&[]));
        if let Some(d) = &defs {
            broker.restore(d)?;
        }
        broker.save_definitions().context("saving definitions")?;
        Ok(broker)
    }

    /// Engine time in milliseconds (monotonic), used for TTLs and x-expires.
    pub fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    pub fn next_conn_id(&self) -> u64 {
        self.next_conn_id.fetch_add(1, Ordering::Relaxed)
    }

    pub fn vhost(&self, name: &str) -> Option<Arc<VHost>> {
        self.vhosts.read().get(name).cloned()
    }

    /// Creates the vhosts named by users (and `extra`), with their predeclared exchanges.
    fn ensure_vhosts(&self, extra: &[String]) {
        let mut names = self.users.read().vhosts();
        names.extend(extra.iter().cloned());
        let mut v = self.vhosts.write();
        for n in names {
            v.entry(n.clone())
                .or_insert_with(|| Arc::new(VHost::new(&n)));
        }
    }

    fn restore(&self, d: &Definitions) -> anyhow::Result<()> {
        let now = self.now_ms();
        for e in &d.exchanges {
            let Some(vh) = self.vhost(&e.vhost) else {
                continue;
            };
            let Some(kind) = ExchangeKind::parse(&e.kind) else {
                tracing::warn!(exchange = %e.name, kind = %e.kind, "skipping exchange of unknown type");
                continue;
            };
            vh.exchanges.write().insert(
                e.name.clone(),
                Arc::new(Exchange::new(
                    &e.name,
                    kind,
                    true,
                    e.auto_delete,
                    e.internal,
                    e.arguments.clone(),
                )),
            );
        }
        let mut keep = Vec::new();
        for q in &d.queues {
            let Some(vh) = self.vhost(&q.vhost) else {
                continue;
            };
            let args = match args::QueueArgs::parse(&q.arguments, &q.name, &q.vhost) {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(queue = %q.name, error = %e.text, "skipping queue with bad arguments");
                    continue;
                }
            };
            let key = QueueKey {
                vhost: q.vhost.clone(),
                name: q.name.clone(),
            };
            let durability = durability_of(&args);
            let log = self
                .storage
                .open_queue_log(&key, durability)
                .with_context(|| format!("opening the log of queue '{}'", q.name))?;
            let queue = Arc::new(Queue::new(
                vh.name.clone(),
                &q.name,
                true,
                q.auto_delete,
                None,
                args,
                q.arguments.clone(),
                Some(log),
                None,
                self.stats.clone(),
                now,
            ));
            let n = queue
                .recover(self.now_ms())
                .with_context(|| format!("recovering queue '{}'", q.name))?;
            tracing::info!(queue = %q.name, vhost = %q.vhost, messages = n, "recovered queue");
            Stats::add(&self.stats.queues, 1);
            vh.queues.write().insert(q.name.clone(), queue);
            keep.push(key);
        }
        self.storage
            .retain_queue_logs(&keep)
            .context("removing logs of deleted queues")?;
        for b in &d.bindings {
            let Some(vh) = self.vhost(&b.vhost) else {
                continue;
            };
            let Some(src) = vh.exchange(&b.source) else {
                continue;
            };
            let dest = if b.destination_type == "exchange" {
                Dest::Exchange(b.destination.as_str().into())
            } else {
                match vh.queue(&b.destination) {
                    Some(q) => Dest::Queue(q),
                    None => continue,
                }
            };
            src.bind(dest, &b.routing_key, b.arguments.clone());
        }
        Ok(())
    }

    /// Writes the definitions snapshot (durable entities and users). Rare: declarations only.
    pub fn save_definitions(&self) -> anyhow::Result<()> {
        let _guard = self.defs_lock.lock();
        let mut d = Definitions {
            version: DEFINITIONS_VERSION,
            users: self.users.read().all().cloned().collect(),
            ..Default::default()
        };
        d.users.sort_by(|a, b| a.name.cmp(&b.name));
        let vhosts: Vec<Arc<VHost>> = self.vhosts.read().values().cloned().collect();
        for vh in vhosts {
            d.vhosts.push(vh.name.to_string());
            let exchanges: Vec<Arc<Exchange>> = vh.exchanges.read().values().cloned().collect();
            for e in &exchanges {
                let predeclared = vhost::PREDECLARED.iter().any(|(n, _)| *n == &*e.name);
                if e.durable && !predeclared {
                    d.exchanges.push(ExchangeDef {
                        vhost: vh.name.to_string(),
                        name: e.name.to_string(),
                        kind: e.kind.as_str().to_owned(),
                        auto_delete: e.auto_delete,
                        internal: e.internal,
                        arguments: e.arguments.clone(),
                    });
                }
                if !e.durable {
                    continue;
                }
                for b in e.bindings() {
                    let (destination_type, durable_dest) = match &b.dest {
                        Dest::Queue(q) => (
                            "queue",
                            q.durable && q.exclusive_owner.is_none() && !q.is_deleted(),
                        ),
                        Dest::Exchange(n) => {
                            ("exchange", vh.exchange(n).is_some_and(|x| x.durable))
                        }
                    };
                    if durable_dest {
                        d.bindings.push(BindingDef {
                            vhost: vh.name.to_string(),
                            source: e.name.to_string(),
                            destination: b.dest.name().to_owned(),
                            destination_type: destination_type.to_owned(),
                            routing_key: b.key.clone(),
                            arguments: b.args.clone(),
                        });
                    }
                }
            }
            for q in vh.queues.read().values() {
                // Exclusive queues die with their connection, so never outlive a restart.
                if q.durable && q.exclusive_owner.is_none() {
                    d.queues.push(QueueDef {
                        vhost: vh.name.to_string(),
                        name: q.name.to_string(),
                        auto_delete: q.auto_delete,
                        arguments: q.arguments.clone(),
                    });
                }
            }
        }
        d.vhosts.sort();
        let bytes = d.encode()?;
        self.storage
            .save_definitions(&bytes)
            .context("writing the definitions snapshot")
    }

    /// Replaces the user set; closes connections of removed users or changed passwords.
    pub fn set_users(&self, users: Vec<UserDef>) -> anyhow::Result<()> {
        *self.users.write() = UserStore::new(users);
        self.ensure_vhosts(&[]);
        self.save_definitions()?;
        let store = self.users.read().clone();
        for c in self.conns.lock().values() {
            let gone = match store.get(&c.user) {
                None => true,
                Some(u) => u.password_hash != c.password_hash || !u.vhosts.contains(&c.vhost),
            };
            if gone {
                let _ = c
                    .control
                    .send(ConnControl::ForceClose(AmqpError::connection_forced(
                        format!("user '{}' was deleted or changed", c.user),
                    )));
            }
        }
        Ok(())
    }

    /// Whether publishers must be blocked.
    pub fn alarmed(&self) -> bool {
        self.memory_alarm.load(Ordering::Relaxed) || self.disk_alarm.load(Ordering::Relaxed)
    }

    pub fn notify_alarm_change(&self) {
        for c in self.conns.lock().values() {
            let _ = c.control.send(ConnControl::AlarmChanged);
        }
    }

    /// A queue's log on disk: named by vhost and queue.
    pub fn queue_key(q: &Queue) -> QueueKey {
        QueueKey {
            vhost: q.vhost.to_string(),
            name: q.name.to_string(),
        }
    }

    /// Deletes exclusive queues owned by a closing connection.
    pub fn drop_exclusive_queues(&self, conn_id: u64) {
        let vhosts: Vec<Arc<VHost>> = self.vhosts.read().values().cloned().collect();
        for vh in vhosts {
            let owned: Vec<Arc<Queue>> = vh
                .queues
                .read()
                .values()
                .filter(|q| q.exclusive_owner == Some(conn_id))
                .cloned()
                .collect();
            for q in owned {
                self.remove_queue(&vh, &q);
            }
        }
    }
}

pub fn durability_of(a: &args::QueueArgs) -> Durability {
    match a.queue_type {
        args::QueueType::Quorum => Durability::Synced,
        args::QueueType::Classic => Durability::Written,
    }
}
