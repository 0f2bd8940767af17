//! The replication stream's frames: `len: u32 BE | type: u8 | payload`, at most
//! [`MAX_FRAME_BYTES`]. Every decoder checks lengths before reading, so a peer that sends
//! garbage gets an error (and is dropped), never a panic or a huge allocation.

use std::io;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::engine::storage::FileOp;

/// Largest frame accepted or produced (type byte and payload).
pub const MAX_FRAME_BYTES: usize = 2 * 1024 * 1024;
/// Largest data chunk in one operation: larger writes are split, so a frame always fits.
pub const MAX_OP_DATA_BYTES: usize = 1024 * 1024;

pub const NONCE_BYTES: usize = 32;
pub const MAC_BYTES: usize = 32;

/// Where a follower stands: the stream that produced its last entry, and that entry's LSN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamPos {
    pub stream: u64,
    pub lsn: u64,
}

/// Every message of the protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Msg<'a> {
    /// Leader -> follower, first: who leads, under which epoch, and a nonce to sign.
    Challenge {
        epoch: u64,
        leader: &'a str,
        nonce: [u8; NONCE_BYTES],
    },
    /// Follower -> leader: who it is, the newest epoch it has seen, its proof, and where it
    /// stands (none after a restart or on an empty data directory).
    Hello {
        epoch: u64,
        node: &'a str,
        nonce: [u8; NONCE_BYTES],
        mac: [u8; MAC_BYTES],
        resume: Option<StreamPos>,
    },
    /// Leader -> follower: the leader's proof, and whether a full snapshot comes first.
    Welcome {
        mac: [u8; MAC_BYTES],
        snapshot: bool,
    },
    /// Leader -> follower during a full resync: one piece of a file copy.
    Snapshot { op: FileOp<'a> },
    /// Leader -> follower: the copy is complete; entries after `at.lsn` follow.
    SnapshotEnd { at: StreamPos },
    /// Leader -> follower: one mutation of the log.
    Entry { at: StreamPos, op: FileOp<'a> },
    /// Follower -> leader: everything up to `lsn` is written (survives kill -9).
    Ack { lsn: u64 },
    /// Either way, then the connection closes.
    Refuse { reason: &'a str },
}

const T_CHALLENGE: u8 = 1;
const T_HELLO: u8 = 2;
const T_WELCOME: u8 = 3;
const T_SNAPSHOT: u8 = 4;
const T_SNAPSHOT_END: u8 = 5;
const T_ENTRY: u8 = 6;
const T_ACK: u8 = 7;
const T_REFUSE: u8 = 8;

const OP_CREATE_DIR: u8 = 1;
const OP_WRITE_FILE: u8 = 2;
const OP_CREATE_FILE: u8 = 3;
const OP_WRITE_AT: u8 = 4;
const OP_SET_LEN: u8 = 5;
const OP_REMOVE: u8 = 6;
const OP_RENAME: u8 = 7;
const OP_REMOVE_DIR_ALL: u8 = 8;
const OP_DEFINITIONS: u8 = 9;

fn bad(msg: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("replication frame: {msg}"),
    )
}

/// Appends one whole frame (length prefix included) for `msg` to `out`.
pub fn encode(out: &mut Vec<u8>, msg: &Msg<'_>) {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    match msg {
        Msg::Challenge {
            epoch,
            leader,
            nonce,
        } => {
            out.push(T_CHALLENGE);
            put_u64(out, *epoch);
            put_str(out, leader);
            out.extend_from_slice(nonce);
        }
        Msg::Hello {
            epoch,
            node,
            nonce,
            mac,
            resume,
        } => {
            out.push(T_HELLO);
            put_u64(out, *epoch);
            put_str(out, node);
            out.extend_from_slice(nonce);
            out.extend_from_slice(mac);
            match resume {
                Some(p) => {
                    out.push(1);
                    put_u64(out, p.stream);
                    put_u64(out, p.lsn);
                }
                None => out.push(0),
            }
        }
        Msg::Welcome { mac, snapshot } => {
            out.push(T_WELCOME);
            out.extend_from_slice(mac);
            out.push(u8::from(*snapshot));
        }
        Msg::Snapshot { op } => {
            out.push(T_SNAPSHOT);
            put_op(out, op);
        }
        Msg::SnapshotEnd { at } => {
            out.push(T_SNAPSHOT_END);
            put_u64(out, at.stream);
            put_u64(out, at.lsn);
        }
        Msg::Entry { at, op } => {
            out.push(T_ENTRY);
            put_u64(out, at.stream);
            put_u64(out, at.lsn);
            put_op(out, op);
        }
        Msg::Ack { lsn } => {
            out.push(T_ACK);
            put_u64(out, *lsn);
        }
        Msg::Refuse { reason } => {
            out.push(T_REFUSE);
            put_str(out, reason);
        }
    }
    let len = (out.len() - start - 4) as u32;
    debug_assert!(len as usize <= MAX_FRAME_BYTES, "callers chunk their data");
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    let len = u16::try_from(s.len()).expect("paths and names are short");
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_data(out: &mut Vec<u8>, d: &[u8]) {
    out.extend_from_slice(&(d.len() as u32).to_le_bytes());
    out.extend_from_slice(d);
}

fn put_op(out: &mut Vec<u8>, op: &FileOp<'_>) {
    match *op {
        FileOp::CreateDir { path } => {
            out.push(OP_CREATE_DIR);
            put_str(out, path);
        }
        FileOp::WriteFile { path, data } => {
            out.push(OP_WRITE_FILE);
            put_str(out, path);
            put_data(out, data);
        }
        FileOp::CreateFile { path } => {
            out.push(OP_CREATE_FILE);
            put_str(out, path);
        }
        FileOp::WriteAt { path, offset, data } => {
            out.push(OP_WRITE_AT);
            put_str(out, path);
            put_u64(out, offset);
            put_data(out, data);
        }
        FileOp::SetLen { path, len } => {
            out.push(OP_SET_LEN);
            put_str(out, path);
            put_u64(out, len);
        }
        FileOp::Remove { path } => {
            out.push(OP_REMOVE);
            put_str(out, path);
        }
        FileOp::Rename { from, to } => {
            out.push(OP_RENAME);
            put_str(out, from);
            put_str(out, to);
        }
        FileOp::RemoveDirAll { path } => {
            out.push(OP_REMOVE_DIR_ALL);
            put_str(out, path);
        }
        FileOp::Definitions { data } => {
            out.push(OP_DEFINITIONS);
            put_data(out, data);
        }
    }
}

/// A cursor over one frame's payload.
struct Cur<'a>(&'a [u8]);

