//! Tests of the storage contract through its public surface, on real files.

use super::*;
use std::path::Path;
use std::time::Instant;

use rand::{Rng, SeedableRng};

fn open_storage(dir: &Path, segment_bytes: u64) -> Storage {
    let mut config = StorageConfig::new(dir);
    config.segment_bytes = segment_bytes;
    Storage::open(config).expect("open storage")
}

fn key(name: &str) -> QueueKey {
    QueueKey {
        vhost: "/".into(),
        name: name.into(),
    }
}

/// A record whose bytes are a function of `id` and whose length varies (0 to 299 bytes), so a
/// record returned from the wrong place or with the wrong length is caught.
fn payload(id: u64) -> Vec<u8> {
    let len = (id * 7919 % 300) as usize;
    let mut out = id.to_le_bytes().to_vec();
    out.extend((0..len).map(|i| (id as usize + i) as u8));
    out
}

fn scan_all(log: &QueueLog) -> Vec<(Location, Vec<u8>)> {
    let mut out = Vec::new();
    log.scan(&mut |loc, bytes| out.push((loc, bytes.to_vec())))
        .expect("scan");
    out
}

fn segment_files(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for queue_dir in std::fs::read_dir(dir.join("queues")).expect("read queues dir") {
        let queue_dir = queue_dir.expect("entry").path();
        for f in std::fs::read_dir(&queue_dir).expect("read queue dir") {
            let f = f.expect("entry").path();
            if f.extension().is_some_and(|e| e == ext) {
                out.push(f);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn round_trip_from_buffer_and_from_disk() {
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = open_storage(dir.path(), StorageConfig::DEFAULT_SEGMENT_BYTES);
    let mut log = storage
        .open_queue_log(&key("q"), Durability::Written)
        .expect("open log");
    let locs: Vec<Location> = (0..100)
        .map(|i| log.append(&payload(i)).expect("append"))
        .collect();
    for (i, loc) in locs.iter().enumerate() {
        assert_eq!(
            log.read(*loc).expect("read buffered")[..],
            payload(i as u64)[..]
        );
    }
    assert_eq!(scan_all(&log).len(), 100, "scan sees buffered records");
    log.flush().expect("flush");
    for (i, loc) in locs.iter().enumerate() {
        assert_eq!(
            log.read(*loc).expect("read from disk")[..],
            payload(i as u64)[..]
        );
    }
    let scanned = scan_all(&log);
    assert_eq!(scanned.iter().map(|r| r.0).collect::<Vec<_>>(), locs);
    let bytes: u64 = (0..100).map(|i| payload(i).len() as u64).sum();
    assert_eq!(log.live(), (100, bytes));
    // A mix: half on disk, half buffered.
    let more: Vec<Location> = (100..150)
        .map(|i| log.append(&payload(i)).expect("append"))
        .collect();
    let scanned = scan_all(&log);
    assert_eq!(scanned.len(), 150);
    assert_eq!(scanned[149], (more[49], payload(149)));
}

#[test]
fn reopen_recovers_records_and_acks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let locs: Vec<Location>;
    {
        let storage = open_storage(dir.path(), 4096);
        let mut log = storage
            .open_queue_log(&key("q"), Durability::Written)
            .expect("open log");
        locs = (0..200)
            .map(|i| log.append(&payload(i)).expect("append"))
            .collect();
        for loc in locs.iter().step_by(3) {
            log.ack(*loc).expect("ack");
        }
        log.flush().expect("flush");
    }
    let storage = open_storage(dir.path(), 4096);
    let mut log = storage
        .open_queue_log(&key("q"), Durability::Written)
        .expect("reopen log");
    let expected: Vec<(Location, Vec<u8>)> = (0..200u64)
        .filter(|i| i % 3 != 0)
        .map(|i| (locs[i as usize], payload(i)))
        .collect();
    assert_eq!(scan_all(&log), expected);
    let bytes: u64 = expected.iter().map(|r| r.1.len() as u64).sum();
    assert_eq!(log.live(), (expected.len() as u64, bytes));
    // Acks of recovered records work and persist too; new appends go to a fresh segment.
    log.ack(expected[0].0).expect("ack recovered");
    let new_loc = log.append(b"after restart").expect("append");
    assert!(new_loc.segment > locs.last().expect("records").segment);
    drop(log);
    drop(storage);
    let storage = open_storage(dir.path(), 4096);
    let log = storage
        .open_queue_log(&key("q"), Durability::Written)
        .expect("reopen log");
    let scanned = scan_all(&log);
    assert_eq!(scanned.len(), expected.len());
    assert_eq!(scanned[0], expected[1]);
    assert_eq!(scanned.last().expect("records").1, b"after restart");
}

#[test]
fn rollover_and_whole_segment_deletion() {
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = open_storage(dir.path(), 1024);
    let mut log = storage
        .open_queue_log(&key("q"), Durability::Written)
        .expect("open log");
    let locs: Vec<Location> = (0..100)
        .map(|i| log.append(&payload(i)).expect("append"))
        .collect();
    // A record larger than a segment gets a segment of its own.
    let big = vec![7u8; 5000];
    let big_loc = log.append(&big).expect("append big");
    let after_big = log.append(b"x").expect("append");
    log.flush().expect("flush");
    assert_eq!(big_loc.offset, 0);
    assert_eq!(after_big.segment, big_loc.segment + 1);
    for pair in locs.windows(2) {
        let same = pair[1].segment == pair[0].segment;
        assert!(
            same || pair[1].segment == pair[0].segment + 1,
            "segments are consecutive"
        );
        assert!(!same || pair[1].offset > pair[0].offset);
    }
    let first_segment = locs[0].segment;
    let segments_before = segment_files(dir.path(), "seg").len();
    assert!(
        segments_before > 5,
        "1 KiB segments must have rolled over: {segments_before}"
    );
    assert_eq!(storage.stats().segments, segments_before as u64);
    assert_eq!(log.read(big_loc).expect("read big")[..], big[..]);

    // Ack every record of the first segment except one: nothing is deleted.
    let first: Vec<Location> = locs
        .iter()
        .copied()
        .filter(|l| l.segment == first_segment)
        .collect();
    for loc in &first[1..] {
        log.ack(*loc).expect("ack");
    }
    log.flush().expect("flush");
    assert_eq!(segment_files(dir.path(), "seg").len(), segments_before);
    assert_eq!(segment_files(dir.path(), "ack").len(), 1);
    let bytes_before = storage.stats().bytes_on_disk;
    log.ack(first[0]).expect("ack last of segment");
    log.flush().expect("flush");
    assert_eq!(segment_files(dir.path(), "seg").len(), segments_before - 1);
    assert!(
        segment_files(dir.path(), "ack").is_empty(),
        "the ack file goes with its segment"
    );
    assert!(storage.stats().bytes_on_disk < bytes_before);
    assert_eq!(storage.stats().segments, segments_before as u64 - 1);
    assert_eq!(
        log.read(first[0]).expect_err("gone").kind(),
        io::ErrorKind::NotFound
    );
    assert_eq!(
        log.ack(first[0]).expect_err("gone").kind(),
        io::ErrorKind::NotFound
    );

    // Ack everything: only the active segment stays.
    for loc in locs.iter().filter(|l| l.segment != first_segment) {
        log.ack(*loc).expect("ack");
    }
    log.ack(big_loc).expect("ack");
    log.ack(after_big).expect("ack");
    log.flush().expect("flush");
    assert_eq!(segment_files(dir.path(), "seg").len(), 1);
    assert_eq!(log.live(), (0, 0));
    assert!(scan_all(&log).is_empty());
    drop(log);
    // A reopened log whose active segment is fully acked deletes it too and starts fresh.
    let log = storage.open_queue_log(&key("q"), Durability::Written);
    drop(storage);
    let log = log.expect("reopen");
    assert!(scan_all(&log).is_empty());
    assert_eq!(segment_files(dir.path(), "seg").len(), 1);
}

#[test]
fn acks_of_unflushed_records_and_stale_ack_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let storage = open_storage(dir.path(), 1 << 20);
        let mut log = storage
            .open_queue_log(&key("q"), Durability::Written)
            .expect("open log");
        let a = log.append(b"a").expect("append");
        let b = log.append(b"b").expect("append");
        log.ack(a).expect("ack buffered record");
        assert_eq!(
            scan_all(&log).iter().map(|r| r.0).collect::<Vec<_>>(),
            vec![b]
        );
        log.flush().expect("flush");
    }
    // An orphan ack file (crash between the two unlinks of a deleted segment) is removed.
    let queue_dir = segment_files(dir.path(), "seg")[0]
        .parent()
        .expect("queue dir")
        .to_path_buf();
    std::fs::write(queue_dir.join("0000000000.ack"), [0u8; 8]).expect("write orphan");
    let storage = open_storage(dir.path(), 1 << 20);
    let log = storage
        .open_queue_log(&key("q"), Durability::Written)
        .expect("reopen");
    assert_eq!(
        scan_all(&log).into_iter().map(|r| r.1).collect::<Vec<_>>(),
        vec![b"b".to_vec()]
    );
    assert!(!queue_dir.join("0000000000.ack").exists());
}

/// Writes `n` records to a fresh log and returns (data dir, segment path, the framed end offset
/// of every record).
fn log_with_records(n: u64) -> (tempfile::TempDir, PathBuf, Vec<u64>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = open_storage(dir.path(), 1 << 20);
    let mut log = storage
        .open_queue_log(&key("q"), Durability::Written)
        .expect("open log");
    let ends = (0..n)
        .map(|i| {
            let loc = log.append(&payload(i)).expect("append");
            u64::from(loc.offset) + 8 + u64::from(loc.len)
        })
        .collect();
    log.flush().expect("flush");
    drop(log);
    drop(storage);
    let seg = segment_files(dir.path(), "seg").pop().expect("one segment");
    (dir, seg, ends)
}

/// Copies a data directory (two levels: `queues/<log>/<file>`, plus top-level files).
fn copy_data_dir(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            std::fs::create_dir_all(&target).expect("mkdir");
            copy_data_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

/// Copies `base` (a log made by `log_with_records`), cuts its segment at `cut`, appends
/// `garbage`, reopens, and checks that exactly the records that ended before the cut come
/// back, intact, and that the log takes new appends.
fn check_torn_tail(base: &Path, base_seg: &Path, cut: u64, garbage: &[u8], ends: &[u64]) {
    let dir = tempfile::tempdir().expect("tempdir");
    copy_data_dir(base, dir.path());
    let seg = dir
        .path()
        .join(base_seg.strip_prefix(base).expect("segment inside base"));
    let file = OpenOptions::new()
        .write(true)
        .open(&seg)
        .expect("open segment");
    file.set_len(cut).expect("truncate");
    use std::os::unix::fs::FileExt;
    file.write_all_at(garbage, cut).expect("append garbage");
    drop(file);
    let survivors = ends.iter().filter(|end| **end <= cut).count() as u64;
    let storage = open_storage(dir.path(), 1 << 20);
    let mut log = storage
        .open_queue_log(&key("q"), Durability::Written)
        .expect("recover");
    let scanned: Vec<Vec<u8>> = scan_all(&log).into_iter().map(|r| r.1).collect();
    let expected: Vec<Vec<u8>> = (0..survivors).map(payload).collect();
    assert_eq!(
        scanned,
        expected,
        "cut at {cut} with {} garbage bytes",
        garbage.len()
    );
    log.append(b"new").expect("append after recovery");
    log.flush().expect("flush");
    drop(log);
    let log = storage
        .open_queue_log(&key("q"), Durability::Written)
        .expect("reopen");
    assert_eq!(scan_all(&log).len() as u64, survivors + 1);
}

#[test]
fn torn_tail_at_every_offset() {
    let (base, seg, ends) = log_with_records(6);
    let total = *ends.last().expect("records");
    for cut in 0..=total {
        check_torn_tail(base.path(), &seg, cut, &[], &ends);
    }
}

#[test]
fn torn_tail_with_garbage_at_random_offsets() {
    let (base, seg, ends) = log_with_records(50);
    let total = *ends.last().expect("records");
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for round in 0..60 {
        let cut = rng.gen_range(0..=total);
        let len = rng.gen_range(1..200);
        // Random bytes, and also zeros (what a file system leaves after a power cut), and a
        // plausible header claiming a small record.
        let garbage: Vec<u8> = match round % 3 {
            0 => (0..len).map(|_| rng.gen()).collect(),
            1 => vec![0; len],
            _ => [&5u32.to_le_bytes()[..], &[1, 2, 3, 4, 5, 6, 7, 8, 9]].concat(),
        };
        check_torn_tail(base.path(), &seg, cut, &garbage, &ends);
    }
}

#[test]
fn corrupt_ack_file_tail_is_ignored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let locs: Vec<Location>;
    {
        let storage = open_storage(dir.path(), 1 << 20);
        let mut log = storage
            .open_queue_log(&key("q"), Durability::Written)
            .expect("open log");
        locs = (0..10)
            .map(|i| log.append(&payload(i)).expect("append"))
            .collect();
        log.ack(locs[0]).expect("ack");
        log.ack(locs[5]).expect("ack");
        log.flush().expect("flush");
    }
    let ack_file = segment_files(dir.path(), "ack").pop().expect("an ack file");
    let mut raw = std::fs::read(&ack_file).expect("read acks");
    // An entry naming no record (valid checksum), a garbage entry, a torn partial entry.
    segment::encode_ack(&mut raw, locs[1].offset + 1);
    raw.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4]);
    raw.extend_from_slice(&locs[2].offset.to_le_bytes()[..3]);
    std::fs::write(&ack_file, &raw).expect("write acks");
    let storage = open_storage(dir.path(), 1 << 20);
    let mut log = storage
        .open_queue_log(&key("q"), Durability::Written)
        .expect("reopen");
    let live: Vec<u64> = (0..10).filter(|i| *i != 0 && *i != 5).collect();
    let expected: Vec<Vec<u8>> = live.iter().map(|i| payload(*i)).collect();
    assert_eq!(
        scan_all(&log).into_iter().map(|r| r.1).collect::<Vec<_>>(),
        expected
    );
    assert_eq!(log.live().0, 8);
    // New acks after the torn entry are still read back (the tail was realigned).
    log.ack(locs[2]).expect("ack");
    log.flush().expect("flush");
    drop(log);
    let log = storage
        .open_queue_log(&key("q"), Durability::Written)
        .expect("reopen");
    assert_eq!(log.live().0, 7);
    assert!(scan_all(&log).iter().all(|r| r.0 != locs[2]));
}

