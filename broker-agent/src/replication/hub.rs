//! The node's replication state, shared by its storage tap, the leader's shippers, the
//! follower's applier and the agent: the log position, the window of recent entries, the
//! followers' progress, the lease and the confirm gate.
//!
//! Invariants (all under one lock):
//! - `position` is the LSN of the last entry this node holds, and `window` holds a contiguous
//!   run of entries ending at `position` (possibly empty), each an encoded `Entry` frame.
//! - The gate's `confirmable` only grows, and grows only while this node leads, is not fenced,
//!   holds a lease for its epoch, and every node of the in-sync union has acked that far.
//!   A waiter is released when `confirmable` reaches its LSN, or told "never" once fenced.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mooring_agent_protocol::{
    DesiredPointer, Epoch, FollowerProgress, NodeId, ReplicationStatus, Role,
};
use parking_lot::Mutex;
use tokio::sync::watch;

use super::wire::{self, Msg, StreamPos};
use crate::engine::storage::{FileOp, StorageTap};

/// Tunables; units in the names.
#[derive(Debug, Clone)]
pub struct HubConfig {
    pub me: NodeId,
    /// Bytes of recent entries kept in memory for followers that reconnect.
    pub window_bytes: usize,
    /// A follower more than this far behind (in time) leaves the proposed in-sync set.
    pub lag_timeout: Duration,
}

impl HubConfig {
    pub const DEFAULT_WINDOW_BYTES: usize = 64 * 1024 * 1024;
    pub const DEFAULT_LAG_TIMEOUT: Duration = Duration::from_millis(1000);

    pub fn new(me: NodeId) -> HubConfig {
        HubConfig {
            me,
            window_bytes: Self::DEFAULT_WINDOW_BYTES,
            lag_timeout: Self::DEFAULT_LAG_TIMEOUT,
        }
    }
}

/// What confirm waiters watch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Gate {
    pub confirmable: u64,
    /// This leadership is over (demoted, superseded, or released): waiters below
    /// `confirmable` were released already; every other one is told "never".
    pub fenced: bool,
    /// Until when the lease holds (none while released or never granted). A confirm the gate
    /// let through goes out only before it: a leader frozen between the two (SIGSTOP) would
    /// otherwise confirm after a promotion.
    pub lease_until: Option<Instant>,
}

/// One follower as its leader sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FollowerInfo {
    pub connected: bool,
    /// Past its snapshot (if any): receiving live entries.
    pub streaming: bool,
    pub acked: u64,
}

struct WinEntry {
    at: StreamPos,
    frame: Bytes,
}

struct Leading {
    stream: u64,
    since: Instant,
    start_position: u64,
    lease_until: Option<Instant>,
    recorded: Option<Vec<NodeId>>,
    /// Starts as the first recorded set the control plane answers with (so that a new leader
    /// neither waits for a dead predecessor nor drops a live follower on its first tick).
    proposed: BTreeSet<NodeId>,
    seeded: bool,
    /// Followers the control plane is about to stop for a planned restart: never proposed.
    leaving: Vec<NodeId>,
    followers: BTreeMap<NodeId, FollowerInfo>,
    peers: Vec<NodeId>,
    /// (when, position), one per tick, for the lag floor.
    samples: VecDeque<(Instant, u64)>,
}

struct State {
    position: u64,
    last_stream: u64,
    /// Whether `position`/`last_stream` describe the files (false until this process has led
    /// or completed a resync: a restarted follower cannot know what it holds).
    known: bool,
    window: VecDeque<WinEntry>,
    window_bytes: usize,
    epoch: u64,
    role: Role,
    leading: Option<Leading>,
    released: bool,
}

pub struct Hub {
    config: HubConfig,
    state: Mutex<State>,
    position_tx: watch::Sender<u64>,
    gate_tx: watch::Sender<Gate>,
}

/// The entries asked for are no longer in the window: the follower must resync.
#[derive(Debug)]
pub struct Gone;

impl Hub {
    pub fn new(config: HubConfig) -> Hub {
        Hub {
            config,
            state: Mutex::new(State {
                position: 0,
                last_stream: 0,
                known: false,
                window: VecDeque::new(),
                window_bytes: 0,
                epoch: 0,
                role: Role::Follower,
                leading: None,
                released: false,
            }),
            position_tx: watch::channel(0).0,
            gate_tx: watch::channel(Gate::default()).0,
        }
    }