impl<'a> Cur<'a> {
    fn take(&mut self, n: usize) -> io::Result<&'a [u8]> {
        if self.0.len() < n {
            return Err(bad("truncated"));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }
    fn u8(&mut self) -> io::Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u64(&mut self) -> io::Result<u64> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn arr<const N: usize>(&mut self) -> io::Result<[u8; N]> {
        Ok(self.take(N)?.try_into().expect("N bytes"))
    }
    fn str(&mut self) -> io::Result<&'a str> {
        let len = u16::from_le_bytes(self.take(2)?.try_into().expect("2 bytes"));
        std::str::from_utf8(self.take(usize::from(len))?).map_err(|_| bad("string is not UTF-8"))
    }
    fn data(&mut self) -> io::Result<&'a [u8]> {
        let len = u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes"));
        self.take(len as usize)
    }
    fn op(&mut self) -> io::Result<FileOp<'a>> {
        Ok(match self.u8()? {
            OP_CREATE_DIR => FileOp::CreateDir { path: self.str()? },
            OP_WRITE_FILE => FileOp::WriteFile {
                path: self.str()?,
                data: self.data()?,
            },
            OP_CREATE_FILE => FileOp::CreateFile { path: self.str()? },
            OP_WRITE_AT => FileOp::WriteAt {
                path: self.str()?,
                offset: self.u64()?,
                data: self.data()?,
            },
            OP_SET_LEN => FileOp::SetLen {
                path: self.str()?,
                len: self.u64()?,
            },
            OP_REMOVE => FileOp::Remove { path: self.str()? },
            OP_RENAME => FileOp::Rename {
                from: self.str()?,
                to: self.str()?,
            },
            OP_REMOVE_DIR_ALL => FileOp::RemoveDirAll { path: self.str()? },
            OP_DEFINITIONS => FileOp::Definitions { data: self.data()? },
            other => return Err(bad(&format!("unknown operation {other}"))),
        })
    }
}

