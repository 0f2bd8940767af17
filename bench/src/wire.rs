//! AMQP 0-9-1 framing for the client: splitting the byte stream into frames, and encoding
//! outgoing frames with amq-protocol's generator.
//!
//! Incoming frames are split here (a 7-byte header, a payload, 0xCE) rather than with
//! amq-protocol's `parse_frame`, because that one copies every body into a `Vec`; methods
//! are still decoded by amq-protocol's `parse_class`.

use amq_protocol::frame::{gen_frame, AMQPContentHeader, AMQPFrame, WriteContext};
use amq_protocol::protocol::{basic, parse_class, AMQPClass, BasicProperties};
use amq_protocol::types::ChannelId;
use anyhow::{bail, Context, Result};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub const FRAME_METHOD: u8 = 1;
pub const FRAME_HEADER: u8 = 2;
pub const FRAME_BODY: u8 = 3;
pub const FRAME_HEARTBEAT: u8 = 8;
const FRAME_END: u8 = 0xCE;
/// Frame type, channel and payload size.
const FRAME_HEADER_LEN: usize = 7;
/// Header plus the end octet.
pub const FRAME_OVERHEAD: usize = FRAME_HEADER_LEN + 1;
/// Refuse frames larger than this whatever the broker says: a bound on our memory.
const MAX_FRAME: usize = 16 << 20;
const READ_CHUNK: usize = 256 << 10;
/// How long a blocked write waits before re-checking the stop flag.
const WRITE_POLL: Duration = Duration::from_millis(20);

/// One frame borrowed from the read buffer.
#[derive(Debug)]
pub struct Frame<'a> {
    pub kind: u8,
    pub channel: ChannelId,
    pub payload: &'a [u8],
}

impl Frame<'_> {
    pub fn method(&self) -> Result<AMQPClass> {
        let (_, class) = parse_class(self.payload)
            .map_err(|e| anyhow::anyhow!("undecodable method frame: {e}"))?;
        Ok(class)
    }

    /// (class id, method id) of a method frame, read without decoding the arguments.
    pub fn method_id(&self) -> Option<(u16, u16)> {
        if self.kind != FRAME_METHOD || self.payload.len() < 4 {
            return None;
        }
        let p = self.payload;
        Some((
            u16::from_be_bytes([p[0], p[1]]),
            u16::from_be_bytes([p[2], p[3]]),
        ))
    }
}

/// A read buffer that yields whole frames.
#[derive(Debug)]
pub struct FrameReader {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl Default for FrameReader {
    fn default() -> Self {
        Self {
            buf: vec![0; READ_CHUNK],
            start: 0,
            end: 0,
        }
    }
}

impl FrameReader {
    /// The next complete frame in the buffer, or None if more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Frame<'_>>> {
        let avail = &self.buf[self.start..self.end];
        if avail.len() < FRAME_HEADER_LEN {
            return Ok(None);
        }
        let kind = avail[0];
        let channel = u16::from_be_bytes([avail[1], avail[2]]);
        let size = u32::from_be_bytes([avail[3], avail[4], avail[5], avail[6]]) as usize;
        if size + FRAME_OVERHEAD > MAX_FRAME {
            bail!("broker sent a frame of {size} bytes, over our limit of {MAX_FRAME}");
        }
        let total = size + FRAME_OVERHEAD;
        if avail.len() < total {
            return Ok(None);
        }
        if avail[total - 1] != FRAME_END {
            bail!("frame without its end octet (type {kind}, channel {channel}, size {size})");
        }
        let payload_at = self.start + FRAME_HEADER_LEN;
        self.start += total;
        Ok(Some(Frame {
            kind,
            channel,
            payload: &self.buf[payload_at..payload_at + size],
        }))
    }

    /// Reads more bytes from `io`; Ok(false) on a clean end of stream.
    pub async fn fill<R: AsyncRead + Unpin>(&mut self, io: &mut R) -> Result<bool> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.buf.len() - self.end < READ_CHUNK / 4 {
            // Move the partial frame to the front instead of growing without bound.
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        // A partial frame larger than the buffer: grow to fit it (bounded by MAX_FRAME).
        if self.end == self.buf.len() {
            let new_len = (self.buf.len() * 2).min(MAX_FRAME + READ_CHUNK);
            self.buf.resize(new_len, 0);
        }
        let n = io
            .read(&mut self.buf[self.end..])
            .await
            .context("reading from the broker")?;
        self.end += n;
        Ok(n > 0)
    }
}

/// What a write that may be interrupted by the stop flag did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    All,
    /// Stopped before writing anything: the stream is still at a frame boundary.
    StoppedClean,
    /// Stopped part-way: the stream ends inside a frame, so nothing more may be sent on
    /// it (a connection.close would be read as the rest of that frame); only drop it.
    StoppedTorn,
}