    pub fn me(&self) -> &NodeId {
        &self.config.me
    }

    pub fn position(&self) -> u64 {
        self.state.lock().position
    }

    pub fn subscribe_position(&self) -> watch::Receiver<u64> {
        self.position_tx.subscribe()
    }

    pub fn gate(&self) -> Gate {
        *self.gate_tx.borrow()
    }

    /// The newest epoch seen; raising it is how a follower learns of a newer leader.
    pub fn epoch(&self) -> u64 {
        self.state.lock().epoch
    }

    /// Records an epoch seen (config or handshake). Returns the newest.
    pub fn observe_epoch(&self, epoch: u64) -> u64 {
        let mut st = self.state.lock();
        if epoch > st.epoch {
            st.epoch = epoch;
            if st.leading.is_some() {
                // Someone leads under a newer epoch: this leadership can confirm nothing more.
                drop(st);
                self.fence();
                return epoch;
            }
        }
        st.epoch
    }

    pub fn is_leading(&self) -> bool {
        self.state.lock().leading.is_some()
    }

    /// Where this node stands, for a follower's hello; `None` if unknown.
    pub fn resume_key(&self) -> Option<StreamPos> {
        let st = self.state.lock();
        st.known.then_some(StreamPos {
            stream: st.last_stream,
            lsn: st.position,
        })
    }

