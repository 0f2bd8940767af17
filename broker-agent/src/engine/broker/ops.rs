//! Declarations: exchanges, queues and bindings, with RabbitMQ's checks and reply texts.

use std::sync::Arc;

use amq_protocol::types::FieldTable;
use base64::Engine as _;
use rand::RngCore;

use super::args::{check_equivalent_args, QueueArgs};
use super::exchange::{Dest, Exchange, ExchangeKind};
use super::queue::Queue;
use super::stats::Stats;
use super::vhost::VHost;
use super::{durability_of, Broker};
use crate::engine::amqp::error::{AmqpError, AmqpResult};

/// Numbers spill logs so that a re-declared transient queue never meets an old one.
static SPILL_SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Arguments of exchange.declare.
pub struct ExchangeSpec<'a> {
    pub name: &'a str,
    pub kind: &'a str,
    pub passive: bool,
    pub durable: bool,
    pub auto_delete: bool,
    pub internal: bool,
    pub arguments: &'a FieldTable,
}

/// Arguments of queue.declare.
pub struct QueueSpec<'a> {
    pub name: &'a str,
    pub passive: bool,
    pub durable: bool,
    pub exclusive: bool,
    pub auto_delete: bool,
    pub arguments: &'a FieldTable,
    /// The declaring connection.
    pub conn_id: u64,
}

fn inequivalent(
    arg: &str,
    what: &str,
    received: impl std::fmt::Display,
    current: impl std::fmt::Display,
) -> AmqpError {
    AmqpError::precondition_failed(format!(
        "inequivalent arg '{arg}' for {what}: received '{received}' but current is '{current}'"
    ))
}

impl Broker {
    pub fn declare_exchange(&self, vh: &VHost, s: ExchangeSpec<'_>) -> AmqpResult<()> {
        let what = format!("exchange '{}' in vhost '{}'", s.name, vh.name);
        if s.passive {
            return match vh.exchange(s.name) {
                Some(_) => Ok(()),
                None => Err(AmqpError::not_found(vh.no_exchange(s.name))),
            };
        }
        let kind = ExchangeKind::parse(s.kind).ok_or_else(|| {
            AmqpError::command_invalid(format!("unknown exchange type '{}'", s.kind))
        })?;
        if let Some(existing) = vh.exchange(s.name) {
            if existing.kind != kind {
                return Err(inequivalent("type", &what, s.kind, existing.kind.as_str()));
            }
            if existing.durable != s.durable {
                return Err(inequivalent("durable", &what, s.durable, existing.durable));
            }
            if existing.auto_delete != s.auto_delete {
                return Err(inequivalent(
                    "auto_delete",
                    &what,
                    s.auto_delete,
                    existing.auto_delete,
                ));
            }
            if existing.internal != s.internal {
                return Err(inequivalent(
                    "internal",
                    &what,
                    s.internal,
                    existing.internal,
                ));
            }
            let cur = existing.arguments.inner().get("alternate-exchange");
            let rec = s.arguments.inner().get("alternate-exchange");
            if cur.and_then(super::args::as_str) != rec.and_then(super::args::as_str) {
                return Err(AmqpError::precondition_failed(format!(
                    "inequivalent arg 'alternate-exchange' for {what}"
                )));
            }
            return Ok(());
        }
        if s.name.is_empty() || s.name.starts_with("amq.") {
            return Err(AmqpError::access_refused(format!(
                "exchange name '{}' contains reserved prefix 'amq.*'",
                s.name
            )));
        }
        if let Some(ae) = s.arguments.inner().get("alternate-exchange") {
            if super::args::as_str(ae).is_none() {
                let (_, ty) = super::args::describe(ae);
                return Err(AmqpError::precondition_failed(format!(
                    "invalid type '{ty}' for arg 'alternate-exchange' in {what}"
                )));
            }
        }
        let e = Arc::new(Exchange::new(
            s.name,
            kind,
            s.durable,
            s.auto_delete,
            s.internal,
            s.arguments.clone(),
        ));
        {
            let mut ex = vh.exchanges.write();
            if ex.contains_key(s.name) {
                // Lost a race with an identical declaration on another connection.
                return Ok(());
            }
            ex.insert(s.name.to_owned(), e);
        }
        if s.durable {
            self.persist_definitions()?;
        }
        Ok(())
    }

