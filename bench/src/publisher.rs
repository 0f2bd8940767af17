//! One producer: writes basic.publish frames in batches, keeps at most `confirm` messages
//! unconfirmed, optionally paced to a rate. A reader task on the same connection counts
//! the broker's confirms and notices a close.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use amq_protocol::protocol::{basic, AMQPClass};
use anyhow::{bail, Result};
use parking_lot::Mutex;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedReadHalf;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::client::{close_error, close_method, Client, CHANNEL};
use crate::wire::{
    encode_method, wall_clock_ns, write_unless_stopped, FrameReader, PublishTemplate, Written,
    FRAME_METHOD,
};

/// Bytes gathered before one write: large enough to amortise the syscall, small enough
/// that the broker sees a steady stream.
const BATCH_BYTES: usize = 64 << 10;
/// The longest any wait goes without re-checking the stop flag.
const POLL: Duration = Duration::from_millis(20);

#[derive(Debug)]
pub struct PublisherSpec {
    pub template: PublishTemplate,
    /// Unconfirmed messages allowed; 0 = confirms off.
    pub confirm: u64,
    pub pmessages: Option<u64>,
    /// Messages per second.
    pub rate: Option<u64>,
}

#[derive(Debug, Default)]
pub struct PublisherResult {
    pub published: u64,
    pub confirmed: u64,
    pub nacked: u64,
    /// When the last message was published (and, with confirms, confirmed) in a count run.
    pub finished_at: Option<Instant>,
    pub error: Option<String>,
}

/// What the confirm reader shares with the writer.
#[derive(Debug, Default)]
struct Confirms {
    confirmed: AtomicU64,
    nacked: AtomicU64,
    failed: AtomicBool,
    error: Mutex<Option<String>>,
    changed: Notify,
}

/// Runs until `stop` is set, the count is published (and confirmed), or an error.
pub async fn run(client: Client, spec: PublisherSpec, stop: Arc<AtomicBool>) -> PublisherResult {
    let (read, mut write, reader) = client.into_parts();
    let confirms = Arc::new(Confirms::default());
    let reader_task = tokio::spawn(read_confirms(read, reader, confirms.clone()));
    let mut result = PublisherResult::default();
    let torn = match publish_loop(&mut write, &spec, &stop, &confirms, &mut result).await {
        Ok(written) => written == Written::StoppedTorn,
        Err(e) => {
            result.error = Some(format!("{e:#}"));
            false
        }
    };
    if torn {
        // The last frame is incomplete: anything more would be garbage to the broker.
        // Dropping the socket ends the connection; what the reader sees now is moot.
        reader_task.abort();
    } else {
        // Close politely so the broker does not log an abrupt disconnect; the reader sees
        // close-ok (or the socket end) and exits.
        let mut out = Vec::new();
        if encode_method(&mut out, 0, close_method()).is_ok() {
            let _ = tokio::time::timeout(POLL * 5, write.write_all(&out)).await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), reader_task).await;
        if result.error.is_none() {
            result.error = confirms.error.lock().take();
        }
    }
    result.confirmed = confirms.confirmed.load(Ordering::Acquire);
    result.nacked = confirms.nacked.load(Ordering::Acquire);
    result
}