    /// Starts leading under `epoch` with `peers` (this node included). Entries recorded from
    /// now on belong to a fresh stream, numbered after what this node holds.
    pub fn become_leader(&self, epoch: u64, peers: Vec<NodeId>) {
        let mut st = self.state.lock();
        st.epoch = st.epoch.max(epoch);
        if !st.known {
            // A process that restarted on its own files: number from the clock, so positions
            // never run backwards across restarts.
            let micros = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_micros() as u64)
                .unwrap_or(0);
            st.position = st.position.max(micros);
            st.window.clear();
            st.window_bytes = 0;
            st.known = true;
        }
        let stream = loop {
            let s = rand::random::<u64>();
            if s != 0 && s != st.last_stream {
                break s;
            }
        };
        let now = Instant::now();
        let proposed = BTreeSet::from([self.config.me.clone()]);
        // Re-confirmed under a newer epoch while leading: the same log, so the followers'
        // sessions stay connected and their acks stand. An empty table would count a
        // connected follower as gone until it reconnected, which it has no reason to do,
        // so it would never be reported caught up again (a rolling reboot then waited
        // forever for it).
        let followers = st.leading.take().map(|l| l.followers).unwrap_or_default();
        st.leading = Some(Leading {
            stream,
            since: now,
            start_position: st.position,
            lease_until: None,
            recorded: None,
            leaving: Vec::new(),
            proposed,
            seeded: false,
            followers,
            peers,
            samples: VecDeque::new(),
        });
        st.role = Role::Leader;
        st.released = false;
        drop(st);
        self.gate_tx.send_modify(|g| g.fenced = false);
    }

    /// Peers may change under one epoch (a node replaced).
    pub fn set_peers(&self, peers: Vec<NodeId>) {
        if let Some(l) = self.state.lock().leading.as_mut() {
            l.peers = peers;
        }
    }

    /// Stops every confirm of this leadership for good (demotion, a newer epoch, release).
    pub fn fence(&self) {
        self.gate_tx.send_modify(|g| g.fenced = true);
    }

    /// A planned hand-over: confirm nothing more (waiters keep waiting; a demotion tells them
    /// "never") and say so in heartbeats, with the position the followers must reach.
    pub fn release(&self) {
        self.state.lock().released = true;
    }

    /// Stops leading (after `fence`); the node follows from now on.
    pub fn stop_leading(&self) {
        self.fence();
        let mut st = self.state.lock();
        st.leading = None;
        st.role = Role::Follower;
    }

    /// A follower that restarted, or joins: what it holds is unknown until a resync.
    pub fn forget_position(&self) {
        let mut st = self.state.lock();
        st.known = false;
        st.window.clear();
        st.window_bytes = 0;
    }

    /// Follower: a full resync ended at `at`.
    pub fn reset_to(&self, at: StreamPos) {
        let mut st = self.state.lock();
        st.window.clear();
        st.window_bytes = 0;
        st.position = at.lsn;
        st.last_stream = at.stream;
        st.known = true;
        st.released = false;
        drop(st);
        self.position_tx.send_replace(at.lsn);
    }

    /// Follower: an entry was applied; keep its frame so that it can be shipped on if this node
    /// is promoted. `body` is the frame without its length prefix.
    pub fn push_applied(&self, at: StreamPos, body: &Bytes) {
        let mut frame = Vec::with_capacity(body.len() + 4);
        frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
        frame.extend_from_slice(body);
        let mut st = self.state.lock();
        st.released = false;
        self.push(&mut st, at, Bytes::from(frame));
        drop(st);
        self.position_tx.send_replace(at.lsn);
    }

    fn push(&self, st: &mut State, at: StreamPos, frame: Bytes) {
        st.window_bytes += frame.len();
        st.window.push_back(WinEntry { at, frame });
        st.position = at.lsn;
        st.last_stream = at.stream;
        while st.window_bytes > self.config.window_bytes && st.window.len() > 1 {
            if let Some(e) = st.window.pop_front() {
                st.window_bytes -= e.frame.len();
            }
        }
    }

    /// Leader: whether a follower standing at `from` can continue from the window (it holds
    /// exactly our entries up to `from.lsn`), rather than resync.
    pub fn can_resume(&self, from: StreamPos) -> bool {
        let st = self.state.lock();
        if !st.known {
            return false;
        }
        if from.lsn == st.position {
            return from.stream == st.last_stream;
        }
        if from.lsn > st.position {
            return false;
        }
        let Some(first) = st.window.front() else {
            return false;
        };
        if from.lsn < first.at.lsn {
            return false;
        }
        let idx = (from.lsn - first.at.lsn) as usize;
        st.window.get(idx).is_some_and(|e| e.at == from)
    }

    /// Leader: where a full resync's copy starts (read before copying any file).
    pub fn snapshot_point(&self) -> StreamPos {
        let st = self.state.lock();
        StreamPos {
            stream: st.last_stream,
            lsn: st.position,
        }
    }

    /// Leader: the frames of entries `next..`, at most about `max_bytes` of them.
    pub fn entries_from(&self, next: u64, max_bytes: usize) -> Result<Vec<Bytes>, Gone> {
        let st = self.state.lock();
        if next > st.position {
            return Ok(Vec::new());
        }
        let Some(first) = st.window.front() else {
            return Err(Gone);
        };
        if next < first.at.lsn {
            return Err(Gone);
        }
        let mut out = Vec::new();
        let mut bytes = 0;
        for e in st.window.iter().skip((next - first.at.lsn) as usize) {
            bytes += e.frame.len();
            out.push(e.frame.clone());
            if bytes >= max_bytes {
                break;
            }
        }
        Ok(out)
    }

    /// Leader: whether every connected follower has acked `lsn` (the end of a drain).
    pub fn connected_followers_at(&self, lsn: u64) -> bool {
        let st = self.state.lock();
        st.leading.as_ref().is_none_or(|l| {
            l.followers
                .values()
                .all(|f| !f.connected || !f.streaming || f.acked >= lsn)
        })
    }

    pub fn follower_update(&self, node: &NodeId, f: impl FnOnce(&mut FollowerInfo)) {
        let mut st = self.state.lock();
        if let Some(l) = st.leading.as_mut() {
            f(l.followers.entry(node.clone()).or_default());
        }
        self.recompute(&mut st, Instant::now());
    }

    /// Leader: `node` is about to receive a full resync, which throws away what it holds, so
    /// from now on it counts as holding nothing — out of the proposed in-sync set, its acks
    /// forgotten. Returns true once the control plane's recorded set no longer names it
    /// either; only then may the copy start. The control plane promotes only recorded members
    /// (agent-protocol's replication module), so a member mid-copy could otherwise be
    /// promoted with a partial log and lose confirmed messages.
    pub fn admit_resync(&self, node: &NodeId) -> bool {
        let mut st = self.state.lock();
        let Some(l) = st.leading.as_mut() else {
            return false;
        };
        l.proposed.remove(node);
        let f = l.followers.entry(node.clone()).or_default();
        f.acked = 0;
        f.streaming = false;
        let clear = l.seeded && l.recorded.as_ref().is_some_and(|r| !r.contains(node));
        self.recompute(&mut st, Instant::now());
        clear
    }

    /// The heartbeat's answer: the lease (counted from `sent_at`) and the recorded set.
    pub fn on_pointer(&self, sent_at: Instant, pointer: &DesiredPointer) {
        let mut st = self.state.lock();
        let epoch = st.epoch;
        if let Some(l) = st.leading.as_mut() {
            if let Some(grant) = pointer.lease.filter(|g| g.epoch.0 == epoch) {
                let until = sent_at + Duration::from_millis(grant.duration_ms);
                l.lease_until = Some(l.lease_until.map_or(until, |u| u.max(until)));
            }
            if let Some(set) = &pointer.in_sync {
                l.recorded = Some(set.clone());
                if !l.seeded {
                    l.proposed = set
                        .iter()
                        .filter(|n| l.peers.contains(n))
                        .cloned()
                        .collect();
                    l.proposed.insert(self.config.me.clone());
                    l.seeded = true;
                }
            }
            // A follower about to be stopped leaves the proposal now, not after the lag
            // timeout, so confirms never wait on it (the recorded set dropped it already).
            l.leaving.clone_from(&pointer.leaving);
            for gone in &pointer.leaving {
                l.proposed.remove(gone);
            }
            if pointer.release_lease {
                st.released = true;
            } else if pointer.lease.is_some_and(|g| g.epoch.0 == epoch) {
                // A lease granted again under our epoch: the switchover was called off.
                st.released = false;
            }
        }
        self.recompute(&mut st, Instant::now());
    }

    /// Periodic: sample the position, revise the proposed in-sync set, release waiters.
    pub fn tick(&self, now: Instant) {
        let mut st = self.state.lock();
        let position = st.position;
        let lag = self.config.lag_timeout;
        let me = self.config.me.clone();
        if let Some(l) = st.leading.as_mut() {
            l.samples.push_back((now, position));
            while l.samples.len() > 2
                && l.samples[1].0 + lag <= now
                && l.samples.front().is_some_and(|s| s.0 + lag * 2 < now)
            {
                l.samples.pop_front();
            }
            if l.seeded && now >= l.since + lag {
                let floor = lag_floor(&l.samples, now, lag, l.start_position);
                l.proposed = propose(&me, &l.peers, &l.proposed, &l.followers, floor);
                for gone in &l.leaving {
                    l.proposed.remove(gone);
                }
            }
        }
        self.recompute(&mut st, now);
    }

    fn recompute(&self, st: &mut State, now: Instant) {
        let Some(l) = st.leading.as_ref() else {
            return;
        };
        let lease = if st.released { None } else { l.lease_until };
        self.gate_tx.send_if_modified(|g| {
            let changed = g.lease_until != lease;
            g.lease_until = lease;
            changed
        });
        if l.lease_until.is_none_or(|u| now >= u) || st.released {
            return;
        }
        let mut confirmable = st.position;
        let recorded = l.recorded.iter().flatten();
        for node in l.proposed.iter().chain(recorded) {
            if *node == self.config.me {
                continue;
            }
            let acked = l.followers.get(node).map_or(0, |f| f.acked);
            confirmable = confirmable.min(acked);
        }
        self.gate_tx.send_if_modified(|g| {
            if !g.fenced && confirmable > g.confirmable {
                g.confirmable = confirmable;
                true
            } else {
                false
            }
        });
    }

    /// What the heartbeat reports.
    pub fn status(&self) -> ReplicationStatus {
        let st = self.state.lock();
        let now = Instant::now();
        let (proposed_in_sync, followers) = match &st.leading {
            Some(l) if l.seeded => {
                let floor = lag_floor(&l.samples, now, self.config.lag_timeout, l.start_position);
                (
                    l.proposed.iter().cloned().collect(),
                    l.followers
                        .iter()
                        .map(|(node, f)| FollowerProgress {
                            node: node.clone(),
                            acked_position: f.acked,
                            caught_up: f.connected && f.streaming && f.acked >= floor,
                        })
                        .collect(),
                )
            }
            _ => (Vec::new(), Vec::new()),
        };
        ReplicationStatus {
            epoch: Epoch(st.epoch),
            role: st.role,
            position: if st.known { st.position } else { 0 },
            proposed_in_sync,
            followers,
            lease_released: st.released,
        }
    }

    /// The confirm gate as a future (see `StorageTap::replicated`).
    fn wait_confirmable(&self, lsn: u64) -> Pin<Box<dyn Future<Output = io::Result<()>> + Send>> {
        let mut rx = self.gate_tx.subscribe();
        Box::pin(async move {
            let never = || {
                io::Error::other(
                    "this node no longer leads the broker: the message is not confirmed",
                )
            };
            loop {
                let Ok(gate) = rx
                    .wait_for(|g| g.confirmable >= lsn || g.fenced)
                    .await
                    .map(|g| *g)
                else {
                    return Err(never());
                };
                if gate.confirmable < lsn {
                    return Err(never());
                }
                if gate.lease_until.is_some_and(|u| Instant::now() < u) {
                    return Ok(());
                }
                // Replicated, but the lease lapsed before this confirm went out: hold it
                // until the lease is renewed under this epoch; a fence means never.
                if gate.fenced || rx.changed().await.is_err() {
                    return Err(never());
                }
            }
        })
    }
}