    pub fn delete_exchange(&self, vh: &VHost, name: &str, if_unused: bool) -> AmqpResult<()> {
        if name.is_empty() {
            return Err(AmqpError::access_refused(
                "operation not permitted on the default exchange",
            ));
        }
        if name.starts_with("amq.") {
            return Err(AmqpError::access_refused(format!(
                "operation not permitted on exchange '{name}' in vhost '{}'",
                vh.name
            )));
        }
        let Some(e) = vh.exchange(name) else {
            // Deleting a missing exchange succeeds, as in RabbitMQ 3.10.
            return Ok(());
        };
        if if_unused && e.has_bindings() {
            return Err(AmqpError::precondition_failed(format!(
                "exchange '{name}' in vhost '{}' in use",
                vh.name
            )));
        }
        vh.exchanges.write().remove(name);
        // Bindings with this exchange as destination go too.
        let dest = Dest::Exchange(name.into());
        let others: Vec<Arc<Exchange>> = vh.exchanges.read().values().cloned().collect();
        for o in others {
            o.unbind_all(&dest);
        }
        if e.durable {
            self.persist_definitions()?;
        }
        Ok(())
    }

    /// Looks up a queue the connection may use (exclusive queues belong to one connection).
    pub fn queue_for(&self, vh: &VHost, name: &str, conn_id: u64) -> AmqpResult<Arc<Queue>> {
        let q = vh
            .queue(name)
            .ok_or_else(|| AmqpError::not_found(vh.no_queue(name)))?;
        check_exclusive(&q, conn_id)?;
        Ok(q)
    }

    /// queue.declare; returns (name, message count, consumer count).
    pub fn declare_queue(&self, vh: &VHost, s: QueueSpec<'_>) -> AmqpResult<(String, u32, u32)> {
        let now = self.now_ms();
        let name = if s.name.is_empty() {
            if s.passive {
                return Err(AmqpError::not_found(vh.no_queue("")));
            }
            server_name()
        } else {
            s.name.to_owned()
        };
        let what = format!("queue '{name}' in vhost '{}'", vh.name);
        if let Some(q) = vh.queue(&name) {
            check_exclusive(&q, s.conn_id)?;
            if !s.passive {
                if q.durable != s.durable {
                    return Err(inequivalent("durable", &what, s.durable, q.durable));
                }
                if q.auto_delete != s.auto_delete {
                    return Err(inequivalent(
                        "auto_delete",
                        &what,
                        s.auto_delete,
                        q.auto_delete,
                    ));
                }
                if q.exclusive_owner.is_some() != s.exclusive {
                    return Err(locked(&q));
                }
                check_equivalent_args(&q.arguments, s.arguments, &what)?;
            }
            q.touch(now);
            let c = q.counts();
            return Ok((name, c.ready as u32, c.consumers as u32));
        }
        if s.passive {
            return Err(AmqpError::not_found(vh.no_queue(&name)));
        }
        if name.starts_with("amq.") && !s.name.is_empty() {
            return Err(AmqpError::access_refused(format!(
                "queue name '{name}' contains reserved prefix 'amq.*'"
            )));
        }
        let args = QueueArgs::parse(s.arguments, &name, &vh.name)?;
        if args.queue_type == super::args::QueueType::Quorum
            && (!s.durable || s.exclusive || s.auto_delete)
        {
            return Err(AmqpError::precondition_failed(format!(
                "invalid property '{}' for {what}",
                if !s.durable {
                    "non-durable"
                } else if s.exclusive {
                    "exclusive"
                } else {
                    "auto-delete"
                }
            )));
        }
        if let Some(max) = self.limits.read().max_queues {
            if Stats::get(&self.stats.queues) >= u64::from(max) {
                return Err(AmqpError::precondition_failed(format!(
                    "cannot declare queue '{name}': queue limit in vhost '{}' ({max}) is reached",
                    vh.name
                )));
            }
        }
        let log = if s.durable {
            let key = crate::engine::storage::QueueKey {
                vhost: vh.name.to_string(),
                name: name.clone(),
            };
            Some(
                self.storage
                    .open_queue_log(&key, durability_of(&args))
                    .map_err(|e| {
                        AmqpError::internal_error(format!("cannot open queue log: {e}"))
                    })?,
            )
        } else {
            None
        };
        let q = Arc::new(Queue::new(
            vh.name.clone(),
            &name,
            s.durable,
            s.auto_delete,
            s.exclusive.then_some(s.conn_id),
            args,
            s.arguments.clone(),
            log,
            (!s.durable).then(|| {
                let n = SPILL_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                (
                    self.storage.clone(),
                    crate::engine::storage::QueueKey {
                        vhost: vh.name.to_string(),
                        // Never a durable queue's key (NUL is not in client names); removed at
                        // the next start by `retain_queue_logs`.
                        name: format!("\0spill:{n}:{name}"),
                    },
                )
            }),
            self.stats.clone(),
            now,
        ));
        {
            let mut qs = vh.queues.write();
            if let Some(existing) = qs.get(&name) {
                // Lost a race with another declaration of the same name.
                let c = existing.counts();
                return Ok((name, c.ready as u32, c.consumers as u32));
            }
            qs.insert(name.clone(), q.clone());
        }
        Stats::add(&self.stats.queues, 1);
        // Every queue is bound to the default exchange by its name (implicitly: routing looks
        // the queue up by name), as in RabbitMQ.
        if s.durable {
            self.persist_definitions()?;
        }
        Ok((name, 0, 0))
    }

