//! One client connection: a reader loop (this task) plus a writer task. The reader processes
//! every frame already buffered, then ends the batch: queue logs touched by the batch are
//! flushed once. A batch's publisher confirms are sent once its logs' fsyncs (quorum queues)
//! have completed; the reader does not wait for them but goes on reading and appending, so
//! that several batches' fsyncs are in flight at once and share the sync thread's rounds.
//! Batches complete in order, so confirms keep their delivery-tag order.

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use amq_protocol::protocol::{channel, connection, parse_class, AMQPClass};
use futures::FutureExt as _;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, watch};

use super::channel::{Channel, ChannelState};
use super::error::{AmqpError, AmqpResult};
use super::frame::{self, Frame};
use super::handshake::{self, HandshakeEnd, Session};
use super::io::{writer, FrameReader};
use crate::engine::broker::consumer::ConnLink;
use crate::engine::broker::queue::Queue;
use crate::engine::broker::stats::Stats;
use crate::engine::broker::{Broker, ConnControl, ConnHandle};

/// How long we wait for the peer's close-ok after sending connection.close.
const CLOSE_OK_TIMEOUT: Duration = Duration::from_secs(3);
/// How long the writer may take to drain after the connection ends.
const WRITER_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Batches whose fsyncs may be in flight at once. Beyond this the reader waits for the oldest,
/// which bounds the memory held by pending confirms of a publisher that never waits for them.
const MAX_INFLIGHT_BATCHES: usize = 64;

/// A confirm to send at the end of the batch.
pub(super) struct PendingConfirm {
    pub channel: u16,
    pub seq: u64,
    pub ack: bool,
    /// The batch's touched logs the message was written to (see [`touched_bit`]): a failed
    /// flush or fsync of one of them turns this confirm into a nack, of another log does not.
    pub logs: u64,
}

/// The bit of a log by its index in `Connection::touched`. Indexes past 63 share the last
/// bit, so a failure there nacks every message that went to any of them (never too few).
pub(super) fn touched_bit(index: usize) -> u64 {
    1 << index.min(63)
}

/// Resolves to the `touched_bit`s of the batch's logs whose fsync failed.
type SyncFuture = Pin<Box<dyn Future<Output = u64> + Send>>;

/// A batch whose logs are flushed and whose confirms wait for their fsyncs.
struct InflightBatch {
    synced: SyncFuture,
    confirms: Vec<PendingConfirm>,
}

pub(super) struct Connection {
    pub broker: Arc<Broker>,
    pub link: Arc<ConnLink>,
    pub session: Session,
    pub handle: Arc<ConnHandle>,
    pub id: u64,
    /// Indexed by channel number; `None` = not open.
    pub channels: Vec<Option<Box<Channel>>>,
    /// Queues whose logs got appends or acks in this batch.
    pub touched: Vec<Arc<Queue>>,
    pub confirms: Vec<PendingConfirm>,
    /// Ended batches waiting for their fsyncs, oldest first. Confirms are only ever sent from
    /// the front, so they leave in the order the publishes arrived.
    inflight: VecDeque<InflightBatch>,
    /// Set once a publish arrives; blocked connections stop being read while an alarm is on.
    pub has_published: bool,
    blocked_sent: bool,
    /// Set when the connection is done (close handshake finished or error sent).
    pub closing: bool,
}

/// What woke the reader while it waited.
enum Event {
    /// `fill`'s result; `None` when the heartbeat timeout passed first.
    Read(Option<std::io::Result<usize>>),
    Control(Option<ConnControl>),
    Shutdown,
    /// The oldest in-flight batch's fsyncs completed, with these logs failed.
    Synced(u64),
}

/// Why the main loop ended.
enum End {
    /// Clean close (client's connection.close answered) or the peer vanished.
    Done,
    /// Send connection.close with this error and wait for close-ok.
    Error(AmqpError),
}