/// Decodes one frame's body (type byte and payload, without the length prefix).
pub fn decode(body: &[u8]) -> io::Result<Msg<'_>> {
    let mut c = Cur(body);
    let msg = match c.u8()? {
        T_CHALLENGE => Msg::Challenge {
            epoch: c.u64()?,
            leader: c.str()?,
            nonce: c.arr()?,
        },
        T_HELLO => Msg::Hello {
            epoch: c.u64()?,
            node: c.str()?,
            nonce: c.arr()?,
            mac: c.arr()?,
            resume: match c.u8()? {
                0 => None,
                1 => Some(StreamPos {
                    stream: c.u64()?,
                    lsn: c.u64()?,
                }),
                _ => return Err(bad("bad resume flag")),
            },
        },
        T_WELCOME => Msg::Welcome {
            mac: c.arr()?,
            snapshot: match c.u8()? {
                0 => false,
                1 => true,
                _ => return Err(bad("bad snapshot flag")),
            },
        },
        T_SNAPSHOT => Msg::Snapshot { op: c.op()? },
        T_SNAPSHOT_END => Msg::SnapshotEnd {
            at: StreamPos {
                stream: c.u64()?,
                lsn: c.u64()?,
            },
        },
        T_ENTRY => Msg::Entry {
            at: StreamPos {
                stream: c.u64()?,
                lsn: c.u64()?,
            },
            op: c.op()?,
        },
        T_ACK => Msg::Ack { lsn: c.u64()? },
        T_REFUSE => Msg::Refuse { reason: c.str()? },
        other => return Err(bad(&format!("unknown frame type {other}"))),
    };
    if !c.0.is_empty() {
        return Err(bad("trailing bytes"));
    }
    Ok(msg)
}