#[test]
fn group_commit_shares_fsyncs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = open_storage(dir.path(), StorageConfig::DEFAULT_SEGMENT_BYTES);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    const LOGS: usize = 4;
    const WAITERS_PER_LOG: usize = 200;
    let logs: Vec<Arc<Mutex<QueueLog>>> = (0..LOGS)
        .map(|i| {
            Arc::new(Mutex::new(
                storage
                    .open_queue_log(&key(&format!("q{i}")), Durability::Synced)
                    .expect("open"),
            ))
        })
        .collect();
    let before = storage.stats().fsyncs_total;
    runtime.block_on(async {
        let mut tasks = Vec::new();
        for log in &logs {
            for i in 0..WAITERS_PER_LOG {
                let log = Arc::clone(log);
                tasks.push(tokio::spawn(async move {
                    let waiter = {
                        let mut log = log.lock();
                        log.append(&payload(i as u64)).expect("append");
                        log.commit().expect("commit")
                    };
                    waiter.wait().await.expect("fsync");
                }));
            }
        }
        for task in tasks {
            task.await.expect("task");
        }
    });
    let fsyncs = storage.stats().fsyncs_total - before;
    let waiters = (LOGS * WAITERS_PER_LOG) as u64;
    assert!(
        fsyncs >= LOGS as u64,
        "each log was fsynced at least once: {fsyncs}"
    );
    assert!(
        fsyncs * 4 <= waiters,
        "{fsyncs} fsyncs for {waiters} waiters: no group commit"
    );
    // Everything each waiter was told is durable is on disk.
    for log in &logs {
        assert_eq!(scan_all(&log.lock()).len(), WAITERS_PER_LOG);
    }
    // With nothing new written, a sync needs no fsync at all.
    let waiter = logs[0].lock().sync().expect("sync");
    runtime.block_on(waiter.wait()).expect("wait");
    assert_eq!(storage.stats().fsyncs_total - before, fsyncs);
}

