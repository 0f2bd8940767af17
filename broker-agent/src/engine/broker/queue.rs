//! A queue: ready messages in order, its consumers, its log (durable queues), and the rules of
//! its arguments (TTL, max length, overflow). Every operation runs under the queue's own lock,
//! directly on the caller's task; dead letters are handed back to the caller, which routes them
//! after releasing the lock (routing may lock other queues).

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use amq_protocol::types::FieldTable;
use parking_lot::Mutex;

use super::args::{Overflow, QueueArgs, QueueType};
use super::consumer::{ChannelLink, Consumer, Offer};
use super::message::Message;
use super::stats::Stats;
use crate::engine::storage::{Durability, Location, QueueKey, QueueLog, Storage, SyncWaiter};

/// One message in one queue.
pub struct Entry {
    /// Position in the queue; requeued entries go back to their position.
    pub seq: u64,
    pub msg: Arc<Message>,
    /// Where the message lives in the queue's log (persistent messages in durable queues).
    pub loc: Option<Location>,
    /// A delivered-marker record in the log for this message (acked with it).
    pub marker: Option<Location>,
    pub redelivered: bool,
    /// Absolute expiry time in engine milliseconds (see `Broker::now_ms`).
    pub expires_at: Option<u64>,
}

thread_local! {
    /// Reused buffer for encoding log records (one per worker thread).
    static RECORD_SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// An entry as the ready list holds it: the body may be paged out to the queue log.
struct Stored {
    seq: u64,
    /// None once paged out: read back from `loc` on delivery.
    msg: Option<Arc<Message>>,
    loc: Option<Location>,
    marker: Option<Location>,
    size: u64,
    redelivered: bool,
    expires_at: Option<u64>,
}

impl Stored {
    fn from_entry(e: Entry) -> Stored {
        Stored {
            seq: e.seq,
            size: e.msg.size(),
            msg: Some(e.msg),
            loc: e.loc,
            marker: e.marker,
            redelivered: e.redelivered,
            expires_at: e.expires_at,
        }
    }
}

/// Why a message left its queue without being acked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeathReason {
    Rejected,
    Expired,
    MaxLen,
}

impl DeathReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DeathReason::Rejected => "rejected",
            DeathReason::Expired => "expired",
            DeathReason::MaxLen => "maxlen",
        }
    }
}

/// Entries that left a queue and may need dead-lettering.
pub struct Dead {
    pub entries: Vec<(Entry, DeathReason)>,
}

