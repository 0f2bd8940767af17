//! basic.* methods: publish (with content assembly in `channel.rs`), consume, cancel, qos,
//! get, ack/nack/reject, recover.

use std::sync::atomic::AtomicU32;
use std::sync::Arc;

use amq_protocol::protocol::{basic, AMQPClass};
use base64::Engine as _;
use rand::RngCore;

use super::channel::{group_by_queue, send_method, AckAction, Channel, PendingContent};
use super::connection::{touched_bit, Connection, PendingConfirm};
use super::error::{AmqpError, AmqpResult};
use super::frame;
use crate::engine::broker::consumer::{Consumer, Unacked};
use crate::engine::broker::message::Message;
use crate::engine::broker::queue::Queue;
use crate::engine::broker::stats::Stats;

impl Connection {
    pub(super) fn basic_publish(
        &mut self,
        ch: &mut Channel,
        exchange: &str,
        routing_key: &str,
        mandatory: bool,
    ) -> AmqpResult<()> {
        self.has_published = true;
        let ex: Arc<str> = match &ch.last_exchange {
            Some(e) if &**e == exchange => e.clone(),
            _ => {
                if !exchange.is_empty() {
                    let vh = &self.session.vhost;
                    let e = vh
                        .exchange(exchange)
                        .ok_or_else(|| AmqpError::not_found(vh.no_exchange(exchange)).on(60, 40))?;
                    if e.internal {
                        return Err(AmqpError::access_refused(format!(
                            "cannot publish to internal exchange '{exchange}' in vhost '{}'",
                            vh.name
                        ))
                        .on(60, 40));
                    }
                }
                let e: Arc<str> = exchange.into();
                ch.last_exchange = Some(e.clone());
                e
            }
        };
        ch.content = Some(PendingContent {
            exchange: ex,
            routing_key: routing_key.to_owned(),
            mandatory,
            header: None,
            body_size: 0,
            parts: Vec::new(),
            received: 0,
        });
        Ok(())
    }

    /// Routes a complete message into its queues; queues the confirm for the end of the batch.
    pub(super) fn enqueue(
        &mut self,
        ch: &mut Channel,
        msg: Arc<Message>,
        mandatory: bool,
    ) -> AmqpResult<()> {
        Stats::inc(&self.broker.stats.published, 1);
        if let Some(e) = &msg.bad_expiration {
            return Err(
                AmqpError::precondition_failed(format!("invalid expiration '{e}'")).on(60, 40),
            );
        }
        if let Some(u) = msg
            .user_id
            .as_deref()
            .filter(|u| *u != self.session.user.name)
        {
            return Err(AmqpError::precondition_failed(format!(
                "user_id property set to '{u}' but authenticated user was '{}'",
                self.session.user.name
            ))
            .on(60, 40));
        }
        let mut queues = Vec::new();
        let vh = self.session.vhost.clone();
        let mut msg = msg;
        self.broker
            .route(
                &vh,
                &msg.exchange,
                &msg.routing_key,
                &msg.header,
                &mut queues,
            )
            .map_err(|e| e.on(60, 40))?;
        if msg.may_have_cc {
            // Sender-selected distribution: CC and BCC headers name more routing keys.
            let (keys, has_bcc) = crate::engine::broker::routing::cc_keys(&msg.header);
            for k in &keys {
                let mut more = Vec::new();
                self.broker
                    .route(&vh, &msg.exchange, k, &msg.header, &mut more)
                    .map_err(|e| e.on(60, 40))?;
                for q in more {
                    if !queues.iter().any(|x| Arc::ptr_eq(x, &q)) {
                        queues.push(q);
                    }
                }
            }
            if has_bcc {
                if let Some(stripped) = crate::engine::broker::routing::strip_bcc(&msg) {
                    msg = Arc::new(stripped);
                }
            }
        }
        let mut ack = true;
        if queues.is_empty() {
            if mandatory {
                Stats::inc(&self.broker.stats.returned, 1);
                let m = AMQPClass::Basic(basic::AMQPMethod::Return(basic::Return {
                    reply_code: 312,
                    reply_text: "NO_ROUTE".into(),
                    exchange: msg.exchange.as_ref().into(),
                    routing_key: msg.routing_key.as_ref().into(),
                }));
                let frame_max = self.link.frame_max();
                self.link.send(|out| {
                    frame::write_method(out, ch.id, &m);
                    frame::write_content(out, ch.id, &msg.header, &msg.body, frame_max);
                });
            }
        } else {
            match self.broker.publish(&msg, &queues, &mut self.touched) {
                Ok(p) => ack = !p.rejected,
                Err(e) => {
                    tracing::error!(error = %e, "appending to a queue log failed");
                    ack = false;
                }
            }
        }
        if ch.confirm {
            let seq = ch.next_publish_seq;
            ch.next_publish_seq += 1;
            // The logs this message was written to: only their flushes decide its confirm.
            let logs = queues
                .iter()
                .filter(|_| msg.persistent)
                .filter_map(|q| self.touched.iter().position(|t| Arc::ptr_eq(t, q)))
                .fold(0, |mask, i| mask | touched_bit(i));
            self.confirms.push(PendingConfirm {
                channel: ch.id,
                seq,
                ack,
                logs,
            });
        }
        Ok(())
    }