impl StorageTap for Hub {
    fn record(&self, op: FileOp<'_>) {
        let mut st = self.state.lock();
        let stream = st.leading.as_ref().map_or(st.last_stream, |l| l.stream);
        let mut lsn = st.position;
        let mut frames = Vec::new();
        wire::chunk_op(op, |piece| {
            lsn += 1;
            let at = StreamPos { stream, lsn };
            let mut buf = Vec::new();
            wire::encode(&mut buf, &Msg::Entry { at, op: piece });
            frames.push((at, Bytes::from(buf)));
        });
        for (at, frame) in frames {
            self.push(&mut st, at, frame);
        }
        drop(st);
        self.position_tx.send_replace(lsn);
    }

    fn position(&self) -> u64 {
        self.state.lock().position
    }

    fn replicated(&self, lsn: u64) -> Pin<Box<dyn Future<Output = io::Result<()>> + Send>> {
        self.wait_confirmable(lsn)
    }
}

/// The position the leader had `lag` ago: a follower that has acked it is at most `lag`
/// behind. Before any sample is that old, the position at which leadership began.
pub fn lag_floor(
    samples: &VecDeque<(Instant, u64)>,
    now: Instant,
    lag: Duration,
    start_position: u64,
) -> u64 {
    samples
        .iter()
        .rev()
        .find(|(t, _)| *t + lag <= now)
        .map_or(start_position, |(_, p)| *p)
}