impl Dead {
    pub fn none() -> Dead {
        Dead {
            entries: Vec::new(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The outcome of offering a message to a queue.
pub enum Pushed {
    Enqueued {
        dead: Dead,
    },
    /// x-overflow=reject-publish(-dlx) and the queue is full; `dead` holds the refused
    /// message for reject-publish-dlx.
    Rejected {
        dead: Dead,
    },
}

pub struct Queue {
    pub name: Arc<str>,
    pub vhost: Arc<str>,
    pub durable: bool,
    pub auto_delete: bool,
    /// The id of the connection owning an exclusive queue.
    pub exclusive_owner: Option<u64>,
    pub args: QueueArgs,
    /// Arguments as declared (for equivalence checks and definitions).
    pub arguments: FieldTable,
    pub deleted: AtomicBool,
    /// Set once a message with a TTL was enqueued: housekeeping only visits such queues.
    pub has_ttl: AtomicBool,
    stats: Arc<Stats>,
    /// Where a non-durable queue opens its spill log when bodies must leave memory.
    spill: Option<(Storage, QueueKey)>,
    state: Mutex<QueueState>,
}

struct QueueState {
    ready: VecDeque<Stored>,
    ready_bytes: u64,
    unacked: u64,
    consumers: Vec<Consumer>,
    next_consumer: usize,
    next_seq: u64,
    log: Option<QueueLog>,
    /// Engine ms of the last use (consume, get, declare) for x-expires.
    last_used_ms: u64,
    had_consumers: bool,
}

/// A snapshot for listings and metrics.
#[derive(Debug, Clone, Copy, Default)]
pub struct QueueCounts {
    pub ready: u64,
    pub unacked: u64,
    pub consumers: u64,
    pub ready_bytes: u64,
}

impl Queue {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        vhost: Arc<str>,
        name: &str,
        durable: bool,
        auto_delete: bool,
        exclusive_owner: Option<u64>,
        args: QueueArgs,
        arguments: FieldTable,
        log: Option<QueueLog>,
        spill: Option<(Storage, QueueKey)>,
        stats: Arc<Stats>,
        now_ms: u64,
    ) -> Queue {
        Queue {
            name: name.into(),
            vhost,
            durable,
            auto_delete,
            exclusive_owner,
            args,
            arguments,
            deleted: AtomicBool::new(false),
            has_ttl: AtomicBool::new(false),
            stats,
            spill,
            state: Mutex::new(QueueState {
                ready: VecDeque::new(),
                ready_bytes: 0,
                unacked: 0,
                consumers: Vec::new(),
                next_consumer: 0,
                next_seq: 1,
                log,
                last_used_ms: now_ms,
                had_consumers: false,
            }),
        }
    }

    pub fn is_deleted(&self) -> bool {
        self.deleted.load(Ordering::Acquire)
    }

    pub fn is_quorum(&self) -> bool {
        self.args.queue_type == QueueType::Quorum
    }

    /// Refills the queue from its log at start-up (each record handed over by `QueueLog::scan`).
    pub fn recover(&self, now_ms: u64) -> io::Result<u64> {
        let mut st = self.state.lock();
        let st = &mut *st;
        let Some(log) = st.log.as_ref() else {
            return Ok(0);
        };
        let mut n = 0u64;
        let mut bad = 0u64;
        let budget = self.stats.body_budget.load(Ordering::Relaxed);
        let mut resident_bytes = self.stats.message_bytes.load(Ordering::Relaxed);
        // (location, body in memory or paged out, body size, expiry in Unix ms)
        let mut entries: Vec<(Location, Option<Message>, u64, Option<u64>)> = Vec::new();
        let mut transient = Vec::new();
        let mut markers: std::collections::HashMap<Location, Location> =
            std::collections::HashMap::new();
        log.scan(&mut |loc, rec| {
            if let Some(target) = super::message::decode_marker(rec) {
                markers.insert(target, loc);
                return;
            }
            if Message::record_is_transient(rec) {
                transient.push(loc);
                return;
            }
            let Some(size) = Message::record_body_len(rec) else {
                bad += 1;
                return;
            };
            // A large backlog is not loaded into memory: bodies beyond the budget stay on disk.
            let expiry = Message::record_expiry(rec);
            if budget > 0 && resident_bytes + size as i64 > budget {
                entries.push((loc, None, size, expiry));
                return;
            }
            match Message::from_record(rec) {
                Some(m) => {
                    resident_bytes += size as i64;
                    entries.push((loc, Some(m), size, expiry));
                }
                None => bad += 1,
            }
        })?;
        if bad > 0 {
            tracing::warn!(queue = %self.name, bad, "skipped undecodable log records");
        }
        // Transient messages paged out before the restart are gone, as in RabbitMQ.
        if let Some(log) = st.log.as_mut() {
            for loc in transient {
                log.ack(loc)?;
            }
        }
        let (now_ms, unix_now) = (now_ms, super::message::unix_now_ms());
        for (loc, m, size, expiry) in entries {
            let resident = m.is_some();
            let marker = markers.remove(&loc);
            // The TTL kept running while the broker was down; already expired is due at once.
            let expires_at = expiry.map(|exp| match exp.checked_sub(unix_now) {
                Some(left) if left > 0 => now_ms + left,
                _ => 0,
            });
            if expires_at.is_some() {
                self.has_ttl.store(true, Ordering::Relaxed);
            }
            st.ready.push_back(Stored {
                seq: st.next_seq,
                msg: m.map(Arc::new),
                loc: Some(loc),
                redelivered: marker.is_some(),
                marker,
                size,
                expires_at,
            });
            st.next_seq += 1;
            st.ready_bytes += size;
            Stats::add(&self.stats.ready, 1);
            if resident {
                Stats::add(&self.stats.message_bytes, size as i64);
            } else {
                Stats::add(&self.stats.paged_out, 1);
            }
            n += 1;
        }
        // Markers of messages acked before the restart are of no use any more.
        if let Some(log) = st.log.as_mut() {
            for (_, marker) in markers {
                log.ack(marker)?;
            }
        }
        Ok(n)
    }

    /// Enqueues a routed message (appending it to the log when it must survive a restart) and
    /// dispatches.
    pub fn push(self: &Arc<Self>, msg: &Arc<Message>, now_ms: u64) -> io::Result<Pushed> {
        let mut st = self.state.lock();
        if self.is_deleted() {
            // Routed just before the queue went away: as if routed nowhere.
            return Ok(Pushed::Enqueued { dead: Dead::none() });
        }
        let size = msg.size();
        if matches!(
            self.args.overflow,
            Overflow::RejectPublish | Overflow::RejectPublishDlx
        ) {
            let full_len = self
                .args
                .max_length
                .is_some_and(|m| st.ready.len() as u64 >= m);
            let full_bytes = self
                .args
                .max_length_bytes
                .is_some_and(|m| st.ready_bytes + size > m);
            if full_len || full_bytes {
                let mut dead = Dead::none();
                if self.args.overflow == Overflow::RejectPublishDlx {
                    let e = Entry {
                        seq: 0,
                        msg: msg.clone(),
                        loc: None,
                        marker: None,
                        redelivered: false,
                        expires_at: None,
                    };
                    dead.entries.push((e, DeathReason::MaxLen));
                }
                return Ok(Pushed::Rejected { dead });
            }
        }
        let ttl = match (self.args.message_ttl_ms, msg.expiration_ms) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let loc = match st.log.as_mut() {
            Some(log) if msg.persistent => Some(RECORD_SCRATCH.with(|scratch| {
                let mut scratch = scratch.borrow_mut();
                scratch.clear();
                msg.encode_record(
                    &mut scratch,
                    ttl.map(|t| super::message::unix_now_ms().saturating_add(t)),
                );
                let loc = log.append(&scratch);
                if scratch.capacity() > 1024 * 1024 {
                    *scratch = Vec::new(); // do not pin the largest message's size per thread
                }
                loc
            })?),
            _ => None,
        };
        if ttl.is_some() && !self.has_ttl.load(Ordering::Relaxed) {
            self.has_ttl.store(true, Ordering::Relaxed);
        }
        let seq = st.next_seq;
        st.next_seq += 1;
        st.ready.push_back(Stored {
            seq,
            msg: Some(msg.clone()),
            loc,
            marker: None,
            size,
            redelivered: false,
            expires_at: ttl.map(|t| now_ms.saturating_add(t)),
        });
        st.ready_bytes += size;
        Stats::add(&self.stats.ready, 1);
        Stats::add(&self.stats.message_bytes, size as i64);
        let mut dead = Dead::none();
        st.enforce_max_length(self, &mut dead);
        st.dispatch(self, now_ms, &mut dead);
        // Expiration "0" means: now or never. Not taken by a consumer at once, it expires.
        if ttl == Some(0) && st.ready.back().is_some_and(|s| s.seq == seq) {
            st.expire_tail(self, &mut dead);
        }
        // Over the memory budget, the new message's body lives on in the log only.
        if self.stats.over_budget() {
            st.page_out_tail(self);
        }
        Ok(Pushed::Enqueued { dead })
    }

    /// Hands buffered log writes to the kernel; for quorum queues the waiter resolves after
    /// the fsync (classic queues get an already resolved waiter).
    pub fn flush(&self) -> io::Result<Option<SyncWaiter>> {
        let mut st = self.state.lock();
        match st.log.as_mut() {
            Some(log) => log.commit().map(Some),
            None => Ok(None),
        }
    }

    /// Delivers what the consumers' credit allows.
    pub fn dispatch(self: &Arc<Self>, now_ms: u64) -> Dead {
        let mut dead = Dead::none();
        let mut st = self.state.lock();
        if !self.is_deleted() {
            st.dispatch(self, now_ms, &mut dead);
        }
        dead
    }

    /// Drops expired messages from the head (RabbitMQ expires only at the head too).
    pub fn expire(self: &Arc<Self>, now_ms: u64) -> Dead {
        let mut dead = Dead::none();
        let mut st = self.state.lock();
        st.expire_head(self, now_ms, &mut dead);
        dead
    }

    /// basic.get: the head message, recorded as unacked on `channel` unless `no_ack`.
    /// Returns the tag, the entry's message and redelivered flag, and the remaining count.
    pub fn get(
        self: &Arc<Self>,
        channel: &Arc<ChannelLink>,
        no_ack: bool,
        now_ms: u64,
        dead: &mut Dead,
    ) -> Option<(u64, Arc<Message>, bool, u32)> {
        let mut st = self.state.lock();
        st.last_used_ms = now_ms;
        st.expire_head(self, now_ms, dead);
        let mut entry = st.pop_ready(self)?;
        let remaining = st.ready.len() as u32;
        let msg = entry.msg.clone();
        let redelivered = entry.redelivered;
        let mut ch = channel.state.lock();
        let tag = ch.next_tag;
        ch.next_tag += 1;
        Stats::inc(&self.stats.delivered, 1);
        if no_ack {
            st.forget(&self.stats, &entry);
        } else {
            entry.redelivered = true;
            st.unacked += 1;
            Stats::add(&self.stats.unacked, 1);
            ch.unacked.push_back(super::consumer::Unacked {
                tag,
                queue: self.clone(),
                entry,
                counter: None,
            });
        }
        Some((tag, msg, redelivered, remaining))
    }

    /// Acks delivered entries: they leave the queue for good.
    pub fn ack(&self, entries: Vec<Entry>) {
        let mut st = self.state.lock();
        let n = entries.len() as u64;
        st.unacked = st.unacked.saturating_sub(n);
        Stats::add(&self.stats.unacked, -(n as i64));
        for e in &entries {
            st.forget(&self.stats, e);
        }
    }

    /// Rejected without requeue: forgotten like an ack, returned for dead-lettering.
    pub fn reject(&self, entries: Vec<Entry>) -> Dead {
        self.ack_dead(entries, DeathReason::Rejected)
    }

    fn ack_dead(&self, entries: Vec<Entry>, reason: DeathReason) -> Dead {
        let mut st = self.state.lock();
        let n = entries.len() as u64;
        st.unacked = st.unacked.saturating_sub(n);
        Stats::add(&self.stats.unacked, -(n as i64));
        let mut dead = Dead::none();
        for e in entries {
            st.forget(&self.stats, &e);
            dead.entries.push((e, reason));
        }
        dead
    }

    /// Puts delivered entries back at their original positions and dispatches again.
    pub fn requeue(self: &Arc<Self>, entries: Vec<Entry>, now_ms: u64) -> Dead {
        let mut st = self.state.lock();
        let n = entries.len() as u64;
        st.unacked = st.unacked.saturating_sub(n);
        Stats::add(&self.stats.unacked, -(n as i64));
        let mut dead = Dead::none();
        if self.is_deleted() {
            // Nowhere to go back to: the messages are gone with their queue.
            let bytes: u64 = entries.iter().map(|e| e.msg.size()).sum();
            Stats::add(&self.stats.message_bytes, -(bytes as i64));
            return dead;
        }
        for mut e in entries {
            e.redelivered = true;
            if let (Some(loc), None, Some(log)) = (e.loc, e.marker, st.log.as_mut()) {
                let mut rec = Vec::with_capacity(13);
                super::message::encode_marker(loc, &mut rec);
                match log.append(&rec) {
                    Ok(m) => e.marker = Some(m),
                    // Only a hint is lost: the message would come back as not redelivered.
                    Err(err) => {
                        tracing::warn!(queue = %self.name, error = %err, "writing a delivered marker failed")
                    }
                }
            }
            let stored = Stored::from_entry(e);
            let at = st.ready.partition_point(|x| x.seq < stored.seq);
            st.ready_bytes += stored.size;
            st.ready.insert(at, stored);
            Stats::add(&self.stats.ready, 1);
            // The body stayed resident (and counted) while unacked.
        }
        // As RabbitMQ, the length limit applies to requeued messages too (drop-head only).
        if self.args.overflow == Overflow::DropHead {
            st.enforce_max_length(self, &mut dead);
        }
        st.dispatch(self, now_ms, &mut dead);
        dead
    }

    /// Whether a consumer (exclusive or not) could be added now.
    pub fn can_add_consumer(&self, exclusive: bool) -> bool {
        let st = self.state.lock();
        !((exclusive && !st.consumers.is_empty()) || st.consumers.iter().any(|x| x.exclusive))
    }

    /// Adds a consumer; fails if exclusivity forbids it.
    pub fn add_consumer(self: &Arc<Self>, c: Consumer, now_ms: u64) -> Result<Dead, Consumer> {
        let mut st = self.state.lock();
        if (c.exclusive && !st.consumers.is_empty()) || st.consumers.iter().any(|x| x.exclusive) {
            return Err(c);
        }
        st.consumers.push(c);
        st.had_consumers = true;
        st.last_used_ms = now_ms;
        let mut dead = Dead::none();
        st.dispatch(self, now_ms, &mut dead);
        Ok(dead)
    }

    /// Removes a consumer. Returns true if the queue should now be auto-deleted.
    pub fn remove_consumer(
        self: &Arc<Self>,
        channel: &Arc<ChannelLink>,
        tag: &str,
        now_ms: u64,
    ) -> bool {
        let mut st = self.state.lock();
        let before = st.consumers.len();
        st.consumers
            .retain(|c| !(Arc::ptr_eq(&c.channel, channel) && &*c.tag == tag));
        if st.consumers.len() != before {
            st.last_used_ms = now_ms;
            // With a single active consumer, the next one may take over now.
            let mut dead = Dead::none();
            st.dispatch(self, now_ms, &mut dead);
            drop(dead);
        }
        self.auto_delete && st.had_consumers && st.consumers.is_empty()
    }

    /// Whether a consumer with this tag on this channel exists.
    pub fn has_consumer(&self, channel: &Arc<ChannelLink>, tag: &str) -> bool {
        self.state
            .lock()
            .consumers
            .iter()
            .any(|c| Arc::ptr_eq(&c.channel, channel) && &*c.tag == tag)
    }

    pub fn touch(&self, now_ms: u64) {
        self.state.lock().last_used_ms = now_ms;
    }

    /// Whether x-expires says the queue has been unused for too long.
    pub fn is_expired(&self, now_ms: u64) -> bool {
        let Some(ttl) = self.args.expires_ms else {
            return false;
        };
        let st = self.state.lock();
        st.consumers.is_empty() && now_ms.saturating_sub(st.last_used_ms) >= ttl
    }

    /// queue.purge: drops every ready message; returns how many.
    pub fn purge(&self) -> u64 {
        let mut st = self.state.lock();
        let mut n = 0;
        // Bounded by the queue length; paged-out bodies are not read back just to drop them.
        while let Some(s) = st.pop_stored(&self.stats) {
            st.forget_stored(&self.stats, &s);
            n += 1;
        }
        n
    }

    /// Marks the queue deleted and empties it. Returns the ready count and the consumers (to be
    /// told with basic.cancel) and the log (to be removed by the caller).
    pub fn delete(&self) -> (u64, Vec<Consumer>, Option<QueueLog>) {
        let mut st = self.state.lock();
        self.deleted.store(true, Ordering::Release);
        let n = st.ready.len() as u64;
        let resident: u64 = st
            .ready
            .iter()
            .filter(|s| s.msg.is_some())
            .map(|s| s.size)
            .sum();
        let paged = st.ready.iter().filter(|s| s.msg.is_none()).count();
        st.ready.clear();
        st.ready_bytes = 0;
        Stats::add(&self.stats.ready, -(n as i64));
        Stats::add(&self.stats.message_bytes, -(resident as i64));
        Stats::add(&self.stats.paged_out, -(paged as i64));
        // Unacked entries stay with their channels; acking them later releases their bytes.
        let consumers = std::mem::take(&mut st.consumers);
        let log = st.log.take();
        if let Some((storage, key)) = &self.spill {
            if log.is_some() {
                drop(log);
                if let Err(e) = storage.delete_queue_log(key) {
                    tracing::warn!(queue = %self.name, error = %e, "deleting the spill log failed");
                }
                return (n, consumers, None);
            }
        }
        (n, consumers, log)
    }

    pub fn counts(&self) -> QueueCounts {
        let st = self.state.lock();
        QueueCounts {
            ready: st.ready.len() as u64,
            unacked: st.unacked,
            consumers: st.consumers.len() as u64,
            ready_bytes: st.ready_bytes,
        }
    }
}

impl QueueState {
    /// Removes the head as stored (body possibly paged out).
    fn pop_stored(&mut self, stats: &Stats) -> Option<Stored> {
        let s = self.ready.pop_front()?;
        self.ready_bytes -= s.size;
        Stats::add(&stats.ready, -1);
        Some(s)
    }

    /// Removes the head with its body in memory (read back from the log if paged out). A
    /// record that cannot be read is dropped with a warning.
    fn pop_ready(&mut self, q: &Queue) -> Option<Entry> {
        // Bounded by the queue length: each iteration removes one entry.
        loop {
            let s = self.pop_stored(&q.stats)?;
            if let Some(msg) = s.msg {
                return Some(Entry {
                    seq: s.seq,
                    msg,
                    loc: s.loc,
                    marker: s.marker,
                    redelivered: s.redelivered,
                    expires_at: s.expires_at,
                });
            }
            Stats::add(&q.stats.paged_out, -1);
            let read = match (s.loc, self.log.as_ref()) {
                (Some(loc), Some(log)) => log.read(loc).ok().and_then(|r| Message::from_record(&r)),
                _ => None,
            };
            match read {
                Some(m) => {
                    Stats::add(&q.stats.message_bytes, s.size as i64);
                    return Some(Entry {
                        seq: s.seq,
                        msg: Arc::new(m),
                        loc: s.loc,
                        marker: s.marker,
                        redelivered: s.redelivered,
                        expires_at: s.expires_at,
                    });
                }
                None => {
                    tracing::error!(queue = %q.name, loc = ?s.loc, "cannot read a paged-out message back; dropping it");
                    self.forget_stored(&q.stats, &s);
                }
            }
        }
    }

    /// Drops the body of the newest ready message from memory, writing it to the queue's log
    /// (a spill log for non-durable queues) if it is not there yet.
    fn page_out_tail(&mut self, q: &Queue) {
        let Some(s) = self.ready.back() else { return };
        let Some(msg) = s.msg.clone() else { return };
        if s.loc.is_none() {
            if self.log.is_none() {
                let Some((storage, key)) = &q.spill else {
                    return;
                };
                match storage.open_queue_log(key, Durability::Written) {
                    Ok(log) => self.log = Some(log),
                    Err(e) => {
                        tracing::warn!(queue = %q.name, error = %e, "cannot open a spill log; keeping bodies in memory");
                        return;
                    }
                }
            }
            let Some(log) = self.log.as_mut() else { return };
            let appended = RECORD_SCRATCH.with(|scratch| {
                let mut scratch = scratch.borrow_mut();
                scratch.clear();
                msg.encode_record(&mut scratch, None);
                log.append(&scratch)
            });
            match appended {
                Ok(loc) => {
                    if let Some(s) = self.ready.back_mut() {
                        s.loc = Some(loc);
                    }
                }
                Err(e) => {
                    tracing::warn!(queue = %q.name, error = %e, "cannot page a message out");
                    return;
                }
            }
        }
        if let Some(s) = self.ready.back_mut() {
            s.msg = None;
            Stats::add(&q.stats.message_bytes, -(s.size as i64));
            Stats::add(&q.stats.paged_out, 1);
        }
    }

    /// The entry leaves the queue for good: its log record is acked and its memory released.
    fn forget(&mut self, stats: &Stats, e: &Entry) {
        Stats::add(&stats.message_bytes, -(e.msg.size() as i64));
        self.ack_loc(e.loc);
        self.ack_loc(e.marker);
    }

    fn forget_stored(&mut self, stats: &Stats, s: &Stored) {
        if s.msg.is_some() {
            Stats::add(&stats.message_bytes, -(s.size as i64));
        } else {
            Stats::add(&stats.paged_out, -1);
        }
        self.ack_loc(s.loc);
        self.ack_loc(s.marker);
    }

    fn ack_loc(&mut self, loc: Option<Location>) {
        if let (Some(loc), Some(log)) = (loc, self.log.as_mut()) {
            if let Err(err) = log.ack(loc) {
                // The message may come back after a restart; that is the at-least-once side.
                tracing::warn!(error = %err, "recording an ack in the queue log failed");
            }
        }
    }

    /// drop-head: makes room by dropping (dead-lettering) the oldest messages.
    fn enforce_max_length(&mut self, q: &Queue, dead: &mut Dead) {
        // Bounded by the queue length: each iteration removes one entry.
        loop {
            let over_len = q
                .args
                .max_length
                .is_some_and(|m| self.ready.len() as u64 > m);
            let over_bytes = q
                .args
                .max_length_bytes
                .is_some_and(|m| self.ready_bytes > m);
            if !(over_len || over_bytes) || !self.drop_head(q, DeathReason::MaxLen, dead) {
                return;
            }
        }
    }

    /// Expires the newest ready message (a zero TTL that found no consumer).
    fn expire_tail(&mut self, q: &Queue, dead: &mut Dead) {
        let Some(s) = self.ready.pop_back() else {
            return;
        };
        self.ready_bytes -= s.size;
        Stats::add(&q.stats.ready, -1);
        match s.msg.clone() {
            Some(msg) if q.args.dead_letter_exchange.is_some() => {
                let e = Entry {
                    seq: s.seq,
                    msg,
                    loc: s.loc,
                    marker: s.marker,
                    redelivered: s.redelivered,
                    expires_at: s.expires_at,
                };
                self.forget(&q.stats, &e);
                dead.entries.push((e, DeathReason::Expired));
            }
            _ => self.forget_stored(&q.stats, &s),
        }
    }

    /// Removes the head for `reason`; its body is read back only if it will be dead-lettered.
    fn drop_head(&mut self, q: &Queue, reason: DeathReason, dead: &mut Dead) -> bool {
        if q.args.dead_letter_exchange.is_some() {
            match self.pop_ready(q) {
                Some(e) => {
                    self.forget(&q.stats, &e);
                    dead.entries.push((e, reason));
                    true
                }
                None => false,
            }
        } else {
            match self.pop_stored(&q.stats) {
                Some(s) => {
                    self.forget_stored(&q.stats, &s);
                    true
                }
                None => false,
            }
        }
    }

    fn expire_head(&mut self, q: &Queue, now_ms: u64, dead: &mut Dead) {
        // Bounded by the queue length: each iteration removes one entry.
        while self
            .ready
            .front()
            .is_some_and(|e| e.expires_at.is_some_and(|t| t < now_ms))
        {
            if !self.drop_head(q, DeathReason::Expired, dead) {
                break;
            }
        }
    }

    fn dispatch(&mut self, q: &Arc<Queue>, now_ms: u64, dead: &mut Dead) {
        self.expire_head(q, now_ms, dead);
        if self.consumers.is_empty() || self.ready.is_empty() {
            return;
        }
        // With x-single-active-consumer only the first (oldest) consumer receives.
        let n = if q.args.single_active_consumer {
            1
        } else {
            self.consumers.len()
        };
        let mut refused_in_a_row = 0;
        // Each iteration delivers one message or counts one refusal; n refusals in a row end it.
        while refused_in_a_row < n {
            self.expire_head(q, now_ms, dead);
            let Some(entry) = self.pop_ready(q) else {
                break;
            };
            let i = self.next_consumer % n;
            self.next_consumer = (i + 1) % n;
            match self.consumers[i].offer(q, entry) {
                Offer::Taken => {
                    refused_in_a_row = 0;
                    self.unacked += 1;
                    Stats::add(&q.stats.unacked, 1);
                    Stats::inc(&q.stats.delivered, 1);
                }
                Offer::TakenNoAck(e) => {
                    refused_in_a_row = 0;
                    Stats::inc(&q.stats.delivered, 1);
                    self.forget(&q.stats, &e);
                }
                Offer::Refused(e) => {
                    refused_in_a_row += 1;
                    let s = Stored::from_entry(e);
                    self.ready_bytes += s.size;
                    Stats::add(&q.stats.ready, 1);
                    self.ready.push_front(s);
                }
            }
        }
    }
}
