//! The leader's side of the stream: the replication listener, the handshake, and one shipper
//! per follower (full resync if needed, then the live entries from the hub's window).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use mooring_agent_protocol::{NodeId, ReplicationSpec};
use tokio::io::{AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::auth::{self, Side};
use super::hub::Hub;
use super::wire::{self, Msg, StreamPos, MAX_OP_DATA_BYTES};
use crate::engine::storage::{replica, FileOp};

/// A peer that does not complete the handshake within this is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes of entries written per batch (then flushed).
/// How long a follower needing a resync waits for the control plane to record it out of the
/// in-sync set (a heartbeat round or two); below the follower's handshake timeout.
const RESYNC_ADMIT_TIMEOUT: Duration = Duration::from_secs(3);
const RESYNC_ADMIT_POLL: Duration = Duration::from_millis(20);
const SHIP_BATCH_BYTES: usize = 1024 * 1024;
/// How often an idle shipper checks that this node still leads.
const IDLE_CHECK: Duration = Duration::from_millis(100);

/// Accepts followers until `stop` turns true. Only while the hub leads are they served; a node
/// that does not lead refuses them (they retry).
pub async fn serve(
    listener: TcpListener,
    hub: Arc<Hub>,
    spec: watch::Receiver<Option<ReplicationSpec>>,
    root: PathBuf,
    mut stop: watch::Receiver<bool>,
) {
    let mut sessions = JoinSet::new();
    loop {
        tokio::select! {
            _ = super::stopped(&mut stop) => break,
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let (hub, spec, root) = (hub.clone(), spec.clone(), root.clone());
                    sessions.spawn(async move {
                        if let Err(e) = session(stream, &hub, &spec, &root).await {
                            tracing::info!(%peer, "replication session ended: {e:#}");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a replication peer failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    sessions.abort_all();
}

async fn session(
    stream: TcpStream,
    hub: &Arc<Hub>,
    spec: &watch::Receiver<Option<ReplicationSpec>>,
    root: &Path,
) -> anyhow::Result<()> {
    stream.set_nodelay(true)?;
    let (rd, wr) = stream.into_split();
    let mut rd = BufReader::new(rd);
    let mut wr = BufWriter::with_capacity(256 * 1024, wr);
    let Some(spec) = spec.borrow().clone() else {
        wire::write_msg(
            &mut wr,
            &Msg::Refuse {
                reason: "no replication configured",
            },
        )
        .await?;
        bail!("no replication configured");
    };
    if !hub.is_leading() {
        wire::write_msg(
            &mut wr,
            &Msg::Refuse {
                reason: "this node is not the leader",
            },
        )
        .await?;
        bail!("not leading");
    }
    let epoch = hub.epoch();
    let me = hub.me().0.clone();
    let nonce = auth::nonce();
    wire::write_msg(
        &mut wr,
        &Msg::Challenge {
            epoch,
            leader: &me,
            nonce,
        },
    )
    .await?;
    let body = tokio::time::timeout(HANDSHAKE_TIMEOUT, wire::read_frame(&mut rd))
        .await
        .context("handshake timed out")??;
    let Msg::Hello {
        epoch: their_epoch,
        node,
        nonce: their_nonce,
        mac,
        resume,
    } = wire::decode(&body)?
    else {
        bail!("expected hello");
    };
    let known = spec.peers.iter().any(|p| p.node.0 == node) && node != me;
    if !known
        || !auth::verify(
            &spec.secret,
            Side::Follower,
            &nonce,
            their_epoch,
            &me,
            node,
            &mac,
        )
    {
        wire::write_msg(
            &mut wr,
            &Msg::Refuse {
                reason: "authentication failed",
            },
        )
        .await?;
        bail!("follower {node:?} failed authentication");
    }
    let node = NodeId(node.to_string());
    if their_epoch > epoch {
        // Someone leads under a newer epoch: stop confirming at once.
        hub.observe_epoch(their_epoch);
        wire::write_msg(
            &mut wr,
            &Msg::Refuse {
                reason: "you have seen a newer epoch than mine",
            },
        )
        .await?;
        bail!("follower {node} has seen epoch {their_epoch}, newer than ours ({epoch}): fenced");
    }
    let resumable = resume.filter(|r| hub.can_resume(*r));
    if resumable.is_none() {
        admit_resync(hub, &node).await?;
    }
    let proof = auth::sign(
        &spec.secret,
        Side::Leader,
        &their_nonce,
        epoch,
        &me,
        &node.0,
    );
    wire::write_msg(
        &mut wr,
        &Msg::Welcome {
            mac: proof,
            snapshot: resumable.is_none(),
        },
    )
    .await?;
    tracing::info!(follower = %node, resume = ?resumable, "follower connected");
    hub.follower_update(&node, |f| {
        f.connected = true;
        f.streaming = resumable.is_some();
        if let Some(r) = resumable {
            f.acked = f.acked.max(r.lsn);
        }
    });
    let result = run_follower(hub, &node, rd, wr, root, resumable).await;
    hub.follower_update(&node, |f| {
        f.connected = false;
        f.streaming = false;
    });
    result
}

async fn run_follower(
    hub: &Arc<Hub>,
    node: &NodeId,
    mut rd: BufReader<tokio::net::tcp::OwnedReadHalf>,
    mut wr: BufWriter<tokio::net::tcp::OwnedWriteHalf>,
    root: &Path,
    resumable: Option<StreamPos>,
) -> anyhow::Result<()> {
    // Acks arrive on their own task; it ends (and so does this session) when the peer goes.
    let (acks_hub, acks_node) = (hub.clone(), node.clone());
    let mut acks = tokio::spawn(async move {
        loop {
            let body = wire::read_frame(&mut rd).await?;
            match wire::decode(&body)? {
                Msg::Ack { lsn } => {
                    acks_hub.follower_update(&acks_node, |f| f.acked = f.acked.max(lsn))
                }
                Msg::Refuse { reason } => return Err(anyhow!("follower refused: {reason}")),
                other => return Err(anyhow!("unexpected message from follower: {other:?}")),
            }
        }
        #[allow(unreachable_code)]
        Ok::<(), anyhow::Error>(())
    });
    let ship = async {
        let mut next = match resumable {
            Some(r) => r.lsn + 1,
            None => {
                let at = send_snapshot(hub, &mut wr, root).await?;
                hub.follower_update(node, |f| f.streaming = true);
                tracing::info!(follower = %node, lsn = at.lsn, "full resync sent");
                at.lsn + 1
            }
        };
        let mut position = hub.subscribe_position();
        loop {
            if !hub.is_leading() {
                bail!("this node stopped leading");
            }
            let frames = hub
                .entries_from(next, SHIP_BATCH_BYTES)
                .map_err(|_| anyhow!("follower {node} fell out of the window; it must resync"))?;
            if frames.is_empty() {
                position.mark_unchanged();
                if hub.position() < next {
                    let _ = tokio::time::timeout(IDLE_CHECK, position.changed()).await;
                }
                continue;
            }
            next += frames.len() as u64;
            for f in &frames {
                wr.write_all(f).await?;
            }
            wr.flush().await?;
        }
        #[allow(unreachable_code)]
        Ok::<(), anyhow::Error>(())
    };
    tokio::select! {
        r = ship => { acks.abort(); r }
        r = &mut acks => match r {
            Ok(r) => r,
            Err(e) => Err(anyhow!("ack reader failed: {e}")),
        },
    }
}

/// Waits until `node` may be resynced: out of the in-sync set as the control plane records
/// it (see [`Hub::admit_resync`]). Confirms wait for it meanwhile, as for any member.
async fn admit_resync(hub: &Hub, node: &NodeId) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + RESYNC_ADMIT_TIMEOUT;
    while !hub.admit_resync(node) {
        if !hub.is_leading() {
            bail!("this node stopped leading");
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("follower {node} is still recorded in sync; its resync waits for the next try");
        }
        tokio::time::sleep(RESYNC_ADMIT_POLL).await;
    }
    Ok(())
}

/// Streams a copy of every file, then `SnapshotEnd` at the position read before the copy
/// (entries after it are replayed over the copy; see `storage::replica`).
async fn send_snapshot(
    hub: &Hub,
    wr: &mut BufWriter<tokio::net::tcp::OwnedWriteHalf>,
    root: &Path,
) -> anyhow::Result<StreamPos> {
    let at = hub.snapshot_point();
    let files = replica::list_files(root).context("listing files for a resync")?;
    let mut buf = vec![0u8; MAX_OP_DATA_BYTES];
    for path in &files {
        let mut file = match std::fs::File::open(root.join(path)) {
            Ok(f) => f,
            // Removed since listed: its removal is in the stream after `at`.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("opening {path}")),
        };
        wire::write_msg(
            wr,
            &Msg::Snapshot {
                op: FileOp::CreateFile { path },
            },
        )
        .await?;
        let mut offset = 0u64;
        loop {
            let n = read_full(&mut file, &mut buf).with_context(|| format!("reading {path}"))?;
            if n == 0 {
                break;
            }
            let op = FileOp::WriteAt {
                path,
                offset,
                data: &buf[..n],
            };
            let mut frame = Vec::with_capacity(n + 64);
            wire::encode(&mut frame, &Msg::Snapshot { op });
            wr.write_all(&frame).await?;
            offset += n as u64;
        }
    }
    wire::write_msg(wr, &Msg::SnapshotEnd { at }).await?;
    Ok(at)
}

fn read_full(file: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}