/// Reads one frame body. A clean end of stream before a frame starts is `UnexpectedEof` too:
/// the caller treats every error as "drop this peer".
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> io::Result<Bytes> {
    let len = r.read_u32().await? as usize;
    if len == 0 || len > MAX_FRAME_BYTES {
        return Err(bad(&format!("length {len} out of range")));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    Ok(Bytes::from(body))
}

/// Encodes and writes one message.
pub async fn write_msg<W: AsyncWrite + Unpin>(w: &mut W, msg: &Msg<'_>) -> io::Result<()> {
    let mut buf = Vec::new();
    encode(&mut buf, msg);
    w.write_all(&buf).await?;
    w.flush().await
}

/// Splits `op` into operations whose data fits [`MAX_OP_DATA_BYTES`] (only large writes are
/// split; a large `WriteFile` becomes a `CreateFile` and positioned writes).
pub fn chunk_op<'a>(op: FileOp<'a>, mut f: impl FnMut(FileOp<'a>)) {
    match op {
        FileOp::WriteAt { path, offset, data } if data.len() > MAX_OP_DATA_BYTES => {
            for (i, piece) in data.chunks(MAX_OP_DATA_BYTES).enumerate() {
                f(FileOp::WriteAt {
                    path,
                    offset: offset + (i * MAX_OP_DATA_BYTES) as u64,
                    data: piece,
                });
            }
        }
        FileOp::WriteFile { path, data } if data.len() > MAX_OP_DATA_BYTES => {
            f(FileOp::CreateFile { path });
            chunk_op(
                FileOp::WriteAt {
                    path,
                    offset: 0,
                    data,
                },
                f,
            );
        }
        other => f(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<Msg<'static>> {
        vec![
            Msg::Challenge {
                epoch: 3,
                leader: "b-1-1",
                nonce: [7; 32],
            },
            Msg::Hello {
                epoch: 4,
                node: "b-1-2",
                nonce: [1; 32],
                mac: [2; 32],
                resume: Some(StreamPos {
                    stream: 9,
                    lsn: 100,
                }),
            },
            Msg::Hello {
                epoch: 0,
                node: "n",
                nonce: [0; 32],
                mac: [0; 32],
                resume: None,
            },
            Msg::Welcome {
                mac: [5; 32],
                snapshot: true,
            },
            Msg::Snapshot {
                op: FileOp::WriteFile {
                    path: "definitions",
                    data: b"abc",
                },
            },
            Msg::SnapshotEnd {
                at: StreamPos { stream: 1, lsn: 2 },
            },
            Msg::Entry {
                at: StreamPos { stream: 1, lsn: 3 },
                op: FileOp::WriteAt {
                    path: "queues/x/0000000001.seg",
                    offset: 77,
                    data: b"rec",
                },
            },
            Msg::Entry {
                at: StreamPos { stream: 1, lsn: 4 },
                op: FileOp::Rename { from: "a", to: "b" },
            },
            Msg::Entry {
                at: StreamPos { stream: 1, lsn: 5 },
                op: FileOp::SetLen { path: "a", len: 8 },
            },
            Msg::Entry {
                at: StreamPos { stream: 1, lsn: 6 },
                op: FileOp::Remove { path: "a" },
            },
            Msg::Entry {
                at: StreamPos { stream: 1, lsn: 7 },
                op: FileOp::RemoveDirAll { path: "d" },
            },
            Msg::Entry {
                at: StreamPos { stream: 1, lsn: 8 },
                op: FileOp::CreateDir { path: "d" },
            },
            Msg::Entry {
                at: StreamPos { stream: 1, lsn: 9 },
                op: FileOp::CreateFile { path: "f" },
            },
            Msg::Entry {
                at: StreamPos { stream: 1, lsn: 10 },
                op: FileOp::Definitions { data: b"" },
            },
            Msg::Ack { lsn: u64::MAX },
            Msg::Refuse {
                reason: "older epoch",
            },
        ]
    }

    #[test]
    fn every_message_round_trips() {
        for m in samples() {
            let mut buf = Vec::new();
            encode(&mut buf, &m);
            let len = u32::from_be_bytes(buf[..4].try_into().expect("4 bytes")) as usize;
            assert_eq!(len, buf.len() - 4);
            assert_eq!(decode(&buf[4..]).expect("decodes"), m);
        }
    }

    #[test]
    fn truncations_and_bit_flips_never_panic() {
        for m in samples() {
            let mut buf = Vec::new();
            encode(&mut buf, &m);
            let body = &buf[4..];
            for cut in 0..body.len() {
                assert!(decode(&body[..cut]).is_err(), "{m:?} cut at {cut} decoded");
            }
            for i in 0..body.len() {
                for bit in 0..8 {
                    let mut b = body.to_vec();
                    b[i] ^= 1 << bit;
                    let _ = decode(&b);
                }
            }
        }
    }

    #[test]
    fn random_garbage_is_an_error_not_a_panic() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        for _ in 0..20_000 {
            let len = rng.gen_range(0..64);
            let b: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
            let _ = decode(&b);
        }
    }

    #[tokio::test]
    async fn oversized_and_torn_frames_are_refused() {
        let mut huge: &[u8] = &((MAX_FRAME_BYTES as u32 + 1).to_be_bytes());
        assert!(read_frame(&mut huge).await.is_err());
        let mut zero: &[u8] = &[0, 0, 0, 0];
        assert!(read_frame(&mut zero).await.is_err());
        let mut torn: &[u8] = &[0, 0, 0, 9, T_ACK, 1, 2];
        assert!(read_frame(&mut torn).await.is_err());
    }

    #[test]
    fn large_writes_are_chunked_to_fit_frames() {
        let data = vec![9u8; MAX_OP_DATA_BYTES * 2 + 5];
        let mut parts = Vec::new();
        chunk_op(
            FileOp::WriteFile {
                path: "f",
                data: &data,
            },
            |op| parts.push(op),
        );
        assert_eq!(parts.len(), 4);
        assert_eq!(parts[0], FileOp::CreateFile { path: "f" });
        let mut total = 0;
        for p in &parts[1..] {
            let FileOp::WriteAt { offset, data, .. } = p else {
                panic!("{p:?}")
            };
            assert_eq!(*offset as usize, total);
            total += data.len();
            let mut buf = Vec::new();
            encode(
                &mut buf,
                &Msg::Entry {
                    at: StreamPos { stream: 0, lsn: 0 },
                    op: *p,
                },
            );
            assert!(buf.len() - 4 <= MAX_FRAME_BYTES);
        }
        assert_eq!(total, data.len());
    }
}
