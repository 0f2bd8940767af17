//! Channel state and the channel-level methods: channel, exchange, queue, confirm, tx.
//! Basic-class methods and content assembly are in `basic.rs`.

use std::collections::HashMap;
use std::sync::Arc;

use amq_protocol::protocol::{channel, confirm, exchange, queue, tx, AMQPClass};
use bytes::{Bytes, BytesMut};

use super::connection::Connection;
use super::error::{AmqpError, AmqpResult};
use super::frame::{self, Frame};
use crate::engine::broker::consumer::{ChannelLink, ConnLink, Unacked};
use crate::engine::broker::exchange::Dest;
use crate::engine::broker::message::Message;
use crate::engine::broker::queue::{Entry, Queue};
use crate::engine::broker::stats::Stats;
use crate::engine::broker::{ops::ExchangeSpec, ops::QueueSpec};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelState {
    Open,
    /// We sent channel.close and wait for close-ok; other frames are dropped.
    Closing,
    /// Gone: the slot is freed.
    Closed,
}

/// A publish whose content is being received.
pub(super) struct PendingContent {
    pub exchange: Arc<str>,
    pub routing_key: String,
    pub mandatory: bool,
    pub header: Option<Bytes>,
    pub body_size: u64,
    /// Body frames so far; a single frame is kept as is (no copy).
    pub parts: Vec<Bytes>,
    pub received: u64,
}

/// A transaction's buffered work (tx.select).
#[derive(Default)]
pub(super) struct TxState {
    pub publishes: Vec<(Arc<Message>, bool)>,
    /// (delivery tag, multiple, action) in order.
    pub acks: Vec<(u64, bool, AckAction)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum AckAction {
    Ack,
    Requeue,
    Discard,
}

pub struct Channel {
    pub(super) id: u16,
    pub(super) link: Arc<ChannelLink>,
    pub(super) state: ChannelState,
    pub(super) content: Option<PendingContent>,
    pub(super) confirm: bool,
    pub(super) next_publish_seq: u64,
    /// Consumer tag -> queue.
    pub(super) consumers: HashMap<Arc<str>, Arc<Queue>>,
    /// basic.qos global=false: prefetch for consumers created from now on.
    pub(super) prefetch: u32,
    pub(super) tx: Option<TxState>,
    /// The last queue declared on this channel (the empty queue name refers to it).
    pub(super) last_queue: Option<String>,
    /// The last exchange published to, reused to avoid an allocation per message.
    pub(super) last_exchange: Option<Arc<str>>,
}

impl Channel {
    pub fn new(id: u16, conn: Arc<ConnLink>) -> Channel {
        Channel {
            id,
            link: Arc::new(ChannelLink::new(id, conn)),
            state: ChannelState::Open,
            content: None,
            confirm: false,
            next_publish_seq: 1,
            consumers: HashMap::new(),
            prefetch: 0,
            tx: None,
            last_queue: None,
            last_exchange: None,
        }
    }

    /// Resolves the empty queue name to the channel's last declared queue.
    pub(super) fn queue_name<'a>(&'a self, name: &'a str) -> AmqpResult<&'a str> {
        if !name.is_empty() {
            return Ok(name);
        }
        self.last_queue
            .as_deref()
            .ok_or_else(|| AmqpError::not_found("no previously declared queue"))
    }
}

pub(super) fn send_method(link: &ConnLink, channel: u16, m: AMQPClass) {
    link.send(|out| frame::write_method(out, channel, &m));
}

impl Connection {
    pub(super) async fn channel_frame(&mut self, ch: &mut Channel, f: Frame) -> AmqpResult<()> {
        if ch.state == ChannelState::Closing {
            // Only the close handshake matters now.
            if f.kind == frame::FRAME_METHOD {
                match f.payload.get(..4) {
                    Some([0, 20, 0, 41]) => ch.state = ChannelState::Closed,
                    Some([0, 20, 0, 40]) => {
                        send_method(
                            &self.link,
                            ch.id,
                            AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
                        );
                    }
                    _ => {}
                }
            }
            return Ok(());
        }
        let r = match f.kind {
            frame::FRAME_METHOD => self.channel_method(ch, &f).await,
            frame::FRAME_HEADER => self.content_header(ch, f.payload),
            _ => self.content_body(ch, f.payload),
        };
        match r {
            Err(e) if !e.is_connection_error() => {
                // A channel error closes only this channel.
                self.close_channel_with_error(ch, e);
                Ok(())
            }
            other => other,
        }
    }