    /// ack / nack / reject from the client (buffered in a transaction).
    pub(super) fn settle(
        &mut self,
        ch: &mut Channel,
        tag: u64,
        multiple: bool,
        action: AckAction,
    ) -> AmqpResult<()> {
        if let Some(tx) = ch.tx.as_mut() {
            // Validate now so that an unknown tag fails at once, as RabbitMQ does.
            let st = ch.link.state.lock();
            let known = st.unacked.iter().any(|u| u.tag == tag);
            let all_outstanding = multiple && tag == 0;
            if !(known || all_outstanding) {
                return Err(AmqpError::precondition_failed(format!(
                    "unknown delivery tag {tag}"
                )));
            }
            drop(st);
            tx.acks.push((tag, multiple, action));
            return Ok(());
        }
        self.settle_now(ch, tag, multiple, action)
    }

    pub(super) fn settle_now(
        &mut self,
        ch: &mut Channel,
        tag: u64,
        multiple: bool,
        action: AckAction,
    ) -> AmqpResult<()> {
        let taken: Vec<Unacked> = {
            let mut st = ch.link.state.lock();
            if multiple && tag == 0 {
                st.unacked.drain(..).collect()
            } else {
                let Ok(pos) = st.unacked.binary_search_by_key(&tag, |u| u.tag) else {
                    return Err(AmqpError::precondition_failed(format!(
                        "unknown delivery tag {tag}"
                    )));
                };
                if multiple {
                    st.unacked.drain(..=pos).collect()
                } else {
                    st.unacked.remove(pos).into_iter().collect()
                }
            }
        };
        let n = taken.len() as u64;
        let now = self.broker.now_ms();
        for (q, entries) in group_by_queue(taken) {
            match action {
                AckAction::Ack => {
                    q.ack(entries);
                    self.touch(&q);
                }
                AckAction::Requeue => {
                    let dead = q.requeue(entries, now);
                    self.broker.handle_dead(&q, dead);
                }
                AckAction::Discard => {
                    let dead = q.reject(entries);
                    self.touch(&q);
                    self.broker.handle_dead(&q, dead);
                }
            }
        }
        if action == AckAction::Ack {
            Stats::inc(&self.broker.stats.acked, n);
        }
        // Credit came back: consumers on this channel may receive more.
        self.redispatch(ch);
        Ok(())
    }