/// Serves one accepted connection until it ends.
pub async fn serve<S>(
    stream: S,
    peer: SocketAddr,
    local: SocketAddr,
    tls: bool,
    broker: Arc<Broker>,
    mut shutdown: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (rd, wr) = tokio::io::split(stream);
    let id = broker.next_conn_id();
    let frame_max = broker.limits.read().frame_max;
    let link = Arc::new(ConnLink::new(id, frame_max));
    let writer_task = tokio::spawn(writer(wr, link.clone(), broker.clone()));
    let mut reader = FrameReader::new(rd, 131_072);

    let session = match handshake::negotiate(&mut reader, &link, &broker, peer).await {
        Ok(s) => s,
        Err(end) => {
            if let HandshakeEnd::Close(err) = end {
                send_connection_close(&link, &err);
                // Give the client a moment to read the reason; its close-ok is not needed.
                let _ = tokio::time::timeout(CLOSE_OK_TIMEOUT, wait_close_ok(&mut reader)).await;
            }
            link.close();
            stop_writer(writer_task).await;
            return;
        }
    };
    link.frame_max.store(session.frame_max, Ordering::Relaxed);
    link.heartbeat_secs
        .store(u32::from(session.heartbeat_secs), Ordering::Relaxed);

    let (control_tx, mut control_rx) = mpsc::unbounded_channel();
    let handle = Arc::new(ConnHandle {
        id,
        user: session.user.name.clone(),
        vhost: session.vhost.name.to_string(),
        peer,
        local,
        tls,
        frame_max: session.frame_max,
        channel_max: session.channel_max,
        heartbeat_secs: session.heartbeat_secs,
        connected_at_unix_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
        password_hash: session.user.password_hash.clone(),
        link: link.clone(),
        control: control_tx,
        channels: std::sync::atomic::AtomicU32::new(0),
        client_properties: session.client_properties.clone(),
        auth_mechanism: session.mechanism.clone(),
    });
    broker.conns.lock().insert(id, handle.clone());
    Stats::add(&broker.stats.connections, 1);
    tracing::debug!(conn = id, %peer, user = %session.user.name, "connection opened");

    let channel_slots = usize::from(session.channel_max) + 1;
    let mut conn = Connection {
        broker: broker.clone(),
        link: link.clone(),
        session,
        handle: handle.clone(),
        id,
        channels: (0..channel_slots).map(|_| None).collect(),
        touched: Vec::new(),
        confirms: Vec::new(),
        inflight: VecDeque::new(),
        has_published: false,
        blocked_sent: false,
        closing: false,
    };
    let end = conn.run(&mut reader, &mut control_rx, &mut shutdown).await;
    if let End::Error(err) = &end {
        tracing::debug!(conn = id, code = err.code, text = %err.text, "closing connection with error");
        send_connection_close(&link, err);
        let _ = tokio::time::timeout(CLOSE_OK_TIMEOUT, wait_close_ok(&mut reader)).await;
    }
    conn.cleanup().await;
    broker.conns.lock().remove(&id);
    Stats::add(&broker.stats.connections, -1);
    link.close();
    stop_writer(writer_task).await;
    tracing::debug!(conn = id, "connection closed");
}

/// Lets the writer drain what is left; a peer that stopped reading gets its writer aborted.
async fn stop_writer(mut writer_task: tokio::task::JoinHandle<()>) {
    if tokio::time::timeout(WRITER_DRAIN_TIMEOUT, &mut writer_task)
        .await
        .is_err()
    {
        writer_task.abort();
    }
}

fn send_connection_close(link: &ConnLink, err: &AmqpError) {
    let m = AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
        reply_code: err.code,
        reply_text: err.text.as_str().into(),
        class_id: err.class_id,
        method_id: err.method_id,
    }));
    link.send(|out| frame::write_method(out, 0, &m));
}

/// Discards frames until connection.close-ok (or close) arrives or the stream ends.
async fn wait_close_ok<R: AsyncRead + Unpin>(reader: &mut FrameReader<R>) {
    // Bounded by the caller's timeout; each iteration consumes input or ends.
    loop {
        match reader.next_frame(CLOSE_OK_TIMEOUT).await {
            Ok(f) if f.kind == frame::FRAME_METHOD && f.channel == 0 => {
                if let Ok((_, AMQPClass::Connection(m))) = parse_class(&f.payload[..]) {
                    if matches!(
                        m,
                        connection::AMQPMethod::CloseOk(_) | connection::AMQPMethod::Close(_)
                    ) {
                        return;
                    }
                }
            }
            Ok(_) => {}
            Err(_) => return,
        }
    }
}

