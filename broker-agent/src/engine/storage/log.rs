//! One durable queue's segment log. See the module docs of `storage` for the contract.

use std::io;

use bytes::Bytes;

use super::Location;

/// The log of one durable queue. Owned by the queue and used under its lock; not shared.
pub struct QueueLog {}

/// Resolves once every record appended before [`QueueLog::sync`] was called is fsync'd.
pub struct SyncWaiter {}

impl QueueLog {
    /// Appends a record to a user-space buffer and returns where it will live. Nothing is
    /// durable until [`flush`](Self::flush).
    pub fn append(&mut self, record: &[u8]) -> io::Result<Location> {
        let _ = record;
        todo!("storage helper")
    }

    /// Records that the message at `loc` is acked (buffered like appends). Once every record of
    /// a sealed segment is acked, the segment and its ack file are deleted.
    pub fn ack(&mut self, loc: Location) -> io::Result<()> {
        let _ = loc;
        todo!("storage helper")
    }

    /// Hands buffered appends and acks to the kernel (one write per file). After this returns
    /// they survive `kill -9` of the process.
    pub fn flush(&mut self) -> io::Result<()> {
        todo!("storage helper")
    }

    /// Flushes, then asks the sync thread for an fdatasync covering everything appended so far.
    /// Many callers share one fsync.
    pub fn sync(&mut self) -> io::Result<SyncWaiter> {
        todo!("storage helper")
    }

    /// Reads one record back (for bodies not kept in memory). Reads buffered data too.
    pub fn read(&self, loc: Location) -> io::Result<Bytes> {
        let _ = loc;
        todo!("storage helper")
    }

    /// Streams the live (unacked) records in append order, for recovery at start-up. Memory
    /// stays bounded: each record is handed to `f` and then dropped.
    pub fn scan(&self, f: &mut dyn FnMut(Location, &[u8])) -> io::Result<()> {
        let _ = f;
        todo!("storage helper")
    }

    /// Number of live records and their total payload bytes.
    pub fn live(&self) -> (u64, u64) {
        todo!("storage helper")
    }
}

impl SyncWaiter {
    /// Waits for the fsync. An error means the data may not be durable: the caller must nack.
    pub async fn wait(self) -> io::Result<()> {
        todo!("storage helper")
    }
}
