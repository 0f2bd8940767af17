//! Exchanges and their bindings. Routing reads the bindings under a read lock; declaring and
//! binding are rare and take the write lock.

use std::collections::HashMap;
use std::sync::Arc;

use amq_protocol::types::FieldTable;
use parking_lot::RwLock;

use super::headers::headers_match;
use super::queue::Queue;
use super::topic::topic_matches;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExchangeKind {
    Direct,
    Fanout,
    Topic,
    Headers,
}

impl ExchangeKind {
    pub fn parse(s: &str) -> Option<ExchangeKind> {
        Some(match s {
            "direct" => ExchangeKind::Direct,
            "fanout" => ExchangeKind::Fanout,
            "topic" => ExchangeKind::Topic,
            "headers" => ExchangeKind::Headers,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ExchangeKind::Direct => "direct",
            ExchangeKind::Fanout => "fanout",
            ExchangeKind::Topic => "topic",
            ExchangeKind::Headers => "headers",
        }
    }
}

/// Where a binding leads.
#[derive(Clone)]
pub enum Dest {
    Queue(Arc<Queue>),
    Exchange(Arc<str>),
}

impl Dest {
    pub fn same(&self, other: &Dest) -> bool {
        match (self, other) {
            (Dest::Queue(a), Dest::Queue(b)) => Arc::ptr_eq(a, b),
            (Dest::Exchange(a), Dest::Exchange(b)) => a == b,
            _ => false,
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Dest::Queue(q) => &q.name,
            Dest::Exchange(e) => e,
        }
    }
}

#[derive(Clone)]
pub struct Binding {
    pub dest: Dest,
    pub key: String,
    pub args: FieldTable,
}

#[derive(Default)]
struct Bindings {
    /// Every binding, in creation order.
    all: Vec<Binding>,
    /// For direct exchanges: routing key -> destinations (a copy of `all`, for O(1) routing).
    direct: HashMap<String, Vec<Dest>>,
}

pub struct Exchange {
    pub name: Arc<str>,
    pub kind: ExchangeKind,
    pub durable: bool,
    pub auto_delete: bool,
    pub internal: bool,
    pub arguments: FieldTable,
    pub alternate: Option<String>,
    bindings: RwLock<Bindings>,
}

impl Exchange {
    pub fn new(
        name: &str,
        kind: ExchangeKind,
        durable: bool,
        auto_delete: bool,
        internal: bool,
        arguments: FieldTable,
    ) -> Exchange {
        let alternate = arguments
            .inner()
            .get("alternate-exchange")
            .and_then(super::args::as_str);
        Exchange {
            name: name.into(),
            kind,
            durable,
            auto_delete,
            internal,
            arguments,
            alternate,
            bindings: RwLock::new(Bindings::default()),
        }
    }

    /// Adds a binding; returns false if the same binding already existed.
    pub fn bind(&self, dest: Dest, key: &str, args: FieldTable) -> bool {
        let mut b = self.bindings.write();
        if b.all
            .iter()
            .any(|x| x.dest.same(&dest) && x.key == key && x.args == args)
        {
            return false;
        }
        if self.kind == ExchangeKind::Direct {
            let list = b.direct.entry(key.to_owned()).or_default();
            if !list.iter().any(|d| d.same(&dest)) {
                list.push(dest.clone());
            }
        }
        b.all.push(Binding {
            dest,
            key: key.to_owned(),
            args,
        });
        true
    }

    /// Removes a binding; returns false if there was none.
    pub fn unbind(&self, dest: &Dest, key: &str, args: &FieldTable) -> bool {
        let mut b = self.bindings.write();
        let before = b.all.len();
        b.all
            .retain(|x| !(x.dest.same(dest) && x.key == key && &x.args == args));
        let removed = b.all.len() != before;
        if removed && self.kind == ExchangeKind::Direct {
            self.rebuild_direct(&mut b, key);
        }
        removed
    }

    /// Removes every binding to `dest`; returns how many were removed.
    pub fn unbind_all(&self, dest: &Dest) -> usize {
        let mut b = self.bindings.write();
        let before = b.all.len();
        let keys: Vec<String> = b
            .all
            .iter()
            .filter(|x| x.dest.same(dest))
            .map(|x| x.key.clone())
            .collect();
        b.all.retain(|x| !x.dest.same(dest));
        if self.kind == ExchangeKind::Direct {
            for k in keys {
                self.rebuild_direct(&mut b, &k);
            }
        }
        before - b.all.len()
    }

    fn rebuild_direct(&self, b: &mut Bindings, key: &str) {
        let mut list: Vec<Dest> = Vec::new();
        for x in b.all.iter().filter(|x| x.key == key) {
            if !list.iter().any(|d| d.same(&x.dest)) {
                list.push(x.dest.clone());
            }
        }
        if list.is_empty() {
            b.direct.remove(key);
        } else {
            b.direct.insert(key.to_owned(), list);
        }
    }

    pub fn has_bindings(&self) -> bool {
        !self.bindings.read().all.is_empty()
    }

    pub fn has_binding(&self, dest: &Dest, key: &str, args: &FieldTable) -> bool {
        self.bindings
            .read()
            .all
            .iter()
            .any(|x| x.dest.same(dest) && x.key == key && &x.args == args)
    }

    pub fn bindings(&self) -> Vec<Binding> {
        self.bindings.read().all.clone()
    }

    /// Appends the destinations matching `routing_key` (and `headers`, for headers exchanges).
    pub fn route(&self, routing_key: &str, headers: Option<&FieldTable>, out: &mut Vec<Dest>) {
        let b = self.bindings.read();
        match self.kind {
            ExchangeKind::Direct => {
                if let Some(list) = b.direct.get(routing_key) {
                    out.extend(list.iter().cloned());
                }
            }
            ExchangeKind::Fanout => out.extend(b.all.iter().map(|x| x.dest.clone())),
            ExchangeKind::Topic => out.extend(
                b.all
                    .iter()
                    .filter(|x| topic_matches(&x.key, routing_key))
                    .map(|x| x.dest.clone()),
            ),
            ExchangeKind::Headers => out.extend(
                b.all
                    .iter()
                    .filter(|x| headers_match(&x.args, headers))
                    .map(|x| x.dest.clone()),
            ),
        }
    }

    /// Whether routing needs the message's headers table parsed.
    pub fn needs_headers(&self) -> bool {
        self.kind == ExchangeKind::Headers
    }
}