impl Connection {
    async fn run<R: AsyncRead + Unpin>(
        &mut self,
        reader: &mut FrameReader<R>,
        control: &mut mpsc::UnboundedReceiver<ConnControl>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> End {
        let heartbeat = u64::from(self.session.heartbeat_secs);
        // A publish that arrived during an alarm: not processed (nor anything after it) until
        // the alarm clears, as RabbitMQ's reader blocks at the first content-bearing method.
        let mut held: Option<Frame> = None;
        loop {
            // Process everything already buffered as one batch.
            loop {
                let next = match held.take() {
                    Some(f) => Ok(Some(f)),
                    None => reader.next_buffered(),
                };
                match next {
                    Ok(Some(f)) => {
                        if self.broker.alarmed() && is_publish(&f) {
                            held = Some(f);
                            self.has_published = true;
                            self.on_alarm_change();
                            break;
                        }
                        if let Err(e) = self.handle_frame(f).await {
                            self.end_batch().await;
                            return End::Error(e);
                        }
                        if self.closing {
                            self.end_batch().await;
                            return End::Done;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        self.end_batch().await;
                        return End::Error(e);
                    }
                }
            }
            self.submit_batch();

            let paused = held.is_some() || self.inflight.len() >= MAX_INFLIGHT_BATCHES;
            let read = async {
                if paused {
                    // Not read while blocked (RabbitMQ also stops heartbeat checks then), nor
                    // while too many batches wait for their fsyncs (that wait is short).
                    std::future::pending::<()>().await;
                }
                if heartbeat == 0 {
                    Some(reader.fill().await)
                } else {
                    // Two missed heartbeats from the client end the connection.
                    tokio::time::timeout(Duration::from_secs(heartbeat * 2), reader.fill())
                        .await
                        .ok()
                }
            };
            let inflight = &mut self.inflight;
            let synced = async {
                match inflight.front_mut() {
                    Some(batch) => (&mut batch.synced).await,
                    None => std::future::pending().await,
                }
            };
            let event = tokio::select! {
                r = read => Event::Read(r),
                c = control.recv() => Event::Control(c),
                _ = shutdown.changed() => Event::Shutdown,
                failed = synced => Event::Synced(failed),
            };
            match event {
                Event::Read(None) => {
                    tracing::info!(conn = self.id, "missed heartbeats from client, closing");
                    return End::Done;
                }
                Event::Read(Some(Ok(0)) | Some(Err(_))) => return End::Done,
                Event::Read(Some(Ok(_))) => {}
                Event::Control(Some(ConnControl::ForceClose(err))) => {
                    // Confirms already earned go out before connection.close.
                    self.drain_inflight().await;
                    return End::Error(err);
                }
                Event::Control(Some(ConnControl::AlarmChanged)) => self.on_alarm_change(),
                Event::Control(None) => {}
                Event::Shutdown => {
                    self.drain_inflight().await;
                    return End::Error(AmqpError::connection_forced(
                        "broker forced connection closure with reason 'shutdown'",
                    ));
                }
                Event::Synced(failed) => self.confirm_synced(failed),
            }
        }
    }

    /// Sends connection.blocked to a capable client that has published during an alarm (as
    /// RabbitMQ, not to consumers-only connections), and unblocked once the alarm clears.
    fn on_alarm_change(&mut self) {
        let alarmed = self.broker.alarmed() && self.has_published;
        if !self.session.blocked_capable || alarmed == self.blocked_sent {
            return;
        }
        self.blocked_sent = alarmed;
        let m = if alarmed {
            let reason = if self.broker.disk_alarm.load(Ordering::Relaxed) {
                "low on disk"
            } else {
                "low on memory"
            };
            AMQPClass::Connection(connection::AMQPMethod::Blocked(connection::Blocked {
                reason: reason.into(),
            }))
        } else {
            AMQPClass::Connection(connection::AMQPMethod::Unblocked(connection::Unblocked {}))
        };
        self.link.send(|out| frame::write_method(out, 0, &m));
    }

    async fn handle_frame(&mut self, f: Frame) -> AmqpResult<()> {
        match f.kind {
            frame::FRAME_HEARTBEAT => {
                if f.channel != 0 {
                    return Err(AmqpError::frame_error(format!(
                        "heartbeat frame on non-zero channel {}",
                        f.channel
                    )));
                }
                Ok(())
            }
            frame::FRAME_METHOD if f.channel == 0 => self.connection_method(&f).await,
            frame::FRAME_METHOD | frame::FRAME_HEADER | frame::FRAME_BODY => {
                let id = usize::from(f.channel);
                if id >= self.channels.len() {
                    let open = self.channels.iter().filter(|c| c.is_some()).count();
                    return Err(AmqpError::not_allowed(format!(
                        "number of channels opened ({open}) has reached the negotiated channel_max ({})",
                        self.session.channel_max
                    )));
                }
                let Some(mut ch) = self.channels[id].take() else {
                    // A reopened channel number starts its confirm tags afresh: the previous
                    // channel's confirms must be out first (a rare path, so wait for all).
                    self.drain_inflight().await;
                    return self.unopened_channel_frame(f);
                };
                let r = self.channel_frame(&mut ch, f).await;
                if ch.state != ChannelState::Closed {
                    self.channels[id] = Some(ch);
                }
                r
            }
            other => Err(AmqpError::frame_error(format!(
                "unknown frame type {other}"
            ))),
        }
    }

    /// A frame on a channel that is not open: only channel.open is acceptable.
    fn unopened_channel_frame(&mut self, f: Frame) -> AmqpResult<()> {
        if f.kind == frame::FRAME_METHOD && f.payload.get(..4) == Some(&[0, 20, 0, 10][..]) {
            let ch = Channel::new(f.channel, self.link.clone());
            self.channels[usize::from(f.channel)] = Some(Box::new(ch));
            Stats::add(&self.broker.stats.channels, 1);
            self.handle.channels.fetch_add(1, Ordering::Relaxed);
            let m = AMQPClass::Channel(channel::AMQPMethod::OpenOk(channel::OpenOk {}));
            self.link
                .send(|out| frame::write_method(out, f.channel, &m));
            return Ok(());
        }
        let err = AmqpError::channel_error("expected 'channel.open'");
        Err(match method_ids(&f) {
            Some((c, m)) if f.kind == frame::FRAME_METHOD => err.on(c, m),
            _ => err,
        })
    }

    async fn connection_method(&mut self, f: &Frame) -> AmqpResult<()> {
        let m = parse_method(&f.payload)?;
        match m {
            AMQPClass::Connection(connection::AMQPMethod::Close(_)) => {
                // Flush what the client's last acks recorded before answering.
                self.end_batch().await;
                let ok =
                    AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {}));
                self.link.send(|out| frame::write_method(out, 0, &ok));
                self.closing = true;
                Ok(())
            }
            AMQPClass::Connection(connection::AMQPMethod::CloseOk(_)) => {
                self.closing = true;
                Ok(())
            }
            AMQPClass::Connection(connection::AMQPMethod::UpdateSecret(_)) => {
                Err(AmqpError::not_implemented("connection.update-secret"))
            }
            other => Err(AmqpError::channel_error(format!(
                "unexpected method on channel 0: class {} method {}",
                other.get_amqp_class_id(),
                other.get_amqp_method_id()
            ))
            .on(other.get_amqp_class_id(), other.get_amqp_method_id())),
        }
    }

