//! A virtual host: its exchanges and queues by name.

use std::collections::HashMap;
use std::sync::Arc;

use amq_protocol::types::FieldTable;
use parking_lot::RwLock;

use super::exchange::{Exchange, ExchangeKind};
use super::queue::Queue;

pub struct VHost {
    pub name: Arc<str>,
    pub exchanges: RwLock<HashMap<String, Arc<Exchange>>>,
    pub queues: RwLock<HashMap<String, Arc<Queue>>>,
}

/// The exchanges every vhost has, as in RabbitMQ.
pub const PREDECLARED: &[(&str, ExchangeKind)] = &[
    ("", ExchangeKind::Direct),
    ("amq.direct", ExchangeKind::Direct),
    ("amq.fanout", ExchangeKind::Fanout),
    ("amq.topic", ExchangeKind::Topic),
    ("amq.headers", ExchangeKind::Headers),
    ("amq.match", ExchangeKind::Headers),
];

impl VHost {
    pub fn new(name: &str) -> VHost {
        let mut exchanges = HashMap::new();
        for (n, kind) in PREDECLARED {
            exchanges.insert(
                (*n).to_owned(),
                Arc::new(Exchange::new(
                    n,
                    *kind,
                    true,
                    false,
                    false,
                    FieldTable::default(),
                )),
            );
        }
        VHost {
            name: name.into(),
            exchanges: RwLock::new(exchanges),
            queues: RwLock::new(HashMap::new()),
        }
    }

    pub fn exchange(&self, name: &str) -> Option<Arc<Exchange>> {
        self.exchanges.read().get(name).cloned()
    }

    pub fn queue(&self, name: &str) -> Option<Arc<Queue>> {
        self.queues.read().get(name).cloned()
    }

    pub fn no_queue(&self, name: &str) -> String {
        format!("no queue '{name}' in vhost '{}'", self.name)
    }

    pub fn no_exchange(&self, name: &str) -> String {
        format!("no exchange '{name}' in vhost '{}'", self.name)
    }
}