    pub(super) fn basic_method(
        &mut self,
        ch: &mut Channel,
        m: basic::AMQPMethod,
    ) -> AmqpResult<()> {
        let id = ch.id;
        let vh = self.session.vhost.clone();
        match m {
            basic::AMQPMethod::Publish(p) => {
                if p.immediate {
                    return Err(AmqpError::not_implemented("immediate=true"));
                }
                self.basic_publish(ch, p.exchange.as_str(), p.routing_key.as_str(), p.mandatory)
            }
            basic::AMQPMethod::Ack(a) => {
                self.settle(ch, a.delivery_tag, a.multiple, AckAction::Ack)
            }
            basic::AMQPMethod::Nack(n) => {
                let action = if n.requeue {
                    AckAction::Requeue
                } else {
                    AckAction::Discard
                };
                self.settle(ch, n.delivery_tag, n.multiple, action)
            }
            basic::AMQPMethod::Reject(r) => {
                let action = if r.requeue {
                    AckAction::Requeue
                } else {
                    AckAction::Discard
                };
                self.settle(ch, r.delivery_tag, false, action)
            }
            basic::AMQPMethod::Qos(q) => {
                // RabbitMQ's meaning: global=false applies to each consumer created afterwards,
                // global=true to the whole channel.
                if q.global {
                    ch.link.state.lock().global_prefetch = u32::from(q.prefetch_count);
                } else {
                    ch.prefetch = u32::from(q.prefetch_count);
                }
                send_method(
                    &self.link,
                    id,
                    AMQPClass::Basic(basic::AMQPMethod::QosOk(basic::QosOk {})),
                );
                self.redispatch(ch);
                Ok(())
            }
            basic::AMQPMethod::Consume(c) => {
                let q = self
                    .broker
                    .queue_for(&vh, ch.queue_name(c.queue.as_str())?, self.id)?;
                let tag: Arc<str> = if c.consumer_tag.as_str().is_empty() {
                    consumer_tag().into()
                } else {
                    c.consumer_tag.as_str().into()
                };
                // A consumer whose queue was deleted (and which the server cancelled) frees
                // its tag.
                if ch.consumers.get(&tag).is_some_and(|q| !q.is_deleted()) {
                    return Err(AmqpError::not_allowed(format!(
                        "attempt to reuse consumer tag '{tag}'"
                    )));
                }
                let consumer = Consumer {
                    tag: tag.clone(),
                    channel: ch.link.clone(),
                    no_ack: c.no_ack,
                    exclusive: c.exclusive,
                    prefetch: ch.prefetch,
                    unacked: Arc::new(AtomicU32::new(0)),
                };
                if !q.can_add_consumer(c.exclusive) {
                    return Err(AmqpError::access_refused(format!(
                        "queue '{}' in vhost '{}' in exclusive use",
                        q.name, vh.name
                    )));
                }
                if !c.nowait {
                    // consume-ok must precede the first delivery.
                    send_method(
                        &self.link,
                        id,
                        AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(basic::ConsumeOk {
                            consumer_tag: tag.as_ref().into(),
                        })),
                    );
                }
                match q.add_consumer(consumer, self.broker.now_ms()) {
                    Ok(dead) => {
                        ch.consumers.insert(tag, q.clone());
                        self.broker.handle_dead(&q, dead);
                        Ok(())
                    }
                    Err(_) => Err(AmqpError::access_refused(format!(
                        "queue '{}' in vhost '{}' in exclusive use",
                        q.name, vh.name
                    ))),
                }
            }
            basic::AMQPMethod::Cancel(c) => {
                if let Some(q) = ch.consumers.remove(c.consumer_tag.as_str()) {
                    if q.remove_consumer(&ch.link, c.consumer_tag.as_str(), self.broker.now_ms()) {
                        self.broker.remove_queue(&vh, &q);
                    }
                }
                if !c.nowait {
                    send_method(
                        &self.link,
                        id,
                        AMQPClass::Basic(basic::AMQPMethod::CancelOk(basic::CancelOk {
                            consumer_tag: c.consumer_tag,
                        })),
                    );
                }
                Ok(())
            }
            basic::AMQPMethod::Get(g) => {
                let q = self
                    .broker
                    .queue_for(&vh, ch.queue_name(g.queue.as_str())?, self.id)?;
                self.basic_get(ch, &q, g.no_ack);
                Ok(())
            }
            basic::AMQPMethod::Recover(basic::Recover { requeue: false })
            | basic::AMQPMethod::RecoverAsync(basic::RecoverAsync { requeue: false }) => {
                Err(AmqpError::not_implemented("requeue=false"))
            }
            basic::AMQPMethod::Recover(_) => {
                self.recover(ch);
                send_method(
                    &self.link,
                    id,
                    AMQPClass::Basic(basic::AMQPMethod::RecoverOk(basic::RecoverOk {})),
                );
                Ok(())
            }
            basic::AMQPMethod::RecoverAsync(_) => {
                self.recover(ch);
                Ok(())
            }
            _ => Err(AmqpError::command_invalid("unexpected basic method")),
        }
    }

    fn basic_get(&mut self, ch: &mut Channel, q: &Arc<Queue>, no_ack: bool) {
        let mut dead = crate::engine::broker::queue::Dead::none();
        let got = q.get(&ch.link, no_ack, self.broker.now_ms(), &mut dead);
        self.broker.handle_dead(q, dead);
        match got {
            Some((tag, msg, redelivered, remaining)) => {
                if no_ack {
                    self.touch(q);
                }
                let frame_max = self.link.frame_max();
                self.link.send(|out| {
                    frame::write_get_ok(
                        out,
                        ch.id,
                        tag,
                        redelivered,
                        &msg.exchange,
                        &msg.routing_key,
                        remaining,
                    );
                    frame::write_content(out, ch.id, &msg.header, &msg.body, frame_max);
                });
            }
            None => send_method(
                &self.link,
                ch.id,
                AMQPClass::Basic(basic::AMQPMethod::GetEmpty(basic::GetEmpty {})),
            ),
        }
    }

    /// basic.recover: every unacked delivery goes back to its queue, marked redelivered.
    fn recover(&mut self, ch: &mut Channel) {
        let unacked: Vec<Unacked> = ch.link.state.lock().unacked.drain(..).collect();
        self.requeue(unacked);
    }
}

/// `amq.ctag-` and 22 URL-safe base64 characters, as RabbitMQ names consumer tags.
fn consumer_tag() -> String {
    let mut b = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut b);
    format!(
        "amq.ctag-{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
    )
}