    /// Ends the batch and waits until every confirm so far is sent: for channel and
    /// connection close, tx.commit and cleanup, whose answers must follow them.
    pub(super) async fn end_batch(&mut self) {
        self.submit_batch();
        self.drain_inflight().await;
    }

    /// Flushes the logs the batch touched (one write each; quorum queues' fsyncs are requested
    /// from the sync thread) and queues the batch's confirms behind their fsyncs. Confirms that
    /// need no fsync and have no earlier batch to wait for are sent at once.
    fn submit_batch(&mut self) {
        if self.touched.is_empty() && self.confirms.is_empty() {
            return;
        }
        let mut failed = 0u64;
        let mut waiters = Vec::new();
        for (i, q) in self.touched.drain(..).enumerate() {
            match q.flush() {
                Ok(Some(w)) => waiters.push((touched_bit(i), q, w)),
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(queue = %q.name, error = %e, "flushing queue log failed");
                    failed |= touched_bit(i);
                }
            }
        }
        let confirms = std::mem::take(&mut self.confirms);
        let mut synced: SyncFuture = Box::pin(async move {
            for (bit, q, w) in waiters {
                if let Err(e) = w.wait().await {
                    if q.is_deleted() {
                        // Deleting the queue removed its log under the pending fsync. Its
                        // messages are gone by the client's own request, nothing is left to
                        // make durable, so they are confirmed, as RabbitMQ confirms messages
                        // whose queue was deleted before they were settled.
                        tracing::debug!(queue = %q.name, error = %e, "fsync of a deleted queue's log failed");
                    } else {
                        tracing::error!(queue = %q.name, error = %e, "fsync failed");
                        failed |= bit;
                    }
                }
            }
            failed
        });
        if self.inflight.is_empty() {
            // Classic queues' waiters are already resolved: no need to queue anything.
            if let Some(failed) = (&mut synced).now_or_never() {
                let mut confirms = confirms;
                resolve(&mut confirms, failed);
                self.send_confirms(confirms);
                return;
            }
        }
        self.inflight.push_back(InflightBatch { synced, confirms });
    }

    /// The oldest in-flight batch is synced: sends its confirms, together with those of the
    /// batches after it that the same fsync round completed (so runs can share one `multiple`).
    fn confirm_synced(&mut self, failed: u64) {
        let Some(batch) = self.inflight.pop_front() else {
            return;
        };
        let mut confirms = batch.confirms;
        resolve(&mut confirms, failed);
        while let Some(next) = self.inflight.front_mut() {
            let Some(failed) = (&mut next.synced).now_or_never() else {
                break;
            };
            if let Some(mut next) = self.inflight.pop_front() {
                resolve(&mut next.confirms, failed);
                confirms.append(&mut next.confirms);
            }
        }
        self.send_confirms(confirms);
    }

    /// Waits for every in-flight batch and sends its confirms, in order.
    async fn drain_inflight(&mut self) {
        let mut confirms = Vec::new();
        while let Some(mut batch) = self.inflight.pop_front() {
            let failed = batch.synced.await;
            resolve(&mut batch.confirms, failed);
            confirms.append(&mut batch.confirms);
        }
        self.send_confirms(confirms);
    }

    /// Sends resolved confirms, which must follow every earlier confirm of the connection.
    fn send_confirms(&self, confirms: Vec<PendingConfirm>) {
        if confirms.is_empty() {
            return;
        }
        Stats::inc(&self.broker.stats.confirmed, confirms.len() as u64);
        self.link.send(|out| {
            // Runs of acks on a channel collapse into one ack with multiple=true: every earlier
            // tag on that channel has already been confirmed, since confirms go out in order.
            let mut i = 0;
            while i < confirms.len() {
                let c = &confirms[i];
                let mut j = i;
                if c.ack {
                    while j + 1 < confirms.len()
                        && confirms[j + 1].channel == c.channel
                        && confirms[j + 1].ack
                        && confirms[j + 1].seq == confirms[j].seq + 1
                    {
                        j += 1;
                    }
                }
                frame::write_confirm(out, c.channel, confirms[j].seq, j > i, c.ack);
                i = j + 1;
            }
        });
    }

    /// Releases everything the connection held: channels (requeueing their unacked messages),
    /// consumers, exclusive queues.
    async fn cleanup(&mut self) {
        for i in 0..self.channels.len() {
            if let Some(ch) = self.channels[i].take() {
                self.close_channel_state(ch);
            }
        }
        self.end_batch().await;
        self.broker.drop_exclusive_queues(self.id);
    }
}

