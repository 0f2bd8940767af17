//! DescribeBroker's memory on Postgres: per broker, the rows it shows from other tables
//! (users, tags, nodes, scheduled actions, leadership) with the broker's detail version
//! (`broker_detail_versions`, kept by triggers: migration 0107) and generation they were
//! read at. The generation stands for inserted users (migration 0110): every user insert
//! into a live broker bumps it, as its agents must see the user.
//!
//! DescribeBroker always reads the broker row and its current detail version, in one
//! statement, with the pair it remembers; the statement reads the other tables only
//! when either differs. So an answer is exactly as fresh as without the cache (the version
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

/// What DescribeBroker shows of a broker besides its own row, as of `version` and
/// `generation`.
#[derive(Debug)]
pub struct DetailParts {
    pub version: i64,
    pub generation: i64,
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

    /// Remembers `parts` unless a newer read is already remembered (two requests that
    /// missed together may finish in either order). Both numbers only grow, so a later
    /// read has neither smaller.
    pub fn put(&self, id: &str, parts: Arc<DetailParts>) {
        let mut entries = self.entries.lock();
        if entries.len() >= MAX_ENTRIES && !entries.contains_key(id) {
            entries.clear();
        }
        match entries.get(id) {
            Some(known)
                if known.version >= parts.version && known.generation >= parts.generation => {}
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

    fn parts(version: i64, generation: i64) -> Arc<DetailParts> {
        Arc::new(DetailParts {
            version,
            generation,
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
        cache.put("b-1", parts(3, 7));
        cache.put("b-1", parts(2, 7));
        cache.put("b-1", parts(3, 6));
        let remembered = |c: &DetailCache| c.get("b-1").map(|p| (p.version, p.generation));
        assert_eq!(remembered(&cache), Some((3, 7)));
        cache.put("b-1", parts(4, 7));
        assert_eq!(remembered(&cache), Some((4, 7)));
        // A user inserted: the generation moved, the version did not.
        cache.put("b-1", parts(4, 8));
        assert_eq!(remembered(&cache), Some((4, 8)));
        assert_eq!(cache.len(), 1);
    }
}
