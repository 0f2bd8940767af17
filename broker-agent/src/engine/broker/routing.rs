//! Routing a message through exchanges (exchange-to-exchange bindings, alternate exchanges)
//! into queues, and dead-lettering.

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;

use amq_protocol::protocol::basic::parse_properties;
use amq_protocol::types::FieldTable;

use super::deadletter::{dead_letter_header, would_cycle};
use super::exchange::{Dest, Exchange};
use super::message::Message;
use super::queue::{Dead, Pushed, Queue};
use super::vhost::VHost;
use super::Broker;
use crate::engine::amqp::error::{AmqpError, AmqpResult};

/// Alternate exchanges may chain; this bounds the chain (cycles are cut by a visited set too).
const MAX_ALTERNATE_DEPTH: usize = 8;

/// What happened to a publish.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// At least one queue took the message.
    pub routed: bool,
    /// Some queue refused it (x-overflow=reject-publish): the confirm is a nack.
    pub rejected: bool,
}

impl Broker {
    /// The queues a publish to `exchange` with `routing_key` reaches. 404 if no such exchange.
    pub fn route(
        &self,
        vh: &VHost,
        exchange: &str,
        routing_key: &str,
        header: &[u8],
        out: &mut Vec<Arc<Queue>>,
    ) -> AmqpResult<()> {
        if exchange.is_empty() {
            if let Some(q) = vh.queue(routing_key) {
                out.push(q);
            }
            return Ok(());
        }
        let ex = vh
            .exchange(exchange)
            .ok_or_else(|| AmqpError::not_found(vh.no_exchange(exchange)))?;
        route_from(vh, &ex, routing_key, header, out, 0);
        Ok(())
    }

    /// Enqueues a routed message into `queues`. Queues whose log got a record are added to
    /// `touched` (the caller flushes them before confirming).
    pub fn publish(
        &self,
        msg: &Arc<Message>,
        queues: &[Arc<Queue>],
        touched: &mut Vec<Arc<Queue>>,
    ) -> io::Result<Published> {
        let now = self.now_ms();
        let mut p = Published::default();
        for q in queues {
            match q.push(msg, now)? {
                Pushed::Enqueued { dead } => {
                    p.routed = true;
                    if q.durable && msg.persistent && !touched.iter().any(|t| Arc::ptr_eq(t, q)) {
                        touched.push(q.clone());
                    }
                    self.handle_dead(q, dead);
                }
                Pushed::Rejected { dead } => {
                    p.rejected = true;
                    self.handle_dead(q, dead);
                }
            }
        }
        Ok(p)
    }

    /// Dead-letters entries that left `q` (if it has a dead-letter exchange), following
    /// further dead letters the targets produce.
    pub fn handle_dead(&self, q: &Arc<Queue>, dead: Dead) {
        if dead.is_empty() {
            return;
        }
        let mut work: VecDeque<(Arc<Queue>, Dead)> = VecDeque::new();
        work.push_back((q.clone(), dead));
        let mut touched: Vec<Arc<Queue>> = Vec::new();
        // Each round moves messages one hop; cycles are cut by `would_cycle`, so this ends.
        while let Some((src, dead)) = work.pop_front() {
            let Some(dlx) = src.args.dead_letter_exchange.clone() else {
                continue;
            };
            let Some(vh) = self.vhost(&src.vhost) else {
                continue;
            };
            for (entry, reason) in dead.entries {
                let Some(header) = dead_letter_header(&entry.msg, &src.name, reason) else {
                    continue;
                };
                let rk: Arc<str> = match &src.args.dead_letter_routing_key {
                    Some(k) => k.as_str().into(),
                    None => entry.msg.routing_key.clone(),
                };
                let msg = Arc::new(
                    entry
                        .msg
                        .with_header(header, dlx.as_str().into(), rk.clone()),
                );
                let mut targets = Vec::new();
                if self
                    .route(&vh, &dlx, &rk, &msg.header, &mut targets)
                    .is_err()
                {
                    tracing::debug!(queue = %src.name, dlx = %dlx, "dead-letter exchange missing; message dropped");
                    continue;
                }
                targets.retain(|t| !would_cycle(&msg.header, &t.name));
                let now = self.now_ms();
                for t in targets {
                    match t.push(&msg, now) {
                        Ok(Pushed::Enqueued { dead }) => {
                            if t.durable
                                && msg.persistent
                                && !touched.iter().any(|x| Arc::ptr_eq(x, &t))
                            {
                                touched.push(t.clone());
                            }
                            if !dead.is_empty() {
                                work.push_back((t, dead));
                            }
                        }
                        Ok(Pushed::Rejected { dead }) => {
                            if !dead.is_empty() {
                                work.push_back((t, dead));
                            }
                        }
                        Err(e) => {
                            tracing::warn!(queue = %t.name, error = %e, "dead-lettering into queue failed")
                        }
                    }
                }
            }
        }
        for t in touched {
            if let Err(e) = t.flush() {
                tracing::warn!(queue = %t.name, error = %e, "flushing dead letters failed");
            }
        }
    }