/// Turns into nacks the confirms of messages written to a log whose flush or fsync failed.
fn resolve(confirms: &mut [PendingConfirm], failed: u64) {
    if failed == 0 {
        return;
    }
    for c in confirms {
        if c.logs & failed != 0 {
            c.ack = false;
        }
    }
}

/// Parses a method payload; unknown class/method ids are 540, malformed arguments 502.
pub(super) fn parse_method(payload: &[u8]) -> AmqpResult<AMQPClass> {
    match parse_class(payload) {
        Ok((&[], m)) => Ok(m),
        Ok(_) => Err(AmqpError::syntax_error(
            "trailing bytes after method arguments",
        )),
        Err(_) => {
            let class = payload
                .get(..2)
                .map(|b| u16::from_be_bytes([b[0], b[1]]))
                .unwrap_or(0);
            let method = payload
                .get(2..4)
                .map(|b| u16::from_be_bytes([b[0], b[1]]))
                .unwrap_or(0);
            if known_method(class, method) {
                Err(AmqpError::frame_error(format!(
                    "malformed arguments for class {class} method {method}"
                ))
                .on(class, method))
            } else {
                Err(AmqpError::command_invalid(format!(
                    "unknown method class {class} method {method}"
                ))
                .on(class, method))
            }
        }
    }
}