/// Writes all of `buf` unless `stop` is set while the broker is not reading (brokers'
/// flow control blocks a publisher's socket for seconds). Uses `write`, which is
/// cancel-safe, under a short timeout, so that a blocked socket never keeps the run from
/// ending.
pub async fn write_unless_stopped<W: AsyncWrite + Unpin>(
    io: &mut W,
    buf: &[u8],
    stop: &AtomicBool,
) -> Result<Written> {
    let mut written = 0;
    while written < buf.len() {
        match tokio::time::timeout(WRITE_POLL, io.write(&buf[written..])).await {
            Ok(Ok(0)) => bail!("broker closed the connection"),
            Ok(Ok(n)) => written += n,
            Ok(Err(e)) => return Err(e).context("writing to the broker"),
            Err(_) if stop.load(Ordering::Relaxed) => {
                return Ok(if written == 0 {
                    Written::StoppedClean
                } else {
                    Written::StoppedTorn
                });
            }
            Err(_) => {}
        }
    }
    Ok(Written::All)
}

/// Appends one frame to `out`.
pub fn encode(out: &mut Vec<u8>, frame: &AMQPFrame) -> Result<()> {
    let buf = std::mem::take(out);
    let (buf, _) = gen_frame(frame)(WriteContext::from(buf))
        .map_err(|e| anyhow::anyhow!("encoding {frame}: {e:?}"))?
        .into_inner();
    *out = buf;
    Ok(())
}

pub fn encode_method(out: &mut Vec<u8>, channel: ChannelId, method: AMQPClass) -> Result<()> {
    encode(out, &AMQPFrame::Method(channel, method))
}

/// The bytes of one basic.publish (method, content header, body frames) with a blank
/// body, built once and copied per message, with the offset where the body starts so
/// that each copy gets its own timestamp and sequence number.
#[derive(Debug, Clone)]
pub struct PublishTemplate {
    pub bytes: Vec<u8>,
    pub body_offset: usize,
}

impl PublishTemplate {
    pub fn new(
        channel: ChannelId,
        exchange: &str,
        routing_key: &str,
        size: usize,
        persistent: bool,
        frame_max: u32,
    ) -> Result<Self> {
        let mut bytes = Vec::new();
        encode_method(
            &mut bytes,
            channel,
            AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
                exchange: exchange.into(),
                routing_key: routing_key.into(),
                mandatory: false,
                immediate: false,
            })),
        )?;
        let properties = if persistent {
            BasicProperties::default().with_delivery_mode(2)
        } else {
            BasicProperties::default()
        };
        encode(
            &mut bytes,
            &AMQPFrame::Header(
                channel,
                AMQPContentHeader {
                    class_id: 60,
                    body_size: size as u64,
                    properties,
                },
            ),
        )?;
        // frame_max counts the whole frame, overhead included
        let max_chunk = (frame_max as usize)
            .checked_sub(FRAME_OVERHEAD)
            .filter(|n| *n >= crate::config::MIN_BODY)
            .context("frame_max too small for a message body")?;
        let body = vec![0u8; size];
        let body_offset = bytes.len() + FRAME_HEADER_LEN;
        for chunk in body.chunks(max_chunk) {
            encode(&mut bytes, &AMQPFrame::Body(channel, chunk.to_vec()))?;
        }
        Ok(Self { bytes, body_offset })
    }

    /// Appends one message whose body starts with `timestamp_ns` and `seq`.
    #[inline]
    pub fn append(&self, out: &mut Vec<u8>, timestamp_ns: u64, seq: u64) {
        let at = out.len() + self.body_offset;
        out.extend_from_slice(&self.bytes);
        out[at..at + 8].copy_from_slice(&timestamp_ns.to_be_bytes());
        out[at + 8..at + 16].copy_from_slice(&seq.to_be_bytes());
    }
}

/// Nanoseconds since the Unix epoch: the clock in message bodies, shared across processes
/// so that a backlog filled by one run and drained by another still has a latency.
pub fn wall_clock_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Reads the timestamp a publisher wrote at the start of a body, if the body has one.
pub fn body_timestamp(first_body_frame: &[u8]) -> Option<u64> {
    let bytes: [u8; 8] = first_body_frame.get(..8)?.try_into().ok()?;
    Some(u64::from_be_bytes(bytes))
}

