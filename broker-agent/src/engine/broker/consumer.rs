//! The links between queues and the connections that consume from them.
//!
//! A queue delivers by writing frames straight into the consumer connection's output buffer
//! ([`ConnLink`]) and recording the delivery in the channel's unacked list ([`ChannelLink`]).
//! Lock order is always queue -> channel state -> output buffer; the channel never takes a
//! queue lock while holding its own state lock.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use tokio::sync::Notify;

use super::queue::{Entry, Queue};
use crate::engine::amqp::frame;

/// Beyond this many buffered output bytes, queues stop delivering to the connection until its
/// writer drains the buffer (bounds memory for slow consumers, including no-ack ones).
pub const OUTPUT_HIGH_WATER_BYTES: usize = 1024 * 1024;

/// The output side of one client connection.
pub struct ConnLink {
    pub id: u64,
    /// Negotiated frame_max, for splitting bodies.
    pub frame_max: AtomicU32,
    /// Negotiated heartbeat in seconds (0 = off); the writer sends heartbeats at half of it.
    pub heartbeat_secs: AtomicU32,
    out: Mutex<Vec<u8>>,
    /// Mirrors `out.len()` so that queues can check for room without the lock.
    pending: AtomicUsize,
    /// Wakes the writer task.
    pub wake: Notify,
    closed: AtomicBool,
    /// Queues that stopped delivering because the buffer was full.
    stalled: Mutex<Vec<Weak<Queue>>>,
}

impl ConnLink {
    pub fn new(id: u64, frame_max: u32) -> ConnLink {
        ConnLink {
            id,
            frame_max: AtomicU32::new(frame_max),
            heartbeat_secs: AtomicU32::new(0),
            out: Mutex::new(Vec::with_capacity(64 * 1024)),
            pending: AtomicUsize::new(0),
            wake: Notify::new(),
            closed: AtomicBool::new(false),
            stalled: Mutex::new(Vec::new()),
        }
    }

    /// Appends frames to the output buffer and wakes the writer.
    pub fn send<R>(&self, f: impl FnOnce(&mut Vec<u8>) -> R) -> R {
        let r = {
            let mut out = self.out.lock();
            let r = f(&mut out);
            self.pending.store(out.len(), Ordering::Relaxed);
            r
        };
        self.wake.notify_one();
        r
    }

    /// Swaps the buffered output into `spare` (which must be empty) for writing.
    pub fn take(&self, spare: &mut Vec<u8>) {
        let mut out = self.out.lock();
        std::mem::swap(&mut *out, spare);
        self.pending.store(0, Ordering::Relaxed);
    }

    pub fn is_full(&self) -> bool {
        self.pending.load(Ordering::Relaxed) >= OUTPUT_HIGH_WATER_BYTES
    }

    pub fn frame_max(&self) -> u32 {
        self.frame_max.load(Ordering::Relaxed)
    }

    /// Marks the connection closed: queues stop delivering to it.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Registers a queue to be dispatched again once the output has room. Returns true if the
    /// output is (still) full, re-checked after registering so that a concurrent drain is not
    /// missed.
    fn stall(&self, q: &Arc<Queue>) -> bool {
        {
            let mut s = self.stalled.lock();
            if !s.iter().any(|w| w.as_ptr() == Arc::as_ptr(q)) {
                s.push(Arc::downgrade(q));
            }
        }
        self.is_full()
    }

    /// Queues waiting for room; the writer dispatches them after draining.
    pub fn take_stalled(&self) -> Vec<Arc<Queue>> {
        std::mem::take(&mut *self.stalled.lock())
            .into_iter()
            .filter_map(|w| w.upgrade())
            .collect()
    }
}

/// A delivery awaiting ack on a channel.
pub struct Unacked {
    pub tag: u64,
    pub queue: Arc<Queue>,
    pub entry: Entry,
    /// The consumer's unacked counter (None for basic.get).
    pub counter: Option<Arc<AtomicU32>>,
}

/// Channel state shared with the queues delivering to it.
pub struct DeliveryState {
    pub next_tag: u64,
    /// Ascending delivery tags.
    pub unacked: VecDeque<Unacked>,
    /// basic.qos with global=true: limit over all consumers of the channel (0 = none).
    pub global_prefetch: u32,
    pub open: bool,
    /// channel.flow: when false, no deliveries.
    pub flow_active: bool,
}

pub struct ChannelLink {
    pub id: u16,
    pub conn: Arc<ConnLink>,
    pub state: Mutex<DeliveryState>,
}

impl ChannelLink {
    pub fn new(id: u16, conn: Arc<ConnLink>) -> ChannelLink {
        ChannelLink {
            id,
            conn,
            state: Mutex::new(DeliveryState {
                next_tag: 1,
                unacked: VecDeque::new(),
                global_prefetch: 0,
                open: true,
                flow_active: true,
            }),
        }
    }
}

/// A consumer registered on a queue.
pub struct Consumer {
    pub tag: Arc<str>,
    pub channel: Arc<ChannelLink>,
    pub no_ack: bool,
    pub exclusive: bool,
    /// Per-consumer prefetch (basic.qos global=false at consume time; 0 = unlimited).
    pub prefetch: u32,
    pub unacked: Arc<AtomicU32>,
}

/// What happened to an entry offered to a consumer.
pub enum Offer {
    /// Delivered and recorded as unacked on the channel.
    Taken,
    /// Delivered in no-ack mode: the queue forgets it now.
    TakenNoAck(Entry),
    /// No credit (prefetch, flow, closed, or output full): try another consumer.
    Refused(Entry),
}

impl Consumer {
    /// Offers the entry to this consumer, writing the delivery if it has credit.
    pub fn offer(&self, q: &Arc<Queue>, mut entry: Entry) -> Offer {
        if !self.no_ack
            && self.prefetch > 0
            && self.unacked.load(Ordering::Relaxed) >= self.prefetch
        {
            return Offer::Refused(entry);
        }
        let conn = &self.channel.conn;
        if conn.is_closed() || (conn.is_full() && conn.stall(q)) {
            return Offer::Refused(entry);
        }
        let mut st = self.channel.state.lock();
        if !st.open
            || !st.flow_active
            || (!self.no_ack
                && st.global_prefetch > 0
                && st.unacked.len() as u32 >= st.global_prefetch)
        {
            return Offer::Refused(entry);
        }
        let tag = st.next_tag;
        st.next_tag += 1;
        let frame_max = conn.frame_max();
        conn.send(|out| {
            frame::write_deliver(
                out,
                self.channel.id,
                &self.tag,
                tag,
                entry.redelivered,
                &entry.msg.exchange,
                &entry.msg.routing_key,
            );
            frame::write_content(
                out,
                self.channel.id,
                &entry.msg.header,
                &entry.msg.body,
                frame_max,
            );
        });
        if self.no_ack {
            return Offer::TakenNoAck(entry);
        }
        entry.redelivered = true;
        self.unacked.fetch_add(1, Ordering::Relaxed);
        st.unacked.push_back(Unacked {
            tag,
            queue: q.clone(),
            entry,
            counter: Some(self.unacked.clone()),
        });
        Offer::Taken
    }
}