    /// queue.delete; returns the number of ready messages deleted.
    pub fn delete_queue(
        &self,
        vh: &VHost,
        name: &str,
        if_unused: bool,
        if_empty: bool,
        conn_id: u64,
    ) -> AmqpResult<u32> {
        let Some(q) = vh.queue(name) else {
            return Ok(0);
        };
        check_exclusive(&q, conn_id)?;
        let c = q.counts();
        if if_unused && c.consumers > 0 {
            return Err(AmqpError::precondition_failed(format!(
                "queue '{name}' in vhost '{}' in use",
                vh.name
            )));
        }
        if if_empty && c.ready > 0 {
            return Err(AmqpError::precondition_failed(format!(
                "queue '{name}' in vhost '{}' not empty",
                vh.name
            )));
        }
        Ok(self.remove_queue(vh, &q) as u32)
    }

    /// Removes a queue: unbinds it, cancels its consumers, deletes its log.
    pub fn remove_queue(&self, vh: &VHost, q: &Arc<Queue>) -> u64 {
        {
            let mut qs = vh.queues.write();
            match qs.get(&*q.name) {
                Some(cur) if Arc::ptr_eq(cur, q) => {
                    qs.remove(&*q.name);
                }
                _ => return 0,
            }
        }
        let (n, consumers, log) = q.delete();
        Stats::add(&self.stats.queues, -1);
        // Consumers learn of the deletion with basic.cancel (consumer_cancel_notify).
        for c in consumers {
            c.channel.conn.send(|out| {
                crate::engine::amqp::frame::write_method(
                    out,
                    c.channel.id,
                    &amq_protocol::protocol::AMQPClass::Basic(
                        amq_protocol::protocol::basic::AMQPMethod::Cancel(
                            amq_protocol::protocol::basic::Cancel {
                                consumer_tag: c.tag.as_ref().into(),
                                nowait: true,
                            },
                        ),
                    ),
                )
            });
        }
        let dest = Dest::Queue(q.clone());
        let exchanges: Vec<Arc<Exchange>> = vh.exchanges.read().values().cloned().collect();
        let mut emptied = Vec::new();
        for e in exchanges {
            if e.unbind_all(&dest) > 0 && e.auto_delete && !e.has_bindings() {
                emptied.push(e);
            }
        }
        for e in emptied {
            vh.exchanges.write().remove(&*e.name);
        }
        if q.durable {
            drop(log);
            if let Err(e) = self.storage.delete_queue_log(&Broker::queue_key(q)) {
                tracing::warn!(queue = %q.name, error = %e, "deleting queue log failed");
            }
            if let Err(e) = self.save_definitions() {
                tracing::error!(error = format!("{e:#}"), "saving definitions failed");
            }
        }
        n
    }