#[test]
fn written_logs_are_fsynced_in_the_background() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = StorageConfig::new(dir.path());
    config.sync_interval = Duration::from_millis(20);
    let storage = Storage::open(config).expect("open");
    let mut log = storage
        .open_queue_log(&key("q"), Durability::Written)
        .expect("open log");
    log.append(b"x").expect("append");
    let waiter = log.commit().expect("commit");
    let before = storage.stats().fsyncs_total;
    // Already resolved: a Written log confirms on flush.
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
        .block_on(waiter.wait())
        .expect("wait");
    let deadline = Instant::now() + Duration::from_secs(10);
    while storage.stats().fsyncs_total == before {
        assert!(Instant::now() < deadline, "the background fsync never ran");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn delete_and_retain_queue_logs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = open_storage(dir.path(), 1 << 20);
    for name in ["a", "b", "c"] {
        let mut log = storage
            .open_queue_log(&key(name), Durability::Written)
            .expect("open");
        log.append(name.as_bytes()).expect("append");
        log.flush().expect("flush");
    }
    storage.delete_queue_log(&key("a")).expect("delete");
    storage
        .delete_queue_log(&key("a"))
        .expect("deleting twice is fine");
    storage
        .delete_queue_log(&key("never"))
        .expect("deleting a missing log is fine");
    let log = storage
        .open_queue_log(&key("a"), Durability::Written)
        .expect("redeclare");
    assert!(scan_all(&log).is_empty(), "a redeclared queue starts empty");
    drop(log);
    // A leftover from an interrupted deletion is swept.
    std::fs::create_dir(dir.path().join("queues/0123.deleted-1-1")).expect("mkdir");
    storage.retain_queue_logs(&[key("b")]).expect("retain");
    let left: Vec<_> = std::fs::read_dir(dir.path().join("queues"))
        .expect("read")
        .collect();
    assert_eq!(left.len(), 1);
    let log = storage
        .open_queue_log(&key("b"), Durability::Written)
        .expect("open b");
    assert_eq!(scan_all(&log)[0].1, b"b");
    let meta = std::fs::read_to_string(segment_files(dir.path(), "seg")[0].with_file_name("meta"))
        .expect("meta");
    assert_eq!(meta, r#"{"name":"b","vhost":"/"}"#);
}

#[test]
fn queue_keys_map_to_distinct_directories() {
    let a = QueueKey {
        vhost: "a".into(),
        name: "bc".into(),
    };
    let b = QueueKey {
        vhost: "ab".into(),
        name: "c".into(),
    };
    assert_ne!(a.dir_name(), b.dir_name());
    assert_eq!(a.dir_name(), a.clone().dir_name());
    assert_eq!(a.dir_name().len(), 32);
}

#[test]
fn a_data_directory_is_opened_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = open_storage(dir.path(), 1 << 20);
    let err = Storage::open(StorageConfig::new(dir.path()))
        .err()
        .expect("second open must fail");
    assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
    drop(first);
    open_storage(dir.path(), 1 << 20);
}