/// Whether a frame is basic.publish (the start of content, which an alarm blocks).
fn is_publish(f: &Frame) -> bool {
    f.kind == frame::FRAME_METHOD && f.payload.get(..4) == Some(&[0, 60, 0, 40][..])
}

/// (class id, method id) of a method frame.
pub(super) fn method_ids(f: &Frame) -> Option<(u16, u16)> {
    let p = f.payload.get(..4)?;
    Some((
        u16::from_be_bytes([p[0], p[1]]),
        u16::from_be_bytes([p[2], p[3]]),
    ))
}

fn known_method(class: u16, method: u16) -> bool {
    let methods: &[u16] = match class {
        10 => &[10, 11, 20, 21, 30, 31, 40, 41, 50, 51, 60, 61, 70, 71],
        20 => &[10, 11, 20, 21, 40, 41],
        30 => &[10, 11],
        40 => &[10, 11, 20, 21, 30, 31, 40, 51],
        50 => &[10, 11, 20, 21, 30, 31, 40, 41, 50, 51],
        60 => &[
            10, 11, 20, 21, 30, 31, 40, 50, 60, 70, 71, 72, 80, 90, 100, 110, 111, 120,
        ],
        85 => &[10, 11],
        90 => &[10, 11, 20, 21, 30, 31],
        _ => &[],
    };
    methods.contains(&method)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn confirm(seq: u64, ack: bool, logs: u64) -> PendingConfirm {
        PendingConfirm {
            channel: 1,
            seq,
            ack,
            logs,
        }
    }

    #[test]
    fn a_failed_log_nacks_only_the_messages_written_to_it() {
        let mut confirms = vec![
            confirm(1, true, touched_bit(0)),
            confirm(2, true, touched_bit(1)),
            confirm(3, true, touched_bit(0) | touched_bit(1)),
            confirm(4, true, 0),
            confirm(5, false, 0),
            confirm(6, true, touched_bit(70)),
        ];
        resolve(&mut confirms, touched_bit(1) | touched_bit(64));
        let acks: Vec<bool> = confirms.iter().map(|c| c.ack).collect();
        // Indexes past 63 share a bit: a failure there nacks all of their messages.
        assert_eq!(acks, [true, false, false, true, false, false]);
    }

    #[test]
    fn nothing_failed_changes_nothing() {
        let mut confirms = vec![confirm(1, true, u64::MAX), confirm(2, false, 1)];
        resolve(&mut confirms, 0);
        assert!(confirms[0].ack);
        assert!(!confirms[1].ack);
    }
}