/// The in-sync set the leader proposes: itself; every follower already in it that has acked
/// `floor`; and every connected, streaming follower that has acked `floor`. Pure.
pub fn propose(
    me: &NodeId,
    peers: &[NodeId],
    current: &BTreeSet<NodeId>,
    followers: &BTreeMap<NodeId, FollowerInfo>,
    floor: u64,
) -> BTreeSet<NodeId> {
    let mut out = BTreeSet::from([me.clone()]);
    for p in peers.iter().filter(|p| *p != me) {
        let Some(f) = followers.get(p) else {
            continue;
        };
        let caught_up = f.acked >= floor;
        let keep = current.contains(p) && caught_up;
        let join = f.connected && f.streaming && caught_up;
        if keep || join {
            out.insert(p.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use mooring_agent_protocol::LeaseGrant;

    fn n(s: &str) -> NodeId {
        NodeId(s.into())
    }

    #[test]
    fn proposal_table() {
        let me = n("a");
        let peers = vec![n("a"), n("b"), n("c")];
        let f = |connected, streaming, acked| FollowerInfo {
            connected,
            streaming,
            acked,
        };
        // (current, b, c, floor) -> expected
        type Case = (
            Vec<&'static str>,
            FollowerInfo,
            FollowerInfo,
            u64,
            Vec<&'static str>,
        );
        let cases: Vec<Case> = vec![
            // both caught up and connected: in.
            (
                vec!["a"],
                f(true, true, 10),
                f(true, true, 10),
                10,
                vec!["a", "b", "c"],
            ),
            // b behind the floor: out, even if it was in.
            (
                vec!["a", "b", "c"],
                f(true, true, 9),
                f(true, true, 10),
                10,
                vec!["a", "c"],
            ),
            // c disconnected but has everything up to the floor: stays in...
            (
                vec!["a", "b", "c"],
                f(true, true, 10),
                f(false, false, 10),
                10,
                vec!["a", "b", "c"],
            ),
            // ...but does not join while disconnected.
            (
                vec!["a"],
                f(true, true, 10),
                f(false, false, 10),
                10,
                vec!["a", "b"],
            ),
            // snapshotting (not streaming) does not join.
            (
                vec!["a"],
                f(true, false, 10),
                f(true, true, 3),
                3,
                vec!["a", "c"],
            ),
        ];
        for (i, (current, b, c, floor, want)) in cases.into_iter().enumerate() {
            let current: BTreeSet<NodeId> = current.into_iter().map(n).collect();
            let followers = BTreeMap::from([(n("b"), b), (n("c"), c)]);
            let got = propose(&me, &peers, &current, &followers, floor);
            let want: BTreeSet<NodeId> = want.into_iter().map(n).collect();
            assert_eq!(got, want, "case {i}");
        }
    }

    #[test]
    fn lag_floor_uses_the_sample_old_enough() {
        let t0 = Instant::now();
        let lag = Duration::from_millis(100);
        let samples = VecDeque::from([
            (t0, 5),
            (t0 + Duration::from_millis(50), 8),
            (t0 + Duration::from_millis(150), 20),
        ]);
        assert_eq!(
            lag_floor(&samples, t0 + Duration::from_millis(50), lag, 1),
            1
        );
        assert_eq!(
            lag_floor(&samples, t0 + Duration::from_millis(120), lag, 1),
            5
        );
        assert_eq!(
            lag_floor(&samples, t0 + Duration::from_millis(160), lag, 1),
            8
        );
        assert_eq!(
            lag_floor(&samples, t0 + Duration::from_millis(300), lag, 1),
            20
        );
    }

    fn pointer(epoch: u64, ms: u64, in_sync: &[&str]) -> DesiredPointer {
        DesiredPointer {
            desired_generation: Default::default(),
            lease: Some(LeaseGrant {
                epoch: Epoch(epoch),
                duration_ms: ms,
            }),
            in_sync: Some(in_sync.iter().map(|s| n(s)).collect()),
            release_lease: false,
            leaving: Vec::new(),
            hurry: false,
        }
    }

    #[test]
    fn a_recorded_member_is_not_resynced_until_the_control_plane_drops_it() {
        let hub = Hub::new(HubConfig::new(n("a")));
        hub.become_leader(2, vec![n("a"), n("b")]);
        assert!(!hub.admit_resync(&n("b")), "nothing recorded yet");
        hub.on_pointer(Instant::now(), &pointer(2, 5_000, &["a", "b"]));
        hub.follower_update(&n("b"), |f| {
            f.acked = 7;
            f.connected = true;
            f.streaming = true;
        });
        // b comes back needing a copy: it leaves the proposal at once, with its acks...
        assert!(!hub.admit_resync(&n("b")), "still recorded in sync");
        assert_eq!(hub.status().proposed_in_sync, vec![n("a")]);
        assert_eq!(
            hub.state
                .lock()
                .leading
                .as_ref()
                .expect("leading")
                .followers[&n("b")]
                .acked,
            0
        );
        // ...but is copied only once the recorded set no longer names it.
        hub.on_pointer(Instant::now(), &pointer(2, 5_000, &["a"]));
        assert!(hub.admit_resync(&n("b")));
        hub.stop_leading();
        assert!(!hub.admit_resync(&n("b")), "only a leader resyncs anyone");
    }

    #[test]
    fn a_connected_follower_stays_caught_up_when_its_leader_is_re_confirmed() {
        let hub = Hub::new(HubConfig::new(n("a")));
        hub.become_leader(7, vec![n("a"), n("b")]);
        hub.on_pointer(Instant::now(), &pointer(7, 5_000, &["a", "b"]));
        hub.record(FileOp::CreateFile { path: "x" });
        let lsn = hub.position();
        // b's session connected under epoch 7 and streams.
        hub.follower_update(&n("b"), |f| {
            f.connected = true;
            f.streaming = true;
            f.acked = lsn;
        });
        let caught_up = |hub: &Hub| {
            hub.status()
                .followers
                .iter()
                .any(|f| f.node == n("b") && f.caught_up)
        };
        assert!(caught_up(&hub));
        // The control plane re-elects this node under epoch 9; b's session goes on, acking.
        hub.become_leader(9, vec![n("a"), n("b")]);
        hub.on_pointer(Instant::now(), &pointer(9, 5_000, &["a"]));
        hub.follower_update(&n("b"), |f| f.acked = lsn);
        assert!(caught_up(&hub), "{:?}", hub.status());
    }

    #[tokio::test]
    async fn confirms_wait_for_lease_and_every_in_sync_follower() {
        let hub = Hub::new(HubConfig::new(n("a")));
        hub.become_leader(2, vec![n("a"), n("b"), n("c")]);
        hub.record(FileOp::CreateFile { path: "x" });
        let lsn = hub.position();
        let mut w = hub.replicated(lsn);
        use futures::FutureExt;
        assert!((&mut w).now_or_never().is_none(), "no lease, no acks");
        hub.follower_update(&n("b"), |f| f.acked = lsn);
        hub.follower_update(&n("c"), |f| f.acked = lsn);
        assert!((&mut w).now_or_never().is_none(), "acked but no lease");
        // A lease for an older epoch is ignored.
        hub.on_pointer(Instant::now(), &pointer(1, 5_000, &["a", "b", "c"]));
        assert!((&mut w).now_or_never().is_none(), "lease of another epoch");
        hub.on_pointer(Instant::now(), &pointer(2, 5_000, &["a", "b", "c"]));
        assert!(matches!((&mut w).now_or_never(), Some(Ok(()))));

        // The next entry: c lags; the recorded set still has c, so we wait for it even though
        // the proposal (after the grace period) would drop it.
        hub.record(FileOp::CreateFile { path: "y" });
        let lsn2 = hub.position();
        let mut w2 = hub.replicated(lsn2);
        hub.follower_update(&n("b"), |f| f.acked = lsn2);
        assert!((&mut w2).now_or_never().is_none());
        // The control plane records the smaller set: released.
        hub.on_pointer(Instant::now(), &pointer(2, 5_000, &["a", "b"]));
        // Still waiting: our own proposal includes c until the lag timeout drops it.
        assert!((&mut w2).now_or_never().is_none());
        hub.tick(Instant::now() + Duration::from_secs(5));
        hub.tick(Instant::now() + Duration::from_secs(10));
        assert!(!hub.status().proposed_in_sync.contains(&n("c")));
        // (The ticks ran on a clock past the lease; any event re-evaluates on the real one.)
        hub.follower_update(&n("b"), |_| {});
        assert!(matches!((&mut w2).now_or_never(), Some(Ok(()))));

        // Expired lease: nothing more is confirmed, even once acked.
        hub.record(FileOp::CreateFile { path: "z" });
        let lsn3 = hub.position();
        let mut w3 = hub.replicated(lsn3);
        // The lease runs out (as if no heartbeat was answered since).
        hub.state
            .lock()
            .leading
            .as_mut()
            .expect("leading")
            .lease_until = Some(Instant::now() - Duration::from_millis(1));
        hub.follower_update(&n("b"), |f| f.acked = lsn3);
        assert!((&mut w3).now_or_never().is_none(), "lease lapsed");
        // Demotion: the waiter is told "never".
        hub.stop_leading();
        assert!(matches!(w3.now_or_never(), Some(Err(_))));
    }

    #[tokio::test]
    async fn a_leaving_follower_is_never_waited_on_nor_proposed_again() {
        use futures::FutureExt;
        let hub = Hub::new(HubConfig::new(n("a")));
        hub.become_leader(2, vec![n("a"), n("b"), n("c")]);
        hub.on_pointer(Instant::now(), &pointer(2, 5_000, &["a", "b", "c"]));
        for f in ["b", "c"] {
            hub.follower_update(&n(f), |f| {
                f.connected = true;
                f.streaming = true;
            });
        }
        hub.record(FileOp::CreateFile { path: "x" });
        let lsn = hub.position();
        let mut w = hub.replicated(lsn);
        hub.follower_update(&n("b"), |f| f.acked = lsn);
        assert!((&mut w).now_or_never().is_none(), "c has not acked");
        // The control plane takes c out before stopping it: no lag timeout to sit out.
        let mut leave = pointer(2, 5_000, &["a", "b"]);
        leave.leaving = vec![n("c")];
        hub.on_pointer(Instant::now(), &leave);
        assert!(matches!((&mut w).now_or_never(), Some(Ok(()))));
        assert_eq!(hub.status().proposed_in_sync, vec![n("a"), n("b")]);
        // Caught up and streaming, c is still not proposed while it is listed as leaving...
        hub.follower_update(&n("c"), |f| f.acked = lsn);
        hub.tick(Instant::now() + Duration::from_secs(5));
        assert_eq!(hub.status().proposed_in_sync, vec![n("a"), n("b")]);
        // ...and once it is not (restarted and caught up), it joins again.
        hub.on_pointer(Instant::now(), &pointer(2, 5_000, &["a", "b"]));
        hub.tick(Instant::now() + Duration::from_secs(10));
        assert_eq!(hub.status().proposed_in_sync, vec![n("a"), n("b"), n("c")]);
    }

    #[tokio::test]
    async fn a_released_lease_stops_confirms_until_granted_again() {
        use futures::FutureExt;
        let hub = Hub::new(HubConfig::new(n("a")));
        hub.become_leader(3, vec![n("a"), n("b")]);
        hub.on_pointer(Instant::now(), &pointer(3, 5_000, &["a", "b"]));
        hub.record(FileOp::CreateFile { path: "x" });
        let lsn = hub.position();
        let mut release = pointer(3, 5_000, &["a", "b"]);
        release.lease = None;
        release.release_lease = true;
        hub.on_pointer(Instant::now(), &release);
        let status = hub.status();
        assert!(status.lease_released);
        assert_eq!(
            status.position, lsn,
            "the final position the follower must reach"
        );
        let mut w = hub.replicated(lsn);
        hub.follower_update(&n("b"), |f| f.acked = lsn);
        assert!(
            (&mut w).now_or_never().is_none(),
            "released: nothing confirmed"
        );
        // The switchover is called off: a lease under our epoch again.
        hub.on_pointer(Instant::now(), &pointer(3, 5_000, &["a", "b"]));
        assert!(!hub.status().lease_released);
        assert!(matches!(w.now_or_never(), Some(Ok(()))));
    }

    #[test]
    fn window_resume_and_eviction() {
        let mut cfg = HubConfig::new(n("a"));
        cfg.window_bytes = 200;
        let hub = Hub::new(cfg);
        hub.become_leader(1, vec![n("a")]);
        let start = hub.position();
        for _ in 0..3 {
            hub.record(FileOp::CreateFile { path: "f" });
        }
        let stream = hub.snapshot_point().stream;
        assert!(hub.can_resume(StreamPos {
            stream,
            lsn: start + 1
        }));
        assert!(hub.can_resume(StreamPos {
            stream,
            lsn: start + 3
        }));
        assert!(!hub.can_resume(StreamPos {
            stream: stream ^ 1,
            lsn: start + 2
        }));
        assert!(!hub.can_resume(StreamPos {
            stream,
            lsn: start + 4
        }));
        assert_eq!(
            hub.entries_from(start + 2, usize::MAX)
                .expect("in window")
                .len(),
            2
        );
        for _ in 0..50 {
            hub.record(FileOp::CreateFile { path: "f" });
        }
        assert!(hub.entries_from(start + 1, usize::MAX).is_err());
        assert!(!hub.can_resume(StreamPos {
            stream,
            lsn: start + 1
        }));
    }
}