#[test]
fn definitions_through_storage() {
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = open_storage(dir.path(), 1 << 20);
    assert_eq!(storage.load_definitions().expect("load"), None);
    storage.save_definitions(b"defs").expect("save");
    drop(storage);
    let storage = open_storage(dir.path(), 1 << 20);
    assert_eq!(
        storage.load_definitions().expect("load").as_deref(),
        Some(&b"defs"[..])
    );
}

#[test]
fn a_segment_acked_while_active_goes_when_sealed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = open_storage(dir.path(), 1024);
    let mut log = storage
        .open_queue_log(&key("q"), Durability::Written)
        .expect("open log");
    let locs: Vec<Location> = (0..3)
        .map(|i| log.append(&payload(i)).expect("append"))
        .collect();
    for loc in &locs {
        log.ack(*loc).expect("ack");
    }
    log.flush().expect("flush");
    assert_eq!(
        segment_files(dir.path(), "seg").len(),
        1,
        "the active segment stays"
    );
    let next = log.append(&[1u8; 2000]).expect("append that rolls over");
    assert_eq!(next.segment, locs[0].segment + 1);
    log.flush().expect("flush");
    assert_eq!(
        segment_files(dir.path(), "seg").len(),
        1,
        "the sealed, fully acked one went"
    );
    assert!(segment_files(dir.path(), "ack").is_empty());
    assert_eq!(scan_all(&log).len(), 1);
}

#[test]
fn reads_check_what_they_return() {
    let dir = tempfile::tempdir().expect("tempdir");
    let loc;
    {
        let storage = open_storage(dir.path(), 1 << 20);
        let mut log = storage
            .open_queue_log(&key("q"), Durability::Written)
            .expect("open log");
        loc = log.append(b"payload").expect("append");
        let wrong_len = Location {
            len: loc.len + 1,
            ..loc
        };
        assert_eq!(
            log.read(wrong_len).expect_err("buffered").kind(),
            io::ErrorKind::InvalidData
        );
        log.flush().expect("flush");
        assert_eq!(
            log.read(wrong_len).expect_err("on disk").kind(),
            io::ErrorKind::InvalidData
        );
    }
    let storage = open_storage(dir.path(), 1 << 20);
    let log = storage
        .open_queue_log(&key("q"), Durability::Written)
        .expect("reopen");
    assert_eq!(
        &log.read(loc).expect("read from a recovered segment")[..],
        b"payload"
    );
    let elsewhere = Location {
        segment: loc.segment + 7,
        ..loc
    };
    assert_eq!(
        log.read(elsewhere).expect_err("no such segment").kind(),
        io::ErrorKind::NotFound
    );
}