    fn close_channel_with_error(&mut self, ch: &mut Channel, e: AmqpError) {
        tracing::debug!(conn = self.id, channel = ch.id, code = e.code, text = %e.text, "channel error");
        let taken = std::mem::replace(ch, Channel::new(ch.id, self.link.clone()));
        self.close_channel_state(Box::new(taken));
        // The replacement only remembers that a close-ok is awaited.
        ch.link.state.lock().open = false;
        ch.state = ChannelState::Closing;
        send_method(
            &self.link,
            ch.id,
            AMQPClass::Channel(channel::AMQPMethod::Close(channel::Close {
                reply_code: e.code,
                reply_text: e.text.as_str().into(),
                class_id: e.class_id,
                method_id: e.method_id,
            })),
        );
    }

    /// Tears a channel down: no more deliveries, consumers removed (auto-delete queues go),
    /// unacked messages requeued.
    pub(super) fn close_channel_state(&mut self, ch: Box<Channel>) {
        let unacked: Vec<Unacked> = {
            let mut st = ch.link.state.lock();
            st.open = false;
            st.unacked.drain(..).collect()
        };
        let now = self.broker.now_ms();
        for (tag, q) in &ch.consumers {
            if q.remove_consumer(&ch.link, tag, now) {
                self.broker.remove_queue(&self.session.vhost, q);
            }
        }
        self.requeue(unacked);
        // Placeholders of channels closed by an error were already uncounted.
        if ch.state == ChannelState::Open {
            Stats::add(&self.broker.stats.channels, -1);
            self.handle
                .channels
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Returns entries to their queues (in tag order, which is queue order per queue).
    pub(super) fn requeue(&mut self, unacked: Vec<Unacked>) {
        let now = self.broker.now_ms();
        for (q, entries) in group_by_queue(unacked) {
            let dead = q.requeue(entries, now);
            self.broker.handle_dead(&q, dead);
        }
    }

    async fn channel_method(&mut self, ch: &mut Channel, f: &Frame) -> AmqpResult<()> {
        if ch.content.is_some() {
            return Err(AmqpError::unexpected_frame(
                "expected content header for class 60, got non content header frame instead",
            )
            .on(60, 40));
        }
        let ids = f.payload.get(..4).unwrap_or(&[]);
        // Hot paths, decoded by hand.
        if ids == [0, 60, 0, 40] {
            if let Some((ex, rk, mandatory)) = frame::fast::publish(&f.payload[4..]) {
                return self.basic_publish(ch, ex, rk, mandatory);
            }
        } else if ids == [0, 60, 0, 80] {
            if let Some((tag, multiple)) = frame::fast::ack(&f.payload[4..]) {
                return self.settle(ch, tag, multiple, AckAction::Ack);
            }
        }
        if ids == [0, 60, 0, 10] {
            // amq-protocol drops basic.qos's prefetch_size; RabbitMQ refuses a byte window.
            if let Some(b) = f.payload.get(4..8) {
                let size = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
                if size != 0 {
                    return Err(
                        AmqpError::not_implemented(format!("prefetch_size!=0 ({size})")).on(60, 10),
                    );
                }
            }
        }
        let m = super::connection::parse_method(&f.payload)?;
        let (class_id, method_id) = (m.get_amqp_class_id(), m.get_amqp_method_id());
        self.dispatch_method(ch, m)
            .await
            .map_err(|e| e.on(class_id, method_id))
    }

    async fn dispatch_method(&mut self, ch: &mut Channel, m: AMQPClass) -> AmqpResult<()> {
        let vh = self.session.vhost.clone();
        let id = ch.id;
        match m {
            AMQPClass::Channel(channel::AMQPMethod::Open(_)) => {
                Err(AmqpError::channel_error("second 'channel.open' seen"))
            }
            AMQPClass::Channel(channel::AMQPMethod::Close(_)) => {
                let taken = std::mem::replace(ch, Channel::new(id, self.link.clone()));
                self.close_channel_state(Box::new(taken));
                // Record acks and requeues durably before answering.
                self.end_batch().await;
                ch.state = ChannelState::Closed;
                send_method(
                    &self.link,
                    id,
                    AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
                );
                Ok(())
            }
            AMQPClass::Channel(channel::AMQPMethod::CloseOk(_)) => Ok(()),
            AMQPClass::Channel(channel::AMQPMethod::Flow(flow)) if !flow.active => {
                // As RabbitMQ 3.10: consumers cannot be paused with channel.flow.
                Err(AmqpError::not_implemented("active=false"))
            }
            AMQPClass::Channel(channel::AMQPMethod::Flow(flow)) => {
                ch.link.state.lock().flow_active = flow.active;
                send_method(
                    &self.link,
                    id,
                    AMQPClass::Channel(channel::AMQPMethod::FlowOk(channel::FlowOk {
                        active: flow.active,
                    })),
                );
                if flow.active {
                    self.redispatch(ch);
                }
                Ok(())
            }
            AMQPClass::Channel(_) => Err(AmqpError::command_invalid("unexpected channel method")),
            AMQPClass::Access(_) => {
                send_method(
                    &self.link,
                    id,
                    AMQPClass::Access(amq_protocol::protocol::access::AMQPMethod::RequestOk(
                        amq_protocol::protocol::access::RequestOk {},
                    )),
                );
                Ok(())
            }
            AMQPClass::Exchange(exchange::AMQPMethod::Declare(d)) => {
                self.broker.declare_exchange(
                    &vh,
                    ExchangeSpec {
                        name: d.exchange.as_str(),
                        kind: d.kind.as_str(),
                        passive: d.passive,
                        durable: d.durable,
                        auto_delete: d.auto_delete,
                        internal: d.internal,
                        arguments: &d.arguments,
                    },
                )?;
                if !d.nowait {
                    send_method(
                        &self.link,
                        id,
                        AMQPClass::Exchange(exchange::AMQPMethod::DeclareOk(
                            exchange::DeclareOk {},
                        )),
                    );
                }
                Ok(())
            }
            AMQPClass::Exchange(exchange::AMQPMethod::Delete(d)) => {
                self.broker
                    .delete_exchange(&vh, d.exchange.as_str(), d.if_unused)?;
                if !d.nowait {
                    send_method(
                        &self.link,
                        id,
                        AMQPClass::Exchange(exchange::AMQPMethod::DeleteOk(exchange::DeleteOk {})),
                    );
                }
                Ok(())
            }
            AMQPClass::Exchange(exchange::AMQPMethod::Bind(b)) => {
                self.broker.bind(
                    &vh,
                    b.source.as_str(),
                    Dest::Exchange(b.destination.as_str().into()),
                    b.routing_key.as_str(),
                    &b.arguments,
                )?;
                if !b.nowait {
                    send_method(
                        &self.link,
                        id,
                        AMQPClass::Exchange(exchange::AMQPMethod::BindOk(exchange::BindOk {})),
                    );
                }
                Ok(())
            }
            AMQPClass::Exchange(exchange::AMQPMethod::Unbind(b)) => {
                self.broker.unbind(
                    &vh,
                    b.source.as_str(),
                    Dest::Exchange(b.destination.as_str().into()),
                    b.routing_key.as_str(),
                    &b.arguments,
                )?;
                if !b.nowait {
                    send_method(
                        &self.link,
                        id,
                        AMQPClass::Exchange(exchange::AMQPMethod::UnbindOk(exchange::UnbindOk {})),
                    );
                }
                Ok(())
            }
            AMQPClass::Exchange(_) => Err(AmqpError::command_invalid("unexpected exchange method")),
            AMQPClass::Queue(queue::AMQPMethod::Declare(d)) => {
                let (name, messages, consumers) = self.broker.declare_queue(
                    &vh,
                    QueueSpec {
                        name: d.queue.as_str(),
                        passive: d.passive,
                        durable: d.durable,
                        exclusive: d.exclusive,
                        auto_delete: d.auto_delete,
                        arguments: &d.arguments,
                        conn_id: self.id,
                    },
                )?;
                ch.last_queue = Some(name.clone());
                if !d.nowait {
                    send_method(
                        &self.link,
                        id,
                        AMQPClass::Queue(queue::AMQPMethod::DeclareOk(queue::DeclareOk {
                            queue: name.as_str().into(),
                            message_count: messages,
                            consumer_count: consumers,
                        })),
                    );
                }
                Ok(())
            }
            AMQPClass::Queue(queue::AMQPMethod::Bind(b)) => {
                let q = self
                    .broker
                    .queue_for(&vh, ch.queue_name(b.queue.as_str())?, self.id)?;
                self.broker.bind(
                    &vh,
                    b.exchange.as_str(),
                    Dest::Queue(q),
                    b.routing_key.as_str(),
                    &b.arguments,
                )?;
                if !b.nowait {
                    send_method(
                        &self.link,
                        id,
                        AMQPClass::Queue(queue::AMQPMethod::BindOk(queue::BindOk {})),
                    );
                }
                Ok(())
            }
            AMQPClass::Queue(queue::AMQPMethod::Unbind(b)) => {
                let q = self
                    .broker
                    .queue_for(&vh, ch.queue_name(b.queue.as_str())?, self.id)?;
                self.broker.unbind(
                    &vh,
                    b.exchange.as_str(),
                    Dest::Queue(q),
                    b.routing_key.as_str(),
                    &b.arguments,
                )?;
                send_method(
                    &self.link,
                    id,
                    AMQPClass::Queue(queue::AMQPMethod::UnbindOk(queue::UnbindOk {})),
                );
                Ok(())
            }
            AMQPClass::Queue(queue::AMQPMethod::Purge(p)) => {
                let q = self
                    .broker
                    .queue_for(&vh, ch.queue_name(p.queue.as_str())?, self.id)?;
                let n = q.purge();
                self.touch(&q);
                if !p.nowait {
                    send_method(
                        &self.link,
                        id,
                        AMQPClass::Queue(queue::AMQPMethod::PurgeOk(queue::PurgeOk {
                            message_count: n as u32,
                        })),
                    );
                }
                Ok(())
            }
            AMQPClass::Queue(queue::AMQPMethod::Delete(d)) => {
                let name = ch.queue_name(d.queue.as_str())?.to_owned();
                let n = self
                    .broker
                    .delete_queue(&vh, &name, d.if_unused, d.if_empty, self.id)?;
                if !d.nowait {
                    send_method(
                        &self.link,
                        id,
                        AMQPClass::Queue(queue::AMQPMethod::DeleteOk(queue::DeleteOk {
                            message_count: n,
                        })),
                    );
                }
                Ok(())
            }
            AMQPClass::Queue(_) => Err(AmqpError::command_invalid("unexpected queue method")),
            AMQPClass::Basic(b) => self.basic_method(ch, b),
            AMQPClass::Confirm(confirm::AMQPMethod::Select(s)) => {
                if ch.tx.is_some() {
                    return Err(AmqpError::precondition_failed(
                        "cannot switch from tx to confirm mode",
                    ));
                }
                ch.confirm = true;
                if !s.nowait {
                    send_method(
                        &self.link,
                        id,
                        AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(confirm::SelectOk {})),
                    );
                }
                Ok(())
            }
            AMQPClass::Confirm(_) => Err(AmqpError::command_invalid("unexpected confirm method")),
            AMQPClass::Tx(tx::AMQPMethod::Select(_)) => {
                if ch.confirm {
                    return Err(AmqpError::precondition_failed(
                        "cannot switch from confirm to tx mode",
                    ));
                }
                if ch.tx.is_none() {
                    ch.tx = Some(TxState::default());
                }
                send_method(
                    &self.link,
                    id,
                    AMQPClass::Tx(tx::AMQPMethod::SelectOk(tx::SelectOk {})),
                );
                Ok(())
            }
            AMQPClass::Tx(tx::AMQPMethod::Commit(_)) => {
                let Some(work) = ch.tx.replace(TxState::default()) else {
                    return Err(AmqpError::precondition_failed(
                        "channel is not transactional",
                    ));
                };
                for (msg, mandatory) in work.publishes {
                    self.enqueue(ch, msg, mandatory)?;
                }
                for (tag, multiple, action) in work.acks {
                    self.settle_now(ch, tag, multiple, action)?;
                }
                self.end_batch().await;
                send_method(
                    &self.link,
                    id,
                    AMQPClass::Tx(tx::AMQPMethod::CommitOk(tx::CommitOk {})),
                );
                Ok(())
            }
            AMQPClass::Tx(tx::AMQPMethod::Rollback(_)) => {
                if ch.tx.replace(TxState::default()).is_none() {
                    return Err(AmqpError::precondition_failed(
                        "channel is not transactional",
                    ));
                }
                send_method(
                    &self.link,
                    id,
                    AMQPClass::Tx(tx::AMQPMethod::RollbackOk(tx::RollbackOk {})),
                );
                Ok(())
            }
            AMQPClass::Tx(_) => Err(AmqpError::command_invalid("unexpected tx method")),
            AMQPClass::Connection(_) => Err(AmqpError::command_invalid(
                "connection methods are only allowed on channel 0",
            )),
        }
    }

    /// Remembers a queue whose log must be flushed at the end of the batch.
    pub(super) fn touch(&mut self, q: &Arc<Queue>) {
        if q.durable && !self.touched.iter().any(|t| Arc::ptr_eq(t, q)) {
            self.touched.push(q.clone());
        }
    }

    /// Gives consumers on this channel's queues a chance to receive (credit came back).
    pub(super) fn redispatch(&mut self, ch: &Channel) {
        let mut seen: Vec<&Arc<Queue>> = Vec::new();
        for q in ch.consumers.values() {
            if !seen.iter().any(|s| Arc::ptr_eq(s, q)) {
                seen.push(q);
                self.broker.dispatch(q);
            }
        }
    }

    fn content_header(&mut self, ch: &mut Channel, payload: Bytes) -> AmqpResult<()> {
        let Some(pc) = ch.content.as_mut() else {
            return Err(AmqpError::unexpected_frame(
                "expected method frame, got non method frame instead",
            ));
        };
        if pc.header.is_some() {
            return Err(AmqpError::unexpected_frame(
                "expected content body, got content header frame instead",
            ));
        }
        if payload.len() < 14 || payload[..2] != [0, 60] {
            return Err(AmqpError::frame_error("malformed content header"));
        }
        let body_size =
            u64::from_be_bytes(payload[4..12].try_into().expect("8 bytes checked above"));
        let max = self.broker.limits.read().max_message_bytes;
        if body_size > max {
            ch.content = None;
            return Err(AmqpError::precondition_failed(format!(
                "message size {body_size} is larger than configured max size {max}"
            )));
        }
        pc.header = Some(payload);
        pc.body_size = body_size;
        if body_size == 0 {
            return self.finish_content(ch);
        }
        Ok(())
    }

    fn content_body(&mut self, ch: &mut Channel, payload: Bytes) -> AmqpResult<()> {
        let Some(pc) = ch.content.as_mut() else {
            return Err(AmqpError::unexpected_frame(
                "expected method frame, got non method frame instead",
            ));
        };
        if pc.header.is_none() {
            return Err(AmqpError::unexpected_frame(
                "expected content header for class 60, got non content header frame instead",
            ));
        }
        pc.received += payload.len() as u64;
        if pc.received > pc.body_size {
            return Err(AmqpError::frame_error(format!(
                "content body larger than declared size {}",
                pc.body_size
            )));
        }
        pc.parts.push(payload);
        if pc.received == pc.body_size {
            return self.finish_content(ch);
        }
        Ok(())
    }

    fn finish_content(&mut self, ch: &mut Channel) -> AmqpResult<()> {
        let Some(mut pc) = ch.content.take() else {
            return Ok(());
        };
        let body = match pc.parts.len() {
            0 => Bytes::new(),
            1 => pc.parts.pop().expect("one part"),
            _ => {
                let mut b = BytesMut::with_capacity(pc.body_size as usize);
                for p in &pc.parts {
                    b.extend_from_slice(p);
                }
                b.freeze()
            }
        };
        let header = pc.header.take().unwrap_or_default();
        let msg = Arc::new(Message::new(
            pc.exchange,
            pc.routing_key.into(),
            header,
            body,
        ));
        if let Some(tx) = ch.tx.as_mut() {
            tx.publishes.push((msg, pc.mandatory));
            return Ok(());
        }
        self.enqueue(ch, msg, pc.mandatory)
    }
}

/// Groups unacked deliveries by queue, keeping their order.
pub(super) fn group_by_queue(unacked: Vec<Unacked>) -> Vec<(Arc<Queue>, Vec<Entry>)> {
    let mut groups: Vec<(Arc<Queue>, Vec<Entry>)> = Vec::new();
    for u in unacked {
        if let Some(c) = &u.counter {
            c.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
        match groups.iter_mut().find(|(q, _)| Arc::ptr_eq(q, &u.queue)) {
            Some((_, v)) => v.push(u.entry),
            None => groups.push((u.queue, vec![u.entry])),
        }
    }
    groups
}
