//! Reading frames from the socket, and the writer task that drains a connection's output.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use super::error::AmqpError;
use super::frame::{self, Frame, FrameError};
use crate::engine::broker::consumer::ConnLink;
use crate::engine::broker::Broker;

/// Bytes requested from the socket per read.
const READ_CHUNK_BYTES: usize = 64 * 1024;
/// The writer gives a buffer this large back to the allocator after a burst.
const MAX_IDLE_BUFFER_BYTES: usize = 4 * 1024 * 1024;

pub struct FrameReader<R> {
    rd: R,
    buf: BytesMut,
    /// Largest frame accepted (negotiated in tune).
    pub frame_max: u32,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(rd: R, frame_max: u32) -> Self {
        FrameReader {
            rd,
            buf: BytesMut::with_capacity(READ_CHUNK_BYTES),
            frame_max,
        }
    }

    /// The next frame already in the buffer, if whole.
    pub fn next_buffered(&mut self) -> Result<Option<Frame>, AmqpError> {
        frame::split_frame(&mut self.buf, self.frame_max).map_err(|e| match e {
            FrameError::TooLarge { size, max } => AmqpError::frame_error(format!(
                "type {}, all octets = <<>>: {{frame_too_large,{size},{}}}",
                self.buf.first().copied().unwrap_or(0),
                max.saturating_sub(frame::FRAME_OVERHEAD as u32)
            )),
            FrameError::BadEnd { kind } => {
                AmqpError::frame_error(format!("type {kind}, invalid frame end octet"))
            }
        })
    }

    /// Reads more bytes; Ok(0) at end of stream. Cancel-safe.
    pub async fn fill(&mut self) -> io::Result<usize> {
        if self.buf.capacity() - self.buf.len() < READ_CHUNK_BYTES / 4 {
            self.buf.reserve(READ_CHUNK_BYTES);
        }
        self.rd.read_buf(&mut self.buf).await
    }

    /// Reads exactly `n` raw bytes (the protocol header), waiting at most `timeout`.
    pub async fn read_exact_raw(&mut self, n: usize, timeout: Duration) -> io::Result<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        while self.buf.len() < n {
            let got = tokio::time::timeout_at(deadline, self.fill())
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "handshake timeout"))??;
            if got == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        Ok(self.buf.split_to(n).to_vec())
    }

    /// The next frame, waiting at most `timeout` (used during the handshake).
    pub async fn next_frame(&mut self, timeout: Duration) -> Result<Frame, ReadEnd> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(f) = self.next_buffered().map_err(ReadEnd::Protocol)? {
                return Ok(f);
            }
            match tokio::time::timeout_at(deadline, self.fill()).await {
                Err(_) => return Err(ReadEnd::Timeout),
                Ok(Err(e)) => return Err(ReadEnd::Io(e)),
                Ok(Ok(0)) => return Err(ReadEnd::Eof),
                Ok(Ok(_)) => {}
            }
        }
    }
}

/// Why reading stopped.
#[derive(Debug)]
pub enum ReadEnd {
    Eof,
    Timeout,
    Io(io::Error),
    Protocol(AmqpError),
}

/// Drains the connection's output buffer to the socket, one write per batch, and sends
/// heartbeats when nothing else was written for half the heartbeat interval. After each write
/// it re-dispatches queues that paused because the buffer was full. Ends once the link is
/// closed and the buffer is empty, or on a write error.
pub async fn writer<W: AsyncWrite + Unpin>(mut w: W, link: Arc<ConnLink>, broker: Arc<Broker>) {
    let mut buf: Vec<u8> = Vec::with_capacity(READ_CHUNK_BYTES);
    let mut last_write = Instant::now();
    loop {
        buf.clear();
        link.take(&mut buf);
        if !buf.is_empty() {
            let was_full = buf.len() >= crate::engine::broker::consumer::OUTPUT_HIGH_WATER_BYTES;
            if let Err(e) = w.write_all(&buf).await {
                tracing::debug!(conn = link.id, error = %e, "write failed");
                link.close();
                break;
            }
            last_write = Instant::now();
            if buf.capacity() > MAX_IDLE_BUFFER_BYTES {
                buf = Vec::with_capacity(READ_CHUNK_BYTES);
            }
            if was_full || !link.is_full() {
                for q in link.take_stalled() {
                    broker.dispatch(&q);
                }
            }
            continue;
        }
        if link.is_closed() {
            break;
        }
        let hb = link
            .heartbeat_secs
            .load(std::sync::atomic::Ordering::Relaxed);
        if hb == 0 {
            link.wake.notified().await;
            continue;
        }
        let due = last_write + Duration::from_millis(u64::from(hb) * 500);
        tokio::select! {
            _ = link.wake.notified() => {}
            _ = tokio::time::sleep_until(due) => {
                link.send(frame::write_heartbeat);
            }
        }
    }
    let _ = w.shutdown().await;
}