    pub fn bind(
        &self,
        vh: &VHost,
        source: &str,
        dest: Dest,
        key: &str,
        args: &FieldTable,
    ) -> AmqpResult<()> {
        if source.is_empty() {
            return Err(AmqpError::access_refused(
                "operation not permitted on the default exchange",
            ));
        }
        let src = vh
            .exchange(source)
            .ok_or_else(|| AmqpError::not_found(vh.no_exchange(source)))?;
        if src.kind == ExchangeKind::Headers {
            if let Some(m) = args.inner().get("x-match") {
                let m = super::args::as_str(m).unwrap_or_default();
                if !matches!(m.as_str(), "all" | "any" | "all-with-x" | "any-with-x") {
                    return Err(AmqpError::precondition_failed(format!(
                        "Invalid x-match field value <<\"{m}\">>; expected all, any, all-with-x, or any-with-x"
                    )));
                }
            }
        }
        if let Dest::Exchange(d) = &dest {
            if d.is_empty() {
                return Err(AmqpError::access_refused(
                    "operation not permitted on the default exchange",
                ));
            }
            if vh.exchange(d).is_none() {
                return Err(AmqpError::not_found(vh.no_exchange(d)));
            }
        }
        let durable = src.durable
            && match &dest {
                Dest::Queue(q) => q.durable,
                Dest::Exchange(d) => vh.exchange(d).is_some_and(|x| x.durable),
            };
        if src.bind(dest, key, args.clone()) && durable {
            self.persist_definitions()?;
        }
        Ok(())
    }

    pub fn unbind(
        &self,
        vh: &VHost,
        source: &str,
        dest: Dest,
        key: &str,
        args: &FieldTable,
    ) -> AmqpResult<()> {
        if source.is_empty() {
            return Err(AmqpError::access_refused(
                "operation not permitted on the default exchange",
            ));
        }
        let Some(src) = vh.exchange(source) else {
            return Err(AmqpError::not_found(vh.no_exchange(source)));
        };
        if src.unbind(&dest, key, args) {
            if src.auto_delete && !src.has_bindings() {
                vh.exchanges.write().remove(source);
            }
            if src.durable {
                self.persist_definitions()?;
            }
        }
        Ok(())
    }

    fn persist_definitions(&self) -> AmqpResult<()> {
        self.save_definitions().map_err(|e| {
            tracing::error!(error = format!("{e:#}"), "saving definitions failed");
            AmqpError::internal_error("cannot save definitions")
        })
    }
}

fn check_exclusive(q: &Queue, conn_id: u64) -> AmqpResult<()> {
    match q.exclusive_owner {
        Some(owner) if owner != conn_id => Err(locked(q)),
        _ => Ok(()),
    }
}

fn locked(q: &Queue) -> AmqpError {
    AmqpError::resource_locked(format!(
        "cannot obtain exclusive access to locked queue '{}' in vhost '{}'. It could be \
         originally declared on another connection or the exclusive property value does not \
         match that of the original declaration.",
        q.name, q.vhost
    ))
}

/// `amq.gen-` and 22 URL-safe base64 characters, as RabbitMQ names server-named queues.
fn server_name() -> String {
    let mut b = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut b);
    format!(
        "amq.gen-{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
    )
}