async fn publish_loop(
    write: &mut tokio::net::tcp::OwnedWriteHalf,
    spec: &PublisherSpec,
    stop: &AtomicBool,
    confirms: &Confirms,
    result: &mut PublisherResult,
) -> Result<Written> {
    let per_batch = (BATCH_BYTES / spec.template.bytes.len()).max(1) as u64;
    let mut out = Vec::with_capacity(BATCH_BYTES + spec.template.bytes.len());
    let started = Instant::now();
    let mut seq = 0u64;
    loop {
        if stop.load(Ordering::Relaxed) {
            return Ok(Written::StoppedClean);
        }
        if confirms.failed.load(Ordering::Acquire) {
            bail!("connection lost");
        }
        let mut allowed = per_batch;
        if let Some(total) = spec.pmessages {
            if seq >= total {
                break;
            }
            allowed = allowed.min(total - seq);
        }
        if spec.confirm > 0 {
            let outstanding = seq - confirms.confirmed.load(Ordering::Acquire);
            if outstanding >= spec.confirm {
                // The reader's notify_one leaves a permit if it fires before we wait.
                let _ = tokio::time::timeout(POLL, confirms.changed.notified()).await;
                continue;
            }
            allowed = allowed.min(spec.confirm - outstanding);
        }
        if let Some(rate) = spec.rate {
            let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
            if seq >= due {
                let next = started + Duration::from_secs_f64((seq + 1) as f64 / rate as f64);
                tokio::time::sleep_until(next.min(Instant::now() + POLL)).await;
                continue;
            }
            allowed = allowed.min(due - seq);
        }
        out.clear();
        // One timestamp per batch: the whole batch reaches the socket in one write.
        let now = wall_clock_ns();
        for i in 0..allowed {
            spec.template.append(&mut out, now, seq + i);
        }
        match write_unless_stopped(write, &out, stop).await? {
            Written::All => {}
            // Stopped mid-batch: those messages do not count as published.
            stopped => return Ok(stopped),
        }
        seq += allowed;
        result.published = seq;
    }
    // A count run is finished when the broker has taken responsibility for every message.
    if spec.confirm > 0 {
        while confirms.confirmed.load(Ordering::Acquire) < seq {
            if stop.load(Ordering::Relaxed) {
                return Ok(Written::StoppedClean);
            }
            if confirms.failed.load(Ordering::Acquire) {
                bail!(
                    "connection lost with {} messages unconfirmed",
                    seq - confirms.confirmed.load(Ordering::Acquire)
                );
            }
            let _ = tokio::time::timeout(POLL, confirms.changed.notified()).await;
        }
    }
    result.finished_at = Some(Instant::now());
    Ok(Written::All)
}

async fn read_confirms(mut read: OwnedReadHalf, mut reader: FrameReader, confirms: Arc<Confirms>) {
    if let Err(e) = confirm_loop(&mut read, &mut reader, &confirms).await {
        *confirms.error.lock() = Some(format!("{e:#}"));
    }
    confirms.failed.store(true, Ordering::Release);
    confirms.changed.notify_one();
}

async fn confirm_loop(
    read: &mut OwnedReadHalf,
    reader: &mut FrameReader,
    confirms: &Confirms,
) -> Result<()> {
    let mut tracker = crate::stats::ConfirmTracker::default();
    loop {
        let mut changed = false;
        while let Some(frame) = reader.next_frame()? {
            if frame.kind != FRAME_METHOD || frame.channel > CHANNEL {
                continue;
            }
            match frame.method()? {
                AMQPClass::Basic(basic::AMQPMethod::Ack(ack)) => {
                    changed |= tracker.confirm(ack.delivery_tag, ack.multiple) > 0;
                }
                AMQPClass::Basic(basic::AMQPMethod::Nack(nack)) => {
                    let n = tracker.confirm(nack.delivery_tag, nack.multiple);
                    confirms.nacked.fetch_add(n, Ordering::Relaxed);
                    changed |= n > 0;
                }
                AMQPClass::Connection(amq_protocol::protocol::connection::AMQPMethod::CloseOk(
                    _,
                )) => return Ok(()),
                AMQPClass::Connection(amq_protocol::protocol::connection::AMQPMethod::Blocked(
                    b,
                )) => {
                    eprintln!(
                        "mooring-loadgen: broker blocked the publisher: {}",
                        b.reason
                    );
                }
                method => {
                    if let Some(err) = close_error(&method) {
                        return Err(err);
                    }
                }
            }
        }
        if changed {
            confirms
                .confirmed
                .store(tracker.confirmed(), Ordering::Release);
            confirms.changed.notify_one();
        }
        if !reader.fill(read).await? {
            bail!("broker closed the connection");
        }
    }
}