    /// Dispatches a queue and dead-letters whatever expired on the way.
    pub fn dispatch(&self, q: &Arc<Queue>) {
        let dead = q.dispatch(self.now_ms());
        self.handle_dead(q, dead);
    }
}

fn route_from(
    vh: &VHost,
    ex: &Arc<Exchange>,
    routing_key: &str,
    header: &[u8],
    out: &mut Vec<Arc<Queue>>,
    depth: usize,
) {
    let mut headers: Option<Option<FieldTable>> = None;
    let mut visited: Vec<Arc<str>> = vec![ex.name.clone()];
    let mut pending = vec![ex.clone()];
    let mut dests = Vec::new();
    while let Some(e) = pending.pop() {
        dests.clear();
        let h = if e.needs_headers() {
            headers
                .get_or_insert_with(|| parse_headers(header))
                .as_ref()
        } else {
            None
        };
        e.route(routing_key, h, &mut dests);
        for d in dests.drain(..) {
            match d {
                Dest::Queue(q) => {
                    if !q.is_deleted() && !out.iter().any(|x| Arc::ptr_eq(x, &q)) {
                        out.push(q);
                    }
                }
                Dest::Exchange(n) => {
                    if !visited.contains(&n) {
                        if let Some(x) = vh.exchange(&n) {
                            pending.push(x);
                        }
                        visited.push(n);
                    }
                }
            }
        }
    }
    if out.is_empty() && depth < MAX_ALTERNATE_DEPTH {
        if let Some(ae) = ex.alternate.as_deref().and_then(|n| vh.exchange(n)) {
            if !Arc::ptr_eq(&ae, ex) {
                route_from(vh, &ae, routing_key, header, out, depth + 1);
            }
        }
    }
}

fn parse_headers(header: &[u8]) -> Option<FieldTable> {
    let (_, props) = parse_properties(header.get(12..)?).ok()?;
    props.headers().clone()
}

/// The routing keys in the `CC` and `BCC` headers, and whether `BCC` is present.
pub fn cc_keys(header: &[u8]) -> (Vec<String>, bool) {
    let Some(h) = parse_headers(header) else {
        return (Vec::new(), false);
    };
    let mut keys = Vec::new();
    for name in ["CC", "BCC"] {
        if let Some(amq_protocol::types::AMQPValue::FieldArray(a)) = h.inner().get(name) {
            keys.extend(a.as_slice().iter().filter_map(super::args::as_str));
        }
    }
    (keys, h.contains_key("BCC"))
}

/// The message without its `BCC` header (RabbitMQ removes it before delivery).
pub fn strip_bcc(msg: &Message) -> Option<Message> {
    let (_, props) = parse_properties(msg.header.get(12..)?).ok()?;
    let mut headers = props.headers().clone()?;
    let kept: std::collections::BTreeMap<_, _> = headers
        .inner()
        .iter()
        .filter(|(k, _)| k.as_str() != "BCC")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    headers = FieldTable::from(kept);
    let header = super::deadletter::encode_header(&props, headers, false, msg.body.len() as u64)?;
    Some(msg.with_header(header, msg.exchange.clone(), msg.routing_key.clone()))
}
