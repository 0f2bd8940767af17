//! The follower's side: connect to the leader named by the spec, prove who we are, apply the
//! snapshot (if the leader sends one) and the live entries to the local storage directory, and
//! acknowledge each position once written.
//!
//! Guarantee of an ack: the entries up to that position were handed to the kernel with
//! write(2) (they survive `kill -9` of this process, the level of a classic queue's confirm);
//! they are fsync'd within [`SYNC_INTERVAL`], and at the end of a resync.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::auth::{self, Side};
use super::hub::Hub;
use super::wire::{self, Msg};
use crate::engine::storage::Applier;

/// Period of the follower's fsync of what it applied.
pub const SYNC_INTERVAL: Duration = Duration::from_millis(200);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const RETRY_MIN: Duration = Duration::from_millis(50);
/// Short: a follower told of a new leader may try before that node has been promoted.
const RETRY_MAX: Duration = Duration::from_millis(250);

/// Whom to follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub epoch: u64,
    pub leader: String,
    pub addr: String,
    pub secret: String,
}

/// Follows `target` forever (the caller aborts the task to stop). `streaming` is set while
/// live entries flow.
pub async fn follow(
    hub: Arc<Hub>,
    root: PathBuf,
    target: Target,
    streaming: Arc<std::sync::atomic::AtomicBool>,
) {
    let mut applier = match Applier::new(&root) {
        Ok(a) => a,
        Err(e) => {
            tracing::error!(dir = %root.display(), error = %e, "cannot open the follower's storage");
            return;
        }
    };
    let mut delay = RETRY_MIN;
    loop {
        let started = Instant::now();
        let r = session(&hub, &mut applier, &target, &streaming).await;
        streaming.store(false, std::sync::atomic::Ordering::Relaxed);
        if let Err(e) = applier.sync() {
            tracing::error!(error = %e, "fsync of replicated data failed");
        }
        if let Err(e) = r {
            tracing::info!(leader = %target.leader, addr = %target.addr, "following: {e:#}");
        }
        if started.elapsed() > Duration::from_secs(5) {
            delay = RETRY_MIN;
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(RETRY_MAX);
    }
}

async fn session(
    hub: &Hub,
    applier: &mut Applier,
    target: &Target,
    streaming: &std::sync::atomic::AtomicBool,
) -> anyhow::Result<()> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&target.addr))
        .await
        .context("connect timed out")?
        .context("connect")?;
    stream.set_nodelay(true)?;
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::with_capacity(256 * 1024, rd);
    let body = tokio::time::timeout(super::leader::HANDSHAKE_TIMEOUT, wire::read_frame(&mut rd))
        .await
        .context("handshake timed out")??;
    let (epoch, nonce) = match wire::decode(&body)? {
        Msg::Challenge {
            epoch,
            leader,
            nonce,
        } => {
            if leader != target.leader {
                bail!(
                    "{} answers as {leader:?}, not the leader we were told",
                    target.addr
                );
            }
            (epoch, nonce)
        }
        Msg::Refuse { reason } => bail!("leader refused: {reason}"),
        other => bail!("expected a challenge, got {other:?}"),
    };
    let seen = hub.observe_epoch(epoch);
    let me = hub.me().0.clone();
    let my_nonce = auth::nonce();
    let mac = auth::sign(
        &target.secret,
        Side::Follower,
        &nonce,
        seen,
        &target.leader,
        &me,
    );
    let resume = hub.resume_key();
    // Sent even to a leader of an older epoch: the signed hello tells it that a newer epoch
    // exists, so it fences itself at once.
    wire::write_msg(
        &mut wr,
        &Msg::Hello {
            epoch: seen,
            node: &me,
            nonce: my_nonce,
            mac,
            resume,
        },
    )
    .await?;
    if epoch < seen {
        bail!(
            "leader {} is at epoch {epoch}, older than {seen}: refused",
            target.leader
        );
    }
    let body = tokio::time::timeout(super::leader::HANDSHAKE_TIMEOUT, wire::read_frame(&mut rd))
        .await
        .context("handshake timed out")??;
    let snapshot = match wire::decode(&body)? {
        Msg::Welcome { mac, snapshot } => {
            if !auth::verify(
                &target.secret,
                Side::Leader,
                &my_nonce,
                epoch,
                &target.leader,
                &me,
                &mac,
            ) {
                bail!("leader {} failed authentication", target.leader);
            }
            snapshot
        }
        Msg::Refuse { reason } => bail!("leader refused: {reason}"),
        other => bail!("expected welcome, got {other:?}"),
    };
    if snapshot {
        tracing::info!(leader = %target.leader, "full resync from the leader");
        hub.forget_position();
        applier.wipe().context("wiping for a resync")?;
        loop {
            let body = wire::read_frame(&mut rd).await?;
            match wire::decode(&body)? {
                Msg::Snapshot { op } => applier.apply(&op).context("applying the snapshot")?,
                Msg::SnapshotEnd { at } => {
                    applier.finish_resync().context("fsync after the resync")?;
                    hub.reset_to(at);
                    wire::write_msg(&mut wr, &Msg::Ack { lsn: at.lsn }).await?;
                    tracing::info!(lsn = at.lsn, "resync complete");
                    break;
                }
                other => bail!("unexpected message during a resync: {other:?}"),
            }
        }
    }
    streaming.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut last_sync = Instant::now();
    let mut ack_buf = Vec::new();
    loop {
        let body = wire::read_frame(&mut rd).await?;
        match wire::decode(&body)? {
            Msg::Entry { at, op } => {
                let expected = hub.position() + 1;
                if at.lsn != expected {
                    bail!("gap in the stream: got {}, expected {expected}", at.lsn);
                }
                applier
                    .apply(&op)
                    .with_context(|| format!("applying entry {}", at.lsn))?;
                hub.push_applied(at, &body);
                // Ack once per burst: when nothing more is buffered.
                if rd.buffer().is_empty() {
                    if last_sync.elapsed() >= SYNC_INTERVAL {
                        applier.sync().context("periodic fsync")?;
                        last_sync = Instant::now();
                    }
                    ack_buf.clear();
                    wire::encode(&mut ack_buf, &Msg::Ack { lsn: at.lsn });
                    wr.write_all(&ack_buf).await?;
                }
            }
            Msg::Refuse { reason } => bail!("leader refused: {reason}"),
            other => bail!("unexpected message from the leader: {other:?}"),
        }
    }
}
