//! DescribeBroker's memory on Postgres: per broker, the rows it shows from other tables
//! (users, tags, nodes, scheduled actions, leadership) with the broker's detail version
//! they were read at (`broker_detail_versions`, kept by triggers: migration 0107).
//!
//! DescribeBroker always reads the broker row and its current detail version, in one
//! statement, with the version it remembers; the statement reads the other tables only
//! when the two differ. So an answer is exactly as fresh as without the cache (the version
//! and the rows it stands for are read in one snapshot, and a change commits with its
//! bump), and a hit costs Postgres one indexed join instead of five aggregate lookups.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use parking_lot::Mutex;

use super::brokers::{DescribedLeadership, DescribedNode};
use super::{ActionRecord, UserRecord};

/// Brokers remembered at most; past it the memory starts again empty (a fleet this large
/// pays one full read per broker to refill it).
const MAX_ENTRIES: usize = 100_000;

/// What DescribeBroker shows of a broker besides its own row, as of `version`.
#[derive(Debug)]
pub struct DetailParts {
    pub version: i64,
    pub users: Vec<UserRecord>,
    pub tags: BTreeMap<String, String>,
    pub nodes: Vec<DescribedNode>,
    pub scheduled: Vec<ActionRecord>,
    pub leadership: Option<DescribedLeadership>,
}

#[derive(Debug, Default)]
pub struct DetailCache {
    entries: Mutex<HashMap<String, Arc<DetailParts>>>,
}

impl DetailCache {
    /// What is remembered of broker `id`, at the version it was read.
    pub fn get(&self, id: &str) -> Option<Arc<DetailParts>> {
        self.entries.lock().get(id).cloned()
    }

    /// Remembers `parts` unless a newer version is already remembered (two requests that
    /// missed together may finish in either order).
    pub fn put(&self, id: &str, parts: Arc<DetailParts>) {
        let mut entries = self.entries.lock();
        if entries.len() >= MAX_ENTRIES && !entries.contains_key(id) {
            entries.clear();
        }
        match entries.get(id) {
            Some(known) if known.version >= parts.version => {}
            _ => {
                entries.insert(id.to_owned(), parts);
            }
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(version: i64) -> Arc<DetailParts> {
        Arc::new(DetailParts {
            version,
            users: Vec::new(),
            tags: BTreeMap::new(),
            nodes: Vec::new(),
            scheduled: Vec::new(),
            leadership: None,
        })
    }

    #[test]
    fn an_older_read_never_replaces_a_newer_one() {
        let cache = DetailCache::default();
        assert!(cache.get("b-1").is_none());
        cache.put("b-1", parts(3));
        cache.put("b-1", parts(2));
        assert_eq!(cache.get("b-1").map(|p| p.version), Some(3));
        cache.put("b-1", parts(4));
        assert_eq!(cache.get("b-1").map(|p| p.version), Some(4));
        assert_eq!(cache.len(), 1);
    }
}