/// The delivery tag of a basic.deliver, read straight from the payload: class, method,
/// consumer-tag (short string), delivery-tag. Decoding the whole method with amq-protocol
/// allocates three strings per message, which shows up in the client's CPU per message.
pub fn deliver_tag(payload: &[u8]) -> Result<u64> {
    let tag_len = *payload.get(4).context("truncated basic.deliver")? as usize;
    let at = 5 + tag_len;
    let bytes: [u8; 8] = payload
        .get(at..at + 8)
        .context("truncated basic.deliver")?
        .try_into()
        .context("delivery tag is 8 bytes")?;
    Ok(u64::from_be_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(bytes: &[u8]) -> Vec<(u8, u16, Vec<u8>)> {
        let mut r = FrameReader::default();
        r.buf[..bytes.len()].copy_from_slice(bytes);
        r.end = bytes.len();
        let mut out = Vec::new();
        while let Some(f) = r.next_frame().expect("well-formed") {
            out.push((f.kind, f.channel, f.payload.to_vec()));
        }
        assert_eq!(r.start, r.end, "bytes left over");
        out
    }

    #[test]
    fn template_splits_bodies_and_stamps_each_copy() {
        let t = PublishTemplate::new(3, "ex", "rk", 100, true, 48).expect("valid");
        let mut out = Vec::new();
        t.append(&mut out, 0x0102030405060708, 42);
        let f = frames(&out);
        // method, header, then 100 bytes in bodies of at most 40
        assert_eq!(f.iter().map(|x| x.0).collect::<Vec<_>>(), [1, 2, 3, 3, 3]);
        assert!(f.iter().all(|x| x.1 == 3));
        assert_eq!(f[2].2.len(), 40);
        assert_eq!(f.iter().skip(2).map(|x| x.2.len()).sum::<usize>(), 100);
        assert_eq!(body_timestamp(&f[2].2), Some(0x0102030405060708));
        assert_eq!(&f[2].2[8..16], &42u64.to_be_bytes());
        let m = Frame {
            kind: 1,
            channel: 3,
            payload: &f[0].2,
        };
        match m.method().expect("decodes") {
            AMQPClass::Basic(basic::AMQPMethod::Publish(p)) => {
                assert_eq!((p.exchange.as_str(), p.routing_key.as_str()), ("ex", "rk"))
            }
            other => panic!("not a publish: {other:?}"),
        }
    }

    #[test]
    fn deliver_tag_matches_amq_protocol() {
        let mut out = Vec::new();
        encode_method(
            &mut out,
            1,
            AMQPClass::Basic(basic::AMQPMethod::Deliver(basic::Deliver {
                consumer_tag: "amq.ctag-xyz".into(),
                delivery_tag: 123_456_789_012,
                redelivered: false,
                exchange: "".into(),
                routing_key: "q".into(),
            })),
        )
        .expect("encodes");
        let f = frames(&out);
        assert_eq!(deliver_tag(&f[0].2).expect("has a tag"), 123_456_789_012);
        assert!(deliver_tag(&f[0].2[..10]).is_err());
    }

    #[tokio::test]
    async fn a_blocked_write_gives_up_on_stop() {
        // Nobody reads the other end of a 64-byte pipe: the write blocks after 64 bytes.
        let (mut tx, _rx) = tokio::io::duplex(64);
        let stop = AtomicBool::new(false);
        let blocked = tokio::time::timeout(
            Duration::from_millis(200),
            write_unless_stopped(&mut tx, &[0u8; 1024], &stop),
        )
        .await;
        assert!(blocked.is_err(), "write should still be blocked");
        stop.store(true, Ordering::Relaxed);
        let gave_up = tokio::time::timeout(
            Duration::from_secs(2),
            write_unless_stopped(&mut tx, &[0u8; 1024], &stop),
        )
        .await
        .expect("returns once stopped")
        .expect("no I/O error");
        // the first call filled the pipe, so this one wrote nothing
        assert_eq!(gave_up, Written::StoppedClean);
        // stopped after part of the buffer went out: the stream is torn
        let (mut small, _reader) = tokio::io::duplex(64);
        let torn = write_unless_stopped(&mut small, &[0u8; 1024], &stop)
            .await
            .expect("no I/O error");
        assert_eq!(torn, Written::StoppedTorn);
        let (mut roomy, _reader) = tokio::io::duplex(4096);
        let all = write_unless_stopped(&mut roomy, &[1u8; 100], &stop)
            .await
            .expect("fits");
        assert_eq!(all, Written::All);
    }

    #[test]
    fn bad_frame_end_is_an_error() {
        let mut r = FrameReader::default();
        let bytes = [8u8, 0, 0, 0, 0, 0, 0, 0xCD];
        r.buf[..8].copy_from_slice(&bytes);
        r.end = 8;
        assert!(r.next_frame().is_err());
    }

    #[tokio::test]
    async fn reader_reassembles_frames_split_across_reads() {
        let mut wire = Vec::new();
        let t = PublishTemplate::new(1, "", "q", 4096, false, 131072).expect("valid");
        for i in 0..50 {
            t.append(&mut wire, i, i);
        }
        // a reader that hands out 7 bytes at a time
        let (mut tx, mut rx) = tokio::io::duplex(7);
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            tx.write_all(&wire).await.expect("pipe open");
        });
        let mut r = FrameReader::default();
        let mut bodies = 0;
        loop {
            while let Some(f) = r.next_frame().expect("well-formed") {
                if f.kind == FRAME_BODY {
                    assert_eq!(body_timestamp(f.payload), Some(bodies));
                    bodies += 1;
                }
            }
            if !r.fill(&mut rx).await.expect("pipe readable") {
                break;
            }
        }
        writer.await.expect("writer finished");
        assert_eq!(bodies, 50);
    }
}
