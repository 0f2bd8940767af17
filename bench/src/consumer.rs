//! One consumer: reads deliveries in large chunks, records end-to-end latency from the
//! timestamp in each body, and acknowledges every `multi_ack` messages with multiple=true.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use amq_protocol::protocol::{basic, AMQPClass};
use anyhow::{bail, Context, Result};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::time::Instant;

use crate::client::{close_error, close_method, Client, CHANNEL};
use crate::stats::Histogram;
use crate::wire::{
    body_timestamp, deliver_tag, encode_method, wall_clock_ns, write_unless_stopped, FrameReader,
    Written, FRAME_BODY, FRAME_METHOD,
};

/// How long a read waits before re-checking the stop flag and flushing a partial ack.
const IDLE: Duration = Duration::from_millis(20);
const BASIC_DELIVER: (u16, u16) = (60, 60);

#[derive(Debug)]
pub struct ConsumerSpec {
    pub autoack: bool,
    pub multi_ack: u64,
    /// Messages received after this instant are not counted (the end of a timed run).
    pub window_end: Instant,
    /// Stop once all consumers together have received this many.
    pub target: Option<u64>,
}

#[derive(Debug, Default)]
pub struct ConsumerResult {
    pub received: u64,
    pub latency: Histogram,
    /// When the last counted message arrived.
    pub last_at: Option<Instant>,
    pub error: Option<String>,
}

/// Consumes until `stop`, the shared `total` reaching the target, or an error.
pub async fn run(
    client: Client,
    spec: ConsumerSpec,
    stop: Arc<AtomicBool>,
    total: Arc<AtomicU64>,
) -> ConsumerResult {
    let (mut read, mut write, mut reader) = client.into_parts();
    let mut result = ConsumerResult::default();
    let outcome = consume_loop(
        &mut read,
        &mut write,
        &mut reader,
        &spec,
        &stop,
        &total,
        &mut result,
    )
    .await;
    match outcome {
        Err(e) => result.error = Some(format!("{e:#}")),
        // Ends inside a frame: a close would be read as its rest; dropping the socket ends it.
        Ok(Written::StoppedTorn) => {}
        Ok(_) => {
            let mut out = Vec::new();
            if encode_method(&mut out, 0, close_method()).is_ok() {
                let _ = tokio::time::timeout(IDLE * 5, write.write_all(&out)).await;
            }
        }
    }
    result
}

/// Acknowledgement state of a consumer in manual-ack mode.
#[derive(Debug, Default)]
struct Acks {
    last_tag: u64,
    unacked: u64,
}

fn push_ack(out: &mut Vec<u8>, tag: u64) -> Result<()> {
    encode_method(
        out,
        CHANNEL,
        AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
            delivery_tag: tag,
            multiple: true,
        })),
    )
}

async fn consume_loop(
    read: &mut OwnedReadHalf,
    write: &mut OwnedWriteHalf,
    reader: &mut FrameReader,
    spec: &ConsumerSpec,
    stop: &AtomicBool,
    total: &AtomicU64,
    result: &mut ConsumerResult,
) -> Result<Written> {
    let mut acks = Acks::default();
    let mut out = Vec::with_capacity(4096);
    // Set by basic.deliver: the next body frame is the first of that message.
    let mut expect_first_body = false;
    loop {
        let now = Instant::now();
        let now_ns = wall_clock_ns();
        let counting = now <= spec.window_end;
        let mut got = 0u64;
        while let Some(frame) = reader.next_frame()? {
            match frame.kind {
                FRAME_BODY if expect_first_body => {
                    expect_first_body = false;
                    got += 1;
                    if counting {
                        if let Some(sent) = body_timestamp(frame.payload) {
                            result.latency.record(now_ns.saturating_sub(sent));
                        }
                    }
                    if !spec.autoack {
                        acks.unacked += 1;
                        if acks.unacked >= spec.multi_ack {
                            push_ack(&mut out, acks.last_tag)?;
                            acks.unacked = 0;
                        }
                    }
                }
                FRAME_METHOD if frame.method_id() == Some(BASIC_DELIVER) => {
                    acks.last_tag = deliver_tag(frame.payload)?;
                    expect_first_body = true;
                }
                FRAME_METHOD => match frame.method()? {
                    AMQPClass::Basic(basic::AMQPMethod::Cancel(_)) => {
                        bail!("the broker cancelled the consumer")
                    }
                    method => {
                        if let Some(err) = close_error(&method) {
                            return Err(err);
                        }
                    }
                },
                _ => {}
            }
        }
        if got > 0 {
            if counting {
                result.received += got;
                result.last_at = Some(now);
            }
            let sum = total.fetch_add(got, Ordering::Relaxed) + got;
            if spec.target.is_some_and(|t| sum >= t) && acks.unacked > 0 {
                push_ack(&mut out, acks.last_tag)?;
                acks.unacked = 0;
            }
        }
        if !out.is_empty() {
            match write_unless_stopped(write, &out, stop)
                .await
                .context("writing acks")?
            {
                Written::All => {}
                stopped => return Ok(stopped),
            }
            out.clear();
        }
        if stop.load(Ordering::Relaxed)
            || spec
                .target
                .is_some_and(|t| total.load(Ordering::Relaxed) >= t)
        {
            return Ok(Written::All);
        }
        match tokio::time::timeout(IDLE, reader.fill(read)).await {
            Ok(more) => {
                if !more? {
                    bail!("broker closed the connection");
                }
            }
            // Idle: acknowledge a partial batch so the broker can drain a queue's tail.
            Err(_) if acks.unacked > 0 => {
                push_ack(&mut out, acks.last_tag)?;
                acks.unacked = 0;
            }
            Err(_) => {}
        }
    }
}
