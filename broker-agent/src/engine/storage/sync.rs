//! See the `storage` module docs.
pub(super) struct SyncThread;
